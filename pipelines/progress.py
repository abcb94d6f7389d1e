"""Bytes read so far by sources running in this process, for the launcher's progress bar.

Only sources in the launcher's own process can report here (the in-process DirectRunner); under
multi-process or remote runners the bar shows elapsed time until the run ends.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_bytes_read = 0


def advance(n_bytes: int) -> None:
    """Record that a source read ``n_bytes`` more input bytes."""
    global _bytes_read
    with _lock:
        _bytes_read += n_bytes


def bytes_read() -> int:
    """Input bytes read so far in this process."""
    return _bytes_read


def reset() -> None:
    """Start counting from zero (one run per launcher call)."""
    global _bytes_read
    with _lock:
        _bytes_read = 0
