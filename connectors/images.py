"""Output images named by path: read them from the input's folder, and never from outside it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from transforms.dead_letter import ContractViolation, Reason

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
        shown = repr(relative[:200])
        if "\x00" in relative:
            raise ContractViolation(Reason.INVALID_IMAGE, f"output.image.path {shown} holds a NUL byte")
        if relative.endswith(("/", os.sep)):
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"{shown} names a folder, not a file")
        if os.path.isabs(relative):
            raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{shown} is not relative")
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
        if len(data) > self.max_bytes:
            raise ContractViolation(Reason.IMAGE_TOO_LARGE, f"{shown} is over {self.max_bytes} bytes")
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
