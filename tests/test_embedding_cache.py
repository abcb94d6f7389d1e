"""The embedding cache's contract, held alike by SQLite, Redis, and either behind the LRU.

Real stores only: a SQLite file in ``tmp_path`` and the shared Redis on 127.0.0.1:6379 (each test
uses its own model name, so keys never collide, and deletes its keys after).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from connectors.embedding_cache import (
    SQLITE_TABLE,
    EmbeddingCache,
    EmbeddingCacheError,
    open_embedding_cache,
)

DIM = 384


def unit_vectors(n: int, seed: int) -> np.ndarray:
    """``n`` L2-normalised float32 vectors, as the model gives them."""
    raw = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def content_hashes(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}text {i}".encode()).hexdigest() for i in range(n)]


def bits(vectors: np.ndarray) -> np.ndarray:
    """The float32 bit patterns, so equality means bit-exact (NaN and -0.0 included)."""
    return np.ascontiguousarray(vectors, np.float32).view(np.uint32)


@dataclass
class Store:
    """Opens caches of one kind for one test, and reaches under them as a foreign writer would."""

    kind: str
    spec: str
    lru_entries: int
    model: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex}")
    opened: list[EmbeddingCache] = field(default_factory=list)

    def open(self, model_version: str = "v1", lru_entries: int | None = None) -> EmbeddingCache:
        cache = open_embedding_cache(
            self.spec,
            Path("unused"),
            model=self.model,
            model_version=model_version,
            dim=DIM,
            lru_entries=self.lru_entries if lru_entries is None else lru_entries,
        )
        self.opened.append(cache)
        return cache

    def write_raw(self, content_hash: str, value: bytes, model_version: str = "v1") -> None:
        if self.kind == "redis":
            with redis.Redis.from_url(self.spec) as client:
                client.set(f"aiep:embedding:{self.model}:{model_version}:{content_hash}", value)
            return
        with sqlite3.connect(self.spec) as con:
            con.execute(
                f"INSERT OR REPLACE INTO {SQLITE_TABLE} VALUES (?, ?, ?, ?)",
                (self.model, model_version, content_hash, value),
            )
        con.close()

    def delete_raw(self, hashes: Sequence[str], model_version: str = "v1") -> None:
        if self.kind == "redis":
            with redis.Redis.from_url(self.spec) as client:
                client.delete(*(f"aiep:embedding:{self.model}:{model_version}:{h}" for h in hashes))
            return
        with sqlite3.connect(self.spec) as con:
            con.executemany(
                f"DELETE FROM {SQLITE_TABLE} WHERE model = ? AND model_version = ? AND content_hash = ?",
                [(self.model, model_version, h) for h in hashes],
            )
        con.close()

    def clean_up(self) -> None:
        for cache in self.opened:
            cache.close()
        if self.kind == "redis":
            with redis.Redis.from_url(self.spec) as client:
                keys = list(client.scan_iter(match=f"aiep:embedding:{self.model}:*", count=1000))
                if keys:
                    client.delete(*keys)


@pytest.fixture(params=["sqlite", "redis", "sqlite+lru", "redis+lru"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend, bare and behind an LRU of 10,000 vectors."""
    kind, _, lru = request.param.partition("+")
    if kind == "redis":
        host, port = request.getfixturevalue("redis_server")
        spec = f"redis://{host}:{port}/0"
    else:
        spec = str(tmp_path / "embeddings.sqlite")
    handle = Store(kind, spec, lru_entries=10_000 if lru else 0)
    try:
        yield handle
    finally:
        handle.clean_up()


def assert_one_line(exc: pytest.ExceptionInfo[EmbeddingCacheError], *expected: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --- The contract ------------------------------------------------------------------------------


def test_vectors_round_trip_bit_exactly(store: Store) -> None:
    hashes, vectors = content_hashes(250), unit_vectors(250, seed=1)
    store.open().put_many(hashes, vectors)
    for cache in (store.opened[0], store.open()):  # the writer, and a fresh cache with no memory
        got, found = cache.get_many(hashes)
        assert got.dtype == np.float32 and got.shape == (250, DIM)
        assert found.dtype == np.bool_ and found.all()
        assert np.array_equal(bits(got), bits(vectors))


def test_missing_keys_read_as_not_found_and_zeros(store: Store) -> None:
    cache = store.open()
    hashes, vectors = content_hashes(10), unit_vectors(10, seed=2)
    cache.put_many(hashes[::2], vectors[::2])
    got, found = cache.get_many(hashes)
    assert found.tolist() == [True, False] * 5
    assert np.array_equal(bits(got[::2]), bits(vectors[::2]))
    assert not got[1::2].any()
    assert cache.corrupt == 0


def test_put_overwrites_a_stored_vector(store: Store) -> None:
    cache = store.open()
    hashes = content_hashes(3)
    cache.put_many(hashes, unit_vectors(3, seed=3))
    replacement = unit_vectors(3, seed=4)
    cache.put_many(hashes, replacement)
    for reader in (cache, store.open()):
        got, found = reader.get_many(hashes)
        assert found.all() and np.array_equal(bits(got), bits(replacement))


def test_empty_batches_read_and_write_nothing(store: Store) -> None:
    cache = store.open()
    cache.put_many([], np.zeros((0, DIM), np.float32))
    got, found = cache.get_many([])
    assert got.shape == (0, DIM) and got.dtype == np.float32
    assert found.shape == (0,) and found.dtype == np.bool_


def test_a_new_model_version_is_a_separate_key_space(store: Store) -> None:
    hashes = content_hashes(5)
    old, new = unit_vectors(5, seed=5), unit_vectors(5, seed=6)
    store.open("v1").put_many(hashes, old)
    upgraded = store.open("v2")
    assert not upgraded.get_many(hashes)[1].any()
    upgraded.put_many(hashes, new)
    assert np.array_equal(bits(store.open("v1").get_many(hashes)[0]), bits(old))
    assert np.array_equal(bits(upgraded.get_many(hashes)[0]), bits(new))


def test_a_hash_asked_twice_in_one_batch_is_found_twice(store: Store) -> None:
    cache = store.open()
    [only] = content_hashes(1)
    vector = unit_vectors(1, seed=7)
    cache.put_many([only], vector)
    got, found = cache.get_many([only, only])
    assert found.all() and np.array_equal(bits(got), bits(np.vstack([vector, vector])))


@pytest.mark.parametrize(
    ("vectors", "expected"),
    [
        (np.zeros((2, DIM), np.float32), "not finite unit vectors"),
        (unit_vectors(2, seed=8).astype(np.float64), "got (2, 384) float64"),
        (unit_vectors(3, seed=8), "got (3, 384) float32"),
        (unit_vectors(2, seed=8)[:, :100], "got (2, 100) float32"),
    ],
    ids=["zero-norm", "float64", "too-many-rows", "wrong-dim"],
)
def test_put_refuses_what_would_read_back_as_corrupt(
    store: Store, vectors: np.ndarray, expected: str
) -> None:
    cache = store.open()
    with pytest.raises(ValueError, match=r"embedding cache: ") as exc:
        cache.put_many(content_hashes(2), vectors)
    assert expected in str(exc.value)


# --- Corrupt entries -----------------------------------------------------------------------------


def test_corrupt_entries_read_as_misses_are_counted_and_overwritten(store: Store) -> None:
    cache = store.open()
    hashes, good = content_hashes(6), unit_vectors(6, seed=9)
    cache.put_many(hashes[:1], good[:1])
    nan, doubled, infinite = good[2].copy(), good[3] * 2, good[4].copy()
    nan[7] = np.nan
    infinite[0] = np.inf
    store.write_raw(hashes[1], good[1, :-1].tobytes())  # one float short
    store.write_raw(hashes[2], nan.tobytes())
    store.write_raw(hashes[3], doubled.tobytes())  # norm 2
    store.write_raw(hashes[4], infinite.tobytes())
    store.write_raw(hashes[5], b"")

    got, found = cache.get_many(hashes)
    assert found.tolist() == [True, False, False, False, False, False]
    assert not got[1:].any()
    assert cache.corrupt == 5

    cache.put_many(hashes[1:], good[1:])  # what the stage does: re-embed, then store
    for reader in (cache, store.open()):
        got, found = reader.get_many(hashes)
        assert found.all() and np.array_equal(bits(got), bits(good))
    assert cache.corrupt == 5


@pytest.mark.parametrize("store", ["sqlite+lru", "redis+lru"], indirect=True)
def test_lru_serves_what_it_remembers_and_forgets_the_least_recent(store: Store) -> None:
    cache = store.open(lru_entries=2)
    hashes, vectors = content_hashes(3), unit_vectors(3, seed=10)
    cache.put_many(hashes[:2], vectors[:2])  # remembered: 0, 1
    cache.get_many(hashes[:1])  # 0 is now the most recent
    cache.put_many(hashes[2:], vectors[2:])  # remembered: 0, 2 (1 forgotten)
    store.delete_raw(hashes)  # only the LRU can answer now

    got, found = cache.get_many(hashes)
    assert found.tolist() == [True, False, True]
    assert np.array_equal(bits(got[[0, 2]]), bits(vectors[[0, 2]]))


# --- Several processes at once ----------------------------------------------------------------------

KEYS, BATCH = 3000, 100


def write_all_in_batches(
    cache: EmbeddingCache, hashes: list[str], vectors: np.ndarray, order_seed: int, start: Any
) -> None:
    """A worker: every key, in batches of BATCH in its own order, each batch read back at once."""
    order = np.random.default_rng(order_seed).permutation(len(hashes))
    start.wait(timeout=60)
    for first in range(0, len(order), BATCH):
        rows = order[first : first + BATCH]
        batch = [hashes[i] for i in rows]
        cache.put_many(batch, vectors[rows])
        got, found = cache.get_many(batch)
        assert found.all() and np.array_equal(bits(got), bits(vectors[rows]))


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_two_processes_writing_the_same_keys_at_once_both_succeed(store: Store) -> None:
    hashes, vectors = content_hashes(KEYS), unit_vectors(KEYS, seed=11)
    cache = store.open()  # opened here, used, then pickled to the workers as the runner does
    cache.get_many(hashes[:1])
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    workers = [
        spawn.Process(target=write_all_in_batches, args=(cache, hashes, vectors, seed, start))
        for seed in (1, 2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0, 0], "a writer failed: see its traceback above"

    got, found = store.open().get_many(hashes)
    assert found.all() and np.array_equal(bits(got), bits(vectors))


# --- Opening ---------------------------------------------------------------------------------------


def open_cache(spec: str | None, default_path: Path) -> EmbeddingCache:
    """A cache opened as the stage opens one."""
    return open_embedding_cache(spec, default_path, model="m", model_version="v1", dim=DIM, lru_entries=16)


def test_no_spec_opens_sqlite_at_the_default_path_creating_its_folders(tmp_path: Path) -> None:
    default = tmp_path / "out" / "cache" / "embeddings.sqlite"
    cache = open_cache(None, default)
    cache.put_many(content_hashes(1), unit_vectors(1, seed=12))
    cache.close()
    with sqlite3.connect(default) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        [table_sql] = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (SQLITE_TABLE,)).fetchone()
        assert con.execute(f"SELECT count(*) FROM {SQLITE_TABLE}").fetchone() == (1,)
    con.close()
    assert "WITHOUT ROWID" in table_sql and "PRIMARY KEY (model, model_version, content_hash)" in table_sql


def test_a_directory_spec_opens_embeddings_sqlite_inside_it(tmp_path: Path) -> None:
    open_cache(str(tmp_path), tmp_path / "default.sqlite").close()
    assert (tmp_path / "embeddings.sqlite").is_file()
    assert not (tmp_path / "default.sqlite").exists()


def test_a_path_under_a_regular_file_fails_to_open_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    path = tmp_path / "plain" / "embeddings.sqlite"
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache(str(path), tmp_path)
    assert_one_line(exc, str(path), "File exists")


def test_a_file_that_is_not_sqlite_fails_to_open_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(np.random.default_rng(13).bytes(8192))
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache(str(path), tmp_path)
    assert_one_line(exc, str(path), "file is not a database")


def test_a_redis_server_not_listening_fails_to_open_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache("redis://127.0.0.1:1/0", tmp_path)
    assert_one_line(exc, "redis://127.0.0.1:1/0", "Connection refused")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:port/0",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:99999/0",
        "redis:///0",
        "memcached://127.0.0.1:11211/0",
    ],
)
def test_a_malformed_redis_url_fails_to_open_in_one_line(tmp_path: Path, url: str) -> None:
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache(url, tmp_path)
    assert_one_line(exc, url, "expected redis://HOST:PORT/DB")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2secret@127.0.0.1:1/0",
        "redis://app:hunter2secret@127.0.0.1:port/0",
        "redis://app:hunter2@secret@127.0.0.1:1/0",
        "redis://app:hunter2%40secret@127.0.0.1:1/0",
    ],
)
def test_a_redis_password_never_reaches_the_message(tmp_path: Path, url: str) -> None:
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache(url, tmp_path)
    message = assert_one_line(exc, "127.0.0.1", "***")
    assert "hunter2" not in message and "secret" not in message


def test_a_password_the_redis_server_refuses_is_reported_without_it(
    tmp_path: Path, redis_server: tuple[str, int]
) -> None:
    host, port = redis_server
    with pytest.raises(EmbeddingCacheError) as exc:
        open_cache(f"redis://nobody:hunter2secret@{host}:{port}/0", tmp_path)
    assert "hunter2" not in assert_one_line(exc, f"redis://nobody:***@{host}:{port}/0", "AuthenticationError")
