"""A small pool of real PNG images for synthetic image-generation events.

Every image is a genuine PNG that Pillow (and the pipeline's image hashing) can read, drawn
from a seed so that the same seed gives byte-identical files. Events reuse the pool, so content
hashes repeat the way popular generations do.
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

#: How many distinct images the pool holds.
POOL_SIZE = 50
#: Folder, beside the JSONL, that path images live in; events name them relative to the JSONL.
IMAGES_DIR = "images"
_SIDES = (16, 24, 32, 48, 64)


def image_ref_path(index: int) -> str:
    """The path an event gives for pool image ``index``, relative to the JSONL's folder.

    >>> image_ref_path(7)
    'images/img-0007.png'
    """
    return f"{IMAGES_DIR}/img-{index:04d}.png"


@dataclass(frozen=True)
class ImagePool:
    """PNG bytes of each pool image, and the same bytes as base64 for inline events."""

    pngs: tuple[bytes, ...]
    base64s: tuple[str, ...]

    @classmethod
    def draw(cls, seed: int, size: int = POOL_SIZE) -> ImagePool:
        """Draw ``size`` distinct images from ``seed`` (its own stream, apart from the events')."""
        rng = random.Random(f"images-{seed}")
        pngs = tuple(_png(_pattern(rng, index)) for index in range(size))
        return cls(pngs, tuple(base64.b64encode(png).decode("ascii") for png in pngs))

    def write(self, folder: Path) -> int:
        """Write every image as ``folder/images/img-NNNN.png``; returns how many were written."""
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        for index, png in enumerate(self.pngs):
            (folder / image_ref_path(index)).write_bytes(png)
        return len(self.pngs)


def _pattern(rng: random.Random, index: int) -> Image.Image:
    width, height = rng.choice(_SIDES), rng.choice(_SIDES)
    ink = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    paper = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    style = index % 3
    step = rng.choice((2, 4, 8))
    if style == 0:
        for x in range(0, width, step):
            for y in range((x // step % 2) * step, height, 2 * step):
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    elif style == 1:
        for x in range(0, width, 2 * step):
            draw.rectangle((x, 0, x + step - 1, height - 1), fill=ink)
    else:
        for r in range(max(width, height), 0, -step):
            colour = ink if r // step % 2 else paper
            draw.ellipse((width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r), fill=colour)
    # A marker pixel makes every pool image distinct even when two draws match.
    image.putpixel((0, 0), (index, 255 - index, index * 5 % 256))
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
