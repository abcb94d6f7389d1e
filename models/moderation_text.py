"""The text moderation model: a score in [0, 1] per category for each text, from its MiniLM vector.

Two kinds of evidence, each mapped by its own calibrator so that 0.50 is the operating point
("flagged") of every category:

* a **head** trained on the Davidson et al. (2017) tweets: logistic regressions over hashed
  TF-IDF word and character n-grams of the text concatenated with its MiniLM vector. Its
  "toxic" output (hate or offensive vs neither) feeds ``offensive``; its "hate" output feeds
  ``hate``.
* a **probe** per category: a logistic regression on the MiniLM vector alone, trained on the
  hand-written examples of ``models/moderation_examples.json`` against benign AI prompts and
  Davidson "neither" tweets. Probes carry every category, including prompt-style hate and abuse
  that tweets do not cover.

A category's score is the larger of its calibrated sources. The caller's overall score is the
maximum over categories. Weights are plain arrays in ``weights.npz`` (read with
``allow_pickle=False``), settings and calibrators in ``meta.json``; ``train_moderation.py``
writes both.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.handler import ModelError

TEXT_CATEGORIES: tuple[str, ...] = (
    "hate",
    "harassment",
    "offensive",
    "sexual",
    "sexual_minors",
    "violence",
    "self_harm",
)
#: The committed artefacts, next to this file.
DEFAULT_DIR = Path(__file__).resolve().parent / "moderation"
WEIGHT_FILES = ("weights.npz", "meta.json")
#: The head's outputs, in the order of its weight rows.
HEAD_OUTPUTS = ("toxic", "hate")
#: The category each head output raises.
HEAD_FEEDS = {"toxic": "offensive", "hate": "hate"}
#: The three-class view of :meth:`TextModerator.classes`, Davidson's labels.
DAVIDSON_CLASSES = ("hate", "offensive", "neither")
VECTOR_DIMENSIONS = 384

_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")


class ModerationModelError(ModelError):
    """The moderation model's files are missing or unreadable; the message names the file."""


def normalise_texts(texts: Sequence[str]) -> list[str]:
    """Texts as the n-gram features see them: HTML entities decoded, links and @mentions generic.

    Tweets carry ``&amp;``, ``@handles`` and links that say nothing about the content; a name
    learnt from the training tweets must not decide a prompt's score.

    >>> normalise_texts(["RT @bob: fish &amp; chips http://t.co/x"])
    ['RT @user: fish & chips http']
    """
    return [_MENTION.sub("@user", _URL.sub("http", html.unescape(text))) for text in texts]


@dataclass(frozen=True)
class HashedTfidf:
    """Stateless hashed n-gram counts (no vocabulary to ship) weighted by the training IDF.

    ``transform`` gives sublinear TF (1 + log count) × IDF rows, L2-normalised: word n-grams in
    the first ``word_features`` columns, ``char_wb`` n-grams in the next ``char_features``.
    """

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    word_features: int = 2**18
    char_features: int = 2**18
    idf: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32), compare=False, repr=False)

    @property
    def n_features(self) -> int:
        """Columns of a transformed row."""
        return self.word_features + self.char_features

    def counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Raw hashed n-gram counts, one row per text."""
        from sklearn.feature_extraction.text import HashingVectorizer

        if not texts:  # HashingVectorizer cannot transform an empty batch
            return sp.csr_matrix((0, self.n_features), dtype=np.float64)
        normalised = normalise_texts(texts)
        common: dict[str, Any] = {"alternate_sign": False, "norm": None, "lowercase": True}
        words = HashingVectorizer(
            analyzer="word",
            ngram_range=self.word_ngrams,
            n_features=self.word_features,
            token_pattern=r"(?u)\b\w+\b|[!?]",
            **common,
        ).transform(normalised)
        chars = HashingVectorizer(
            analyzer="char_wb", ngram_range=self.char_ngrams, n_features=self.char_features, **common
        ).transform(normalised)
        return sp.hstack([words, chars], format="csr", dtype=np.float64)

    def weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """TF-IDF rows from :meth:`counts`, each part (words, characters) L2-normalised on its own."""
        weighted = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        weighted.data = (1.0 + np.log(weighted.data)) * self.idf.astype(np.float64)[weighted.indices]
        rows = np.repeat(np.arange(weighted.shape[0]), np.diff(weighted.indptr))
        is_word = weighted.indices < self.word_features
        squares = weighted.data**2
        norms = np.sqrt(
            np.vstack(
                [
                    np.bincount(rows, squares * ~is_word, minlength=weighted.shape[0]),
                    np.bincount(rows, squares * is_word, minlength=weighted.shape[0]),
                ]
            )
        )
        weighted.data /= np.maximum(norms[is_word.astype(np.int64), rows], 1e-12)
        return weighted

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """TF-IDF rows for ``texts``."""
        return self.weigh(self.counts(texts))

    def settings(self) -> dict[str, Any]:
        """The settings ``meta.json`` records (the IDF goes to ``weights.npz``)."""
        return {
            "word_ngrams": list(self.word_ngrams),
            "char_ngrams": list(self.char_ngrams),
            "word_features": self.word_features,
            "char_features": self.char_features,
            "tf": "1 + log(count)",
            "token_pattern": r"(?u)\b\w+\b|[!?]",
        }


@dataclass(frozen=True)
class Calibrator:
    """Maps a raw logit to [0, 1]: ``sigmoid(slope × (z − threshold))``, so ``threshold`` → 0.50.

    >>> Calibrator(slope=2.0, threshold=1.0).apply(np.array([1.0, 1.0 + np.log(3) / 2])).round(2).tolist()
    [0.5, 0.75]
    """

    slope: float
    threshold: float

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated scores for raw logits, same shape."""
        z = np.clip(self.slope * (logits - self.threshold), -50.0, 50.0)
        return 1.0 / (1.0 + np.exp(-z))


def head_features(features: HashedTfidf, texts: Sequence[str], vectors: np.ndarray, weight: float) -> Any:
    """The head's input rows: TF-IDF n-grams, then the MiniLM vector times ``weight``."""
    return sp.hstack([features.transform(texts), sp.csr_matrix(vectors * weight)], format="csr")


@dataclass(frozen=True)
class TextModerator:
    """The loaded text moderation model; :meth:`score` gives (n, 7) category scores in [0, 1].

    Build it with :meth:`load`. Weights are held as float64 (about 8 MB); scoring a batch is one
    hashing transform, one sparse product (head) and one dense product (probes).
    """

    name: str
    version: str
    features: HashedTfidf = field(repr=False)
    vector_weight: float = field(repr=False)
    head_coef: np.ndarray = field(repr=False, compare=False)
    head_intercept: np.ndarray = field(repr=False, compare=False)
    probe_coef: np.ndarray = field(repr=False, compare=False)
    probe_intercept: np.ndarray = field(repr=False, compare=False)
    head_calibrators: tuple[Calibrator, ...] = field(repr=False)
    probe_calibrators: tuple[Calibrator, ...] = field(repr=False)

    @classmethod
    def load(cls, directory: Path = DEFAULT_DIR) -> TextModerator:
        """Read ``weights.npz`` and ``meta.json`` from ``directory``: no pickle, no network."""
        directory = Path(directory)
        meta = read_meta(directory / "meta.json")
        arrays = read_arrays(directory / "weights.npz")
        try:
            return cls._from_files(meta, arrays, weights_digest(directory))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModerationModelError(
                f"the moderation model's {directory / 'meta.json'} does not fit its weights.npz: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None

    @classmethod
    def _from_files(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], digest: str) -> TextModerator:
        settings = meta["features"]
        features = HashedTfidf(
            word_ngrams=tuple(settings["word_ngrams"]),  # type: ignore[arg-type]
            char_ngrams=tuple(settings["char_ngrams"]),  # type: ignore[arg-type]
            word_features=int(settings["word_features"]),
            char_features=int(settings["char_features"]),
            idf=arrays["idf"],
        )
        if tuple(meta["categories"]) != TEXT_CATEGORIES:
            raise ValueError(f"categories {meta['categories']} are not {list(TEXT_CATEGORIES)}")
        expected = {
            "idf": (features.n_features,),
            "head_coef": (len(HEAD_OUTPUTS), features.n_features + VECTOR_DIMENSIONS),
            "head_intercept": (len(HEAD_OUTPUTS),),
            "probe_coef": (len(TEXT_CATEGORIES), VECTOR_DIMENSIONS),
            "probe_intercept": (len(TEXT_CATEGORIES),),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(f"{name} has shape {arrays[name].shape}, expected {shape}")
        head_cal, probe_cal = meta["head"]["calibrators"], meta["probes"]["calibrators"]
        return cls(
            name=str(meta["name"]),
            version=f"{meta['format']}+{digest[:12]}",
            features=features,
            vector_weight=float(settings["vector_weight"]),
            head_coef=arrays["head_coef"].astype(np.float64),
            head_intercept=arrays["head_intercept"].astype(np.float64),
            probe_coef=arrays["probe_coef"].astype(np.float64),
            probe_intercept=arrays["probe_intercept"].astype(np.float64),
            head_calibrators=tuple(Calibrator(**head_cal[name]) for name in HEAD_OUTPUTS),
            probe_calibrators=tuple(Calibrator(**probe_cal[name]) for name in TEXT_CATEGORIES),
        )

    def raw_logits(self, texts: Sequence[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated logits: head (n, 2: toxic, hate) and probes (n, 7, in ``TEXT_CATEGORIES``)."""
        vectors = _checked_vectors(texts, vectors)
        rows = head_features(self.features, texts, vectors, self.vector_weight)
        head = np.asarray(rows @ self.head_coef.T) + self.head_intercept
        probes = vectors.astype(np.float64) @ self.probe_coef.T + self.probe_intercept
        return head, probes

    def score(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """Category scores, (n, len(TEXT_CATEGORIES)) float32 in [0, 1], for texts and their vectors.

        ``vectors`` are the L2-normalised MiniLM vectors of ``texts``, in the same order. A text
        that is empty or only whitespace scores 0 everywhere: it says nothing to moderate (the
        model's intercepts alone would give it a base rate).
        """
        head, probes = self.raw_logits(texts, vectors)
        scores = category_scores(head, probes, self.head_calibrators, self.probe_calibrators)
        scores[[not text.strip() for text in texts]] = 0.0
        return scores

    def classes(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """Davidson's three-class view, (n,) int8: 0 hate, 1 offensive, 2 neither.

        Hate where the ``hate`` score reaches 0.50; else offensive where the overall score (the
        maximum over categories) does; else neither. So a text is "neither" exactly when the
        pipeline approves it at the default threshold.
        """
        return classes_of(self.score(texts, vectors))


def category_scores(
    head_logits: np.ndarray,
    probe_logits: np.ndarray,
    head_calibrators: Sequence[Calibrator],
    probe_calibrators: Sequence[Calibrator],
) -> np.ndarray:
    """Category scores from raw logits: each probe calibrated, then ``offensive`` raised to the
    calibrated head "toxic" and ``hate`` to the calibrated head "hate" where those are higher."""
    scores = np.zeros((len(head_logits), len(TEXT_CATEGORIES)))
    for j, calibrator in enumerate(probe_calibrators):
        scores[:, j] = calibrator.apply(probe_logits[:, j])
    for j, output in enumerate(HEAD_OUTPUTS):
        column = TEXT_CATEGORIES.index(HEAD_FEEDS[output])
        scores[:, column] = np.maximum(scores[:, column], head_calibrators[j].apply(head_logits[:, j]))
    return scores.astype(np.float32)


def classes_of(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The three-class view of category scores (see :meth:`TextModerator.classes`).

    >>> classes_of(np.array([[0.9, 0, 0.9, 0, 0, 0, 0], [0, 0, 0, 0.6, 0, 0, 0], [0.1] * 7])).tolist()
    [0, 1, 2]
    """
    hate = scores[:, TEXT_CATEGORIES.index("hate")] >= threshold
    flagged = scores.max(axis=1, initial=0.0) >= threshold
    return np.where(hate, 0, np.where(flagged, 1, 2)).astype(np.int8)


def _checked_vectors(texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape != (len(texts), VECTOR_DIMENSIONS):
        raise ValueError(
            f"TextModerator.score: vectors must have shape ({len(texts)}, {VECTOR_DIMENSIONS}) for "
            f"{len(texts)} texts; got {vectors.shape}"
        )
    return vectors


def weights_digest(directory: Path) -> str:
    """sha256 over the weight files, in :data:`WEIGHT_FILES` order (the model's version)."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
    return digest.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` that is byte-identical for identical arrays.

    ``np.savez_compressed`` stamps each member with the current time; this fixes the stamp.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of ``weights.npz``, read without pickle, or :class:`ModerationModelError`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModerationModelError(f"cannot read the moderation model's {path}: {_first_line(exc)}") from None


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` as a dict, or :class:`ModerationModelError` naming the file."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModerationModelError(f"cannot read the moderation model's {path}: {_first_line(exc)}") from None
    if not isinstance(meta, dict):
        raise ModerationModelError(f"cannot read the moderation model's {path}: not a JSON object")
    return meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
