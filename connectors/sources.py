"""File and stdin sources: find the inputs, fingerprint them, and read them in batches.

Supported: JSONL (``.jsonl``, ``.ndjson``, ``.json``), CSV (``.csv``) and Parquet
(``.parquet``), each optionally gzip-compressed (``.gz``, not Parquet), given as paths or globs;
``-`` reads JSONL from stdin (spooled to a file first so that workers in other processes, or on a
cluster, can read it too).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transforms.event_batch import InputRecords

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
STDIN_NAME = "<stdin>"


class InputError(Exception):
    """An input cannot be found or read: the run cannot do its job."""


@dataclass(frozen=True)
class InputFile:
    """One input, fingerprinted. ``order`` is its position among the run's inputs."""

    order: int
    path: str
    name: str
    format: str
    gzip: bool
    size: int
    sha256: str
    base_dir: str


@dataclass(frozen=True)
class InputSplit:
    """A byte range of an input that starts at a line boundary, with that line's number."""

    file: InputFile
    start: int
    end: int
    first_line_no: int


def _format_of(path: str) -> tuple[str, bool]:
    lower = path.lower()
    compressed = lower.endswith(".gz")
    stem = lower[:-3] if compressed else lower
    for ext, fmt in FORMATS.items():
        if stem.endswith(ext):
            if fmt == "parquet" and compressed:
                break
            return fmt, compressed
    raise InputError(
        f"unsupported input {path!r}: expected .jsonl/.ndjson/.json/.csv (optionally .gz) or .parquet"
    )


def discover_inputs(patterns: list[str], stdin_spool: Path) -> list[InputFile]:
    """Expand paths and globs (in the order given), spool stdin, and fingerprint each input.

    Raises InputError naming the pattern that matched nothing or the file that can't be read.
    """
    files: list[InputFile] = []
    seen: set[str] = set()
    for pattern in patterns:
        if pattern == "-":
            if STDIN_NAME in seen:
                raise InputError("stdin ('-') given twice")
            seen.add(STDIN_NAME)
            stdin_spool.parent.mkdir(parents=True, exist_ok=True)
            with stdin_spool.open("wb") as spool:
                shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            files.append(_fingerprint(len(files), str(stdin_spool), STDIN_NAME, "jsonl", False, os.getcwd()))
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise InputError(f"no input matches {pattern!r}")
        for match in matches:
            path = os.path.abspath(match)
            if path in seen:
                continue
            seen.add(path)
            if not os.path.isfile(path):
                raise InputError(f"input {match!r} is not a readable file")
            fmt, compressed = _format_of(path)
            files.append(_fingerprint(len(files), path, match, fmt, compressed, os.path.dirname(path)))
    if not files:
        raise InputError("no inputs given")
    return files


def _fingerprint(order: int, path: str, name: str, fmt: str, compressed: bool, base_dir: str) -> InputFile:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
        size = os.path.getsize(path)
    except OSError as exc:
        raise InputError(f"cannot read input {name!r}: {exc.strerror}") from None
    return InputFile(order, path, name, fmt, compressed, size, digest.hexdigest(), base_dir)


def plan_splits(files: list[InputFile], split_bytes: int) -> list[InputSplit]:
    """Cut plain JSONL inputs into ~``split_bytes`` ranges at line boundaries, numbering lines;
    compressed, CSV and Parquet inputs are one split each (they can't be entered mid-way)."""
    splits: list[InputSplit] = []
    for file in files:
        if file.format != "jsonl" or file.gzip or file.size <= split_bytes:
            splits.append(InputSplit(file, 0, file.size, 1))
            continue
        start, line_no = 0, 1
        with open(file.path, "rb") as fh:
            while start < file.size:
                fh.seek(start)
                block = fh.read(split_bytes)
                end = start + len(block)
                if end < file.size:
                    tail = fh.readline()  # finish the line the block cut
                    end += len(tail)
                    block += tail
                splits.append(InputSplit(file, start, end, line_no))
                line_no += block.count(b"\n")
                start = end
    return splits


def read_split(split: InputSplit, batch_lines: int) -> Iterator[InputRecords]:
    """Read one split as batches of at most ``batch_lines`` records, in order."""
    file = split.file
    if file.format == "jsonl":
        yield from _read_jsonl(split, batch_lines)
    elif file.format == "csv":
        from connectors.tabular import read_csv

        yield from read_csv(file, batch_lines)
    else:
        from connectors.tabular import read_parquet

        yield from read_parquet(file, batch_lines)


def _read_jsonl(split: InputSplit, batch_lines: int) -> Iterator[InputRecords]:
    file = split.file
    opener = gzip.open if file.gzip else open
    try:
        with opener(file.path, "rb") as fh:
            fh.seek(split.start)
            remaining = split.end - split.start if not file.gzip else None
            line_no = split.first_line_no
            line_nos: list[int] = []
            raws: list[bytes] = []
            blank = 0
            while True:
                if remaining is not None and remaining <= 0:
                    break
                line = fh.readline()
                if not line:
                    break
                if remaining is not None:
                    remaining -= len(line)
                record = line.rstrip(b"\r\n")
                if record.strip():
                    line_nos.append(line_no)
                    raws.append(record)
                else:  # a blank line carries no record; counted, not dead-lettered
                    blank += 1
                line_no += 1
                if len(raws) >= batch_lines:
                    yield InputRecords(file.name, file.order, line_nos, raws, blank_lines=blank)
                    line_nos, raws, blank = [], [], 0
            if raws or blank:
                yield InputRecords(file.name, file.order, line_nos, raws, blank_lines=blank)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read input {file.name!r}: {exc}") from None
