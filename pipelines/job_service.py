"""Beam's local job service, whose jobs run on as many SDK workers as they ask for.

    python -m pipelines.job_service [--port J] [--port-file FILE] [--worker-host HOST]

It is ``apache_beam.runners.portability.local_job_service_main`` with two changes. Beam 2.77's
service runs every job on one SDK worker per environment whatever the job's options say: its
FnApiRunner reads ``--direct_num_workers`` only when it is handed a ``Pipeline`` object
(``run_pipeline``), while a job service hands it the pipeline's proto (``run_via_runner_api``);
``--sdk_worker_parallelism`` is read by the Java runners only. Here a job's
``--direct_num_workers=N`` asks its environment (an EXTERNAL worker pool, say) for N SDK workers,
and each stage's input is split among them, as a cluster's runner would. Without the option a job
runs on one worker, exactly as on Beam's own service. And ``--worker-host`` names the address
the SDK workers reach it at (see :func:`advertise_to_workers`).

The port it serves the Job API on is printed (``listening on localhost:J``) and, with
``--port-file``, written to that file (atomically, once the server answers), which is how a
launcher that asked for port 0 learns it. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_job_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers


class SdkWorkersJob(local_job_service.BeamJob):  # type: ignore[misc]
    """A job of the local job service that runs on ``--direct_num_workers`` SDK workers."""

    def _invoke_runner(self) -> Any:
        self.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = self.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
        # What FnApiRunner.run_pipeline sets from the same option (0: one per CPU); the job's
        # options travel as a protobuf Struct, whose numbers come back as floats.
        value = options.view_as(DirectOptions).direct_num_workers
        asked = 1 if value is None else int(value)
        runner._num_workers = asked if asked > 0 else os.cpu_count() or 1
        return runner.run_via_runner_api(self._pipeline_proto, options)


def advertise_to_workers(host: str) -> None:
    """Tell EXTERNAL SDK workers (a worker pool's) to reach this process's control, data, state
    and logging servers at ``host``, which they listen on with every address.

    Beam names them by this machine's fully qualified name, which is ``localhost`` on many
    machines (a hostname listed on the ``127.0.0.1`` line of ``/etc/hosts``) and then unreachable
    from a worker in another network namespace, container or machine. The handler is Beam's own,
    registered again for the same environment (``WorkerHandler.register_environment``, how Beam
    registers each kind) with only that name changed.
    """

    @worker_handlers.WorkerHandler.register_environment(  # type: ignore[misc]
        common_urns.environments.EXTERNAL.urn, beam_runner_api_pb2.ExternalPayload
    )
    class AdvertisedExternalWorkerHandler(worker_handlers.ExternalWorkerHandler):  # type: ignore[misc]
        def host_from_worker(self) -> str:
            return host


def serve(port: int = 0, port_file: Path | None = None, worker_host: str | None = None) -> None:
    """Serve the Job API on ``localhost:port`` (0: any free port) until SIGTERM or SIGINT;
    ``worker_host``: see :func:`advertise_to_workers` (default: Beam's, this machine's name)."""
    if worker_host:
        advertise_to_workers(worker_host)
    servicer = local_job_service.LocalJobServicer(beam_job_type=SdkWorkersJob)
    bound = servicer.start_grpc_server(port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if port_file is not None:
            partial = port_file.with_name(port_file.name + ".tmp")
            partial.write_text(f"{bound}\n")
            os.replace(partial, port_file)
        print(f"listening on localhost:{bound}", flush=True)
        stop.wait()
    finally:
        servicer.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipelines.job_service``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.job_service", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--port", type=int, default=0, help="Job API port on localhost (default: any free one)"
    )
    parser.add_argument(
        "--port-file", type=Path, metavar="FILE", help="write the port served here once it answers"
    )
    parser.add_argument(
        "--worker-host",
        metavar="HOST",
        help="the name or address SDK workers of an EXTERNAL environment reach this service at "
        "(default: this machine's fully qualified name, as Beam's own service)",
    )
    args = parser.parse_args(argv)
    # force: importing Beam already gave the root logger a handler (its "apitools" warning).
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    serve(args.port, args.port_file, args.worker_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
