"""A local Beam portability cluster: a job service and a worker pool, each a process of its own.

It is the path Flink, Spark and Dataflow take for Python, without Java::

    with PortableServices.start(Path("/tmp/services")) as services:
        subprocess.run(["runner.py", "run", "--input", ..., "--out", ..., "--", *services.beam_args()])

``runner.py run`` submits the pipeline to the job service (``pipelines.job_service``: Beam's local
job service, whose jobs take ``--direct_num_workers`` SDK workers), which asks the worker pool
(``apache_beam.runners.worker.worker_pool_main``) for SDK workers and talks to them over gRPC:
every DoFn and every element is serialised, as on a cluster. The pool starts each SDK worker as
``python`` from its ``PATH``, so it runs with this interpreter's folder first on ``PATH`` and the
project first on ``PYTHONPATH``, in a temporary folder of its own (``TMPDIR`` too).

Where the machine allows it (root, and ``ip netns`` works), the pool runs in a network namespace
of its own (:mod:`connectors.network_namespace`), joined to this one by a veth pair: its workers
reach the job service, and anything else (an audit database), only at this side's veth address
(``host_address``), never through a shared loopback, and the job service reaches the pool at the
namespace's side. The job service tells the workers to reach it there (``--worker-host``).

Beam's pool and the job service's worker-facing servers listen on every address of their
namespace: on the shared loopback (``isolate=False``) of a machine others can reach, keep their
ports behind a firewall, as a cluster's would be.

    python -m connectors.beam_services [--isolate auto|yes|no] [--workdir DIR] [--workers N] [-- RUN_ARGS ...]

starts both services, prints the Beam options that reach them, and with ``RUN_ARGS`` runs
``runner.py run RUN_ARGS -- <those options>`` through them (``make cluster-demo``), otherwise
waits for Ctrl-C; the services stop when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import tenacity

from connectors.network_namespace import NetworkNamespace, ServiceError, isolation_unavailable

ROOT = Path(__file__).resolve().parent.parent
#: The folder of the interpreter the project runs in (``.venv/bin``): first on the pool's PATH.
PYTHON_BIN = str(Path(sys.executable).parent)
JOB_SERVICE = "pipelines.job_service"
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"
#: The port of the worker pool inside its own namespace, where no other service listens.
ISOLATED_POOL_PORT = 50000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class _Service:
    """One started service: its process (a group of its own, with what it starts) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_until_answering(self, host: str, port: int, timeout_s: float) -> None:
        """Return once ``host:port`` accepts a connection; a ServiceError if the process ends or
        ``timeout_s`` passes first."""

        def attempt() -> None:
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the {self.name} exited ({self.process.returncode}) before answering on "
                    f"{host}:{port}; its log: {self.log}"
                )
            socket.create_connection((host, port), timeout=1).close()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(OSError),
            stop=tenacity.stop_after_delay(timeout_s),
            wait=tenacity.wait_fixed(0.1),
            reraise=True,
        )
        try:
            retrying(attempt)
        except OSError:
            raise ServiceError(
                f"the {self.name} did not answer on {host}:{port} within {timeout_s:g} s; its log: {self.log}"
            ) from None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after ``grace_s``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # SDK workers the pool left behind
        self.process.wait()


def _launch(name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> _Service:
    with log.open("ab") as sink:
        process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    return _Service(name, process, log)


@dataclass
class PortableServices:
    """A running job service and worker pool; ``close()`` (or the ``with`` block's end) stops them."""

    workdir: Path
    job_port: int
    #: Where the job service reaches the pool (``HOST:PORT``): ``--environment_config``.
    pool_address: str
    #: Where processes in the pool's namespace reach this side: the veth's end, or ``localhost``.
    host_address: str
    namespace: NetworkNamespace | None
    _services: list[_Service] = field(repr=False)

    @classmethod
    def start(cls, workdir: Path, isolate: bool | None = None, timeout_s: float = 60.0) -> PortableServices:
        """Start the worker pool, then the job service, and wait until both answer.

        ``workdir`` receives their logs (``job_service.log``, ``worker_pool.log``) and the pool's
        temporary folder (``worker-tmp``). ``isolate``: the pool in its own network namespace
        (``True``), on the shared loopback (``False``), or the former where the machine allows it
        (``None``). On any failure what was started is stopped again.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        if isolate is None:
            isolate = isolation_unavailable() is None
        namespace = NetworkNamespace.create() if isolate else None
        services: list[_Service] = []
        try:
            pool_tmp = workdir / "worker-tmp"
            pool_tmp.mkdir(exist_ok=True)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            pool_env = {
                **env,
                "PATH": os.pathsep.join([PYTHON_BIN, env.get("PATH", "")]),
                "TMPDIR": str(pool_tmp),
            }
            pool_port = ISOLATED_POOL_PORT if namespace else _free_port()
            pool_argv = [sys.executable, "-m", WORKER_POOL, "--service_port", str(pool_port)]
            pool = _launch(
                "worker pool",
                namespace.command(pool_argv) if namespace else pool_argv,
                workdir / "worker_pool.log",
                pool_env,
                pool_tmp,
            )
            services.append(pool)
            host_address = namespace.host_address if namespace else "localhost"
            port_file = workdir / "job_service.port"
            port_file.unlink(missing_ok=True)
            job_service = _launch(
                "job service",
                [
                    sys.executable,
                    "-m",
                    JOB_SERVICE,
                    "--port-file",
                    str(port_file),
                    "--worker-host",
                    host_address,
                ],
                workdir / "job_service.log",
                env,
                workdir,
            )
            services.append(job_service)
            pool_host = namespace.inner_address if namespace else "localhost"
            pool.wait_until_answering(pool_host, pool_port, timeout_s)
            job_port = _read_port(port_file, job_service, timeout_s)
            job_service.wait_until_answering("localhost", job_port, timeout_s)
        except BaseException:
            for service in reversed(services):
                service.stop()
            if namespace:
                namespace.delete()
            raise
        return cls(workdir, job_port, f"{pool_host}:{pool_port}", host_address, namespace, services)

    def beam_args(self, sdk_workers: int = 1) -> list[str]:
        """The Beam pipeline options that run a pipeline here, on ``sdk_workers`` SDK workers."""
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{self.job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config={self.pool_address}",
        ]
        return args + ([f"--direct_num_workers={sdk_workers}"] if sdk_workers != 1 else [])

    @property
    def pool_pid(self) -> int:
        """The worker pool's process id; the SDK workers it starts are its children."""
        return self._services[0].process.pid

    @property
    def job_service_pid(self) -> int:
        """The job service's process id (it runs the jobs' FnApiRunner: the shuffles)."""
        return self._services[1].process.pid

    def sdk_workers_started(self) -> int:
        """How many SDK worker processes the pool has started so far, as its log records them."""
        log = self._services[0].log.read_text(errors="replace")
        return log.count("Starting worker with command")

    def close(self) -> None:
        """Stop the job service, then the pool and its workers; delete the namespace."""
        for service in reversed(self._services):
            service.stop()
        if self.namespace:
            self.namespace.delete()

    def __enter__(self) -> PortableServices:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _read_port(port_file: Path, service: _Service, timeout_s: float) -> int:
    """The port the job service wrote once it was listening."""

    def attempt() -> int:
        if service.process.poll() is not None:
            raise ServiceError(
                f"the job service exited ({service.process.returncode}); its log: {service.log}"
            )
        return int(port_file.read_text())

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((OSError, ValueError)),
        stop=tenacity.stop_after_delay(timeout_s),
        wait=tenacity.wait_fixed(0.1),
        reraise=True,
    )
    try:
        return int(retrying(attempt))
    except (OSError, ValueError):
        raise ServiceError(
            f"the job service wrote no port to {port_file} within {timeout_s:g} s; its log: {service.log}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m connectors.beam_services``."""
    parser = argparse.ArgumentParser(
        prog="python -m connectors.beam_services",
        description="Start a Beam job service and worker pool; run `runner.py run RUN_ARGS` through "
        "them, or wait for Ctrl-C. The services stop when this ends.",
    )
    parser.add_argument(
        "--isolate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="the worker pool in its own network namespace: where allowed (auto), always, never",
    )
    parser.add_argument(
        "--workdir", type=Path, help="logs and the pool's temporary folder (default: a new one)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="SDK workers for the run (default: 1)"
    )
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="after `--`: arguments of `runner.py run`")
    args = parser.parse_args(argv)
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aiep-services-"))
    isolate = {"auto": None, "yes": True, "no": False}[args.isolate]
    try:
        services = PortableServices.start(workdir, isolate=isolate)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # SIGTERM ends this process as Ctrl-C would, so that the services are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with services:
        where = (
            f"worker pool in network namespace {services.namespace.name} at {services.pool_address}"
            if services.namespace
            else f"worker pool at {services.pool_address}"
        )
        print(f"job service at localhost:{services.job_port}; {where}; logs in {workdir}", flush=True)
        beam_args = services.beam_args(args.workers)
        if not run_args:
            print("Beam options: " + " ".join(beam_args) + "\nCtrl-C stops the services.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        separator = [] if "--" in run_args else ["--"]
        command = [sys.executable, str(ROOT / "runner.py"), "run", *run_args, *separator, *beam_args]
        try:
            return subprocess.run(command).returncode
        except KeyboardInterrupt:
            return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
