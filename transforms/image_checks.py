"""Output images checked before any model sees them: decoded safely, perceptually hashed, and
matched against a blocklist of known images.

Everything here is pure: bytes in, values out. Pillow decodes, but never opens a file, and only
the formats in :data:`ACCEPTED_FORMATS` (an EPS file, say, would make Pillow run Ghostscript).

An image that cannot be scanned is never an exception: :func:`decode_image` returns an
:class:`ImageProblem` with a stable reason code from :data:`IMAGE_REASONS` and a detail.

>>> import io
>>> from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("RGB", (64, 48), (30, 90, 200)).save(buffer, format="PNG")
>>> decoded = decode_image(buffer.getvalue())
>>> decoded.rgb.shape, decoded.rgb.dtype.name, len(decoded.phash)
((48, 64, 3), 'uint8', 16)
>>> decode_image(b"not an image").reason
'image_undecodable'
>>> PhashBlocklist(hashes=(decoded.phash,)).matches(decoded.phash)
True
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

#: The image could not be decoded: not an image, an accepted format's bytes broken or cut short,
#: or a format Pillow identifies but fails to load.
IMAGE_UNDECODABLE = "image_undecodable"
#: The image's header claims more pixels than the ``max_pixels`` the caller allows. Found from
#: the header alone: no pixel is decoded. This is the bound the pipeline relies on.
IMAGE_OVERSIZED = "image_oversized"
#: Pillow's own decompression-bomb guard refused it: a size beyond ``2 × Image.MAX_IMAGE_PIXELS``
#: (``DecompressionBombError``), or beyond ``Image.MAX_IMAGE_PIXELS`` where warnings are errors
#: (``DecompressionBombWarning``), met while opening (a header claiming, say, 100000×100000 is
#: refused there, before our own check sees its size) or while loading (a GIF frame or a TIFF
#: tile larger than the header said). Without Pillow's guard (``MAX_IMAGE_PIXELS = None``) the
#: same header is ``image_oversized``: refused either way.
IMAGE_BOMB = "image_bomb"
#: An image named by an http(s) URL: never fetched, so never scanned. The caller has no bytes
#: for it and records this reason itself (:func:`unscanned`).
IMAGE_UNSCANNED = "image_unscanned"
#: The image's pHash is within the blocklist's Hamming distance of a blocked hash.
IMAGE_BLOCKLISTED = "image_blocklisted"

IMAGE_REASONS = (IMAGE_UNDECODABLE, IMAGE_OVERSIZED, IMAGE_BOMB, IMAGE_UNSCANNED, IMAGE_BLOCKLISTED)

#: Pixels (width × height) an image's header may claim: 40 MP, about 120 MB as RGB.
DEFAULT_MAX_PIXELS = 40_000_000
#: The formats Pillow may open. Anything else is ``image_undecodable``.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
#: Hex digits of a pHash: 64 bits (imagehash's default 8 × 8).
PHASH_HEX_DIGITS = 16
_PHASH = re.compile(f"[0-9a-fA-F]{{{PHASH_HEX_DIGITS}}}")

#: What Pillow raises on bytes it cannot decode (the list Pillow's own fuzzers allow, and the
#: low-level errors its plugins let through on a truncated or corrupt stream).
_DECODE_ERRORS = (
    OSError,  # UnidentifiedImageError, "image file is truncated", a decoder's error code
    SyntaxError,  # "broken PNG file", a bad marker
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    NotImplementedError,
    MemoryError,
)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image decoded for scanning: its pixels and its perceptual hash.

    ``rgb`` is a read-only ``(height, width, 3)`` uint8 array in RGB order: the first frame of an
    animation, alpha dropped (the colours as stored, as NudeNet's own decoder does), palette,
    CMYK and grey expanded, 16-bit samples scaled to 8 bits. ``phash`` is its pHash, 16 lowercase
    hex digits.
    """

    rgb: np.ndarray
    phash: str


@dataclass(frozen=True)
class ImageProblem:
    """Why an image was not scanned: ``reason`` is one of :data:`IMAGE_REASONS`."""

    reason: str
    detail: str


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage | ImageProblem:
    """Decode an image's bytes for scanning, or say why it cannot be scanned.

    The header's width × height is checked against ``max_pixels`` before any pixel is decoded,
    so memory stays bounded whatever ``Image.MAX_IMAGE_PIXELS`` is set to. Truncated images are
    refused unless ``ImageFile.LOAD_TRUNCATED_IMAGES`` has been turned on process-wide.

    >>> decode_image(b"", max_pixels=1_000).detail
    'no bytes'

    Args:
        data: the image file's bytes.
        max_pixels: the most pixels the header may claim; one more is ``image_oversized``.

    Returns:
        A :class:`DecodedImage`, or an :class:`ImageProblem` whose reason is
        ``image_undecodable``, ``image_oversized`` or ``image_bomb``.
    """
    if max_pixels < 1:
        raise ValueError(f"decode_image: max_pixels must be at least 1, got {max_pixels}")
    if not data:
        return ImageProblem(IMAGE_UNDECODABLE, "no bytes")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            too_large = _oversized(image, max_pixels)
            if too_large is None:
                image.load()  # the first frame only
                too_large = _oversized(image, max_pixels)  # a plugin may resize on load (ICO)
            if too_large is not None:
                return too_large
            rgb_image = _as_rgb(image)
    except _BOMB_ERRORS as exc:
        return ImageProblem(IMAGE_BOMB, _first_line(exc))
    except UnidentifiedImageError:
        return ImageProblem(
            IMAGE_UNDECODABLE, f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})"
        )
    except _DECODE_ERRORS as exc:
        return ImageProblem(IMAGE_UNDECODABLE, f"{type(exc).__name__}: {_first_line(exc)}")
    rgb = np.asarray(rgb_image)
    rgb.flags.writeable = False
    return DecodedImage(rgb=rgb, phash=perceptual_hash(rgb_image))


def _oversized(image: Image.Image, max_pixels: int) -> ImageProblem | None:
    width, height = image.size
    if width * height <= max_pixels:
        return None
    return ImageProblem(
        IMAGE_OVERSIZED,
        f"{image.format} header claims {width}×{height} = {width * height:,} pixels, "
        f"over the limit of {max_pixels:,}",
    )


def _as_rgb(image: Image.Image) -> Image.Image:
    """The loaded frame as an 8-bit RGB image; 16-bit grey scaled, not clipped as Pillow does."""
    if image.mode in _16_BIT_MODES or image.mode == "I":
        samples = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = ((samples * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        return image.convert("L").convert("RGB")  # Pillow's convention: 0..255, clipped
    return image.convert("RGB")


def perceptual_hash(image: Image.Image) -> str:
    """The image's pHash (imagehash's DCT hash, 8 × 8 bits) as 16 lowercase hex digits.

    >>> perceptual_hash(Image.new("RGB", (32, 32), (255, 255, 255)))
    '8000000000000000'
    """
    return str(imagehash.phash(image))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def unscanned(url: str) -> ImageProblem:
    """The problem recorded for an image named by a URL: it is never fetched, so never scanned.

    >>> unscanned("https://cdn.example.com/a.png?sig=secret")
    ImageProblem(reason='image_unscanned', detail='https image on cdn.example.com is never fetched')
    """
    parts = urlsplit(url)
    # Only scheme and host: a URL's path and query may carry tokens.
    return ImageProblem(IMAGE_UNSCANNED, f"{parts.scheme} image on {parts.hostname} is never fetched")


@dataclass(frozen=True)
class PhashBlocklist:
    """Known images to refuse, by pHash: an image matches within ``max_distance`` bits.

    A re-encoded or slightly resized copy of an image keeps its pHash within a few bits; an
    unrelated image differs in about half of the 64.

    >>> blocklist = PhashBlocklist(hashes=("ffff0000ffff0000",), max_distance=6)
    >>> blocklist.matches("ffff0000ffff003f"), blocklist.matches("ffff0000ffff007f")
    (True, False)
    >>> PhashBlocklist(hashes=("ffff0000ffff000g",))
    Traceback (most recent call last):
    ...
    ValueError: PhashBlocklist: hashes[0] 'ffff0000ffff000g' is not a pHash: expected 16 hex digits

    Args:
        hashes: the blocked pHashes, 16 hex digits each (either case).
        max_distance: the most bits a hash may differ from a blocked one and still match, 0..64.
    """

    hashes: tuple[str, ...] = ()
    max_distance: int = 6
    _values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.hashes, str):
            raise ValueError("PhashBlocklist: hashes must be a sequence of hex strings, got one str")
        if not 0 <= self.max_distance <= 4 * PHASH_HEX_DIGITS:
            raise ValueError(f"PhashBlocklist: max_distance must be in 0..64, got {self.max_distance}")
        values = [_phash_value(h, f"PhashBlocklist: hashes[{i}]") for i, h in enumerate(self.hashes)]
        object.__setattr__(self, "hashes", tuple(h.lower() for h in self.hashes))
        object.__setattr__(self, "_values", np.array(values, dtype=np.uint64))

    def distance(self, phash: str) -> int | None:
        """Bits between ``phash`` and the nearest blocked hash; ``None`` for an empty blocklist."""
        return int(self._nearest([phash])[0]) if self._values.size else None

    def matches(self, phash: str) -> bool:
        """Whether ``phash`` is within ``max_distance`` bits of a blocked hash."""
        return self.matches_each([phash])[0]

    def matches_each(self, phashes: Sequence[str]) -> list[bool]:
        """:meth:`matches` for each of ``phashes``, in order, compared as one array."""
        return [bool(bits <= self.max_distance) for bits in self._nearest(phashes)]

    def _nearest(self, phashes: Sequence[str]) -> np.ndarray:
        """Per hash, the bits to the nearest blocked hash (65 when the blocklist is empty)."""
        values = np.array(
            [_phash_value(p, f"PhashBlocklist: phash [{i}]") for i, p in enumerate(phashes)],
            dtype=np.uint64,
        ).reshape(-1, 1)
        bits: np.ndarray = np.bitwise_count(values ^ self._values)
        nearest: np.ndarray = bits.min(axis=1, initial=4 * PHASH_HEX_DIGITS + 1)
        return nearest


def _phash_value(phash: object, where: str) -> int:
    """A pHash's 64 bits, or a ValueError saying ``where`` the bad one was and what it was."""
    if not isinstance(phash, str) or not _PHASH.fullmatch(phash):
        shown = repr(phash)[:40]
        raise ValueError(f"{where} {shown} is not a pHash: expected {PHASH_HEX_DIGITS} hex digits")
    return int(phash, 16)
