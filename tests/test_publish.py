"""`runner.py publish`: a JSONL file into a Redis stream, one entry per line, against the real Redis."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connectors.redis_stream import ENTRY_FIELD, StreamAddress, StreamError
from tests.conftest import run_cli


@pytest.fixture
def stream(redis_server: tuple[str, int]) -> Iterator[tuple[str, redis.Redis]]:
    """A fresh stream name on the shared Redis, deleted afterwards."""
    host, port = redis_server
    name = f"aiep-test-{uuid.uuid4().hex}"
    client = redis.Redis(host=host, port=port, db=0)
    yield f"redis://{host}:{port}/0?stream={name}", client
    client.delete(name)
    client.close()


def entries(client: redis.Redis, url: str) -> list[bytes]:
    name = StreamAddress.parse(url).stream
    return [fields[ENTRY_FIELD] for _, fields in client.xrange(name)]


def test_every_line_arrives_in_order_as_its_raw_bytes(
    tmp_path: Path, stream: tuple[str, redis.Redis]
) -> None:
    url, client = stream
    lines = [f'{{"event_id": "e{i}", "n": {i}}}'.encode() for i in range(2_500)]
    lines[7] = b'{"event_id": "bad-utf8", "x": "\xff\xfe"}'  # not UTF-8: sent as it is
    lines[8] = b"not json at all"
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(lines[:1000]) + b"\n\n   \n" + b"\r\n".join(lines[1000:]) + b"\n")
    result = run_cli("publish", "--input", source, "--to", url + "&group=ignored")
    assert result.returncode == 0, result.stderr
    assert "published 2,500 entries" in result.stdout and "blank lines left out: 2" in result.stdout
    assert entries(client, url) == lines


def test_a_gzip_file_is_read_and_a_second_publish_appends(
    tmp_path: Path, stream: tuple[str, redis.Redis]
) -> None:
    url, client = stream
    source = tmp_path / "events.jsonl.gz"
    source.write_bytes(gzip.compress(b'{"event_id": "a"}\n{"event_id": "b"}\n'))
    for _ in range(2):
        assert run_cli("publish", "--input", source, "--to", url).returncode == 0
    assert entries(client, url) == [b'{"event_id": "a"}', b'{"event_id": "b"}'] * 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0?stream=s", "unknown scheme 'http'"),
        ("redis://127.0.0.1:6379/0", "no stream name"),
        ("redis://127.0.0.1:6379/0?stream=s&streem=t", "unknown parameter 'streem'"),
        ("redis://127.0.0.1:6379/0?stream=a&stream=b", "stream must be given once"),
        ("redis://127.0.0.1:6379/0?stream=", "stream must be given once"),
        ("redis://127.0.0.1/0?stream=s", "malformed"),
        ("redis://127.0.0.1:6379/x?stream=s", "malformed"),
        ("redis://:s3cret@127.0.0.1:99999/0?stream=s", "malformed"),
    ],
)
def test_a_bad_url_exits_2_in_one_line_without_the_password(tmp_path: Path, url: str, message: str) -> None:
    source = tmp_path / "e.jsonl"
    source.write_text('{"event_id": "a"}\n')
    result = run_cli("publish", "--input", source, "--to", url)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "s3cret" not in result.stderr
    with pytest.raises(StreamError, match=message):
        StreamAddress.parse(url)


def test_an_unreachable_server_exits_1_saying_what_was_added(tmp_path: Path) -> None:
    source = tmp_path / "e.jsonl"
    source.write_text('{"event_id": "a"}\n')
    result = run_cli("publish", "--input", source, "--to", "redis://:s3cret@127.0.0.1:1/0?stream=s")
    assert result.returncode == 1
    assert "after 0 entries were added" in result.stderr and "s3cret" not in result.stderr + result.stdout
    assert "s3cret" not in repr(StreamAddress.parse("redis://:s3cret@127.0.0.1:1/0?stream=s"))
