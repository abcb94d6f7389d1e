"""A worker process of a local multi-process run (``--direct_running_mode=multi_processing``):
Beam's SDK harness, started and ended faster.

:func:`pipelines.beam.run` has the runner launch each worker as ``python -m pipelines.sdk_worker``
instead of Beam's ``python -m apache_beam.runners.worker.sdk_worker_main``; what runs in between is
Beam's harness, unchanged. Two things differ, both measured at 1M events on two processes:

- **Start.** The imports (Beam's harness, then this project's pipeline, which the first bundle
  would import anyway) run with the garbage collector paused, and what they leave is frozen
  (``gc.freeze``): full collections during the imports scanned every object Beam had loaded so
  far, and every full collection of the run would scan them again. Imports took 0.80 s instead of
  1.35 s, before the first bundle of each worker.
- **End.** When the harness returns, every bundle is done and every DoFn torn down (each sink
  committed its writes and closed its connections), and the harness has flushed its logs to the
  runner. The process then exits at once, without Python's teardown of Beam's, Arrow's and gRPC's
  modules (about 0.45 s a process). The runner stops its workers one after the other, waiting for
  each process to end, so that teardown came last in every run, once per worker.

A harness that fails raises as before and exits the usual way, with its error.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys


def main() -> None:
    gc.disable()  # until the imports are done and frozen (see above)
    from apache_beam.runners.worker import sdk_worker_main

    # What every bundle's DoFns unpickle from; should it fail, the first bundle fails on it again
    # and the harness reports that to the runner.
    with contextlib.suppress(ImportError):
        import pipelines.beam  # noqa: F401
    # Frozen objects are never collected: a cycle the imports left stays for the process's life.
    gc.freeze()
    gc.enable()
    sdk_worker_main.main(sys.argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
