"""Run ``runner.py`` and SIGKILL it at a named moment, as an operator's ``kill -9`` would.

    python tests/kill_at.py MODULE:ATTRIBUTE before|after N -- RUNNER_ARGS...

The process kills itself just before (or just after) the N-th call of the function or method
named, e.g. ``connectors.database:BatchWriter._execute after 1``: right after the audit
store's first commit. Beam's default DirectRunner runs every step in this process, so the whole
run dies there. Used by ``tests/test_kill_loop.py``; it changes nothing in the pipeline itself.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def arm(target: str, when: str, nth: int) -> None:
    """Replace ``target`` with a wrapper that SIGKILLs this process at its ``nth`` call."""
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original: Callable[..., Any] = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if when == "before" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if when == "after" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> int:
    target, when, nth, separator, *runner_args = argv
    if separator != "--" or when not in ("before", "after"):
        raise SystemExit(__doc__)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    arm(target, when, int(nth))
    import runner

    return runner.main(runner_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
