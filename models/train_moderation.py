"""Train the text moderation model and write ``models/moderation/`` (weights.npz, meta.json).

    python models/train_moderation.py [--data PATH] [--out models/moderation]
        [--examples models/moderation_examples.json] [--vectors-cache DIR]

Data: the Davidson et al. (2017) tweets (``davidson_train.csv``, MIT) and the hand-written
examples and benign prompts of ``moderation_examples.json``. Both are split once, seeded: the
tweets 80/20 stratified by label (``train_test_split(..., random_state=SEED)``), each
hand-written list 80/20 by a seeded permutation. Only the train parts are fitted or calibrated
on: calibrators use out-of-fold logits (``FOLDS``-fold, stratified, seeded) of the train part,
then the head and probes are refitted on all of it. The dev parts are scored once, at the end.

MiniLM embeds every text once (batched; ~4 minutes for 20k tweets on 2 cores). With
``--vectors-cache`` the vectors are kept in DIR, keyed by the texts and the model's version.
Two runs give byte-identical artefacts on the same machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

if __package__ in (None, ""):  # run as a script: make the ``models`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.moderation_data import (
    DEFAULT_DATA,
    DEV_SHARE,
    SEED,
    Davidson,
    Examples,
    davidson_split,
    embed,
    read_davidson,
    read_examples,
)
from models.moderation_fit import (
    HATE,
    NEITHER,
    OFFENSIVE,
    HeadSettings,
    ProbeSettings,
    davidson_summary,
    fit_head,
    fit_probes,
    head_calibrators,
    probe_calibrators,
    prompt_metrics,
)
from models.moderation_text import (
    DEFAULT_DIR,
    HEAD_OUTPUTS,
    TEXT_CATEGORIES,
    Calibrator,
    HashedTfidf,
    category_scores,
    head_features,
    weights_digest,
    write_npz,
)

DEFAULT_EXAMPLES = Path(__file__).resolve().parent / "moderation_examples.json"
FOLDS = 4
#: Head calibrators that never fire: the probes' scores alone.
NEVER = (Calibrator(1.0, np.inf), Calibrator(1.0, np.inf))
MODEL_NAME = "aiep-text-moderation"
FORMAT = 1


@dataclass(frozen=True)
class TrainingRows:
    """The train parts, tweets then hand-written: what the head and the probes each learn from."""

    texts: list[str]
    vectors: np.ndarray
    head_labels: np.ndarray  # 0 hate, 1 offensive, 2 neither; -1: not for the head
    head_weights: np.ndarray
    groups: np.ndarray  # a category, "benign" or "neither" for the probes; "" not for them
    is_tweet: np.ndarray
    strata: np.ndarray


def training_rows(
    tweets: Davidson,
    tweet_vectors: np.ndarray,
    examples: Examples,
    example_vectors: np.ndarray,
    train: np.ndarray,
    settings: HeadSettings,
) -> TrainingRows:
    """Tweets of ``train`` and the hand-written train part, labelled for the head and the probes."""
    mine = ~examples.dev
    groups = examples.groups[mine]
    to_head = {"hate": HATE, "offensive": OFFENSIVE, "benign": NEITHER}
    tweet_labels = tweets.labels[train]
    head_labels = np.r_[tweet_labels, [to_head.get(g, -1) for g in groups]]
    tweet_groups = np.where(tweet_labels == NEITHER, "neither", "")
    return TrainingRows(
        texts=[tweets.texts[i] for i in train] + [t for t, m in zip(examples.texts, mine, strict=True) if m],
        vectors=np.vstack([tweet_vectors[train], example_vectors[mine]]),
        head_labels=head_labels,
        head_weights=np.r_[np.ones(len(train)), np.full(len(groups), settings.handwritten_weight)],
        groups=np.r_[tweet_groups, groups],
        is_tweet=np.r_[np.ones(len(train), bool), np.zeros(len(groups), bool)],
        strata=np.r_[[f"tweet:{label}" for label in tweet_labels], [f"mine:{g}" for g in groups]],
    )


def fit_all(
    rows: TrainingRows, x: Any, fit_on: np.ndarray, head: HeadSettings, probes: ProbeSettings
) -> dict[str, np.ndarray]:
    """Head and probe weights fitted on the rows ``fit_on`` (a mask); ``x``: the head's features."""
    for_head = fit_on & (rows.head_labels >= 0)
    head_coef, head_intercept = fit_head(
        x[for_head], rows.head_labels[for_head], rows.head_weights[for_head], head
    )
    for_probes = fit_on & (rows.groups != "")
    probe_coef, probe_intercept = fit_probes(rows.vectors[for_probes], rows.groups[for_probes], probes)
    return {
        "head_coef": head_coef,
        "head_intercept": head_intercept,
        "probe_coef": probe_coef,
        "probe_intercept": probe_intercept,
    }


def logits_of(weights: dict[str, np.ndarray], x: Any, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head (n, 2) and probe (n, 7) logits of rows with head features ``x`` and MiniLM ``vectors``."""
    head = np.asarray(x @ weights["head_coef"].T) + weights["head_intercept"]
    return head, vectors.astype(np.float64) @ weights["probe_coef"].T + weights["probe_intercept"]


def out_of_fold(
    rows: TrainingRows, x: Any, head: HeadSettings, probes: ProbeSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every training row from weights fitted without its fold."""
    head_logits = np.zeros((len(rows.texts), len(HEAD_OUTPUTS)))
    probe_logits = np.zeros((len(rows.texts), len(TEXT_CATEGORIES)))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    for k, (rest, fold) in enumerate(folds.split(rows.strata, rows.strata), start=1):
        print(f"fold {k}/{FOLDS}: fitting on {len(rest):,} rows ...", flush=True)
        fit_on = np.zeros(len(rows.texts), dtype=bool)
        fit_on[rest] = True
        weights = fit_all(rows, x, fit_on, head, probes)
        head_logits[fold], probe_logits[fold] = logits_of(weights, x[fold], rows.vectors[fold])
    return head_logits, probe_logits


@dataclass(frozen=True)
class Calibration:
    """The calibrators, and the out-of-fold metrics of the whole model they give."""

    head: tuple[Calibrator, ...]
    probes: tuple[Calibrator, ...]
    validation: dict[str, Any]


def calibrate(
    rows: TrainingRows, head_logits: np.ndarray, probe_logits: np.ndarray, probes: ProbeSettings
) -> Calibration:
    """Calibrators from out-of-fold logits; their out-of-fold metrics (tweets; hand-written)."""
    tweets = rows.is_tweet
    for_probes = rows.groups != ""
    probe_cal = probe_calibrators(probe_logits[for_probes], rows.groups[for_probes], probes)
    probe_flags = category_scores(np.zeros_like(head_logits), probe_logits, NEVER, probe_cal) >= 0.5
    hate = TEXT_CATEGORIES.index("hate")
    head_cal = head_calibrators(
        head_logits[tweets],
        rows.head_labels[tweets],
        probe_flags[tweets, hate],
        probe_flags[tweets].any(axis=1),
    )
    scores = category_scores(head_logits, probe_logits, head_cal, probe_cal)
    head_scores = np.column_stack([cal.apply(head_logits[:, j]) for j, cal in enumerate(head_cal)])
    validation = {
        **davidson_summary(scores[tweets], head_scores[tweets], rows.head_labels[tweets]),
        "handwritten": prompt_metrics(scores[~tweets], rows.groups[~tweets].tolist()),
        "handwritten_overall_without_head": prompt_metrics(
            category_scores(head_logits, probe_logits, NEVER, probe_cal)[~tweets],
            rows.groups[~tweets].tolist(),
        )["overall"],
    }
    return Calibration(tuple(head_cal), tuple(probe_cal), validation)


def idf_of(counts: Any) -> np.ndarray:
    """Smoothed IDF per hashed column, ``ln((1 + n) / (1 + df)) + 1``, as scikit-learn's."""
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    return (np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)


def write_artefacts(
    out: Path, features: HashedTfidf, weights: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """``weights.npz`` (no pickle, fixed zip stamps) and ``meta.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"idf": features.idf.astype(np.float32)}
    arrays |= {name: value.astype(np.float32) for name, value in weights.items()}
    write_npz(out / "weights.npz", arrays)
    write_meta(out, meta)


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """``meta.json``, keys in a fixed order, one trailing newline."""
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def dev_metrics(
    out: Path,
    tweets: Davidson,
    tweet_vectors: np.ndarray,
    dev: np.ndarray,
    examples: Examples,
    example_vectors: np.ndarray,
) -> dict[str, Any]:
    """Scores of the dev parts by the model as loaded from ``out``, as the pipeline would run it."""
    from models.moderation_text import TextModerator

    model = TextModerator.load(out)
    texts = [tweets.texts[i] for i in dev]
    scores = model.score(texts, tweet_vectors[dev])
    head, _ = model.raw_logits(texts, tweet_vectors[dev])
    head_scores = np.column_stack([cal.apply(head[:, j]) for j, cal in enumerate(model.head_calibrators)])
    mine = examples.dev
    example_texts = [t for t, m in zip(examples.texts, mine, strict=True) if m]
    return {
        **davidson_summary(scores, head_scores, tweets.labels[dev]),
        "handwritten": prompt_metrics(
            model.score(example_texts, example_vectors[mine]), examples.groups[mine].tolist()
        ),
        "rows": {"davidson": len(dev), "handwritten": int(mine.sum())},
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Read, embed, cross-fit, calibrate, refit, write; the metrics, as ``meta.json`` records them."""
    head, probes = HeadSettings(), ProbeSettings()
    tweets, examples = read_davidson(args.data), read_examples(args.examples)
    train_rows, dev = davidson_split(tweets.labels)
    tweet_vectors = embed(tweets.texts, args.vectors_cache)
    example_vectors = embed(examples.texts, args.vectors_cache)
    rows = training_rows(tweets, tweet_vectors, examples, example_vectors, train_rows, head)
    counts = HashedTfidf().counts(rows.texts)
    features = HashedTfidf(idf=idf_of(counts))
    x = head_features(features, rows.texts, rows.vectors, head.vector_weight)
    calibration = calibrate(rows, *out_of_fold(rows, x, head, probes), probes)
    print(f"final fit on all {len(rows.texts):,} training rows ...", flush=True)
    weights = fit_all(rows, x, np.ones(len(rows.texts), dtype=bool), head, probes)
    meta = metadata(args, features, head, probes, calibration, tweets, examples, rows)
    write_artefacts(args.out, features, weights, meta)
    meta["metrics"]["dev"] = dev_metrics(args.out, tweets, tweet_vectors, dev, examples, example_vectors)
    write_meta(args.out, meta)
    return meta


def metadata(
    args: argparse.Namespace,
    features: HashedTfidf,
    head: HeadSettings,
    probes: ProbeSettings,
    calibration: Calibration,
    tweets: Davidson,
    examples: Examples,
    rows: TrainingRows,
) -> dict[str, Any]:
    """``meta.json``: what the loader needs, then how the model was made and how it scored."""
    from models.embedder import TextEmbedder

    return {
        "name": MODEL_NAME,
        "format": FORMAT,
        "categories": list(TEXT_CATEGORIES),
        "features": {
            **features.settings(),
            "vector_weight": head.vector_weight,
            "embedder": TextEmbedder.version,
        },
        "head": {
            "outputs": list(HEAD_OUTPUTS),
            "calibrators": {n: asdict(c) for n, c in zip(HEAD_OUTPUTS, calibration.head, strict=True)},
            "settings": asdict(head),
        },
        "probes": {
            "calibrators": {n: asdict(c) for n, c in zip(TEXT_CATEGORIES, calibration.probes, strict=True)},
            "settings": asdict(probes),
        },
        "training": {
            "davidson": {"file": args.data.name, "sha256": tweets.sha256, "rows": len(tweets.texts)},
            "examples": {"file": args.examples.name, "sha256": examples.sha256, "rows": len(examples.texts)},
            "seed": SEED,
            "dev_share": DEV_SHARE,
            "folds": FOLDS,
            "training_rows": {"tweets": int(rows.is_tweet.sum()), "handwritten": int((~rows.is_tweet).sum())},
        },
        "metrics": {"validation_out_of_fold": calibration.validation},
    }


def print_metrics(metrics: dict[str, Any]) -> None:
    """The validation (out-of-fold) and dev figures, one table each."""
    for part in ("validation_out_of_fold", "dev"):
        got = metrics[part]
        print(f"\n{part}:")
        print("  davidson (overall = max over categories, 0.50):", json.dumps(got["davidson"]))
        print("  davidson, head only:", json.dumps(got["davidson_head_only"]))
        fire = json.dumps(got["davidson_neither_fire_rate"])
        print("  davidson neither tweets reaching 0.50, per category:", fire)
        print(f"  hand-written prompts:  {'category':<14}{'n':>5}{'AUC':>8}{'recall':>8}{'benign fire':>13}")
        for name, row in got["handwritten"].items():
            print(
                f"  {'':22}{name:<14}{row['n']:>5}{row['auc_vs_benign']:>8.3f}{row['recall_at_050']:>8.3f}"
                f"{row['benign_fire_at_050']:>13.3f}"
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_moderation.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="PATH",
        help=f"the Davidson CSV (default: {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DIR,
        metavar="DIR",
        help="where weights.npz and meta.json go (default: models/moderation)",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=DEFAULT_EXAMPLES,
        metavar="PATH",
        help="the hand-written examples (default: models/moderation_examples.json)",
    )
    parser.add_argument(
        "--vectors-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep MiniLM vectors here between runs (default: embed every run)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train, write the artefacts, print the metrics."""
    args = _parser().parse_args(argv)
    meta = train(args)
    print_metrics(meta["metrics"])
    digest = weights_digest(args.out)
    print(f"\nwrote {args.out}/weights.npz and meta.json; version {FORMAT}+{digest[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
