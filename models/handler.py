"""One small interface for every model the pipeline runs: load once per worker, batch, sort by
length, pick the device.

A handler is cheap to build and to pickle (an engine ships it to its workers); the model itself
is loaded on first use and shared by every handler of the same model and device in the process,
so a worker holds one copy however many stages or DoFn instances use it. ``transforms/`` never
sees a handler's insides: it receives the handler as a plain callable, ``examples → array``.

The shape follows Beam's ``ModelHandler`` (``apache_beam/ml/inference/base.py``): the pipeline
never knows which model it runs; batch size and device are keyword-only options.

>>> class Lengths(ModelHandler[str, None]):
...     name, version = "lengths", "1"
...     def load_model(self, device): return None
...     def length(self, example): return len(example)
...     def run_batch(self, model, examples): return np.array([[len(e)] for e in examples])
>>> handler = Lengths(batch_size=2, device="cpu")
>>> handler(["ccc", "a", "bb"]).ravel().tolist()  # input order, though run shortest first
[3, 1, 2]
>>> handler.calls, handler.examples_run
(2, 3)
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

ExampleT = TypeVar("ExampleT")
"""What the model takes, one item at a time (a text, an image's bytes)."""
ModelT = TypeVar("ModelT")
"""The loaded model object."""

DEVICES = ("auto", "cpu", "cuda")


class ModelError(Exception):
    """A model cannot be loaded or run where asked; the message is one line for the operator."""


def resolve_device(requested: str) -> str:
    """``cpu`` or ``cuda`` for ``auto|cpu|cuda``: auto takes a GPU when torch sees one.

    >>> resolve_device("cpu")
    'cpu'
    """
    if requested not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise ModelError(
            f"device cuda was asked for, but torch {torch.__version__} sees no CUDA device; "
            "use --device cpu or auto"
        )
    return "cuda" if available else "cpu"


_loaded: dict[tuple[str, str, str], Any] = {}
_loading = threading.Lock()


class ModelHandler(ABC, Generic[ExampleT, ModelT]):
    """Runs one model on batches of examples; subclasses say how to load it and run one batch.

    Keyword-only options:
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
        batch_size: examples per call of the model. Examples are sorted by :meth:`length` first,
            so each batch holds examples of about one length and pads little.

    ``calls`` and ``examples_run`` count this handler's model calls and the examples they took
    (a test counts them to show a cached text is never embedded again).
    """

    #: The model's name and version, as outputs and caches record them.
    name: str
    version: str

    def __init__(self, *, device: str = "auto", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ModelError(f"{type(self).__name__}: batch_size must be at least 1, got {batch_size}")
        self.requested_device = device
        self.batch_size = batch_size
        self.calls = 0
        self.examples_run = 0

    @abstractmethod
    def load_model(self, device: str) -> ModelT:
        """Load the model onto ``device`` (``cpu`` or ``cuda``); called once per process."""

    @abstractmethod
    def length(self, example: ExampleT) -> int:
        """The example's size, for sorting (a text's characters)."""

    @abstractmethod
    def run_batch(self, model: ModelT, examples: Sequence[ExampleT]) -> np.ndarray:
        """The model's outputs for one batch: one row per example, in order."""

    @property
    def device(self) -> str:
        """Where the model runs: ``cpu`` or ``cuda``."""
        return resolve_device(self.requested_device)

    @property
    def model(self) -> ModelT:
        """The loaded model, shared within the process by every handler of the same model and device."""
        key = (type(self).__qualname__, self.version, self.device)
        with _loading:
            if key not in _loaded:
                _loaded[key] = self.load_model(key[2])
            return _loaded[key]  # type: ignore[no-any-return]

    def __call__(self, examples: Sequence[ExampleT]) -> np.ndarray:
        """The model's outputs for ``examples``, one row each, in their order."""
        if not examples:
            return self.run_batch(self.model, [])
        order = np.argsort([self.length(example) for example in examples], kind="stable")
        model = self.model
        parts = []
        for start in range(0, len(order), self.batch_size):
            batch = [examples[i] for i in order[start : start + self.batch_size]]
            parts.append(self.run_batch(model, batch))
            self.calls += 1
            self.examples_run += len(batch)
        outputs = np.concatenate(parts)
        restored = np.empty_like(outputs)
        restored[order] = outputs
        return restored

    def __getstate__(self) -> dict[str, Any]:
        # An engine pickles the handler to its workers: the counts start again there.
        return {**self.__dict__, "calls": 0, "examples_run": 0}
