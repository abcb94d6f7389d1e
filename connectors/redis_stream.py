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
