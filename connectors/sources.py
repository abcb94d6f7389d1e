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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, Reason, storable
from transforms.event_batch import InputRecords
from transforms.validate import EventRules

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
    sha256: str  # of the file's bytes, as sha256sum prints it
    base_dir: str
    #: sha256 of what a gzip input inflates to (``None`` otherwise): one content, one identity,
    #: compressed or not.
    content_sha256: str | None = None

    @property
    def content_hash(self) -> str:
        """The hash of the content the pipeline reads: the input's identity, whatever its path."""
        return self.content_sha256 or self.sha256


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
    seen: set[tuple[int, int]] = set()  # (device, inode): one file, however its path is spelt or linked
    stdin_seen = False
    for pattern in patterns:
        if pattern == "-":
            if stdin_seen:
                raise InputError("stdin ('-') given twice")
            stdin_seen = True
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
            if not os.path.isfile(path):
                raise InputError(f"input {match!r} is not a readable file")
            info = os.stat(path)
            if (info.st_dev, info.st_ino) in seen:  # read once
                continue
            seen.add((info.st_dev, info.st_ino))
            fmt, compressed = _format_of(path)
            # The name as given, storable as text even when the path's bytes are not UTF-8.
            name = storable(match)
            files.append(_fingerprint(len(files), path, name, fmt, compressed, os.path.dirname(path)))
    if not files:
        raise InputError("no inputs given")
    return files


def _fingerprint(order: int, path: str, name: str, fmt: str, compressed: bool, base_dir: str) -> InputFile:
    try:
        with open(path, "rb") as fh:
            file_hash = _sha256(fh)
        size = os.path.getsize(path)
        content_hash = None
        if compressed:
            with gzip.open(path, "rb") as inflated:
                content_hash = _sha256(inflated)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read input {name!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return InputFile(order, path, name, fmt, compressed, size, file_hash, base_dir, content_hash)


def _sha256(stream: Any) -> str:
    digest = hashlib.sha256()
    while block := stream.read(1 << 22):
        digest.update(block)
    return digest.hexdigest()


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
                newlines = block.count(b"\n")
                if end < file.size and not block.endswith(b"\n"):
                    # Finish the line the block cut, in chunks: one line may be gigabytes long.
                    while chunk := fh.readline(1 << 20):
                        end += len(chunk)
                        if chunk.endswith(b"\n"):
                            newlines += 1
                            break
                splits.append(InputSplit(file, start, end, line_no))
                line_no += newlines
                start = end
    return splits


#: A batch of records is cut once its records hold this many bytes (or ``batch_lines`` records),
#: so the memory a batch takes is bounded whatever the size of each record.
BATCH_BYTES = 32 << 20

#: The UTF-8 byte order mark: an encoding marker at the start of a file, not part of its first record.
BOM = b"\xef\xbb\xbf"


class LineStream(Protocol):
    """What ``bounded_lines`` reads: a binary file, plain or gzip."""

    def readline(self, size: int | None = -1, /) -> bytes: ...


def bounded_lines(
    stream: LineStream, limit: int, budget: int | None = None
) -> Iterator[tuple[bytes, int, bool]]:
    """``(line, bytes consumed, cut)`` for each line of a binary stream, the newline kept.

    A line longer than ``limit`` bytes (its newline aside) is never held whole: it is read in
    chunks and comes back cut to its first ``RAW_KEEP_BYTES + 1`` bytes with ``cut`` set, so a
    reader's memory stays bounded however long a line is (a small ``.gz`` can inflate to one line
    of gigabytes). With ``budget``, no line starts once that many bytes were consumed (the end of
    a split).

    >>> import io
    >>> [(line, n, cut) for line, n, cut in bounded_lines(io.BytesIO(b"ab\\nabcdef\\nc"), limit=3)]
    [(b'ab\\n', 3, False), (b'abcd', 7, True), (b'c', 1, False)]
    """
    keep = RAW_KEEP_BYTES + 1
    while (budget is None or budget > 0) and (line := stream.readline(limit + 1)):
        if budget is not None:
            budget -= len(line)
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, len(line), False
            continue
        prefix, consumed = line[:keep], len(line)
        del line
        while chunk := stream.readline(1 << 20):
            consumed += len(chunk)
            if budget is not None:
                budget -= len(chunk)
            if chunk.endswith(b"\n"):
                break
        yield prefix, consumed, True


def too_long(consumed: int, limit: int) -> ContractViolation:
    """The violation of a record cut while it was read."""
    return ContractViolation(
        Reason.LINE_TOO_LONG,
        f"{consumed} bytes read for one record (line ends included); the limit is {limit}",
    )


def read_split(split: InputSplit, batch_lines: int, rules: EventRules) -> Iterator[InputRecords]:
    """Read one split as batches of at most ``batch_lines`` records (and about ``BATCH_BYTES``), in
    order; a record over ``rules.max_record_bytes`` is cut while it is read and rejected as
    ``line_too_long``."""
    file = split.file
    if file.format == "jsonl":
        yield from _read_jsonl(split, batch_lines, rules.max_record_bytes)
    elif file.format == "csv":
        from connectors.csv_source import read_csv

        yield from read_csv(file, batch_lines, rules.max_record_bytes)
    else:
        from connectors.parquet_source import read_parquet

        yield from read_parquet(file, batch_lines, rules)


def _read_jsonl(split: InputSplit, batch_lines: int, limit: int) -> Iterator[InputRecords]:
    file = split.file
    opener = gzip.open if file.gzip else open
    try:
        with opener(file.path, "rb") as fh:
            fh.seek(split.start)
            budget = split.end - split.start if not file.gzip else None
            line_no = split.first_line_no
            batch = BatchBuilder(file)
            for line, consumed, cut in bounded_lines(fh, limit, budget):
                record = line if cut else line.rstrip(b"\r\n")
                if line_no == 1 and record.startswith(BOM):
                    record = record[len(BOM) :]
                if cut:
                    batch.add(line_no, record, too_long(consumed, limit))
                elif record.strip():
                    batch.add(line_no, record)
                else:  # a blank line carries no record; counted, not dead-lettered
                    batch.blank_lines += 1
                line_no += 1
                if batch.full(batch_lines):
                    yield batch.records()
                    batch = BatchBuilder(file)
            if batch.raws or batch.blank_lines:
                yield batch.records()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"cannot read input {file.name!r}: {exc}") from None


class BatchBuilder:
    """The records of the batch being filled, and what they weigh."""

    def __init__(self, file: InputFile) -> None:
        self.file = file
        self.line_nos: list[int] = []
        self.raws: list[bytes] = []
        self.parsed: list[Any] = []
        self.rejected: dict[int, ContractViolation] = {}
        self.blank_lines = 0
        self.bytes = 0

    def add(
        self, line_no: int, raw: bytes, rejected: ContractViolation | None = None, parsed: Any = None
    ) -> None:
        """Append one record; ``rejected`` when the source already knows it breaks a rule."""
        if rejected is not None:
            self.rejected[len(self.raws)] = rejected
        self.line_nos.append(line_no)
        self.raws.append(raw)
        self.parsed.append(parsed)
        self.bytes += len(raw)

    def full(self, batch_lines: int) -> bool:
        """Whether the batch holds ``batch_lines`` records or about ``BATCH_BYTES``."""
        return len(self.raws) >= batch_lines or self.bytes >= BATCH_BYTES

    def records(self, parsed: bool = False) -> InputRecords:
        """The batch as InputRecords, with the parsed values when the source parsed them."""
        return InputRecords(
            self.file.name,
            self.file.order,
            self.line_nos,
            self.raws,
            self.parsed if parsed else None,
            blank_lines=self.blank_lines,
            rejected=self.rejected,
        )
