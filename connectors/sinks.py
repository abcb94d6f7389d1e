"""The one interface every output implements: Parquet datasets, the audit trail, decisions.

A stage hands a sink a table under a key and gets counts back; it never knows whether the rows
went to a file, a database or both. Later outputs (embeddings, user features, late events) are new
sinks of the same shape, not new paths through the pipeline.

The shape follows Bytewax's ``StatefulSinkPartition`` (``write_batch``, ``close``), narrowed to
what a bounded or a streaming run both need:

- ``write(key, table)`` must be *idempotent per key*: an engine retries a failed bundle, so the
  same key may be written twice. Parquet replaces the file the key names; the database sinks are
  keyed inserts or upserts.
- ``close()`` releases connections. It is not guaranteed to run on an abrupt shutdown (a worker
  killed): a sink never relies on it to make written rows durable, each ``write`` commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

#: Named counts for the run summary, e.g. ``{"audit_rows_inserted": 3}``.
Counts = dict[str, int]


@dataclass(frozen=True)
class Written:
    """What one ``Sink.write`` did."""

    counts: Counts
    #: Keys (event ids) of rows the sink refused and did not write: e.g. an event another run
    #: stored meanwhile with another payload. The caller turns them into dead letters.
    refused: tuple[str, ...] = field(default=())


class Sink(Protocol):
    """An output the pipeline writes tables to; see the module's docstring for the contract."""

    def write(self, key: str, table: pa.Table) -> Written:
        """Write ``table`` under ``key`` (commit before returning); return what was written.

        Columns the output does not hold (the pipeline's internal ``_``-prefixed ones) are
        dropped by the sink, never by the caller.
        """
        ...

    def close(self) -> None:
        """Release what the sink holds (connections); writing after it is an error."""
        ...
