"""Topics as labelled unit vectors, the vector arithmetic that ranks text against them, and the
topics a user declares.

An embedding stage ranks each prompt's vector against a :class:`TopicIndex`; the personalization
stage ranks each window's interest vector against the same index with the same
:meth:`TopicIndex.top`. Cosine similarity everywhere: vectors are compared by direction only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def unit_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row scaled to length 1 (float64), and which rows could be: finite and not zero.

    Rows that cannot be normalised (any NaN or infinity, or all zeros) come back as NaN.

    >>> unit, valid = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, np.nan]]))
    >>> unit[0].tolist(), valid.tolist()
    ([0.6, 0.8], [True, False, False])
    """
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"expected a matrix of row vectors, got an array of shape {rows.shape}")
    # A row's norm is finite only when all of its values are: one pass finds both.
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    valid = np.isfinite(norms) & (norms > 0)
    unit: np.ndarray = rows / np.where(valid, norms, np.nan)[:, None]
    return unit, valid


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between row ``i`` of ``a`` and row ``i`` of ``b``; NaN where either row is
    NaN or zero. Clipped to [-1, 1] so that rounding never makes ``1 - cosine`` negative.

    >>> row_cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [0.0, 0.0]])).tolist()
    [0.0, nan]
    """
    unit_a, _ = unit_rows(a)
    unit_b, _ = unit_rows(b)
    cosines: np.ndarray = np.clip(np.einsum("ij,ij->i", unit_a, unit_b), -1.0, 1.0)
    return cosines


@dataclass(frozen=True, eq=False)
class TopicIndex:
    """Topic labels and one vector per label, the rows of ``vectors`` in the order of ``labels``.

    The vectors are stored normalised (float32), whatever length they came with.

    >>> index = TopicIndex(("cooking", "travel", "music"), np.eye(3, dtype=np.float32))
    >>> labels, scores = index.top(np.array([[0.1, 0.9, 0.3], [0.0, 0.0, 0.0]]), k=2)
    >>> labels
    [['travel', 'music'], None]
    >>> [round(s, 3) for s in scores[0]]
    [0.943, 0.314]
    """

    labels: tuple[str, ...]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.labels):
            raise ValueError(
                f"TopicIndex: expected one vector per label ({len(self.labels)} labels), "
                f"got vectors of shape {vectors.shape}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"TopicIndex: a label appears twice in {self.labels}")
        unit, valid = unit_rows(vectors)
        if not valid.all():
            bad = [label for label, ok in zip(self.labels, valid, strict=True) if not ok]
            raise ValueError(f"TopicIndex: the vectors of {bad} are zero or not finite")
        object.__setattr__(self, "vectors", unit.astype(np.float32))

    @property
    def dim(self) -> int:
        """The length of every topic vector."""
        return int(self.vectors.shape[1])

    def top(self, vectors: np.ndarray, k: int = 3) -> tuple[list[list[str] | None], list[list[float] | None]]:
        """The ``k`` topics nearest each row of ``vectors`` by cosine, best first, with the cosines.

        One matrix product for the whole batch. A row that has no direction (NaN or all zeros)
        gets ``None`` in both lists. Equal scores keep the order of ``labels``; with fewer than
        ``k`` topics, every topic is ranked.

        Args:
            vectors: ``(rows, dim)`` vectors of any length (they are normalised here).
            k: how many topics per row, at least 1.

        Returns:
            ``(labels, cosines)``: for each row, its top labels and their cosines, or ``None``.
        """
        if k < 1:
            raise ValueError(f"TopicIndex.top: k must be at least 1, got {k}")
        unit, valid = unit_rows(vectors)
        if unit.shape[1] != self.dim:
            raise ValueError(f"TopicIndex.top: vectors have {unit.shape[1]} dimensions, topics {self.dim}")
        scores = unit[valid] @ self.vectors.T.astype(np.float64)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, best, axis=1).tolist()
        names = np.asarray(self.labels, dtype=object)[best].tolist()
        labels: list[list[str] | None] = [None] * len(valid)
        cosines: list[list[float] | None] = [None] * len(valid)
        for slot, row_names, row_scores in zip(
            np.flatnonzero(valid).tolist(), names, best_scores, strict=True
        ):
            labels[slot], cosines[slot] = row_names, row_scores
        return labels, cosines


def prefs_topics(prefs: Mapping[str, Any] | None) -> list[str]:
    """The topics a user declared in ``users.personalization_prefs``, in their order, once each.

    The expected shape is ``{"topics": ["cooking", "travel"]}``: a JSON object whose ``topics``
    is a list of non-empty strings (other keys are ignored). Anything else declares no topics.

    >>> prefs_topics({"topics": ["cooking", "travel", "cooking"], "lang": "en"})
    ['cooking', 'travel']
    >>> prefs_topics({"topics": "cooking"}), prefs_topics({"topics": ["cooking", 3]}), prefs_topics(None)
    ([], [], [])
    """
    topics = prefs.get("topics") if isinstance(prefs, Mapping) else None
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        return []
    return list(dict.fromkeys(topics))


def prefs_vector(topic_vectors: np.ndarray) -> np.ndarray | None:
    """The preferences vector: the normalised mean (float32) of the declared topics' vectors,
    ``(topics, dim)``; ``None`` when there are none (or they cancel out).

    >>> [round(x, 4) for x in prefs_vector(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()]
    [0.7071, 0.7071]
    >>> prefs_vector(np.zeros((0, 2))) is None
    True
    """
    vectors = np.asarray(topic_vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        return None
    unit, valid = unit_rows(vectors.sum(axis=0, keepdims=True))
    return unit[0].astype(np.float32) if valid[0] else None
