"""The persistent embedding cache: a text is embedded once, ever, per model version.

Vectors are keyed by ``(model, model_version, content_hash)``, so a new model version starts an
empty key space instead of serving vectors from another geometry. Two backends, one contract
(:class:`EmbeddingCache`), chosen by :func:`open_embedding_cache`:

- **SQLite** (the default, one file beside the outputs): a ``WITHOUT ROWID`` table keyed by the
  triple, the vector a BLOB of ``dim`` little-endian float32. WAL mode lets readers go on while
  one process writes, and a busy timeout plus ``BEGIN IMMEDIATE`` (one transaction per batch)
  makes several processes writing the same keys at once queue instead of failing; a lock that
  outlasts the timeout is retried by the one retry policy (:mod:`connectors.retry`).
- **Redis** (``redis://HOST:PORT/DB``): key ``aiep:embedding:{model}:{model_version}:{hash}``,
  value the raw float32 bytes, no TTL; one ``MGET`` per read, one pipeline of ``SET`` per write.

An entry is **corrupt** when its bytes cannot be the vector this cache stores: the wrong length,
a NaN or infinity, or an L2 norm more than 1e-3 away from 1 (the model's vectors are
normalised). A corrupt entry is never returned: it reads as a miss, is counted in ``corrupt``, and
the caller's re-embedding overwrites it. ``put_many`` refuses such vectors in the first place.

An in-process LRU (:class:`LruEmbeddingCache`) sits in front of either backend, so hot texts
cost no round trip. Stores open their connection lazily, per process and thread, and leave it
out when pickled: a cache opened on the driver can be shipped to a worker before use.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import cachetools
import numpy as np

from connectors.database import describe_error
from connectors.database_url import redact
from connectors.retry import transient_retry

if TYPE_CHECKING:  # redis loads where a Redis cache is used, not in every worker process
    import redis

log = logging.getLogger("aiep.embedding_cache")

#: How far from 1 a stored vector's L2 norm may be before the entry counts as corrupt.
NORM_TOLERANCE = 1e-3
#: Content hashes per ``SELECT ... IN (...)``: well under SQLite's bound-variable limit.
SQLITE_CHUNK = 500
SQLITE_TABLE = "embeddings"
#: The file an existing directory given as the cache's location holds.
SQLITE_FILE_NAME = "embeddings.sqlite"

T = TypeVar("T")
"""What a retried store call returns."""


class EmbeddingCacheError(Exception):
    """The cache cannot be opened or used; the message is one line for the operator (never a password)."""


class EmbeddingCache(Protocol):
    """Batched get and put of unit vectors by content hash, for one model version."""

    @property
    def corrupt(self) -> int:
        """Stored entries found unreadable so far (each read that met one), treated as misses."""
        ...

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors ``(len(hashes), dim)`` float32, found ``(len(hashes),)`` bool); misses are zeros."""
        ...

    def put_many(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store (overwrite) ``vectors``, ``(len(hashes), dim)`` float32 of L2 norm 1."""
        ...

    def close(self) -> None:
        """Release connections; the cache reopens them if used again."""
        ...


def open_embedding_cache(
    spec: str | None, default_path: Path, *, model: str, model_version: str, dim: int, lru_entries: int
) -> EmbeddingCache:
    """The cache ``spec`` names, checked to work, behind an LRU of ``lru_entries`` vectors (0: none).

    ``None`` is a SQLite file at ``default_path`` (parent folders created); ``redis://HOST:PORT/DB``
    is Redis; any other string is a SQLite file at that path (an existing directory: its
    ``embeddings.sqlite``). Raises EmbeddingCacheError, one line, when it cannot be opened.
    """
    store: SqliteEmbeddingStore | RedisEmbeddingStore
    if spec is not None and re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", spec):
        store = RedisEmbeddingStore(spec, model=model, model_version=model_version, dim=dim)
    else:
        path = default_path if spec is None else Path(spec)
        path = path / SQLITE_FILE_NAME if path.is_dir() else path
        store = SqliteEmbeddingStore(path, model=model, model_version=model_version, dim=dim)
    store.check()
    return LruEmbeddingCache(store, lru_entries) if lru_entries > 0 else store


class SqliteEmbeddingStore:
    """Vectors in one SQLite file, safe with several processes reading and writing it at once."""

    def __init__(
        self, path: Path, *, model: str, model_version: str, dim: int, retry_attempts: int = 8
    ) -> None:
        self.path, self.model, self.model_version, self.dim = Path(path), model, model_version, dim
        self.corrupt = 0
        self._retry_attempts = retry_attempts
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def check(self) -> None:
        """Open (creating) the file and table and read from it; EmbeddingCacheError if that fails."""
        with self._errors():
            transient_retry(self._retry_attempts)(self._connection)

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        blobs: dict[str, bytes] = {}
        with self._errors():
            for start in range(0, len(hashes), SQLITE_CHUNK):
                chunk = list(hashes[start : start + SQLITE_CHUNK])
                blobs.update(transient_retry(self._retry_attempts)(self._read, chunk))
        vectors, found, corrupt = decode_vectors([blobs.get(h) for h in hashes], self.dim)
        self.corrupt += _report_corrupt(corrupt, str(self.path))
        return vectors, found

    def put_many(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        rows = [
            (self.model, self.model_version, h, b)
            for h, b in zip(hashes, encode_vectors(hashes, vectors, self.dim), strict=True)
        ]
        if rows:
            with self._errors():
                transient_retry(self._retry_attempts)(self._write, rows)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    def _read(self, chunk: list[str]) -> dict[str, bytes]:
        marks = ",".join("?" * len(chunk))
        rows = self._connection().execute(
            f"SELECT content_hash, vector FROM {SQLITE_TABLE} "
            f"WHERE model = ? AND model_version = ? AND content_hash IN ({marks})",
            [self.model, self.model_version, *chunk],
        )
        return dict(rows.fetchall())

    def _write(self, rows: list[tuple[str, str, str, bytes]]) -> None:
        conn = self._connection()
        # IMMEDIATE takes the write lock up front: a reader that later wants to write cannot
        # deadlock with another, which SQLite would report at once, without waiting.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT OR REPLACE INTO {SQLITE_TABLE} VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork or a thread: one per process and thread, on first use.
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.conn, self._local.pid = self._connect(), os.getpid()
        conn: sqlite3.Connection = self._local.conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("%s: journal mode %s, not WAL; readers will wait for writers", self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SQLITE_TABLE} (model TEXT NOT NULL, "
                "model_version TEXT NOT NULL, content_hash TEXT NOT NULL, vector BLOB NOT NULL, "
                "PRIMARY KEY (model, model_version, content_hash)) WITHOUT ROWID"
            )
            conn.execute(f"SELECT 1 FROM {SQLITE_TABLE} LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise EmbeddingCacheError(f"embedding cache {self.path}: {describe_error(exc)}") from exc


class RedisEmbeddingStore:
    """Vectors in Redis, one key per ``(model, model_version, content_hash)``, kept forever."""

    def __init__(
        self, url: str, *, model: str, model_version: str, dim: int, retry_attempts: int = 4
    ) -> None:
        self.url, self.shown, self.dim = url, redact(url), dim
        self.corrupt = 0
        self._prefix = f"aiep:embedding:{model}:{model_version}:"
        self._retry_attempts = retry_attempts
        self._client: redis.Redis | None = None
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise EmbeddingCacheError(
                f"embedding cache {self.shown}: unknown scheme {parts.scheme!r}; expected redis://HOST:PORT/DB"
            )
        try:
            well_formed = bool(parts.hostname) and parts.port is not None
        except ValueError:  # a port that is not a number in 0..65535
            well_formed = False
        if not well_formed or not re.fullmatch(r"/\d+", parts.path) or parts.query or parts.fragment:
            raise EmbeddingCacheError(
                f"embedding cache {self.shown}: malformed; expected redis://HOST:PORT/DB"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def check(self) -> None:
        """PING the server; EmbeddingCacheError if it does not answer."""
        self._call(lambda client: client.ping())

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        keys = [self._prefix + h for h in hashes]
        blobs = cast("list[bytes | None]", self._call(lambda client: client.mget(keys)) if keys else [])
        vectors, found, corrupt = decode_vectors(blobs, self.dim)
        self.corrupt += _report_corrupt(corrupt, self.shown)
        return vectors, found

    def put_many(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        blobs = encode_vectors(hashes, vectors, self.dim)

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            for content_hash, blob in zip(hashes, blobs, strict=True):
                pipe.set(self._prefix + content_hash, blob)
            pipe.execute()

        if blobs:
            self._call(write)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, command: Callable[[redis.Redis], T]) -> T:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if self._client is None:
            # No retries inside the client: tenacity (connectors.retry) is the one retry policy.
            self._client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=5,
                socket_timeout=30,
                retry=Retry(NoBackoff(), 0),
            )
        client = self._client
        try:
            return transient_retry(self._retry_attempts)(command, client)
        except redis.RedisError as exc:
            raise EmbeddingCacheError(
                f"embedding cache {self.shown}: {describe_error(exc, self.url)}"
            ) from exc


class LruEmbeddingCache:
    """An in-process LRU of ``entries`` vectors in front of a backend; writes go through to it.

    Not thread-safe (neither is cachetools): one per worker thread.
    """

    def __init__(self, backend: EmbeddingCache, entries: int) -> None:
        self.backend = backend
        self._lru: cachetools.LRUCache[str, np.ndarray] = cachetools.LRUCache(maxsize=entries)

    @property
    def corrupt(self) -> int:
        return self.backend.corrupt

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        hits = {i: vector for i, h in enumerate(hashes) if (vector := self._lru.get(h)) is not None}
        missing = [i for i in range(len(hashes)) if i not in hits]
        # Asked even when nothing is missing: an empty ask costs no round trip and gives ``dim``.
        fetched, fetched_found = self.backend.get_many([hashes[i] for i in missing])
        vectors = np.zeros((len(hashes), fetched.shape[1]), np.float32)
        found = np.ones(len(hashes), bool)
        if hits:
            vectors[list(hits)] = np.stack(list(hits.values()))
        vectors[missing], found[missing] = fetched, fetched_found
        for i in np.asarray(missing, np.intp)[fetched_found]:
            self._lru[hashes[i]] = vectors[i].copy()
        return vectors, found

    def put_many(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        self.backend.put_many(hashes, vectors)
        for content_hash, vector in zip(hashes, vectors, strict=True):
            self._lru[content_hash] = vector.copy()

    def close(self) -> None:
        self._lru.clear()
        self.backend.close()


def encode_vectors(hashes: Sequence[str], vectors: np.ndarray, dim: int) -> list[bytes]:
    """Each row of ``vectors`` as ``dim`` little-endian float32; ValueError for a batch that is not
    ``(len(hashes), dim)`` float32 unit vectors (it would read back as corrupt)."""
    if vectors.dtype != np.float32 or vectors.shape != (len(hashes), dim):
        raise ValueError(
            f"embedding cache: expected vectors ({len(hashes)}, {dim}) float32 for {len(hashes)} hashes; "
            f"got {vectors.shape} {vectors.dtype}"
        )
    bad = np.flatnonzero(~_is_unit(vectors))
    if bad.size:
        raise ValueError(
            f"embedding cache: {bad.size} vector(s) are not finite unit vectors, the first for "
            f"content_hash {hashes[bad[0]]} (norm {np.linalg.norm(vectors[bad[0]].astype(np.float64))})"
        )
    data = np.ascontiguousarray(vectors, "<f4").tobytes()
    width = 4 * dim
    return [data[i * width : (i + 1) * width] for i in range(len(hashes))]


def decode_vectors(blobs: Sequence[bytes | None], dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(vectors, found, corrupt) from stored values, ``None`` for absent; checked in one pass.

    >>> vectors, found, corrupt = decode_vectors([np.float32([0.6, 0.8]).tobytes(), None, b"xx"], 2)
    >>> vectors.tolist(), found.tolist(), corrupt
    ([[0.6000000238418579, 0.800000011920929], [0.0, 0.0], [0.0, 0.0]], [True, False, False], 1)
    """
    width = 4 * dim
    present = np.fromiter((b is not None for b in blobs), bool, len(blobs))
    sized = np.fromiter((b is not None and len(b) == width for b in blobs), bool, len(blobs))
    found = np.zeros(len(blobs), bool)
    vectors = np.zeros((len(blobs), dim), np.float32)
    if sized.any():
        joined = b"".join(b for b in blobs if b is not None and len(b) == width)
        rows = np.frombuffer(joined, "<f4").reshape(-1, dim)
        unit = _is_unit(rows)
        found[np.flatnonzero(sized)[unit]] = True
        vectors[found] = rows[unit]
    return vectors, found, int((present & ~found).sum())


def _is_unit(rows: np.ndarray) -> np.ndarray:
    """Which rows are finite with an L2 norm within NORM_TOLERANCE of 1."""
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.square(rows, dtype=np.float64).sum(axis=1))
    result: np.ndarray = np.isfinite(rows).all(axis=1) & (np.abs(norms - 1.0) <= NORM_TOLERANCE)
    return result


def _report_corrupt(count: int, where: str) -> int:
    if count:
        log.warning("%s: %d corrupt embedding(s) read as misses; they will be re-embedded", where, count)
    return count
