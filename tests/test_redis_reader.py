"""Reading a Redis stream through its consumer group (``connectors.redis_stream.StreamReader``),
acknowledging, and packed entry ids, against the real Redis (``redis_server``: under CI=true a
missing server fails the tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from connectors.redis_stream import (
    ENTRY_FIELD,
    SEQ_BITS,
    EntryAcknowledger,
    StreamAddress,
    StreamError,
    StreamReader,
    pack_entry_id,
    unpack_entry_id,
)


@dataclass
class Stream:
    """A fresh stream and group name on the shared Redis, and a plain client to inspect it."""

    address: StreamAddress
    client: redis.Redis
    readers: list[StreamReader]

    @property
    def name(self) -> str:
        return self.address.stream

    @property
    def group(self) -> str:
        assert self.address.group is not None
        return self.address.group

    def add(self, *records: bytes) -> list[str]:
        return [self.client.xadd(self.name, {ENTRY_FIELD: r}).decode() for r in records]

    def reader(self, consumer: str = "me", **options: int) -> StreamReader:
        reader = StreamReader(self.address, consumer, **{"block_ms": 20, **options})
        self.readers.append(reader)
        return reader

    def pending(self, consumer: str | None = None) -> list[str]:
        """Ids pending in the group (for one consumer), in id order."""
        rows = self.client.xpending_range(self.name, self.group, "-", "+", 10_000, consumername=consumer)
        return [row["message_id"].decode() for row in rows]

    def owners(self) -> dict[str, str]:
        rows = self.client.xpending_range(self.name, self.group, "-", "+", 10_000)
        return {row["message_id"].decode(): row["consumer"].decode() for row in rows}


@pytest.fixture
def stream(redis_server: tuple[str, int]) -> Iterator[Stream]:
    host, port = redis_server
    name, group = f"aiep-test-{uuid.uuid4().hex}", f"aiep-group-{uuid.uuid4().hex}"
    client = redis.Redis(host=host, port=port, db=0)
    made = Stream(StreamAddress.parse(f"redis://{host}:{port}/0?stream={name}&group={group}"), client, [])
    try:
        yield made
    finally:
        for reader in made.readers:
            reader.close()
        client.delete(name)
        client.close()


def read_all(reader: StreamReader, limit: int = 50) -> list[list[tuple[str, bytes | None]]]:
    """Chunks read until the reader returns ``None`` or an empty chunk (nothing new)."""
    chunks = []
    for _ in range(limit):
        chunk = reader.read()
        if not chunk:
            return chunks
        chunks.append(chunk)
    raise AssertionError(f"still reading after {limit} chunks")


def flat(chunks: list[list[tuple[str, bytes | None]]]) -> list[tuple[str, bytes | None]]:
    return [entry for chunk in chunks for entry in chunk]


def key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_a_new_group_reads_from_the_beginning_in_id_order(stream: Stream) -> None:
    records = [f"record {i}".encode() for i in range(7)] + [b"\xff\xfe not utf-8"]
    ids = stream.add(*records)
    stream.client.xadd(stream.name, {b"other": b"field"})  # an entry without the record field
    last = stream.client.xrange(stream.name, "-", "+")[-1][0].decode()
    reader = stream.reader(count=3)
    assert reader.start(None) == 0  # nothing pending in a new group
    chunks = read_all(reader)
    assert [len(c) for c in chunks] == [3, 3, 3]  # count entries at a time
    assert flat(chunks) == [*zip(ids, records, strict=True), (last, None)]
    assert sorted(key(i) for i, _ in flat(chunks)) == [key(i) for i, _ in flat(chunks)]
    # What comes next is read next; nothing is read twice.
    later = stream.add(b"later")
    assert reader.read() == [(later[0], b"later")]
    assert reader.read() == []
    info = {g["name"].decode(): g for g in stream.client.xinfo_groups(stream.name)}
    assert info[stream.group]["last-delivered-id"].decode() == later[0]


def test_ack_removes_entries_from_the_pending_list(stream: Stream) -> None:
    ids = stream.add(b"a", b"b", b"c", b"d")
    reader = stream.reader()
    reader.start(None)
    assert [i for i, _ in flat(read_all(reader))] == ids
    assert stream.pending() == ids  # delivered, not yet acknowledged
    assert reader.ack([ids[0], ids[2]]) == 2
    assert stream.pending() == [ids[1], ids[3]]
    assert reader.ack([ids[0]]) == 0  # no longer pending
    assert reader.ack([]) == 0
    acknowledger = EntryAcknowledger(stream.address)
    try:
        assert acknowledger.ack([pack_entry_id(ids[3]), pack_entry_id(ids[0])]) == 1
        assert acknowledger.ack([]) == 0
    finally:
        acknowledger.close()
    assert stream.pending() == [ids[1]]


def test_a_restart_without_position_reads_again_everything_the_group_delivered(stream: Stream) -> None:
    ids = stream.add(b"a", b"b", b"c")
    first = stream.reader(count=2)
    first.start(None)
    assert [i for i, _ in flat(read_all(first))] == ids
    first.ack([ids[1]])
    later = stream.add(b"d")
    # No restored state: every entry the group was delivered, acknowledged or not, comes again
    # (its results are rewritten), then the new ones.
    again = stream.reader(count=2, min_idle_ms=600_000)
    assert again.start(None) == 3
    assert again.read() == [(ids[0], b"a"), (ids[1], b"b")]
    assert again.read() == [(ids[2], b"c")]
    assert again.read() == [(later[0], b"d")]
    assert stream.owners() == dict.fromkeys([ids[0], ids[2], later[0]], "me")


def test_a_restart_claims_only_others_idle_entries(stream: Stream) -> None:
    ids = stream.add(*(f"r{i}".encode() for i in range(6)))
    other = stream.reader("other")
    other.start(None)
    assert len(flat(read_all(other))) == 6
    # Entries 0, 2 and 4 have been idle ten minutes; 1, 3 and 5 were just delivered.
    stream.client.xclaim(stream.name, stream.group, "other", 0, [ids[0], ids[2], ids[4]], idle=600_000)
    me = stream.reader("me", count=2, min_idle_ms=60_000)
    assert me.start(None) == 6
    assert me.claimed == 3
    assert flat(read_all(me)) == [(i, f"r{n}".encode()) for n, i in enumerate(ids)]
    assert stream.owners() == {
        ids[0]: "me",
        ids[1]: "other",
        ids[2]: "me",
        ids[3]: "other",
        ids[4]: "me",
        ids[5]: "other",
    }
    # min_idle_ms=0: everything pending is claimed.
    everyone = stream.reader("third", count=4, min_idle_ms=0)
    everyone.start(None)
    assert everyone.claimed == 6
    assert set(stream.owners().values()) == {"third"}


def test_a_restart_from_a_position_reads_again_what_the_group_delivered_after_it(stream: Stream) -> None:
    ids = stream.add(*(f"r{i}".encode() for i in range(7)))
    first = stream.reader("me")
    first.start(None)
    delivered = flat(read_all(first))
    assert [i for i, _ in delivered] == ids
    first.ack(ids)  # acknowledged or not, the state after ids[1] is lost
    later = stream.add(b"new 1", b"new 2")
    # Read again in chunks of 2, across several XRANGE pages, up to the last delivered id.
    again = stream.reader("me", count=2)
    assert again.start(ids[1]) == 5
    chunks = read_all(again)
    assert [len(c) for c in chunks] == [2, 2, 1, 2]
    assert flat(chunks) == [*delivered[2:], (later[0], b"new 1"), (later[1], b"new 2")]
    assert again.read() == []


def test_a_restart_from_the_last_delivered_position_reads_only_new_entries(stream: Stream) -> None:
    ids = stream.add(b"a", b"b")
    first = stream.reader("me")
    first.start(None)
    read_all(first)
    later = stream.add(b"c")
    again = stream.reader("me")
    assert again.start(ids[1]) == 0
    assert again.read() == [(later[0], b"c")]
    # A position past what the group delivered reads nothing again either.
    third = stream.reader("me")
    assert third.start(later[0]) == 0


def test_a_bounded_read_ends_at_the_last_entry_present_at_start(stream: Stream) -> None:
    ids = stream.add(*(f"r{i}".encode() for i in range(5)))
    reader = stream.reader(count=3)
    reader.start(None, bounded=True)
    after = stream.add(b"after 1", b"after 2")  # added after start: past the end
    got = []
    for _ in range(10):
        chunk = reader.read()
        if chunk is None:
            break
        got += chunk
    else:
        raise AssertionError("a bounded read never ended")
    assert [i for i, _ in got] == ids
    assert reader.read() is None
    # The second read (3 at a time) was delivered ids[3], ids[4] and after[0]: the entry past the
    # end was not handed on, it stays pending; after[1] was never delivered.
    assert stream.pending() == [*ids, after[0]]
    reader.ack(ids)
    # An unbounded restart without state reads all six delivered again, then the seventh as new.
    again = stream.reader(min_idle_ms=600_000)
    assert again.start(None) == 6
    assert [i for i, _ in flat(read_all(again))] == [*ids, *after]


def test_a_bounded_read_of_an_empty_stream_ends_at_once(stream: Stream) -> None:
    reader = stream.reader()
    assert reader.start(None, bounded=True) == 0
    assert reader.read() is None
    assert stream.client.exists(stream.name)  # the group was made, with its stream


def test_a_bounded_read_ends_though_the_last_entry_was_deleted(stream: Stream) -> None:
    ids = stream.add(b"a", b"b", b"c")
    stream.client.xdel(stream.name, ids[2])  # the stream's last id is still ids[2]'s
    reader = stream.reader()
    reader.start(None, bounded=True)
    got = []
    for _ in range(20):
        chunk = reader.read()
        if chunk is None:
            break
        got += chunk
    else:
        raise AssertionError("a bounded read never ended")
    assert got == [(ids[0], b"a"), (ids[1], b"b")]


def test_a_bounded_read_of_a_stream_whose_entries_were_all_deleted_ends_at_once(stream: Stream) -> None:
    ids = stream.add(b"a", b"b")
    stream.client.xdel(stream.name, *ids)
    reader = stream.reader()
    assert reader.start(None, bounded=True) == 0
    assert reader.read() is None


def test_a_bounded_restart_skips_an_entry_deleted_since(stream: Stream) -> None:
    ids = stream.add(b"a", b"b", b"c")
    first = stream.reader()
    first.start(None)
    read_all(first)
    stream.client.xdel(stream.name, ids[2])  # delivered, pending, then deleted: nothing to read
    again = stream.reader(min_idle_ms=600_000)
    assert again.start(None, bounded=True) == 2
    assert again.read() == [(ids[0], b"a"), (ids[1], b"b")]
    assert again.read() is None


def test_a_bounded_restart_reads_what_was_delivered_then_ends(stream: Stream) -> None:
    ids = stream.add(b"a", b"b", b"c")
    first = stream.reader()
    first.start(None)
    read_all(first)
    first.ack([ids[1]])
    again = stream.reader(min_idle_ms=600_000)
    assert again.start(None, bounded=True) == 3
    assert again.read() == [(ids[0], b"a"), (ids[1], b"b"), (ids[2], b"c")]
    assert again.read() is None


def test_reading_or_acknowledging_needs_a_group(redis_server: tuple[str, int]) -> None:
    host, port = redis_server
    address = StreamAddress.parse(f"redis://:s3cret@{host}:{port}/0?stream=aiep-test-{uuid.uuid4().hex}")
    with pytest.raises(StreamError, match="reading needs &group=NAME") as raised:
        StreamReader(address, "me")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(StreamError, match="acknowledging needs &group=NAME"):
        EntryAcknowledger(address)


def test_an_unreachable_server_is_a_stream_error_without_the_password() -> None:
    address = StreamAddress.parse("redis://:s3cret@127.0.0.1:1/0?stream=s&group=g")
    reader = StreamReader(address, "me")
    try:
        with pytest.raises(StreamError, match="creating the group") as raised:
            reader.start(None)
        assert "s3cret" not in str(raised.value)
    finally:
        reader.close()


ENTRY_IDS = st.tuples(st.integers(0, 2**43 - 1), st.integers(0, 2**SEQ_BITS - 1))


@given(ENTRY_IDS, ENTRY_IDS)
def test_packed_entry_ids_round_trip_and_keep_their_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    text_a, text_b = f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}"
    packed_a, packed_b = pack_entry_id(text_a), pack_entry_id(text_b.encode())
    assert pack_entry_id(text_a.encode()) == packed_a
    assert 0 <= packed_a < 2**63 and 0 <= packed_b < 2**63  # an int64 line_no
    assert unpack_entry_id(packed_a) == text_a and unpack_entry_id(packed_b) == text_b
    assert (packed_a < packed_b) == (a < b) and (packed_a == packed_b) == (a == b)


def test_packing_a_sequence_too_large_is_refused() -> None:
    assert pack_entry_id(f"5-{2**SEQ_BITS - 1}") == (5 << SEQ_BITS) + 2**SEQ_BITS - 1
    with pytest.raises(StreamError, match="sequence part"):
        pack_entry_id(f"5-{2**SEQ_BITS}")


def test_packed_ids_of_real_entries_keep_the_streams_order(stream: Stream) -> None:
    ids = stream.add(*(b"x" for _ in range(50)))
    packed = [pack_entry_id(i) for i in ids]
    assert packed == sorted(packed) and len(set(packed)) == 50
    assert [unpack_entry_id(p) for p in packed] == ids
