"""Image moderation: safe decoding, pHash blocklist, and NudeNet's detector run offline.

Every image is made here with Pillow. No test image shows anyone: the detector's scores are
checked on benign images (low on both categories), and its pre-processing and decoding against
NudeNet's own wrapper, which must give the same numbers.
"""

from __future__ import annotations

import io
import socket
import struct
import warnings
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFile

from models.handler import ModelError
from models.image_moderator import (
    CATEGORY_CLASSES,
    IMAGE_CATEGORIES,
    UNSCORED_CLASSES,
    ImageModerator,
    category_scores,
)
from models.nudenet_detector import LABELS, Detection, detections, model_path, preprocess
from transforms.image_checks import (
    IMAGE_BOMB,
    IMAGE_OVERSIZED,
    IMAGE_REASONS,
    IMAGE_UNDECODABLE,
    IMAGE_UNSCANNED,
    DecodedImage,
    ImageProblem,
    PhashBlocklist,
    decode_image,
    unscanned,
)

# --- images made for the tests -------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def landscape(width: int = 512, height: int = 384) -> Image.Image:
    """Sky, sun, hills and a lake: what a benign generated image looks like."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(90 + y * 100 // height, 150 + y * 60 // height, 235))
    w, h = width / 512, height / 384
    draw.ellipse([390 * w, 40 * h, 450 * w, 100 * h], fill=(255, 220, 90))
    draw.polygon([(0, 260 * h), (140 * w, 170 * h), (300 * w, 250 * h), (512 * w, 160 * h),
                  (512 * w, 384 * h), (0, 384 * h)], fill=(50, 120, 60))  # fmt: skip
    draw.rectangle([0, 320 * h, width, height], fill=(60, 110, 170))
    return image


def stripes(width: int = 512, height: int = 384) -> Image.Image:
    """Diagonal black and white stripes: nothing like :func:`landscape`."""
    ys, xs = np.mgrid[0:height, 0:width]
    return Image.fromarray((((xs + ys) // 24) % 2 * 255).astype(np.uint8)).convert("RGB")


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` × ``height`` RGB, with a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\0\0\0\0\1\0\1\0\0\2\2D\1\0;"


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 12, 0, 0, 14 + len(info)) + info + b"\0" * 12


def decoded(data: bytes, **options: int) -> DecodedImage:
    result = decode_image(data, **options)
    assert isinstance(result, DecodedImage), result
    return result


def problem(data: bytes, **options: int) -> ImageProblem:
    result = decode_image(data, **options)
    assert isinstance(result, ImageProblem), f"decoded a {result.rgb.shape} image"
    return result


@pytest.fixture
def no_pixel_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding fails the test: a refusal must come from the header alone."""

    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.format} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.fixture(scope="module")
def moderator() -> ImageModerator:
    return ImageModerator(device="cpu", batch_size=4, intra_op_threads=1)


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_small_png_and_jpeg_decode_to_rgb_with_a_16_hex_phash(fmt: str) -> None:
    image = decoded(encoded(landscape(200, 150), fmt))
    assert image.rgb.shape == (150, 200, 3) and image.rgb.dtype == np.uint8
    assert not image.rgb.flags.writeable
    assert len(image.phash) == 16 and int(image.phash, 16) >= 0 and image.phash == image.phash.lower()


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    return encoded(image, transparency=0)


def _grey16(value: int, fmt: str) -> bytes:
    return encoded(Image.fromarray(np.full((8, 8), value, np.uint16)), fmt)


def _lossless_webp(colour: tuple[int, int, int]) -> bytes:
    return encoded(Image.new("RGB", (8, 8), colour), "WEBP", lossless=True)


def _animated_gif() -> bytes:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    return encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(_palette_with_transparency(), (200, 40, 10), id="palette-with-transparency"),
        pytest.param(encoded(Image.new("RGBA", (8, 8), (10, 20, 30, 0))), (10, 20, 30), id="alpha-dropped"),
        pytest.param(encoded(Image.new("LA", (8, 8), (77, 128))), (77, 77, 77), id="grey-alpha"),
        pytest.param(encoded(Image.new("1", (8, 8), 1)), (255, 255, 255), id="bilevel"),
        pytest.param(_grey16(32896, "PNG"), (128, 128, 128), id="16-bit-png-scaled-not-clipped"),
        pytest.param(_grey16(65535, "TIFF"), (255, 255, 255), id="16-bit-tiff"),
        pytest.param(_animated_gif(), (255, 0, 0), id="animated-first-frame"),
        pytest.param(_lossless_webp((0, 99, 0)), (0, 99, 0), id="webp"),
    ],
)  # fmt: skip
def test_every_mode_becomes_8_bit_rgb(data: bytes, expected: tuple[int, int, int]) -> None:
    assert decoded(data).rgb[4, 4].tolist() == list(expected)


def test_a_cmyk_jpeg_becomes_rgb() -> None:
    red = decoded(encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)).rgb[8, 8]
    assert red[0] > 230 and red[1] < 30 and red[2] < 30, red


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encoded(landscape(64, 64))[:300], id="truncated-png"),
        pytest.param(encoded(landscape(64, 64), "JPEG")[:400], id="truncated-jpeg"),
        pytest.param(np.random.default_rng(3).bytes(4096), id="random-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(png_claiming(16, 16), id="png-opens-but-idat-too-short"),
        pytest.param(encoded(landscape(64, 64))[:-40] + b"\0" * 40, id="png-broken-tail"),
    ],
)
def test_a_corrupt_or_truncated_file_is_undecodable_not_a_crash(data: bytes) -> None:
    assert problem(data).reason == IMAGE_UNDECODABLE


def test_a_format_outside_the_accepted_ones_is_undecodable() -> None:
    found = problem(encoded(landscape(32, 32), "PCX"))
    assert found.reason == IMAGE_UNDECODABLE and "PNG, JPEG" in found.detail


@pytest.mark.usefixtures("no_pixel_decoded")
@pytest.mark.parametrize("header", [png_claiming, gif_claiming, bmp_claiming])
def test_a_header_claiming_a_huge_image_is_refused_before_decoding(header) -> None:  # type: ignore[no-untyped-def]
    side = 65_535 if header is gif_claiming else 100_000  # a GIF's sides are 16-bit
    found = problem(header(side, side))
    assert found.reason == IMAGE_BOMB, found  # Pillow's own guard fires first, at open


@pytest.mark.usefixtures("no_pixel_decoded")
def test_the_pixel_bound_holds_without_pillows_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    found = problem(png_claiming(100_000, 100_000))
    assert found.reason == IMAGE_OVERSIZED
    assert "100000×100000 = 10,000,000,000 pixels, over the limit of 40,000,000" in found.detail


def test_one_pixel_over_max_pixels_is_oversized_and_exactly_max_pixels_is_not() -> None:
    data = encoded(landscape(101, 99))
    assert problem(data, max_pixels=101 * 99 - 1).reason == IMAGE_OVERSIZED
    assert decoded(data, max_pixels=101 * 99).rgb.shape == (99, 101, 3)


def test_pillows_bomb_warning_raised_as_an_error_is_a_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert problem(encoded(landscape(40, 40))).reason == IMAGE_BOMB  # 1600 > 1000: the warning
    assert problem(encoded(landscape(50, 50))).reason == IMAGE_BOMB  # 2500 > 2000: the error


_VALID = [encoded(landscape(48, 40), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(_VALID),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(1, 20_000),
)
def test_a_mutated_image_is_decoded_or_refused_never_raises(
    base: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for offset, value in edits:
        data[offset % len(data)] = value
    result = decode_image(bytes(data[:cut]), max_pixels=1_000_000)
    assert isinstance(result, DecodedImage) or result.reason in IMAGE_REASONS


def test_an_http_image_is_unscanned_and_its_query_stays_out_of_the_detail() -> None:
    found = unscanned("https://cdn.example.com/cat.png?token=s3cret")
    assert (
        found.reason == IMAGE_UNSCANNED and "s3cret" not in found.detail and "cdn.example.com" in found.detail
    )


# --- pHash blocklist -----------------------------------------------------------------------------


def test_a_reencoded_or_slightly_resized_copy_matches_and_a_different_image_does_not() -> None:
    original = landscape()
    blocklist = PhashBlocklist(hashes=(decoded(encoded(original)).phash,))
    as_jpeg = decoded(encoded(original, "JPEG", quality=70)).phash
    resized = decoded(encoded(original.resize((460, 345), Image.Resampling.BILINEAR))).phash
    different = decoded(encoded(stripes())).phash
    assert blocklist.matches(as_jpeg) and blocklist.matches(resized)
    assert not blocklist.matches(different)
    assert blocklist.matches_each([as_jpeg, different, resized]) == [True, False, True]


@settings(max_examples=200, deadline=None)
@given(
    blocked=st.integers(0, 2**64 - 1),
    flipped=st.sets(st.integers(0, 63), max_size=12),
    max_distance=st.integers(0, 10),
)
def test_a_hash_matches_exactly_when_at_most_max_distance_bits_differ(
    blocked: int, flipped: set[int], max_distance: int
) -> None:
    probe = blocked ^ sum(1 << bit for bit in flipped)
    blocklist = PhashBlocklist(hashes=(f"{blocked:016X}",), max_distance=max_distance)
    assert blocklist.distance(f"{probe:016x}") == len(flipped)
    assert blocklist.matches(f"{probe:016x}") == (len(flipped) <= max_distance)


@pytest.mark.parametrize(
    "bad", ["xyz", "ffff0000ffff000g", "0xffff0000ffff00", "ffff0000ffff00001", " fff0000ffff0000"]
)
def test_a_bad_hex_entry_is_a_value_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"hashes\[1\] {bad!r} is not a pHash"):
        PhashBlocklist(hashes=("ffff0000ffff0000", bad))


def test_an_empty_blocklist_matches_nothing_and_max_distance_is_bounded() -> None:
    assert not PhashBlocklist().matches("ffff0000ffff0000")
    with pytest.raises(ValueError, match=r"max_distance must be in 0\.\.64, got 65"):
        PhashBlocklist(max_distance=65)


# --- the detector --------------------------------------------------------------------------------


def test_scores_have_one_row_per_image_each_in_the_unit_interval(moderator: ImageModerator) -> None:
    images = [decoded(encoded(landscape(), "JPEG")).rgb, decoded(encoded(landscape(200, 300))).rgb]
    scores = moderator(images)
    assert scores.shape == (2, len(IMAGE_CATEGORIES)) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert moderator([]).shape == (0, len(IMAGE_CATEGORIES))


def test_a_solid_colour_and_a_landscape_score_low_on_both_categories(moderator: ImageModerator) -> None:
    solid = decoded(encoded(Image.new("RGB", (320, 240), (205, 160, 130)))).rgb  # a skin-like tone
    scores = moderator([solid, decoded(encoded(landscape(), "JPEG")).rgb])
    assert (scores < 0.5).all(), scores


def test_scores_and_raw_outputs_are_the_same_on_a_second_call(moderator: ImageModerator) -> None:
    images = [
        decoded(encoded(landscape(), "JPEG")).rgb,
        np.random.default_rng(5).integers(0, 256, (300, 400, 3), np.uint8),
    ]
    assert np.array_equal(moderator(images), moderator(images))
    blob = np.stack([preprocess(image) for image in images])
    first, second = (moderator.model.run(None, {"images": blob})[0] for _ in range(2))
    assert np.array_equal(first, second)


def test_a_batch_is_one_run_with_the_same_outputs_as_one_image_at_a_time(moderator: ImageModerator) -> None:
    assert moderator.model.get_inputs()[0].shape[0] == "batch"  # a free batch dimension
    rng = np.random.default_rng(6)
    blob = np.stack([preprocess(rng.integers(0, 256, (200, 260, 3), np.uint8)) for _ in range(3)])
    together = moderator.model.run(None, {"images": blob})[0]
    alone = np.concatenate([moderator.model.run(None, {"images": blob[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_the_model_loads_from_the_installed_wheel_with_the_network_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError(f"network blocked by the test: connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    package_dir = Path(str(metadata.distribution("nudenet").locate_file("nudenet")))
    assert model_path() == package_dir / "320n.onnx"
    session = ImageModerator(device="cpu", intra_op_threads=1).load_model("cpu")  # not the cached one
    blob = preprocess(decoded(encoded(landscape())).rgb)[None]
    assert session.run(None, {"images": blob})[0].shape == (1, 4 + len(LABELS), 2100)
    assert attempts == []


def test_cuda_without_onnxruntimes_cuda_provider_is_a_model_error() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # An onnxruntime built with CUDA: asking for it is no error, and auto takes it.
        assert ImageModerator(device="cuda").device == "cuda"
        assert ImageModerator(device="auto").device == "cuda"
        return
    with pytest.raises(ModelError, match="no CUDA provider"):
        _ = ImageModerator(device="cuda").device
    assert ImageModerator(device="auto").device == "cpu"


def test_each_category_scores_its_best_detection_and_other_classes_count_for_none() -> None:
    assert set(LABELS) == UNSCORED_CLASSES.union(*CATEGORY_CLASSES.values())
    assert not CATEGORY_CLASSES["sexual"] & CATEGORY_CLASSES["nudity"]
    found = [
        Detection("FEMALE_BREAST_EXPOSED", 0.61, (0, 0, 5, 5)),
        Detection("BUTTOCKS_EXPOSED", 0.83, (9, 9, 5, 5)),
        Detection("BELLY_EXPOSED", 0.35, (0, 9, 5, 5)),
        Detection("FACE_FEMALE", 0.99, (9, 0, 5, 5)),
    ]
    np.testing.assert_allclose(category_scores(found), [0.83, 0.35])
    assert category_scores([Detection("FEET_EXPOSED", 0.9, (0, 0, 1, 1))]).tolist() == [0.0, 0.0]


# --- the same numbers as NudeNet's own wrapper -----------------------------------------------------


@pytest.mark.parametrize(
    "size", [(384, 512), (512, 384), (640, 640), (100, 60), (7, 300), (1500, 999), (1, 1)]
)
def test_preprocessing_equals_nudenets_own_bit_for_bit(size: tuple[int, int]) -> None:
    import nudenet.nudenet as wrapper  # NudeNet's own wrapper (with OpenCV, a dev dependency)

    rgb = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), np.uint8)
    blob = wrapper._read_image(encoded(Image.fromarray(rgb), "BMP"), 320)[0]
    assert np.array_equal(preprocess(rgb)[None], blob)


def test_decoding_equals_nudenets_own_on_random_outputs() -> None:
    import nudenet.nudenet as wrapper  # NudeNet's own wrapper (with OpenCV, a dev dependency)

    rng = np.random.default_rng(7)
    for _ in range(8):  # NudeNet's own post-processing takes seconds per output
        output = rng.random((1, 22, 2100), dtype=np.float32)
        output[0, 4:] **= rng.uniform(3, 30)  # mostly low class scores, a few high
        output[0, :2] *= 320
        output[0, 2:4] *= rng.uniform(5, 200)
        width, height = (int(side) for side in rng.integers(1, 2000, 2))
        side = max(width, height)
        theirs = wrapper._postprocess([output], side - width, side - height, 0, 0, width, height, 320, 320)
        ours = detections(output[0], width=width, height=height)
        assert [(d.label, d.score, d.box) for d in ours] == [
            (d["class"], pytest.approx(d["score"]), tuple(d["box"])) for d in theirs
        ]
