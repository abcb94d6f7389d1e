"""JSONL inputs (``.jsonl``, ``.ndjson``, ``.json``, plain or ``.gz``, and stdin): one event per line.

A plain input may be read in several splits at once (``connectors.inputs.plan_splits`` cuts it at
line boundaries); a gzip input is one split. A byte order mark at the start of the file is skipped,
a blank line carries no record, and a line past the size limit is cut while it is read: one
``line_too_long``, never held whole.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import Protocol

from connectors.input_batches import BatchBuilder, too_long
from connectors.inputs import InputError, InputSplit, open_content
from transforms.dead_letter import RAW_KEEP_BYTES
from transforms.event_batch import InputRecords
from transforms.validate import EventRules

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


def read_jsonl(split: InputSplit, batch_lines: int, rules: EventRules) -> Iterator[InputRecords]:
    """Read one split of a JSONL input as batches of raw records, in order."""
    file, limit = split.file, rules.max_record_bytes
    try:
        with open_content(file) as fh:
            fh.seek(split.start)
            budget = split.end - split.start if not file.gzip else None
            line_no = split.first_line_no
            batch = BatchBuilder(file)
            for line, consumed, cut in bounded_lines(fh, limit, budget):
                batch.bytes_read += consumed
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
