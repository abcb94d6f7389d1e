"""The stream job as a cluster of Bytewax processes, each running ``--workers`` worker threads.

Bytewax's processes talk TCP: process ``I`` of ``addresses`` listens on ``addresses[I]`` and
connects to the others, and none starts before all are there. Two ways to form a cluster:

- ``--processes P`` (:func:`run_local_cluster`): this process prepares the job once (the output's
  lock, the audit store's migrations, the recovery store), starts P processes on 127.0.0.1 ports
  it picks, forwards SIGTERM to them, and returns the summary process 0 wrote.
- ``--process-id I --addresses 'HOST:PORT;...'``: every machine runs the same command with its own
  ``I`` (:func:`pipelines.stream_run.run_stream`). Process 0 prepares the job and writes the summary.

Process 0 reads the source in order and every count reaches it (``pipelines.bytewax_flow``): its
summary is the whole cluster's. A cluster cannot go on without one of its processes: when one
dies, Bytewax fails the others. The parent then kills what is left (a process still waiting for a
peer would wait forever), reaps every one, and fails in one line that names the process that
went first; the same command resumes from the recovery store.
"""

from __future__ import annotations

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TextIO

from pipelines.batch_run import RunError
from pipelines.stream_job import (
    PreparedStream,
    StreamRequest,
    open_stream_output,
    prepare_stream,
    stream_config,
)
from pipelines.stream_run import ProcessLost, run_process

#: How long the parent lets the other processes fail by themselves, once one has, before it kills
#: them: time for them to say why, when the first to end was only the first to notice.
GRACE_SECONDS = 3.0


def parse_addresses(text: str) -> tuple[str, ...]:
    """Every process's ``HOST:PORT``, separated by ``;``; ValueError says what is wrong.

    >>> parse_addresses("10.0.0.1:2101;10.0.0.2:2101")
    ('10.0.0.1:2101', '10.0.0.2:2101')
    >>> parse_addresses("10.0.0.1;10.0.0.2:2101")
    Traceback (most recent call last):
    ...
    ValueError: --addresses: '10.0.0.1' is not HOST:PORT (port 1 to 65535)
    """
    found = tuple(part.strip() for part in text.split(";") if part.strip())
    if not found:
        raise ValueError("--addresses: no HOST:PORT given")
    for address in found:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"--addresses: {address!r} is not HOST:PORT (port 1 to 65535)")
    twice = sorted({a for a in found if found.count(a) > 1})
    if twice:
        raise ValueError(f"--addresses: {twice[0]!r} is given twice; each process needs its own")
    return found


def local_addresses(count: int) -> tuple[str, ...]:
    """``count`` addresses on 127.0.0.1 whose ports were free a moment ago (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return tuple(f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class _Member:
    """One started process of a local cluster, and what it said before it ended."""

    index: int
    process: BaseProcess
    said: Connection
    summary: dict[str, Any] | None = None
    error: str | None = None
    lost_touch: bool = False

    def hear(self) -> None:
        """Read what the process sent, if anything (it sends once, just before it ends)."""
        try:
            while self.said.poll():
                kind, payload = self.said.recv()
                if kind == "summary":
                    self.summary = payload
                else:
                    self.error, self.lost_touch = payload, kind == "lost"
        except (EOFError, OSError):
            pass


def run_local_cluster(request: StreamRequest, status: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run the stream job on ``request.processes`` local processes; return process 0's summary."""
    config = stream_config(request)
    out_dir = request.out_dir.resolve()
    lock = open_stream_output(request, out_dir, lock=True)
    members: list[_Member] = []
    try:
        prepared = prepare_stream(request, config, out_dir, coordinate=True)
        addresses = local_addresses(request.processes)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or locks
        for index in range(request.processes):
            part = dataclasses.replace(request, processes=1, process_id=index, addresses=addresses)
            said, says = context.Pipe(duplex=False)
            process = context.Process(
                target=_process_main,
                args=(part, prepared, says, os.getpid()),
                name=f"aiep-stream-{index}",
            )
            process.start()
            says.close()
            members.append(_Member(index, process, said))
            if status is not None:
                print(
                    f"stream cluster: process {index} of {request.processes} (pid {process.pid}) at"
                    f" {addresses[index]}, {request.workers} worker(s)",
                    file=status,
                    flush=True,
                )
        return _supervise(members, prepared)
    finally:
        for member in members:  # nothing outlives the parent: kill what is left, reap everything
            if member.process.is_alive():
                member.process.kill()
            member.process.join()
            member.said.close()
        if lock is not None:
            lock.release()


def _supervise(members: list[_Member], prepared: PreparedStream) -> dict[str, Any]:
    """Wait for every process, forwarding SIGTERM to them; fail in one line when one fails."""

    def forward(*_: Any) -> None:
        for member in members:
            if member.process.is_alive():
                member.process.terminate()  # SIGTERM: process 0 drains the cluster

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        running = list(members)
        failed_at = None
        while running:
            timeout = None if failed_at is None else max(0.0, failed_at + GRACE_SECONDS - time.monotonic())
            ready = wait([m.process.sentinel for m in running] + [m.said for m in running], timeout)
            for member in list(running):
                member.hear()
                if member.process.sentinel in ready:
                    member.process.join()
                    member.hear()
                    running.remove(member)
                    if member.process.exitcode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() >= failed_at + GRACE_SECONDS:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed_at is not None:
        raise RunError(_failure(members, prepared))
    summary = members[0].summary
    if summary is None:
        raise RunError("stream cluster: process 0 ended without its summary")
    return summary


def _failure(members: list[_Member], prepared: PreparedStream) -> str:
    """One line: which process failed first and why, and what to do."""
    ended = [m for m in members if not m.process.is_alive() and m.process.exitcode not in (0, None)]

    def weight(member: _Member) -> tuple[int, int]:
        code = member.process.exitcode
        if code is not None and code < 0:
            return (0, member.index)  # killed by a signal: the others only lost touch with it
        if member.error and not member.lost_touch:
            return (1, member.index)
        return (2, member.index)

    first = min(ended, key=weight)
    code = first.process.exitcode
    if code is not None and code < 0:
        why = f"process {first.index} was killed by {signal.Signals(-code).name}"
    elif first.error:
        why = f"process {first.index}: {first.error.removeprefix('stream failed: ')}"
    else:
        why = f"process {first.index} exited with status {code}"
    resume = f"; the same command resumes from {str(prepared.recovery)!r}" if prepared.recovery else ""
    return f"stream cluster of {len(members)} processes failed: {why}; the others were stopped{resume}"


def _process_main(request: StreamRequest, prepared: PreparedStream, says: Connection, parent: int) -> None:
    """One process of a local cluster: run its part, tell the parent how it ended, exit."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which kills the cluster
    import logging

    from connectors.config import ConfigError
    from connectors.inputs import InputError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run_process(request, prepared)
    except ProcessLost as exc:
        says.send(("lost", str(exc)))
        sys.exit(1)
    except (RunError, InputError, ConfigError) as exc:
        says.send(("error", str(exc)))
        sys.exit(1)
    except OSError as exc:
        says.send(("error", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))
        sys.exit(1)
    says.send(("summary", summary))


def _die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so that a parent killed
    with -9 leaves no process of its cluster behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the call above
        os._exit(1)
