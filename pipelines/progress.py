"""Input bytes a run's sources have read so far, for the launcher's progress bar.

Each process that reads inputs keeps its count in a file of its own under the run's staging
folder (8 bytes, rewritten in place after every batch); the launcher sums the files. So the bar
counts bytes whether the DirectRunner reads in the launcher's process or in worker processes of
its own (``--direct_running_mode=multi_processing``, which ``run`` chooses for a large input).
Workers of other runners write there too when they mount the folder, as they must for spilling,
but the launcher does not count on it: for them the bar shows elapsed time.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

_COUNT = struct.Struct("<q")
_lock = threading.Lock()
_counters: dict[str, ReadCounter] = {}


class ReadCounter:
    """This process's count of input bytes read for one run: ``<folder>/<pid>``."""

    def __init__(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._fd = os.open(os.path.join(folder, str(os.getpid())), os.O_WRONLY | os.O_CREAT, 0o644)
        self._total = 0
        self._users = 0

    def advance(self, n_bytes: int) -> None:
        """Record that a source of this process read ``n_bytes`` more input bytes."""
        with _lock:
            self._total += n_bytes
            os.pwrite(self._fd, _COUNT.pack(self._total), 0)


def counter(folder: str) -> ReadCounter:
    """The one counter of this process for the run whose progress files live in ``folder``
    (every source of a process adds to it: each process has one file). Each call is matched by
    a :func:`release`."""
    with _lock:
        found = _counters.get(folder)
        if found is None:
            found = _counters[folder] = ReadCounter(folder)
        found._users += 1
        return found


def release(folder: str) -> None:
    """Let go of a :func:`counter`; the last user closes it (its file stays for the launcher)."""
    with _lock:
        found = _counters.get(folder)
        if found is None:
            return
        found._users -= 1
        if found._users <= 0:
            del _counters[folder]
            os.close(found._fd)


def close(folder: str) -> None:
    """Close this process's counter for that run, whoever still holds it (the run has ended)."""
    with _lock:
        found = _counters.pop(folder, None)
    if found is not None:
        os.close(found._fd)


def bytes_read(folder: str) -> int:
    """Input bytes read so far by every process of the run, from its progress files."""
    total = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:  # no source has read a batch yet
        return 0
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as file:
                data = file.read(_COUNT.size)
        except FileNotFoundError:
            continue
        if len(data) == _COUNT.size:
            total += _COUNT.unpack(data)[0]
    return total


def folder_of(staging_dir: str) -> str:
    """Where a run that spills under ``staging_dir`` keeps its progress files."""
    return os.path.join(staging_dir, "progress")
