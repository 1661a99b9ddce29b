"""The local cluster's own network namespace: the node address, the pod bridge, nothing else.

Every component of the real node (and the control plane beside it) runs inside a network
namespace this module creates with ``ip netns add``, entered with ``nsenter --net=`` only (the
processes share the host's mount, pid and user namespaces). Inside it:

- ``lo``, up: etcd and the image API server listen on the namespace's own loopback;
- ``lo``, which also holds the node address (``NODE_IP``/32): the API server advertises it,
  the kubelet serves on it, pods reach it through their gateway;
- the pod bridge ``scapguard0``, made by the CNI bridge plugin with the pod gateway (the first
  address of ``POD_CIDR``; the plugin refuses a bridge that already has another address);
- a route for the Service CIDR (through ``lo``, from the node address) so that the node's own
  components (the API server calling a webhook's Service) reach ClusterIPs: kube-proxy's
  OUTPUT rules translate them to pod addresses;
- no other link and no default route: a packet to any address outside the namespace has no
  route, so nothing the cluster runs can reach a private or public network.

The host reaches a service inside through a ``Forward`` (``scapguard_dev.forward``): a
socket on the host's 127.0.0.1, served by a process inside the namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NODE_IP = "10.213.0.1"
POD_CIDR = "10.213.1.0/24"
SERVICE_CIDR = "10.0.0.0/24"
POD_GATEWAY = "10.213.1.1"
BRIDGE = "scapguard0"
_RUN_NETNS = Path("/run/netns")


class NetnsError(RuntimeError):
    """The network namespace could not be made or used."""


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class NetworkNamespace:
    """A named network namespace (``/run/netns/NAME``) for one local cluster."""

    name: str

    @property
    def path(self) -> Path:
        return _RUN_NETNS / self.name

    def enter(self) -> list[str]:
        """The argv prefix that runs a command inside this namespace (network only)."""
        return ["nsenter", f"--net={self.path}", "--"]

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        """Make the namespace (removing a stale one of the same name first) and its links."""
        if self.exists():
            log.warning("removing the stale network namespace %s", self.name)
            self.delete()
        _run("ip", "netns", "add", self.name)
        try:
            inside = ["ip", "-n", self.name]
            _run(*inside, "link", "set", "lo", "up")
            _run(*inside, "addr", "add", f"{NODE_IP}/32", "dev", "lo")
            _run(*inside, "route", "add", SERVICE_CIDR, "dev", "lo", "src", NODE_IP)
            # Pods reach Services (kube-proxy's DNAT) and each other through this namespace:
            # forwarding, and bridged traffic through iptables, apply inside it only.
            self.sysctl("net.ipv4.ip_forward", "1")
            self.sysctl("net.bridge.bridge-nf-call-iptables", "1")
        except BaseException:
            self.delete()
            raise

    def sysctl(self, key: str, value: str) -> None:
        _run(*self.enter(), "sysctl", "-q", "-w", f"{key}={value}")

    def pids(self) -> list[int]:
        """Processes whose network namespace this is."""
        if not self.exists():
            return []
        return [int(p) for p in _run("ip", "netns", "pids", self.name).split()]

    def delete(self, grace: float = 5.0) -> None:
        """Kill what still runs inside (SIGTERM, then SIGKILL) and remove the namespace."""
        kill_all(set(self.pids()), grace)
        if self.exists():
            _run("ip", "netns", "delete", self.name)


def kill_all(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, until none of ``pids`` is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
            time.sleep(0.1)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
