"""Batches of input records as every reader fills them, bounded in count and in bytes."""

from __future__ import annotations

from typing import Any

from connectors.inputs import InputFile
from transforms.dead_letter import ContractViolation, Reason
from transforms.event_batch import InputRecords

#: A batch of records is cut once its records hold this many bytes (or ``batch_lines`` records),
#: so the memory a batch takes is bounded whatever the size of each record.
BATCH_BYTES = 32 << 20


def too_long(consumed: int, limit: int) -> ContractViolation:
    """The violation of a record cut while it was read."""
    return ContractViolation(
        Reason.LINE_TOO_LONG,
        f"{consumed} bytes read for one record (line ends included); the limit is {limit}",
    )


class BatchBuilder:
    """The records of the batch being filled, what they weigh, and how much input they cover."""

    def __init__(self, file: InputFile) -> None:
        self.file = file
        self.line_nos: list[int] = []
        self.raws: list[bytes] = []
        self.parsed: list[Any] = []
        self.rejected: dict[int, ContractViolation] = {}
        self.blank_lines = 0
        self.bytes = 0
        #: Bytes of the input's content (``InputFile.content_size`` units) the batch covers; the
        #: reader adds them, line ends, blank lines and headers included.
        self.bytes_read = 0

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
            bytes_read=self.bytes_read,
        )
