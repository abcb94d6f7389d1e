"""The image moderator: NudeNet's 320n detector on onnxruntime, scored per moderation category.

The model ships inside the PyPI package ``nudenet`` (``nudenet/320n.onnx``); nothing is
downloaded. NudeNet's Python wrapper is not used (it decodes with OpenCV): images arrive decoded
as RGB arrays, and ``models/nudenet_detector.py`` reproduces the wrapper's pre-processing and
decoding. A category's score is the score of NudeNet's most confident detection of one of the
category's classes, 0.0 when it reports none (it reports only detections scoring above 0.25):

======== ==================================================================================
sexual   FEMALE_GENITALIA_EXPOSED, MALE_GENITALIA_EXPOSED, FEMALE_BREAST_EXPOSED,
         BUTTOCKS_EXPOSED, ANUS_EXPOSED
nudity   FEMALE_GENITALIA_COVERED, FEMALE_BREAST_COVERED, BUTTOCKS_COVERED, ANUS_COVERED
         (intimate parts partly covered: underwear, swimwear), MALE_BREAST_EXPOSED,
         BELLY_EXPOSED
(none)   FACE_FEMALE, FACE_MALE, FEET_EXPOSED, FEET_COVERED, ARMPITS_EXPOSED, ARMPITS_COVERED,
         BELLY_COVERED: everyday clothed photos are full of them
======== ==================================================================================

>>> len(UNSCORED_CLASSES), sorted(UNSCORED_CLASSES)[:3]
(7, ['ARMPITS_COVERED', 'ARMPITS_EXPOSED', 'BELLY_COVERED'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from models.handler import DEVICES, ModelError, ModelHandler
from models.nudenet_detector import LABELS, MODEL_PACKAGE, Detection, detections, model_path, stack

if TYPE_CHECKING:
    import onnxruntime

#: The moderation categories an image is scored on, in the order of ``run_batch``'s columns.
IMAGE_CATEGORIES: tuple[str, ...] = ("sexual", "nudity")

#: Which NudeNet classes count towards each category.
CATEGORY_CLASSES: dict[str, frozenset[str]] = {
    "sexual": frozenset(
        {
            "FEMALE_GENITALIA_EXPOSED",
            "MALE_GENITALIA_EXPOSED",
            "FEMALE_BREAST_EXPOSED",
            "BUTTOCKS_EXPOSED",
            "ANUS_EXPOSED",
        }
    ),
    "nudity": frozenset(
        {
            "FEMALE_GENITALIA_COVERED",
            "FEMALE_BREAST_COVERED",
            "BUTTOCKS_COVERED",
            "ANUS_COVERED",
            "MALE_BREAST_EXPOSED",
            "BELLY_EXPOSED",
        }
    ),
}

#: NudeNet's classes no category counts.
UNSCORED_CLASSES = frozenset(LABELS).difference(*CATEGORY_CLASSES.values())

#: Threads one session uses for an operator, unless asked otherwise: a few, since the
#: pipeline's other stages share the machine, and more add little to a model this small.
DEFAULT_INTRA_OP_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def category_scores(found: Sequence[Detection]) -> np.ndarray:
    """One image's score per category: its best detection of the category's classes, or 0.

    >>> category_scores([Detection("BELLY_EXPOSED", 0.4, (0, 0, 1, 1)),
    ...                  Detection("FACE_FEMALE", 0.9, (0, 0, 1, 1))]).tolist()
    [0.0, 0.4000000059604645]
    """
    scores = np.zeros(len(IMAGE_CATEGORIES), dtype=np.float32)
    for column, category in enumerate(IMAGE_CATEGORIES):
        classes = CATEGORY_CLASSES[category]
        scores[column] = max((d.score for d in found if d.label in classes), default=0.0)
    return scores


def load_session(device: str, intra_op_threads: int) -> onnxruntime.InferenceSession:
    """NudeNet's packaged 320n model as an onnxruntime session on ``device`` (``cpu`` or ``cuda``)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1  # one graph, run sequentially: no parallel branches to gain
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else []
    try:
        return onnxruntime.InferenceSession(
            str(model_path()), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except _load_errors() as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load {MODEL_PACKAGE}'s 320n model: {first}") from None


def _load_errors() -> tuple[type[BaseException], ...]:
    """What onnxruntime raises on a model it cannot load (its own classes, none a RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "InvalidProtobuf",
        "NoSuchFile",
        "EPFail",
        "NotImplemented",
        "RuntimeException",
    )
    return (RuntimeError, ValueError, *(getattr(state, name) for name in names if hasattr(state, name)))


class ImageModerator(ModelHandler[np.ndarray, "onnxruntime.InferenceSession"]):
    """RGB images → ``(n, len(IMAGE_CATEGORIES))`` float32 scores in ``[0, 1]``, NudeNet 320n.

    Each example is a ``(height, width, 3)`` uint8 RGB array (``DecodedImage.rgb``). A batch is
    one ``session.run``: every image is letterboxed to 320 × 320 first.

    Keyword-only options, beside ``device`` and ``batch_size`` (see :class:`ModelHandler`):
        intra_op_threads: onnxruntime's threads per operator (default
            :data:`DEFAULT_INTRA_OP_THREADS`). The session is loaded once per process, so the
            first handler to run in a process sets it for all.

    ``device="auto"`` runs on CUDA when onnxruntime has its CUDA provider (``onnxruntime-gpu``),
    on the CPU otherwise; ``device="cuda"`` without that provider is a :class:`ModelError`.
    """

    name = "nudenet-320n"
    version = f"{MODEL_PACKAGE}=={metadata.version(MODEL_PACKAGE)}"
    categories = IMAGE_CATEGORIES

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 16,
        intra_op_threads: int = DEFAULT_INTRA_OP_THREADS,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if intra_op_threads < 1:
            raise ModelError(f"ImageModerator: intra_op_threads must be at least 1, got {intra_op_threads}")
        self.intra_op_threads = intra_op_threads

    @property
    def device(self) -> str:
        """Where the model runs: ``cuda`` when onnxruntime can run it there, else ``cpu``."""
        if self.requested_device not in DEVICES:
            raise ModelError(f"device must be one of {', '.join(DEVICES)}, got {self.requested_device!r}")
        if self.requested_device == "cpu":
            return "cpu"
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in available:
            return "cuda"
        if self.requested_device == "cuda":
            raise ModelError(
                f"device cuda was asked for, but onnxruntime {onnxruntime.__version__} has no CUDA "
                f"provider (it has {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        return "cpu"

    def load_model(self, device: str) -> onnxruntime.InferenceSession:
        return load_session(device, self.intra_op_threads)

    def length(self, example: np.ndarray) -> int:
        return int(example.shape[0] * example.shape[1])

    def run_batch(self, model: onnxruntime.InferenceSession, examples: Sequence[np.ndarray]) -> np.ndarray:
        if not examples:
            return np.zeros((0, len(IMAGE_CATEGORIES)), dtype=np.float32)
        (outputs,) = model.run(None, {model.get_inputs()[0].name: stack(examples)})
        return np.stack(
            [
                category_scores(detections(output, width=image.shape[1], height=image.shape[0]))
                for output, image in zip(outputs, examples, strict=True)
            ]
        )
