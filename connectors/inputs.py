"""Plan a run's inputs: find them, fingerprint them, and cut them into splits a worker reads.

Supported: JSONL (``.jsonl``, ``.ndjson``, ``.json``), CSV (``.csv``) and Parquet
(``.parquet``), each optionally gzip-compressed (``.gz``, not Parquet), given as paths or globs,
local or in an object store (``s3://BUCKET/KEY``, ``gs://BUCKET/KEY``: ``connectors.storage``);
``-`` reads JSONL from stdin (spooled to a file first so that workers in other processes, or on a
cluster, can read it too). Reading a split is ``connectors.readers.read_split``'s job.
"""

from __future__ import annotations

import bisect
import glob
import gzip
import hashlib
import io
import os
import posixpath
import shutil
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors import storage
from transforms.dead_letter import storable

STDIN_NAME = "<stdin>"


class InputError(Exception):
    """An input cannot be found or read: the run cannot do its job."""


#: The input format of a file by its extension (the one before any ``.gz``); the names are what
#: ``InputFile.format`` says and what ``connectors.readers.READERS`` is keyed by.
FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
#: Formats whose ``.gz`` files are read too (inflated as they are read).
GZIP_FORMATS = frozenset({"jsonl", "csv"})
#: Formats whose plain files can be cut into byte ranges at line boundaries, each read on its own.
LINE_SPLIT_FORMATS = frozenset({"jsonl"})


@dataclass(frozen=True)
class InputFile:
    """One input, fingerprinted. ``order`` is its position among the run's inputs."""

    order: int
    path: str  # an absolute local path, or an object's URL
    name: str
    format: str  # a name in FORMATS
    gzip: bool
    size: int  # bytes on disk (in the store)
    sha256: str  # of the file's bytes, as sha256sum prints it
    base_dir: str
    #: sha256 of what a gzip input inflates to (``None`` otherwise): one content, one identity,
    #: compressed or not.
    content_sha256: str | None = None
    #: How many bytes a gzip input inflates to (``None`` otherwise).
    inflated_size: int | None = None

    @property
    def content_hash(self) -> str:
        """The hash of the content the pipeline reads: the input's identity, whatever its path."""
        return self.content_sha256 or self.sha256

    @property
    def content_size(self) -> int:
        """How many bytes of content a reader goes through: the inflated size of a gzip input,
        the size on disk otherwise. A run's progress counts in this unit."""
        return self.size if self.inflated_size is None else self.inflated_size


@dataclass(frozen=True)
class InputSplit:
    """A byte range of an input that starts at a line boundary, with that line's number.

    An input that can't be entered mid-way (gzip, CSV, Parquet) is one split, ``0`` to its size.
    """

    file: InputFile
    start: int
    end: int
    first_line_no: int


def format_of(path: str) -> tuple[str, bool]:
    """The format of an input and whether it is gzip-compressed, by its name.

    >>> format_of("events.ndjson.GZ")
    ('jsonl', True)
    >>> format_of("rows.parquet.gz")
    Traceback (most recent call last):
    ...
    connectors.inputs.InputError: unsupported input 'rows.parquet.gz': expected \
.jsonl/.ndjson/.json/.csv (optionally .gz) or .parquet
    """
    lower = path.lower()
    compressed = lower.endswith(".gz")
    stem = lower[:-3] if compressed else lower
    for ext, fmt in FORMATS.items():
        if stem.endswith(ext) and (fmt in GZIP_FORMATS or not compressed):
            return fmt, compressed
    gzipped = "/".join(ext for ext, fmt in FORMATS.items() if fmt in GZIP_FORMATS)
    plain = "/".join(ext for ext, fmt in FORMATS.items() if fmt not in GZIP_FORMATS)
    raise InputError(f"unsupported input {path!r}: expected {gzipped} (optionally .gz) or {plain}")


#: Per input path, ``(offset, newlines before it)`` at points of the file (``discover_inputs``).
LineIndex = dict[str, list[tuple[int, int]]]


def discover_inputs(
    patterns: list[str], stdin_spool: Path, line_index: LineIndex | None = None
) -> list[InputFile]:
    """Expand paths and globs (in the order given), spool stdin, and fingerprint each input.

    ``line_index``, when given, gets the newlines of every input ``plan_splits`` may cut, counted
    as it is hashed (see ``_digest``), by path: planning then reads only near its cuts.
    Raises InputError naming the pattern that matched nothing or the file that can't be read.
    """
    files: list[InputFile] = []
    seen: set[tuple[int, int]] = set()  # (device, inode): one file, however its path is spelt or linked
    seen_urls: set[str] = set()  # an object: its URL as ``connectors.storage`` spells it
    stdin_seen = False
    for pattern in patterns:
        if pattern == "-":
            if stdin_seen:
                raise InputError("stdin ('-') given twice")
            stdin_seen = True
            stdin_spool.parent.mkdir(parents=True, exist_ok=True)
            with stdin_spool.open("wb") as spool:
                shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            files.append(
                _fingerprint(
                    len(files), str(stdin_spool), STDIN_NAME, "jsonl", False, os.getcwd(), line_index
                )
            )
            continue
        if storage.is_object_store(pattern):
            try:
                urls = storage.expand(pattern)
            except storage.StorageError as exc:
                raise InputError(str(exc)) from None
            for url in urls:
                if url in seen_urls:  # read once
                    continue
                seen_urls.add(url)
                fmt, compressed = format_of(url)
                files.append(
                    _fingerprint(len(files), url, url, fmt, compressed, posixpath.dirname(url), line_index)
                )
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
            fmt, compressed = format_of(path)
            # The name as given, storable as text even when the path's bytes are not UTF-8.
            name = storable(match)
            files.append(
                _fingerprint(len(files), path, name, fmt, compressed, os.path.dirname(path), line_index)
            )
    if not files:
        raise InputError("no inputs given")
    return files


def _fingerprint(
    order: int,
    path: str,
    name: str,
    fmt: str,
    compressed: bool,
    base_dir: str,
    line_index: LineIndex | None = None,
) -> InputFile:
    counts: list[tuple[int, int]] | None = (
        [] if line_index is not None and fmt in LINE_SPLIT_FORMATS and not compressed else None
    )
    try:
        with storage.open_binary(path) as fh:
            file_hash, size = _digest(fh, counts)
        content_hash, inflated_size = None, None
        if compressed:  # inflated once here anyway: its size comes with its hash
            with storage.open_binary(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as inflated:
                content_hash, inflated_size = _digest(inflated)
    except (OSError, EOFError, zlib.error) as exc:
        detail = getattr(exc, "strerror", None) or storage.describe(exc)
        raise InputError(f"cannot read input {name!r}: {detail}") from None
    if line_index is not None and counts is not None:
        line_index[path] = counts
    return InputFile(
        order, path, name, fmt, compressed, size, file_hash, base_dir, content_hash, inflated_size
    )


@contextmanager
def open_content(file: InputFile) -> Iterator[io.BufferedIOBase]:
    """The content of an input, local or in an object store, as a binary stream: inflated as it is
    read for a gzip input; seekable otherwise."""
    with storage.open_binary(file.path) as raw:
        if not file.gzip:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as inflated:
            yield inflated


#: ``_digest`` reads, and ``plan_splits`` counts lines, this many bytes at a time.
PLAN_CHUNK_BYTES = 4 << 20


def _digest(stream: Any, newlines: list[tuple[int, int]] | None = None) -> tuple[str, int]:
    """The sha256 (hex) of a binary stream's bytes, and how many there were.

    With ``newlines``, also appends ``(offset, newlines before it)`` at the end of each read: the
    count costs about 0.05 s for 475 MiB, where planning used to read the whole file again for
    it (0.2 s).
    """
    digest, size, lines = hashlib.sha256(), 0, 0
    while block := stream.read(PLAN_CHUNK_BYTES):
        digest.update(block)
        size += len(block)
        if newlines is not None:
            lines += block.count(b"\n")
            newlines.append((size, lines))
    return digest.hexdigest(), size


def plan_splits(
    files: list[InputFile], split_bytes: int, line_index: LineIndex | None = None
) -> list[InputSplit]:
    """Cut plain inputs of a line-splittable format (JSONL) into ~``split_bytes`` ranges at line
    boundaries, numbering lines; any other input is one split (it can't be entered mid-way).

    A file of ``size`` bytes is cut near ``size * k / n`` for ``n = ceil(size / split_bytes)``:
    each cut moves on to the end of the line it falls in, and the next is placed from the file's
    start, not from there, so long lines never add up to one split fewer (``n`` splits, unless
    one line spans a whole cut). The lines before a cut are counted from the nearest point of
    the file's ``line_index`` (``discover_inputs``) before it, or else from the previous cut."""
    splits: list[InputSplit] = []
    for file in files:
        if file.format not in LINE_SPLIT_FORMATS or file.gzip or file.size <= split_bytes:
            splits.append(InputSplit(file, 0, file.size, 1))
            continue
        count = -(-file.size // split_bytes)
        marks = (line_index or {}).get(file.path, [])
        offsets = [offset for offset, _ in marks]
        start, line_no = 0, 1
        with storage.open_binary(file.path) as fh:
            for k in range(1, count + 1):
                cut = file.size * k // count
                if cut <= start:  # inside a line the previous split already finished
                    continue
                # Newlines before the cut: from the last mark short of it, or from this split's start.
                at = bisect.bisect_left(offsets, cut) - 1
                offset, lines = marks[at] if at >= 0 and offsets[at] > start else (start, line_no - 1)
                end, newlines, last = _count_lines(fh, file, offset, cut)
                lines += newlines
                if end < file.size and last != b"\n":
                    # Finish the line the cut fell in, in chunks: one line may be gigabytes long.
                    while chunk := fh.readline(1 << 20):
                        end += len(chunk)
                        if chunk.endswith(b"\n"):
                            lines += 1
                            break
                splits.append(InputSplit(file, start, end, line_no))
                line_no = lines + 1
                start = end
    return splits


def _count_lines(fh: Any, file: InputFile, start: int, stop: int) -> tuple[int, int, bytes]:
    """Read ``start..stop`` of ``fh`` in chunks (a few MiB held, whatever ``split_mb`` is):
    where the reading stopped, the newlines in it and its last byte."""
    fh.seek(start)
    end, newlines, last = start, 0, b""
    while end < stop and (chunk := fh.read(min(PLAN_CHUNK_BYTES, stop - end))):
        end, newlines, last = end + len(chunk), newlines + chunk.count(b"\n"), chunk[-1:]
    if end < stop:
        raise InputError(f"input {file.name!r} shrank while its splits were planned")
    return end, newlines, last
