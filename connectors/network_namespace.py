"""Network namespaces joined to this one by a veth pair, for processes that must not share its
loopback: ``ip netns`` and ``ip link`` (iproute2), as root.

A namespace is named ``aiep-<pid>-<hex>`` after the process that made it, its veth ends
``aiep<hex>h`` (this side) and ``aiep<hex>n`` (inside), with a free /30 of 10.250.0.0/16 between
them; the loopback inside is up. A namespace whose maker died without deleting it is deleted by
the next :meth:`NetworkNamespace.create`, with whatever still runs inside.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_NAMESPACE = re.compile(r"^aiep-(\d+)-[0-9a-f]+$")
#: Where the veth pairs' addresses come from: private, and unlikely to be a real network's.
_VETH_RANGE = ipaddress.IPv4Network("10.250.0.0/16")


class ServiceError(Exception):
    """A service (a namespace, a process) did not start or answer; the message is one line."""


def _ip(*args: str) -> str:
    """Run ``ip ARGS``; its output, or a ServiceError with ip's own one-line complaint."""
    command = shutil.which("ip")
    if command is None:
        raise ServiceError("network namespaces need the `ip` command (Debian's iproute2)")
    done = subprocess.run([command, *args], capture_output=True, text=True)
    if done.returncode != 0:
        complaint = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise ServiceError(f"`ip {' '.join(args)}` failed: {complaint}")
    return done.stdout


@dataclass(frozen=True)
class NetworkNamespace:
    """A network namespace joined to this one by a veth pair with a /30 between them.

    ``host_address`` is this side's end (what processes inside reach this side at),
    ``inner_address`` the namespace's end. Deleting the namespace deletes the pair.
    """

    name: str
    host_address: str
    inner_address: str

    @classmethod
    def create(cls) -> NetworkNamespace:
        """Make a namespace with a fresh name and a free /30 of 10.250.0.0/16; loopback up inside."""
        remove_stale_namespaces()
        token = secrets.token_hex(4)
        name = f"aiep-{os.getpid()}-{token}"
        host_if, inner_if = f"aiep{token}h", f"aiep{token}n"
        host_address, inner_address = (str(address) for address in _free_block().hosts())
        namespace = cls(name, host_address, inner_address)
        _ip("netns", "add", name)
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if)
            _ip("link", "set", inner_if, "netns", name)
            _ip("addr", "add", f"{host_address}/30", "dev", host_if)
            _ip("link", "set", host_if, "up")
            for step in (
                ("addr", "add", f"{inner_address}/30", "dev", inner_if),
                ("link", "set", inner_if, "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("-n", name, *step)
        except ServiceError:
            namespace.delete()
            with contextlib.suppress(ServiceError):
                _ip("link", "del", host_if)  # made, but not yet moved into the namespace
            raise
        return namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid stays)."""
        return [shutil.which("ip") or "ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        """Remove the namespace and its veth pair; end what still runs inside (by pid)."""
        _end_namespace(self.name)


def _end_namespace(name: str) -> None:
    with contextlib.suppress(ServiceError):
        for pid in _ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(ServiceError):
        _ip("netns", "del", name)


def _free_block() -> ipaddress.IPv4Network:
    """A /30 of 10.250.0.0/16 that no address on this side already falls in."""
    used = {
        ipaddress.ip_interface(address).ip
        for address in re.findall(r"inet (\S+)", _ip("-o", "-4", "addr", "show"))
    }
    free = [block for block in _VETH_RANGE.subnets(new_prefix=30) if not any(ip in block for ip in used)]
    if not free:
        raise ServiceError(f"no free /30 left in {_VETH_RANGE} for a veth pair")
    return secrets.choice(free)


def remove_stale_namespaces() -> list[str]:
    """Delete the ``aiep-<pid>-*`` namespaces whose creating process is gone; their names."""
    try:
        listed = _ip("netns", "list")
    except (ServiceError, FileNotFoundError):
        return []
    stale = []
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        match = _NAMESPACE.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _end_namespace(name)
            stale.append(name)
    return stale


def isolation_unavailable() -> str | None:
    """Why the worker pool cannot have a network namespace here, in one line; ``None`` if it can
    (found by making one and deleting it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2)"
    try:
        NetworkNamespace.create().delete()
    except ServiceError as exc:
        return f"a network namespace could not be made: {exc}"
    return None
