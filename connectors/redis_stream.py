"""Redis Streams as the pipeline's live input: where a stream is, and how a file is fed into one.

A stream is named by a URL, ``redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME[&group=GROUP]``: the
server and database as redis-py reads them, the stream's key, and (for a consumer) its consumer
group. Each entry holds one input record, the raw bytes of one JSONL line, under the field
:data:`ENTRY_FIELD`, so a record that is not valid UTF-8 or not JSON arrives as it was written and
becomes a dead letter like a bad line of a file.

>>> StreamAddress.parse("redis://127.0.0.1:6379/0?stream=events&group=aiep")
StreamAddress(server='redis://127.0.0.1:6379/0', stream='events', group='aiep')
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors.database import describe_error
from connectors.database_url import redact

#: The entry field that holds one record's raw bytes.
ENTRY_FIELD = b"event"
#: Entries sent to the server in one pipelined round trip.
PUBLISH_BATCH = 1_000
_NAME = re.compile(r"[^\s\x00]{1,256}")


class StreamError(Exception):
    """The stream URL is unusable, or the server refused or could not be reached; the message is
    one line, its password hidden."""


@dataclass(frozen=True)
class StreamAddress:
    """A stream: its server (a redis-py URL, password included), its key and its consumer group."""

    server: str = field(repr=False)
    stream: str
    group: str | None = None

    def __repr__(self) -> str:
        return f"StreamAddress(server={redact(self.server)!r}, stream={self.stream!r}, group={self.group!r})"

    @classmethod
    def parse(cls, url: str) -> StreamAddress:
        """The address a URL names; StreamError says what is wrong, the password hidden."""
        shown = redact(url)
        expected = "expected redis://HOST:PORT/DB?stream=NAME[&group=GROUP]"
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise StreamError(f"stream {shown}: unknown scheme {parts.scheme!r}; {expected}")
        try:
            well_formed = bool(parts.hostname) and parts.port is not None
        except ValueError:  # a port that is not a number in 0..65535
            well_formed = False
        query = parse_qs(parts.query, keep_blank_values=True)
        if not well_formed or not re.fullmatch(r"/\d+", parts.path) or parts.fragment:
            raise StreamError(f"stream {shown}: malformed; {expected}")
        unknown = sorted(set(query) - {"stream", "group"})
        if unknown:
            raise StreamError(f"stream {shown}: unknown parameter {unknown[0]!r}; {expected}")
        for key, values in query.items():
            if len(values) != 1 or not _NAME.fullmatch(values[0]):
                raise StreamError(f"stream {shown}: {key} must be given once, 1-256 characters, no spaces")
        if "stream" not in query:
            raise StreamError(f"stream {shown}: no stream name; {expected}")
        server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return cls(server, query["stream"][0], query["group"][0] if "group" in query else None)

    def client(self) -> redis.Redis:
        """A client of the stream's server; no retries inside it (a retried XADD would double)."""
        return redis.Redis.from_url(
            self.server, socket_connect_timeout=5, socket_timeout=30, retry=Retry(NoBackoff(), 0)
        )


@dataclass(frozen=True)
class Published:
    """What :func:`publish` sent: entries added, blank lines left out, the stream's length after."""

    entries: int
    blank_lines: int
    stream_length: int


def file_lines(path: Path) -> Iterator[bytes]:
    """The lines of a JSONL file (gzip when its name ends in ``.gz``), without their line ends."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as lines:
        for line in lines:
            yield line.rstrip(b"\r\n")


def publish(address: StreamAddress, records: Iterable[bytes], batch: int = PUBLISH_BATCH) -> Published:
    """XADD each non-blank record to the stream, in order, ``batch`` entries per round trip.

    Nothing is retried: a batch that failed half-way would be sent twice. On an error, StreamError
    says how many entries were added before it (the pipeline collapses a record sent twice by its
    ``event_id``, so publishing the rest again is safe).
    """
    client = address.client()
    added = blank = 0
    pending: list[bytes] = []
    try:
        for record in records:
            if not record.strip():
                blank += 1
                continue
            pending.append(record)
            if len(pending) >= batch:
                added += _add(client, address.stream, pending)
                pending = []
        added += _add(client, address.stream, pending)
        return Published(added, blank, int(client.xlen(address.stream)))
    except redis.RedisError as exc:
        raise StreamError(
            f"stream {redact(address.server)} {address.stream!r}: {describe_error(exc, address.server)}"
            f" (after {added:,} entries were added)"
        ) from exc
    finally:
        client.close()


def _add(client: redis.Redis, stream: str, records: list[bytes]) -> int:
    if not records:
        return 0
    pipe = client.pipeline(transaction=False)
    for record in records:
        pipe.xadd(stream, {ENTRY_FIELD: record})
    pipe.execute()
    return len(records)


def pack_entry_id(entry_id: bytes | str) -> int:
    """An entry id (``MS-SEQ``) as one int64, order kept: what a stream event's ``line_no`` holds.

    >>> pack_entry_id(b"1700000000000-3"), unpack_entry_id(pack_entry_id("1700000000000-3"))
    (1782579200000000003, '1700000000000-3')
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    if int(seq) >= 1 << SEQ_BITS:
        raise StreamError(f"entry id {text!r}: sequence part over {1 << SEQ_BITS}")
    return (int(ms) << SEQ_BITS) | int(seq)


def unpack_entry_id(packed: int) -> str:
    """The ``MS-SEQ`` id that :func:`pack_entry_id` packed."""
    return f"{packed >> SEQ_BITS}-{packed & ((1 << SEQ_BITS) - 1)}"


#: Bits of an entry id's sequence part in a packed id (up to 2^20 entries per millisecond).
SEQ_BITS = 20


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamReader:
    """Reads a stream through its consumer group, in entry-id order, and acknowledges entries.

    On :meth:`start` it creates the group when missing, reading from the stream's beginning (id
    0, so entries published before the first start are not skipped). Then, before new entries, it
    reads again every entry after ``position`` (the last entry id the caller's restored state
    holds; the stream's beginning without one) that the group has already delivered: their
    results may be lost with state that was never snapshotted, and the sinks are idempotent. It
    also claims (XAUTOCLAIM) the entries pending on other consumers of the group for at least
    ``min_idle_ms``, so that the entries it will acknowledge are its own.

    ``end`` (``"$"``: the last entry at start) makes the stream bounded: :meth:`read` returns
    ``None`` once the entries up to it are read.
    """

    def __init__(
        self,
        address: StreamAddress,
        consumer: str,
        *,
        count: int = 1_000,
        block_ms: int = 200,
        min_idle_ms: int = 30_000,
    ) -> None:
        if not address.group:
            raise StreamError(
                f"stream {redact(address.server)} {address.stream!r}: reading needs &group=NAME"
            )
        self.address = address
        self.group: str = address.group
        self.consumer = consumer
        self.count = count
        self.block_ms = block_ms
        self.min_idle_ms = min_idle_ms
        self.client = redis.Redis.from_url(address.server, socket_connect_timeout=5, socket_timeout=30)
        self._again: list[tuple[str, bytes | None]] = []
        self._end: tuple[int, int] | None = None
        self._delivered: tuple[int, int] = (0, 0)
        #: Entries :meth:`start` took over from other consumers.
        self.claimed = 0

    def _call(self, what: str, call: Any) -> Any:
        try:
            return call()
        except redis.RedisError as exc:
            raise StreamError(
                f"stream {redact(self.address.server)} {self.address.stream!r}: {what}:"
                f" {describe_error(exc, self.address.server)}"
            ) from exc

    def start(self, position: str | None, *, bounded: bool = False) -> int:
        """Open the group and gather what must be read again; returns how many entries that is."""
        stream, group = self.address.stream, self.group
        try:
            self._call(
                "creating the group", lambda: self.client.xgroup_create(stream, group, id="0", mkstream=True)
            )
        except StreamError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if bounded:
            # The last entry present, not the last id generated: an entry deleted since (XDEL) is
            # never delivered, so a read waiting for its id would never end.
            last = self._call("reading the last entry", lambda: self.client.xinfo_stream(stream))[
                "last-entry"
            ]
            last_id = "0-0" if not last else last[0]
            self._end = _id_key(last_id.decode() if isinstance(last_id, bytes) else str(last_id))
        delivered = self._group_info()["last-delivered-id"]
        delivered = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
        self._delivered = _id_key(delivered)
        if self._end is not None:
            # What the group was delivered before counts as read up to, even if deleted since.
            self._end = max(self._end, self._delivered)
        after = position or "0-0"
        if _id_key(delivered) > _id_key(after):
            self._again = self._range(after, delivered)
        self.claimed = self._claim()
        return len(self._again)

    def _group_info(self) -> dict[str, Any]:
        groups = self._call("reading the group", lambda: self.client.xinfo_groups(self.address.stream))
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == self.group:
                return dict(info)
        raise StreamError(f"stream {self.address.stream!r}: group {self.group!r} vanished")

    def lag(self) -> int | None:
        """Entries in the stream the group has not yet been delivered (Redis 7's ``lag``)."""
        value = self._group_info().get("lag")
        return None if value is None else int(value)

    def _range(self, after: str, upto: str) -> list[tuple[str, bytes | None]]:
        entries: list[tuple[str, bytes | None]] = []
        start = "(" + after
        while True:
            chunk = self._call(
                "reading again",
                lambda s=start: self.client.xrange(self.address.stream, s, upto, count=self.count),
            )
            entries.extend(_entries(chunk))
            if len(chunk) < self.count:
                return entries
            start = "(" + entries[-1][0]

    def _claim(self) -> int:
        """XAUTOCLAIM the group's entries idle at least ``min_idle_ms`` on other consumers;
        returns how many this consumer took over."""
        stream, group, me = self.address.stream, self.group, self.consumer
        cursor, claimed = "0-0", 0
        while True:
            reply = self._call(
                "claiming pending",
                lambda c=cursor: self.client.xautoclaim(
                    stream, group, me, self.min_idle_ms, c, count=self.count
                ),
            )
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            claimed += len(reply[1])
            if cursor == "0-0":
                return claimed

    def read(self) -> list[tuple[str, bytes | None]] | None:
        """The next entries (id, record bytes or ``None`` when the entry has no record field), in
        order: first those to read again, then new ones (waiting up to ``block_ms``); ``None``
        once a bounded stream is read to its end."""
        if self._again:
            chunk, self._again = self._again[: self.count], self._again[self.count :]
            return self._within_end(chunk)
        if self._end is not None and self._delivered >= self._end:
            return None
        stream, group = self.address.stream, self.group
        reply = self._call(
            "reading",
            lambda: self.client.xreadgroup(
                group, self.consumer, {stream: ">"}, count=self.count, block=self.block_ms
            ),
        )
        chunk = _entries(reply[0][1]) if reply else []
        if chunk:
            self._delivered = _id_key(chunk[-1][0])
        return self._within_end(chunk)

    def _within_end(self, chunk: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
        # Entries past a bounded stream's end stay pending: the next start reads them again.
        if self._end is None:
            return chunk
        return [entry for entry in chunk if _id_key(entry[0]) <= self._end]

    def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge entries whose results every sink has committed; returns how many were pending."""
        if not entry_ids:
            return 0
        return int(
            self._call("acknowledging", lambda: self.client.xack(self.address.stream, self.group, *entry_ids))
        )

    def close(self) -> None:
        self.client.close()


def _entries(chunk: Any) -> list[tuple[str, bytes | None]]:
    """(id, record) pairs of an XRANGE/XREADGROUP reply; a deleted entry's fields are None."""
    out = []
    for entry_id, fields in chunk:
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        out.append((text, (fields or {}).get(ENTRY_FIELD)))
    return out


class EntryAcknowledger:
    """Acknowledges a group's entries (XACK) by their packed ids, once their results are committed."""

    def __init__(self, address: StreamAddress) -> None:
        if not address.group:
            raise StreamError(
                f"stream {redact(address.server)} {address.stream!r}: acknowledging needs &group=NAME"
            )
        self.address = address
        self.group: str = address.group
        self.client = address.client()

    def ack(self, packed: Iterable[int]) -> int:
        """XACK the entries; returns how many were still pending."""
        ids = [unpack_entry_id(int(p)) for p in packed]
        if not ids:
            return 0
        try:
            return int(self.client.xack(self.address.stream, self.group, *ids))
        except redis.RedisError as exc:
            raise StreamError(
                f"stream {redact(self.address.server)} {self.address.stream!r}: acknowledging:"
                f" {describe_error(exc, self.address.server)}"
            ) from exc

    def close(self) -> None:
        self.client.close()
