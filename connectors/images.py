"""Output images named by path: read them from the input's folder, and never from outside it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from transforms.dead_letter import ContractViolation, Reason


@dataclass(frozen=True)
class FolderImageLoader:
    """Reads ``output.image.path`` relative to ``base_dir`` (the input file's folder).

    A path that is absolute, climbs out with ``..``, or resolves outside through a symlink is
    rejected as ``path_outside_input``; a file that is missing as ``image_not_found``.
    """

    base_dir: str
    max_bytes: int

    def __call__(self, relative: str) -> bytes:
        root = os.path.realpath(self.base_dir)
        if os.path.isabs(relative) or "\x00" in relative:
            raise ContractViolation(Reason.PATH_OUTSIDE_INPUT, f"{relative[:200]!r} is not relative")
        resolved = os.path.realpath(os.path.join(root, relative))
        if os.path.commonpath([root, resolved]) != root:
            raise ContractViolation(
                Reason.PATH_OUTSIDE_INPUT, f"{relative[:200]!r} leaves the input's folder"
            )
        try:
            size = os.path.getsize(resolved)
            if size > self.max_bytes:
                raise ContractViolation(
                    Reason.IMAGE_TOO_LARGE, f"{relative[:200]!r} is {size} bytes; max {self.max_bytes}"
                )
            with open(resolved, "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"no file {relative[:200]!r}") from None
        except PermissionError:
            raise ContractViolation(Reason.IMAGE_NOT_FOUND, f"{relative[:200]!r} is not readable") from None
        if not data:
            raise ContractViolation(Reason.INVALID_IMAGE, f"{relative[:200]!r} is empty")
        return data
