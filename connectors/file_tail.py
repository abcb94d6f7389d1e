"""Follow JSONL files and folders as they grow (``run --engine bytewax --follow``).

A :class:`FileTail` watches what it was given: a file is read as lines are appended to it, a
folder (or a glob) is listed again on every poll and its new ``*.jsonl`` files are read from
their start, in name order. Only whole lines are handed on: a line still being written (no line
end yet) waits for the next poll. Its :attr:`position` (per file: bytes and lines handed on) is
what a stream snapshots, and :meth:`resume` continues from it after a restart, so nothing is read
twice or missed.
"""

from __future__ import annotations

import glob
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from connectors.input_batches import too_long
from connectors.inputs import InputError
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation
from transforms.event_batch import InputRecords

#: Bytes read from one file per poll, at most: a batch stays bounded however far behind it is.
READ_BYTES = 8 << 20


@dataclass
class _Followed:
    """Where a followed file is: bytes and lines handed on, and a line too long being skipped."""

    order: int
    offset: int = 0
    lines: int = 0
    skipping: int = 0  # bytes of an over-long line read so far (0: not skipping)
    inode: int = 0  # the file read under this path (0: not yet looked at)


@dataclass
class FileTail:
    """Follows ``patterns`` (files, folders, globs); ``order`` of a file is the pattern's index."""

    patterns: list[str]
    max_record_bytes: int
    files: dict[str, _Followed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            if pattern == "-":
                raise InputError("--follow reads files and folders, not stdin ('-' is read to its end)")
            if pattern.endswith((".gz", ".csv", ".parquet")):
                raise InputError(f"--follow reads JSONL as it grows; {pattern!r} is not plain JSONL")
            if not glob.has_magic(pattern) and not os.path.exists(pattern):
                raise InputError(f"no input matches {pattern!r}")

    @property
    def base_dirs(self) -> tuple[str, ...]:
        """The folder each pattern's relative image paths resolve against."""
        dirs = []
        for pattern in self.patterns:
            path = os.path.abspath(pattern)
            dirs.append(path if os.path.isdir(path) else os.path.dirname(path))
        return tuple(dirs)

    @property
    def position(self) -> dict[str, tuple[int, int, int, int, int]]:
        """Per file (absolute path): (pattern index, bytes handed on, lines handed on, bytes of an
        over-long line skipped so far, inode)."""
        return {path: (f.order, f.offset, f.lines, f.skipping, f.inode) for path, f in self.files.items()}

    def resume(self, position: dict[str, tuple[int, int, int, int, int]]) -> None:
        """Continue from a :attr:`position` snapshotted earlier."""
        self.files = {path: _Followed(*where) for path, where in position.items()}

    def _discover(self) -> None:
        for order, pattern in enumerate(self.patterns):
            path = os.path.abspath(pattern)
            if os.path.isdir(path):
                found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
            elif glob.has_magic(pattern):
                found = sorted(os.path.abspath(p) for p in glob.glob(pattern, recursive=True))
            else:
                found = [path]
            for name in found:
                if name not in self.files and os.path.isfile(name):
                    self.files[name] = _Followed(order)

    def poll(self) -> list[InputRecords]:
        """The whole lines appended since the last poll, a batch per file that grew."""
        self._discover()
        batches = []
        for path, followed in sorted(self.files.items(), key=lambda item: (item[1].order, item[0])):
            records = self._read(path, followed)
            if records is not None:
                batches.append(records)
        return batches

    def _read(self, path: str, followed: _Followed) -> InputRecords | None:
        try:
            with open(path, "rb") as fh:
                info = os.fstat(fh.fileno())
                if (followed.inode and info.st_ino != followed.inode) or info.st_size < followed.offset:
                    # Another file under this name (rotated), or this one truncated: from its start.
                    followed.offset = followed.lines = followed.skipping = 0
                followed.inode = info.st_ino
                fh.seek(followed.offset)
                chunk = fh.read(max(READ_BYTES, self.max_record_bytes + 2))
        except FileNotFoundError:
            return None  # gone (rotated away): what was read of it stays read
        end = chunk.rfind(b"\n")
        if end < 0:
            if followed.skipping or len(chunk) > self.max_record_bytes:
                # A line longer than any record may be: skip it as it grows, keep its start.
                followed.skipping += len(chunk)
                followed.offset += len(chunk)
            return None
        whole = chunk[: end + 1]
        line_nos: list[int] = []
        raws: list[bytes] = []
        rejected: dict[int, ContractViolation] = {}
        blank = 0
        for line in whole.split(b"\n")[:-1]:
            followed.lines += 1
            if followed.skipping:
                consumed = followed.skipping + len(line) + 1
                followed.skipping = 0
                rejected[len(raws)] = too_long(consumed, self.max_record_bytes)
                line_nos.append(followed.lines)
                raws.append(b"")
                continue
            line = line.rstrip(b"\r")
            if not line.strip():
                blank += 1
                continue
            if len(line) > self.max_record_bytes:
                rejected[len(raws)] = too_long(len(line) + 1, self.max_record_bytes)
                line = line[: RAW_KEEP_BYTES + 1]
            line_nos.append(followed.lines)
            raws.append(line)
        followed.offset += len(whole)
        if not raws and not blank:
            return None
        return InputRecords(
            source=path,
            source_order=followed.order,
            line_nos=line_nos,
            raws=raws,
            blank_lines=blank,
            rejected=rejected,
            bytes_read=len(whole),
        )


class StdinLines:
    """JSONL records from a stream of bytes (stdin) as they arrive, read by a thread of its own.

    Lines are read with a bound (a line past ``max_record_bytes`` is cut and rejected as
    ``line_too_long``) into a bounded queue, so a fast writer waits rather than fills memory.
    :meth:`poll` hands on what has arrived; :attr:`ended` is set once the stream closed and
    everything was handed on. A stream of bytes cannot be read again: a job on stdin keeps no
    position to resume from.
    """

    def __init__(self, stream: BinaryIO, max_record_bytes: int, source: str, batch_lines: int) -> None:
        self.max_record_bytes = max_record_bytes
        self.source = source
        self.batch_lines = batch_lines
        self.lines = 0
        self._queue: queue.Queue[tuple[bytes, bool] | None] = queue.Queue(maxsize=4 * batch_lines)
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="aiep-stdin")
        self._thread.start()

    def _read(self, stream: BinaryIO) -> None:
        limit = self.max_record_bytes + 2  # the record, its line end, and one byte to know it is over
        while True:
            line = stream.readline(limit)
            if not line:
                self._queue.put(None)
                return
            if len(line) >= limit and not line.endswith(b"\n"):
                while True:  # skip the rest of the over-long line, keeping only its start
                    more = stream.readline(1 << 20)
                    line += b"" if len(line) > RAW_KEEP_BYTES else more[:RAW_KEEP_BYTES]
                    if not more or more.endswith(b"\n"):
                        break
                self._queue.put((line[: RAW_KEEP_BYTES + 1], True))
                continue
            self._queue.put((line, False))

    @property
    def ended(self) -> bool:
        return self._closed

    def poll(self, wait: float = 0.2) -> InputRecords | None:
        """What has arrived (at most ``batch_lines`` lines), waiting up to ``wait`` s for a first."""
        line_nos: list[int] = []
        raws: list[bytes] = []
        rejected: dict[int, ContractViolation] = {}
        blank = covered = 0
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return None
        while True:
            if item is None:
                self._closed = True
                break
            line, cut = item
            self.lines += 1
            covered += len(line)
            if cut:
                rejected[len(raws)] = too_long(self.max_record_bytes + 1, self.max_record_bytes)
                line_nos.append(self.lines)
                raws.append(line)
            elif line.strip():
                line_nos.append(self.lines)
                raws.append(line.rstrip(b"\r\n"))
            else:
                blank += 1
            if len(raws) + blank >= self.batch_lines:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if not raws and not blank:
            return None
        return InputRecords(
            source=self.source,
            source_order=0,
            line_nos=line_nos,
            raws=raws,
            blank_lines=blank,
            rejected=rejected,
            bytes_read=covered,
        )
