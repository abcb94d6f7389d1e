"""The ``generate`` capability: realistic synthetic multimodal load, deterministic for a seed.

:func:`generate_events` writes a JSONL file of AI-generation events the way production sends
them: many users of three tiers with skewed activity and rate-limit bursts, every priced model
plus an unpriced one, real (often offensive) text, images, out-of-order times, duplicates and
bad lines of every kind. Beside the file it writes ``<file>.manifest.json`` saying what the
pipeline must make of it, so tests and benchmarks can check the pipeline's counts exactly:

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     report = generate_events(2000, Path(tmp) / "events.jsonl", seed=7)
>>> report.lines == report.valid_unique + report.exact_duplicates \\
...     + report.conflicting_duplicates + sum(report.bad_by_reason.values())
True

The same arguments give byte-identical files: every random choice comes from one
``random.Random(seed)``, no set is iterated, and times count from a fixed base date.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from loadgen.bad_records import BadLines
from loadgen.events import EventFactory, model_catalogue
from loadgen.images import IMAGES_DIR, ImagePool
from loadgen.load import LoadPlan, Population, user_count
from loadgen.text import Corpus
from schemas import pricing_rows, tier_table

#: Lines are joined and written this many at a time (memory stays flat whatever ``n`` is).
WRITE_CHUNK_LINES = 4096
#: The most lines one file may have: about 500 GB of JSONL and six hours. The users (one per
#: 200 lines, see :func:`~loadgen.load.user_count`) are held in memory, ~900 MB at this size.
MAX_EVENTS = 10**9
#: Seeds the manifest can record: orjson writes integers of 64 bits, signed or unsigned.
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class GenerateReport:
    """What a generated file holds, and so what the pipeline must make of it."""

    path: Path  # the JSONL written
    lines: int  # lines written in total
    valid_unique: int  # distinct valid events (what the pipeline should process)
    exact_duplicates: int  # extra identical copies (what the pipeline should collapse)
    conflicting_duplicates: int  # same event_id, different payload (conflicting_duplicate)
    bad_by_reason: dict[str, int]  # bad lines by the reason code the pipeline must give them
    images_written: int  # PNG files written under <path.parent>/images/


class ArgumentError(ValueError):
    """An argument of :func:`generate_events` that it cannot honour, found before writing.

    ``names`` are the parameters at fault (two for a combination); ``problem`` says what was
    expected and what came, without naming them, so that a command line can name its own flags.
    """

    def __init__(self, names: tuple[str, ...], problem: str) -> None:
        super().__init__(f"generate_events: {' and '.join(names)}: {problem}")
        self.names = names
        self.problem = problem


class DuplicatePool:
    """Valid events that may still be copied: recent ones, and a reservoir of older ones.

    Copies land soon after their original (``recent``) or, a quarter of the time, far after
    (``older``, a uniform reservoir sample of everything evicted from ``recent``). An event
    leaves the pool when copied, so no event is copied twice and no copy is ever copied.
    """

    def __init__(self, rng: random.Random, recent_size: int = 2000, older_size: int = 500) -> None:
        self._rng = rng
        self._recent: list[dict[str, Any]] = []
        self._older: list[dict[str, Any]] = []
        self._recent_size, self._older_size = recent_size, older_size
        self._evicted = 0

    def offer(self, event: dict[str, Any]) -> None:
        """Make ``event`` (a fresh original) available for copying."""
        if len(self._recent) < self._recent_size:
            self._recent.append(event)
            return
        slot = self._rng.randrange(self._recent_size)
        self._recent[slot], evicted = event, self._recent[slot]
        self._evicted += 1
        if len(self._older) < self._older_size:
            self._older.append(evicted)
        else:
            keep = self._rng.randrange(self._evicted)
            if keep < self._older_size:
                self._older[keep] = evicted

    def take(self) -> dict[str, Any] | None:
        """Remove and return an original to copy, or ``None`` while the pool is empty."""
        pool = self._older if self._older and self._rng.random() < 0.25 else self._recent
        if not pool:
            return None
        slot = self._rng.randrange(len(pool))
        pool[slot], pool[-1] = pool[-1], pool[slot]
        return pool.pop()


def exact_copy(rng: random.Random, event: dict[str, Any]) -> bytes:
    """The same JSON object in other bytes: keys reordered, spaced, or ASCII-escaped.

    >>> orjson.loads(exact_copy(random.Random(0), {"a": "é", "b": [1]})) == {"a": "é", "b": [1]}
    True
    """
    form = rng.randrange(4)
    if form == 0:
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    if form == 1:
        return orjson.dumps(dict(reversed(event.items())))
    return json.dumps(event, ensure_ascii=form == 2).encode("utf-8")


def conflicting_copy(rng: random.Random, event: dict[str, Any]) -> bytes:
    """Same event_id, other payload: a retried request that billed different token counts."""
    usage = dict(event.get("usage", {}))
    key = "output_tokens" if "output_tokens" in usage else "input_tokens"
    if event["operation_type"] == "image_generation":
        key = "images"
    usage[key] = usage.get(key, 0) + rng.randint(1, 50)
    return orjson.dumps({**event, "usage": usage})


@contextlib.contextmanager
def _jsonl_sink(out: Path) -> Iterator[io.BufferedIOBase]:
    """A binary file for ``out``; gzip (with no timestamp or name, for determinism) for .gz."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw:
        if out.suffix != ".gz":
            yield raw
            return
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            yield gz


class _Generator:
    """One generation run: its random stream, its parts, and its tallies."""

    def __init__(self, n: int, out: Path, seed: int, images: bool) -> None:
        self.rng = random.Random(seed)
        tiers = tier_table()
        population = Population.draw(self.rng, user_count(n))
        self.plan = LoadPlan(self.rng, population, n, tiers["quotas"], tiers["window_seconds"])
        pool = ImagePool.draw(seed) if images else None
        self.images_written = pool.write(out.parent) if pool else 0
        self.factory = EventFactory(
            self.rng, population, model_catalogue(pricing_rows()), Corpus.load(), pool
        )
        self.bad = BadLines(images=images)
        self.duplicates = DuplicatePool(self.rng)
        self.valid_unique = self.exact = self.conflicting = 0

    def line(self, line_no: int, dup_rate: float, bad_rate: float) -> bytes:
        """The next line: a bad one, a copy of an earlier event, or a fresh valid event."""
        roll = self.rng.random()
        if roll < bad_rate:
            user, ms = self.plan.background_slot(line_no)
            return self.bad.make(self.factory.event(user, ms), self.rng)[1]
        if roll < bad_rate + dup_rate:
            original = self.duplicates.take()
            if original is not None:
                return self._copy(original)
        event = self.factory.event(*self.plan.next_slot(line_no))
        self.duplicates.offer(event)
        self.valid_unique += 1
        return orjson.dumps(event)

    def _copy(self, original: dict[str, Any]) -> bytes:
        if self.rng.random() < 0.75:
            self.exact += 1
            return exact_copy(self.rng, original)
        self.conflicting += 1
        return conflicting_copy(self.rng, original)


def generate_events(
    n: int,
    out: Path,
    *,
    seed: int = 0,
    dup_rate: float = 0.02,
    bad_rate: float = 0.01,
    images: bool = False,
) -> GenerateReport:
    """Write ``n`` lines of synthetic events to ``out`` and a manifest beside it.

    Args:
        n: lines to write (valid events, duplicates and bad lines together).
        out: the JSONL file; gzip-compressed when its name ends in ``.gz``.
        seed: the same seed (with the same other arguments) gives byte-identical files.
        dup_rate: share of lines that copy an earlier valid event: 3/4 exact copies in other
            bytes, 1/4 conflicting (same event_id, other token counts).
        bad_rate: share of lines that break the contract, cycling through every reason code.
        images: write a pool of PNGs to ``out.parent/images/`` and give image events an
            ``output.image`` (a relative path, or inline base64); adds the path-image reasons.

    Returns:
        The counts, also written to ``<out>.manifest.json``.

    Raises:
        ArgumentError: before anything is written, for arguments it cannot honour
            (see :func:`check_arguments`).
    """
    out = Path(out)
    check_arguments(n, out, seed=seed, dup_rate=dup_rate, bad_rate=bad_rate, images=images)
    run = _Generator(n, out, seed, images)
    with _jsonl_sink(out) as sink:
        chunk: list[bytes] = []
        for line_no in range(n):
            chunk.append(run.line(line_no, dup_rate, bad_rate))
            if len(chunk) == WRITE_CHUNK_LINES:
                sink.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            sink.write(b"\n".join(chunk) + b"\n")
    report = GenerateReport(
        path=out,
        lines=n,
        valid_unique=run.valid_unique,
        exact_duplicates=run.exact,
        conflicting_duplicates=run.conflicting,
        bad_by_reason=run.bad.counts(),
        images_written=run.images_written,
    )
    arguments = {"n": n, "seed": seed, "dup_rate": dup_rate, "bad_rate": bad_rate, "images": images}
    _write_manifest(report, arguments)
    return report


def manifest_path(out: Path) -> Path:
    """Where :func:`generate_events` writes the manifest of ``out``.

    >>> manifest_path(Path("/tmp/load.jsonl.gz"))
    PosixPath('/tmp/load.jsonl.gz.manifest.json')
    """
    return out.with_name(out.name + ".manifest.json")


def _write_manifest(report: GenerateReport, arguments: dict[str, Any]) -> None:
    content = {**asdict(report), "path": str(report.path), "arguments": arguments}
    manifest_path(report.path).write_bytes(orjson.dumps(content, option=orjson.OPT_INDENT_2) + b"\n")


def check_arguments(n: int, out: Path, *, seed: int, dup_rate: float, bad_rate: float, images: bool) -> None:
    """Raise :class:`ArgumentError` unless :func:`generate_events` can honour these arguments.

    It checks what can be known before writing: counts, rates and seed in range, and an ``out``
    whose file, manifest and image folder are not taken by something else. A missing folder is
    fine (it is created); the file system may still refuse a write (``OSError``).

    >>> try:
    ...     check_arguments(100, Path("x.jsonl"), seed=0, dup_rate=0.6, bad_rate=0.6, images=False)
    ... except ArgumentError as error:
    ...     print(error.names, error.problem)
    ('dup_rate', 'bad_rate') must add up to at most 1 (each line is of one kind), got 0.6 + 0.6
    """
    if type(n) is not int or not 0 <= n <= MAX_EVENTS:
        raise ArgumentError(("n",), f"must be a whole number from 0 to {MAX_EVENTS:,}, got {n!r}")
    if type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ArgumentError(
            ("seed",), f"must be an integer from -2**63 to 2**64-1 (the manifest's range), got {seed!r}"
        )
    for name, rate in (("dup_rate", dup_rate), ("bad_rate", bad_rate)):
        if not 0.0 <= rate <= 1.0:  # NaN fails this too
            raise ArgumentError((name,), f"must lie in [0, 1], got {rate!r}")
    if dup_rate + bad_rate > 1.0:
        raise ArgumentError(
            ("dup_rate", "bad_rate"),
            f"must add up to at most 1 (each line is of one kind), got {dup_rate!r} + {bad_rate!r}",
        )
    _check_output(out, images)


def _check_output(out: Path, images: bool) -> None:
    """Raise :class:`ArgumentError` if a path the run will write is taken or cannot be made."""
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(("out",), f"{str(out)!r} is not UTF-8, and the manifest records it") from None
    if out.is_dir():
        raise ArgumentError(("out",), f"{out} is a folder; give the path of a file to write")
    if manifest_path(out).is_dir():
        raise ArgumentError(("out",), f"{manifest_path(out)}, where its manifest goes, is a folder")
    folder = next(parent for parent in out.parents if parent.exists())  # '.' or '/' at worst
    if not folder.is_dir():
        raise ArgumentError(("out",), f"{folder} is not a folder, so {out} cannot be written in it")
    image_folder = out.parent / IMAGES_DIR
    if images and image_folder.exists() and not image_folder.is_dir():
        raise ArgumentError(("out", "images"), f"{image_folder} is not a folder, so no PNGs can go there")
