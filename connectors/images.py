"""Output images named by path: read them from the input's folder, and never from outside it.

The folder is a local one (:class:`FolderImageLoader`) or a key prefix in an object store, for an
input read from one (:class:`StoreImageLoader`); :func:`image_loader` picks the one a folder needs.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from connectors import storage
from transforms.dead_letter import ContractViolation, Reason
from transforms.event_batch import ImageLoader


def image_loader(base_dir: str, max_bytes: int) -> ImageLoader:
    """The loader of images relative to ``base_dir``: a local folder or an object-store prefix."""
    if storage.is_object_store(base_dir):
        return StoreImageLoader(base_dir, max_bytes)
    return FolderImageLoader(base_dir, max_bytes)


def image_location(base_dir: str, relative: str) -> str:
    """Where an image named ``relative`` to ``base_dir`` lies, as ``image_loader`` of its folder
    reads it again by its base name (validation already checked that it stays inside)."""
    if storage.is_object_store(base_dir):
        return f"{base_dir.rstrip('/')}/{posixpath.normpath(relative)}"
    return os.path.join(base_dir, relative)


def _check_relative(relative: str) -> str:
    """``relative`` shown for a detail; ContractViolation if it cannot name a file below a folder."""
    shown = repr(relative[:200])
    if "\x00" in relative:
        raise ContractViolation(Reason.INVALID_IMAGE, f"output.image.path {shown} holds a NUL byte")
    if relative.endswith(("/", os.sep)):
        raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"{shown} names a folder, not a file")
    if os.path.isabs(relative):
        raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{shown} is not relative")
    return shown


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: opening a FIFO never waits


@dataclass(frozen=True)
class FolderImageLoader:
    """Reads ``output.image.path`` relative to ``base_dir`` (the input file's folder).

    - A path that is absolute, climbs out with ``..``, or resolves outside through a symlink:
      ``path_outside_input``.
    - No file there: ``image_not_found``.
    - Something there that can't be read as an image file (a FIFO, a directory, a device, a
      symlink loop, a name too long, no permission): ``image_unreadable``. Only regular files are
      read, so a FIFO can never hang the run, and never more than ``max_bytes + 1`` bytes.
    """

    base_dir: str
    max_bytes: int

    def __call__(self, relative: str) -> bytes:
        shown = _check_relative(relative)
        root = os.path.realpath(self.base_dir)
        resolved = os.path.realpath(os.path.join(root, relative))  # a loop resolves no further
        if os.path.commonpath([root, resolved]) != root:
            raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{shown} leaves the input's folder")
        try:
            fd = os.open(resolved, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"no file {shown}") from None
        except OSError as exc:
            raise ContractViolation(Reason.IMAGE_UNREADABLE, f"{shown}: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise ContractViolation(Reason.IMAGE_UNREADABLE, f"{shown} is {_kind(mode)}, not a regular file")
        with os.fdopen(fd, "rb") as fh:
            try:
                data = fh.read(self.max_bytes + 1)
            except OSError as exc:
                raise ContractViolation(Reason.IMAGE_UNREADABLE, f"{shown}: {exc.strerror}") from None
        return _whole(data, shown, self.max_bytes)


@dataclass(frozen=True)
class StoreImageLoader:
    """Reads ``output.image.path`` relative to ``base_url``, an input's folder in an object store
    (``s3://bucket/in`` for ``s3://bucket/in/events.jsonl``), with :class:`FolderImageLoader`'s
    reasons. The path is resolved as a local one would be (``a/../b`` is ``b``); one that climbs
    out of the folder is ``path_outside_input``. An object store has no links, FIFOs or devices:
    no object there is ``image_not_found``, any other refusal of the store ``image_unreadable``.
    """

    base_url: str
    max_bytes: int

    def __call__(self, relative: str) -> bytes:
        shown = _check_relative(relative)
        resolved = posixpath.normpath(relative)
        if resolved == ".." or resolved.startswith("../"):
            raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{shown} leaves the input's folder")
        if resolved == ".":
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"{shown} names a folder, not a file")
        try:
            data = storage.read_at_most(f"{self.base_url.rstrip('/')}/{resolved}", self.max_bytes + 1)
        except FileNotFoundError:
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"no file {shown}") from None
        except (OSError, storage.StorageError) as exc:
            raise ContractViolation(Reason.IMAGE_UNREADABLE, f"{shown}: {storage.describe(exc)}") from None
        return _whole(data, shown, self.max_bytes)


def _whole(data: bytes, shown: str, max_bytes: int) -> bytes:
    """``data`` read from an image file, if it is a whole one: ContractViolation if it is empty or
    over ``max_bytes``."""
    if len(data) > max_bytes:
        raise ContractViolation(Reason.IMAGE_TOO_LARGE, f"{shown} is over {max_bytes} bytes")
    if not data:
        raise ContractViolation(Reason.INVALID_IMAGE, f"{shown} is empty")
    return data


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")
