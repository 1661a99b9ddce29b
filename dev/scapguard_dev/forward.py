"""Reach a port inside the cluster's network namespace from the host's 127.0.0.1.

Two ``socat`` processes per port, joined by a unix socket (the filesystem is shared between the
namespaces, the network is not): one listens on the host's ``127.0.0.1:PORT``, the other runs
inside the namespace and connects to its ``127.0.0.1:PORT``. The port number is the same on both
sides, so ``https://127.0.0.1:PORT`` names the same server to a test on the host and to a
component inside the namespace. Nothing but loopback is ever listened on or connected to.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from scapguard_dev.netns import NetworkNamespace

SOCAT = "socat"


class ForwardError(RuntimeError):
    """socat is missing or a forward could not be set up."""


#: Starts one named process: (name, argv) -> its Popen (the caller owns and stops it).
Spawner = Callable[[str, list[str]], "Popen[bytes]"]


def forward_argv(netns: NetworkNamespace, port: int, sockets: Path) -> tuple[list[str], list[str]]:
    """The argv of the inside and the host half of a forward of ``port`` (inside first)."""
    socat = shutil.which(SOCAT)
    if socat is None:
        raise ForwardError(f"{SOCAT} not found on PATH (see hack/apt-packages.txt)")
    sock = sockets / f"{port}.sock"
    inside = [
        *netns.enter(),
        socat,
        f"UNIX-LISTEN:{sock},fork,mode=600,unlink-early",
        f"TCP4:127.0.0.1:{port}",
    ]
    # The host half outlives nothing: it gets SIGTERM when the process that started it dies
    # (the inside half goes with the namespace).
    host = [
        "setpriv",
        "--pdeathsig=TERM",
        "--",
        socat,
        f"TCP4-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
        f"UNIX-CONNECT:{sock}",
    ]
    return inside, host


def start_forward(
    netns: NetworkNamespace, port: int, sockets: Path, spawn: Spawner, name: str
) -> None:
    """Start both halves of a forward of ``port`` with ``spawn`` (which records the processes)."""
    sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
    inside, host = forward_argv(netns, port, sockets)
    spawn(f"{name}-forward-in", inside)
    spawn(f"{name}-forward", host)
