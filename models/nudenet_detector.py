"""NudeNet 3.4.2's 320n detector without its Python wrapper: the ONNX file from the installed
wheel, its pre-processing and its output decoding, reproduced with numpy.

NudeNet's wrapper (``nudenet/nudenet.py``) decodes with OpenCV. Here images arrive decoded (see
``transforms/image_checks.py``), and this module reproduces what the wrapper does to them, so a
score here is the score NudeNet reports:

* **Pre-processing** (``_read_image``): pad the image with black at the right or bottom into a
  square, resize it to 320 × 320 with OpenCV's ``INTER_LINEAR`` (its fixed-point arithmetic:
  11-bit weights, its vectorised rounding, row weights kept at the top and bottom borders), scale
  to ``[0, 1]``, channels first. The channels go in **BGR** order: the wrapper swaps red and blue
  twice (``cvtColor(COLOR_RGBA2BGR)`` on OpenCV's BGR, then ``swapRB=True``). The result equals
  the wrapper's blob bit for bit (``tests/test_image_moderation.py`` checks it against
  ``nudenet._read_image`` where OpenCV is installed).
* **Decoding** (``_postprocess``): the output is ``(22, 2100)`` per image, a box (centre x, y,
  width, height) and 18 class scores for each of 2100 anchors. An anchor whose best class scores
  at least 0.2 is a candidate, labelled with that class; boxes are scaled back to the image and
  clipped; OpenCV's ``NMSBoxes`` (score above 0.25, IoU above 0.45 suppresses, across classes)
  picks the detections.

The model's input has a free batch dimension (``images: [batch, 3, height, width]``), so a batch
of images is one ``session.run``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from models.handler import ModelError

#: The package that ships the model file, and the file inside it.
MODEL_PACKAGE = "nudenet"
MODEL_FILE = "nudenet/320n.onnx"
#: The model's square input side, in pixels.
INPUT_SIZE = 320

#: NudeNet's 18 classes, in the order of the model's class scores.
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)

CANDIDATE_SCORE = 0.2  # an anchor's best class score, to be considered at all
SCORE_THRESHOLD = np.float32(0.25)  # NMSBoxes: a detection scores above this
IOU_THRESHOLD = np.float32(0.45)  # NMSBoxes: a box overlapping a kept one by more is dropped

# OpenCV's INTER_LINEAR for 8-bit images: weights in 11 fractional bits.
_WEIGHT_BITS = 11


def model_path() -> Path:
    """The ONNX file as the installed wheel shipped it, checked against the wheel's RECORD.

    Found through the package's metadata rather than ``importlib.resources``: importing the
    ``nudenet`` package imports its wrapper, and with it OpenCV.
    """
    try:
        files = metadata.files(MODEL_PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise ModelError(f"{MODEL_PACKAGE} is not installed: pip install 'nudenet==3.4.2'") from None
    record = next((f for f in files if str(f) == MODEL_FILE), None)
    if record is None:
        raise ModelError(f"the installed {MODEL_PACKAGE} does not list {MODEL_FILE} in its RECORD")
    path = Path(str(record.locate()))
    if record.hash is not None and record.hash.mode == "sha256":
        digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
        if digest.decode() != record.hash.value:
            raise ModelError(f"{path} differs from the file {MODEL_PACKAGE}'s wheel installed (sha256)")
    return path


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """An image as NudeNet's input: ``(3, 320, 320)`` float32 in ``[0, 1]``, BGR, letterboxed.

    >>> blob = preprocess(np.full((10, 20, 3), (255, 0, 0), dtype=np.uint8))  # red, wider than tall
    >>> blob.shape, blob.dtype.name, float(blob[2, 0, 0]), float(blob[0, 0, 0]), float(blob[2, -1, 0])
    ((3, 320, 320), 'float32', 1.0, 0.0, 0.0)

    Args:
        rgb: ``(height, width, 3)`` uint8, RGB.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(
            f"preprocess: expected a (height, width, 3) uint8 image, got {rgb.dtype} {rgb.shape}"
        )
    height, width = rgb.shape[:2]
    side = max(height, width)
    rows, next_rows, row_weight, next_row_weight = _taps(side)
    cols, next_cols, col_weight, next_col_weight = _taps(side)

    def square_rows(ys: np.ndarray) -> np.ndarray:
        # The letterboxed square's rows ys: the image's, black below it.
        block = np.take(rgb, ys, axis=0, mode="clip")
        block[ys >= height] = 0
        return block

    def horizontal(block: np.ndarray) -> np.ndarray:
        # Each row's 320 outputs, weighted, still scaled by 2**11; black right of the image.
        left = np.take(block, cols, axis=1, mode="clip").astype(np.int32)
        right = np.take(block, next_cols, axis=1, mode="clip").astype(np.int32)
        left[:, cols >= width] = 0
        right[:, next_cols >= width] = 0
        return left * col_weight[None, :, None] + right * next_col_weight[None, :, None]

    top, bottom = horizontal(square_rows(rows)), horizontal(square_rows(next_rows))
    # OpenCV's vectorised vertical pass: 16-bit products keeping their high half, then a rounding
    # shift. In place: these are the hot loop's largest arrays.
    for block, weight in ((top, row_weight), (bottom, next_row_weight)):
        block >>= 4
        block *= weight[:, None, None]
        block >>= 16
    top += bottom
    top += 2
    top >>= 2
    np.clip(top, 0, 255, out=top)
    blob = np.empty((3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for channel in range(3):
        blob[channel] = top[:, :, 2 - channel]  # BGR, as the wrapper's blob
    blob *= np.float32(1 / 255.0)
    return blob


def _taps(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of the 320 outputs along one axis: the two source indices and their weights."""
    scale = 1.0 / (INPUT_SIZE / side)
    position = ((np.arange(INPUT_SIZE) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first.astype(np.float32)
    one = np.float32(1 << _WEIGHT_BITS)
    weight = np.rint((np.float32(1) - fraction) * one).astype(np.int32)
    next_weight = np.rint(fraction * one).astype(np.int32)
    return np.clip(first, 0, side - 1), np.clip(first + 1, 0, side - 1), weight, next_weight


@dataclass(frozen=True)
class Detection:
    """One body part NudeNet found: its class, its score, and its box in the image's pixels."""

    label: str
    score: float
    box: tuple[int, int, int, int]  # x, y, width, height


def detections(output: np.ndarray, width: int, height: int) -> list[Detection]:
    """NudeNet's detections from the model's output for one image of ``width`` × ``height``.

    Args:
        output: ``(22, anchors)`` float32: box centre x, y, width, height, then 18 class scores.
        width, height: the image's size before letterboxing.
    """
    anchors = output.T
    best = anchors[:, 4:].max(axis=1)
    candidate = best >= CANDIDATE_SCORE
    scores = best[candidate]
    classes = anchors[candidate, 4:].argmax(axis=1)
    centre_x, centre_y, box_w, box_h = anchors[candidate, :4].T
    side = max(width, height)  # the letterboxed square's side
    x = np.clip((centre_x - box_w / 2) * side / INPUT_SIZE, 0, width)
    y = np.clip((centre_y - box_h / 2) * side / INPUT_SIZE, 0, height)
    w = np.minimum(box_w * side / INPUT_SIZE, width - x)
    h = np.minimum(box_h * side / INPUT_SIZE, height - y)
    boxes = np.stack([x, y, w, h], axis=1).astype(np.float64)
    return [
        Detection(LABELS[classes[i]], float(scores[i]), (int(x[i]), int(y[i]), int(w[i]), int(h[i])))
        for i in non_maximum_suppression(boxes, scores)
    ]


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    """The boxes OpenCV's ``dnn.NMSBoxes(boxes, scores, 0.25, 0.45)`` keeps, best first.

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 5, 5]], dtype=np.float64)
    >>> non_maximum_suppression(boxes, np.array([0.9, 0.8, 0.3], dtype=np.float32))
    [0, 2]
    """
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > SCORE_THRESHOLD]
    kept: list[int] = []
    for i in order:
        if all(_overlap(boxes[i], boxes[k]) <= IOU_THRESHOLD for k in kept):
            kept.append(i)
    return kept


def _overlap(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Intersection over union of two (x, y, w, h) boxes, computed as OpenCV's ``rectOverlap``
    computes it for ``Rect2d`` (its intersection formula, so the rounding is the same)."""
    area_a, area_b = a[2] * a[3], b[2] * b[3]
    if area_a + area_b <= np.finfo(np.float64).eps:
        return np.float32(1)
    inter = 0.0
    if min(a[2], a[3], b[2], b[3]) > 0:
        left, right = (a, b) if a[0] < b[0] else (b, a)
        upper, lower = (a, b) if a[1] < b[1] else (b, a)
        if right[0] - left[0] < left[2] and lower[1] - upper[1] < upper[3]:
            inter_w = min(left[2] - (right[0] - left[0]), right[2])
            inter_h = min(upper[3] - (lower[1] - upper[1]), lower[3])
            inter = inter_w * inter_h
    return np.float32(1) - np.float32(1.0 - inter / (area_a + area_b - inter))


def stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """A batch of images as the model's input: ``(n, 3, 320, 320)`` float32."""
    if not images:
        return np.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    return np.stack([preprocess(image) for image in images])
