"""Read an input split as batches of records, with the reader of its format.

Each format's reader is a module of its own (``connectors.jsonl_source``, ``connectors.csv_source``,
``connectors.parquet_source``) exposing one :data:`Reader`; :data:`READERS` names them, and
:func:`read_split` is the one call an engine makes. A new source is a new module and one entry
here. Planning (which inputs, which splits) is ``connectors.inputs``' job; it never imports this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from connectors.csv_source import read_csv
from connectors.inputs import InputSplit
from connectors.jsonl_source import read_jsonl
from connectors.parquet_source import read_parquet
from transforms.event_batch import InputRecords
from transforms.validate import EventRules

#: Reads one split as batches of at most ``batch_lines`` records (and about
#: ``connectors.input_batches.BATCH_BYTES``), in input order. A record over
#: ``rules.max_record_bytes`` is cut while it is read and comes back rejected as
#: ``line_too_long``; an input that can't be read as a whole raises ``InputError``.
Reader = Callable[[InputSplit, int, EventRules], Iterator[InputRecords]]

#: The reader of each input format, by its name in ``connectors.inputs.FORMATS``.
READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
}


def read_split(split: InputSplit, batch_lines: int, rules: EventRules) -> Iterator[InputRecords]:
    """Read one split as batches of at most ``batch_lines`` records (and about ``BATCH_BYTES``), in
    order; a record over ``rules.max_record_bytes`` is cut while it is read and rejected as
    ``line_too_long``.

    Raises:
        ValueError: no reader is registered for the split's format (a planning bug: the format
            was accepted by ``connectors.inputs.FORMATS`` without a reader here).
    """
    try:
        reader = READERS[split.file.format]
    except KeyError:
        raise ValueError(
            f"no reader for input format {split.file.format!r} of {split.file.name!r};"
            f" readers exist for {sorted(READERS)}"
        ) from None
    return reader(split, batch_lines, rules)
