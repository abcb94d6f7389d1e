"""The moderation model's training data: the Davidson tweets, the hand-written examples, their
seeded train/dev splits, and their MiniLM vectors (embedded once, optionally cached).

``train_moderation.py`` trains on the train parts; ``benchmarks/moderation_peer.py`` scores the
Davidson dev part with :func:`davidson_split`, the one definition of that split.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from models.moderation_fit import HATE, NEITHER, OFFENSIVE
from models.moderation_text import TEXT_CATEGORIES

#: The labelled tweets we are given (beside the checkout, ../shared/data/moderation/).
DEFAULT_DATA = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "moderation" / "davidson_train.csv"
)
SEED = 2017
DEV_SHARE = 0.2
LABELS = {"hate": HATE, "offensive": OFFENSIVE, "neither": NEITHER}


@dataclass(frozen=True)
class Davidson:
    """The labelled tweets: texts, integer labels (0 hate, 1 offensive, 2 neither), file sha256."""

    texts: list[str]
    labels: np.ndarray
    sha256: str


@dataclass(frozen=True)
class Examples:
    """The hand-written texts: group (a category or ``benign``) and whether each is in dev."""

    texts: list[str]
    groups: np.ndarray
    dev: np.ndarray
    sha256: str


def read_davidson(path: Path) -> Davidson:
    """The tweets of ``path`` (columns text,label,...); a one-line error for a bad file."""
    try:
        raw = path.read_bytes()
        rows = list(csv.DictReader(raw.decode("utf-8").splitlines(keepends=True)))
        labels = np.array([LABELS[row["label"]] for row in rows], dtype=np.int64)
        texts = [row["text"] for row in rows]
    except (OSError, UnicodeDecodeError, KeyError) as exc:
        raise SystemExit(f"train_moderation.py: cannot read {path}: {type(exc).__name__}: {exc}") from None
    return Davidson(texts, labels, hashlib.sha256(raw).hexdigest())


def davidson_split(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train and dev: 80/20, stratified by label, seeded; the benchmark uses it too."""
    rows = np.arange(len(labels))
    train, dev = train_test_split(rows, test_size=DEV_SHARE, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(dev)


def read_examples(path: Path, seed: int = SEED) -> Examples:
    """The hand-written examples, each category's list and the benign list split 80/20 (seeded);
    a category's description joins its train part."""
    raw = path.read_bytes()
    data = json.loads(raw)
    lists = {name: data["categories"][name]["examples"] for name in TEXT_CATEGORIES}
    lists["benign"] = data["benign"]
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    groups: list[str] = []
    dev: list[bool] = []
    for name, items in lists.items():
        in_dev = np.zeros(len(items), dtype=bool)
        in_dev[rng.permutation(len(items))[: round(DEV_SHARE * len(items))]] = True
        texts += items
        groups += [name] * len(items)
        dev += in_dev.tolist()
        if name != "benign":
            texts.append(data["categories"][name]["description"])
            groups.append(name)
            dev.append(False)
    return Examples(texts, np.array(groups), np.array(dev), hashlib.sha256(raw).hexdigest())


def embed(texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """MiniLM vectors of ``texts`` (batched, CPU), from ``cache_dir`` when it has them."""
    from models.embedder import TextEmbedder

    embedder = TextEmbedder(device="cpu", batch_size=64)
    key = hashlib.sha256(json.dumps([embedder.version, texts]).encode()).hexdigest()[:20]
    cached = cache_dir / f"minilm-{key}.npy" if cache_dir else None
    if cached is not None and cached.exists():
        return np.load(cached, allow_pickle=False)
    print(f"embedding {len(texts):,} texts with MiniLM ...", flush=True)
    vectors = embedder(texts).astype(np.float32)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors, allow_pickle=False)
    return vectors
