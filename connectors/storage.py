"""Where a run's files live: a local folder or an object store (``s3://``, ``gs://``), through ``pyarrow.fs``.

``pyarrow.fs`` rather than fsspec or Beam's ``FileSystems``: pyarrow already reads and writes every
Parquet and Arrow file here, its S3 and GCS filesystems ship inside the pyarrow wheel (no new
dependency), and they read the standard environment themselves (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``; for
GCS, ``GOOGLE_APPLICATION_CREDENTIALS``). Beam's ``FileSystems`` would tie connectors to an engine.

Credentials never travel in a URL: one that holds any (``s3://KEY:SECRET@bucket/…``) is refused,
shown redacted, so no secret can reach a file name, a dead letter's source, a summary or a log.
A URL names a bucket and a key prefix, nothing else (no ``?query``). A worker builds its own
filesystem from the URL and its own environment: no filesystem object, and so no credential, is
pickled into a pipeline.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pyarrow as pa
import pyarrow.fs as pafs

from connectors.database_url import redact

log = logging.getLogger("aiep.storage")

#: URL schemes read as object stores: S3 (and S3-compatible servers through ``AWS_ENDPOINT_URL``)
#: and Google Cloud Storage.
OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs"})
#: How many bytes a reader of an object asks for at a time: each read of an object is a request.
READ_BUFFER_BYTES = 4 << 20
#: Environment variables whose values are secrets: hidden from any message this module makes.
SECRET_ENVIRONMENT = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
#: A bucket name as S3 and GCS allow them (lowercase, digits, ``.``, ``-``; GCS also ``_``).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]")


class StorageError(OSError):
    """An object-store URL is unusable, or its store cannot be reached; one line, secrets hidden."""


def is_object_store(where: str | Path) -> bool:
    """Whether ``where`` is an object-store URL (``s3://…``, ``gs://…``) rather than a local path.

    >>> is_object_store("s3://bucket/in/events.jsonl"), is_object_store("data/events.jsonl")
    (True, False)
    """
    found = _SCHEME.match(where) if isinstance(where, str) else None
    return found is not None and found.group(1).lower() in OBJECT_STORE_SCHEMES


def hide_secrets(text: str) -> str:
    """``text`` with the secrets the environment holds for object stores replaced by ``***``."""
    for name in SECRET_ENVIRONMENT:
        secret = os.environ.get(name, "")
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def describe(exc: BaseException) -> str:
    """An object store's error as one line, secrets hidden."""
    return " ".join(hide_secrets(str(exc) or type(exc).__name__).split())


def split_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)`` of an object-store URL, or StorageError saying what is wrong.

    >>> split_url("s3://bucket/out/")
    ('s3', 'bucket', 'out')
    >>> split_url("s3://AKIA:s3cr3t@bucket/out")
    Traceback (most recent call last):
    ...
    connectors.storage.StorageError: s3://AKIA:***@bucket/out holds credentials: a URL never carries \
them; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (GCS: GOOGLE_APPLICATION_CREDENTIALS)
    """
    shown = redact(url)
    found = _SCHEME.match(url)
    scheme = found.group(1).lower() if found else ""
    if scheme not in OBJECT_STORE_SCHEMES:
        raise StorageError(f"{shown} is not an object-store URL: expected s3://BUCKET/KEY or gs://BUCKET/KEY")
    assert found is not None
    bucket, _, key = url[found.end() :].partition("/")
    if "@" in url[found.end() :] and not _BUCKET.fullmatch(bucket):
        raise StorageError(
            f"{shown} holds credentials: a URL never carries them; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (GCS: GOOGLE_APPLICATION_CREDENTIALS)"
        )
    if not _BUCKET.fullmatch(bucket):
        raise StorageError(f"{shown} names no bucket: expected {scheme}://BUCKET/KEY")
    if "?" in key or "#" in key:
        raise StorageError(
            f"{shown} holds '?' or '#': options are not read from a URL (the endpoint comes from "
            "AWS_ENDPOINT_URL), and such keys are not supported"
        )
    key = key.strip("/")
    if any(part in (".", "..") for part in key.split("/")):
        raise StorageError(f"{shown} holds a '.' or '..' segment: name the key as it is stored")
    return scheme, bucket, key


@functools.cache
def _filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """The filesystem of one bucket, made once per process (an S3 one resolves the bucket's region
    unless ``AWS_ENDPOINT_URL`` names a server)."""
    # S3: a file smaller than an upload part goes in one PUT when it is closed, not in the three
    # requests of a multipart upload; a refusal then shows at close, where a write fails anyway.
    options = "?allow_delayed_open=true" if scheme == "s3" else ""
    try:
        filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}{options}")
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot reach {scheme}://{bucket}: {describe(exc)}") from None
    return filesystem


@dataclass(frozen=True)
class Location:
    """A folder, on the local disk or in an object store, and the ``pyarrow.fs`` filesystem that
    reaches it. ``url`` is how it is shown: an absolute path, or ``scheme://bucket/prefix``.

    Build it with :meth:`of`; it holds no filesystem, so it pickles as a string.
    """

    url: str

    @classmethod
    def of(cls, where: str | Path) -> Location:
        """The folder ``where`` names: an object-store URL (checked) or a local path (made absolute)."""
        if is_object_store(where):
            scheme, bucket, key = split_url(str(where))
            return cls(f"{scheme}://{bucket}/{key}".rstrip("/"))
        return cls(str(Path(where).resolve()))

    @property
    def is_object_store(self) -> bool:
        return is_object_store(self.url)

    @property
    def filesystem(self) -> pafs.FileSystem:
        if self.is_object_store:
            scheme, bucket, _ = split_url(self.url)
            return _filesystem(scheme, bucket)
        return pafs.LocalFileSystem()

    def path(self, relative: str = "") -> str:
        """The filesystem path of ``relative`` (``/``-separated) under this folder."""
        root = self.url.split("://", 1)[1] if self.is_object_store else self.url
        return f"{root}/{relative}" if relative else root

    def show(self, relative: str = "") -> str:
        """``relative`` under this folder, as an operator reads it (a path, or a URL)."""
        return f"{self.url}/{relative}" if relative else self.url

    def relative(self, path: str) -> str:
        """The inverse of :meth:`path`: where a filesystem path lies under this folder."""
        return path[len(self.path()) + 1 :]

    def write_atomically(self, relative: str, write: Callable[[pa.NativeFile], object]) -> str:
        """Write the file ``relative`` with ``write(stream)`` so that it appears whole or not at all,
        replacing any file of that name; return its filesystem path.

        The file is written under a hidden temporary name beside it (``.NAME.<pid>-<id>.tmp``), then
        moved to its name: on a local disk a rename; in an object store a server-side copy (S3
        CopyObject, GCS rewrite) and the temporary object's deletion. The store publishes the copy as
        one object when it completes, so a reader never sees half a file. Writing the final key
        directly would not be safe: pyarrow's output stream completes its upload whenever it is
        closed, also after its writer failed half-way (Python cannot abort it), which would publish
        half a file under the final name. A failed write deletes its temporary file; a killed one
        leaves it to :meth:`remove_hidden`, which the next run calls under the output's lock.
        """
        filesystem = self.filesystem
        final = self.path(relative)
        folder, name = posixpath.split(final)
        temporary = f"{folder}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        if not self.is_object_store:  # an object store has no folders to make
            filesystem.create_dir(folder, recursive=True)
        try:
            with filesystem.open_output_stream(temporary) as stream:
                write(stream)
            filesystem.move(temporary, final)
        except BaseException:
            try:
                if filesystem.get_file_info(temporary).type != pafs.FileType.NotFound:
                    filesystem.delete_file(temporary)
            except OSError as cleanup:  # the write's own error is the one to report
                log.warning("cannot delete %s (the next run will): %s", temporary, describe(cleanup))
            raise
        return final

    def files(self, pattern: str) -> list[pafs.FileInfo]:
        """The files under this folder whose relative path matches the glob ``pattern`` (``*``, ``?``,
        ``[…]`` within a segment; ``**`` for any number of segments), sorted by path. As with
        :func:`glob.glob`, a segment starting with ``.`` matches only a pattern segment that does."""
        return [info for info in self._listing(pattern) if info.type == pafs.FileType.File]

    def folders(self, pattern: str) -> list[pafs.FileInfo]:
        """The folders (in an object store: key prefixes) matching ``pattern``, as :meth:`files`."""
        return [info for info in self._listing(pattern) if info.type == pafs.FileType.Directory]

    def _listing(self, pattern: str) -> list[pafs.FileInfo]:
        wanted = pattern.split("/")
        fixed = 0
        while fixed < len(wanted) - 1 and not _has_magic(wanted[fixed]):
            fixed += 1
        base = "/".join([self.path(), *wanted[:fixed]])
        rest = wanted[fixed:]
        # ``**`` matches any depth, also as the last segment (``in/**``): list the whole subtree.
        recursive = len(rest) > 1 or "**" in rest
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
        try:
            found = self.filesystem.get_file_info(selector)
        except NotADirectoryError:
            return []
        return sorted(
            (info for info in found if glob_match(info.path[len(base) + 1 :].split("/"), rest)),
            key=lambda info: info.path,
        )

    def delete(self, path: str) -> None:
        """Delete the file at the filesystem ``path``."""
        self.filesystem.delete_file(path)

    def remove_if_empty(self, folder: str) -> None:
        """Delete the folder at the filesystem path ``folder`` when nothing is left in it (in an object
        store: the zero-byte marker ``pyarrow.fs`` leaves for a prefix whose last object went)."""
        filesystem = self.filesystem
        if not filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True)):
            filesystem.delete_dir(folder)

    def remove_hidden(self, pattern: str) -> list[str]:
        """Delete the files matching ``pattern`` (hidden temporary files a killed run left); return
        their paths. Call it only while holding the output's lock: then no other run writes one."""
        removed = []
        for info in self.files(pattern):
            self.delete(info.path)
            removed.append(info.path)
        return removed

    def store_time(self) -> float:
        """Now, by the clock that stamps files here (epoch seconds): the modification time of a probe
        file written and deleted again. Also proves the folder writable: OSError if it is not."""
        filesystem = self.filesystem
        if not self.is_object_store:
            filesystem.create_dir(self.path(), recursive=True)
        probe = self.path(f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        filesystem.open_output_stream(probe).close()
        try:
            return filesystem.get_file_info(probe).mtime_ns / 1e9
        finally:
            self.delete(probe)


def _has_magic(segment: str) -> bool:
    return any(ch in segment for ch in "*?[")


def glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Whether path segments ``parts`` match glob segments ``pattern``, as ``glob.glob(…,
    recursive=True)`` matches them: ``**`` is any number of segments; hidden ones match only a
    pattern segment that starts with ``.``.

    >>> glob_match(["in", "day1", "a.jsonl"], ["in", "**", "*.jsonl"])
    True
    >>> glob_match(["in", ".part-x.tmp"], ["in", "*"]), glob_match(["in", ".part-x.tmp"], ["in", ".part-*"])
    (False, True)
    """
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        for skip in range(len(parts) + 1):
            if glob_match(parts[skip:], rest):
                return True
            if skip < len(parts) and parts[skip].startswith("."):
                return False
        return False
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], head)
        and (not parts[0].startswith(".") or head.startswith("."))
        and glob_match(parts[1:], rest)
    )


def expand(pattern: str) -> list[str]:
    """The object URLs an input ``pattern`` names (a URL, or one with glob characters in its key),
    sorted; StorageError when it matches nothing or names no object."""
    scheme, bucket, key = split_url(pattern)
    place = Location(f"{scheme}://{bucket}")
    if not _has_magic(key):
        try:
            info = place.filesystem.get_file_info(place.path(key))
        except OSError as exc:
            raise StorageError(f"cannot read input {pattern!r}: {describe(exc)}") from None
        if info.type != pafs.FileType.File:
            raise StorageError(f"input {pattern!r} is not a readable file")
        return [place.show(key)]
    try:
        found = [place.show(place.relative(info.path)) for info in place.files(key)]
    except OSError as exc:
        raise StorageError(f"cannot list input {pattern!r}: {describe(exc)}") from None
    if not found:
        raise StorageError(f"no input matches {pattern!r}")
    return found


def _object(url: str) -> tuple[pafs.FileSystem, str]:
    scheme, bucket, key = split_url(url)
    return _filesystem(scheme, bucket), f"{bucket}/{key}"


@contextmanager
def open_binary(path: str) -> Iterator[io.BufferedIOBase]:
    """A local file or an object, opened for buffered, seekable binary reads.

    An object is read in requests of ``READ_BUFFER_BYTES`` (a ranged GET each), never whole.
    """
    if not is_object_store(path):
        with open(path, "rb") as local:
            yield local
        return
    filesystem, key = _object(path)
    raw = filesystem.open_input_file(key)
    # A NativeFile reads like a raw file; the buffer turns readline() into a few large requests.
    with io.BufferedReader(cast(io.RawIOBase, raw), buffer_size=READ_BUFFER_BYTES) as buffered:
        yield buffered


def parquet_source(path: str) -> tuple[str, pafs.FileSystem | None]:
    """``(path, filesystem)`` as ``pyarrow.parquet`` opens a local file or an object."""
    if not is_object_store(path):
        return path, None
    filesystem, key = _object(path)
    return key, filesystem


def read_at_most(url: str, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of the object at ``url`` (FileNotFoundError if none)."""
    filesystem, key = _object(url)
    with filesystem.open_input_stream(key) as stream:
        return bytes(stream.read(limit))
