"""The local cluster's real node: containerd + runc, CNI, kubelet, kube-proxy and CoreDNS.

``DevCluster(..., real_node=True)`` starts these after the control plane, every one inside the
cluster's network namespace (``scapguard_dev.netns``). This module holds what is node
specific: writing the configuration (``nodeconfig``), the pod sandbox image, the host-wide
kernel settings the kubelet changes (saved and restored), and leaving nothing behind on stop:
no pod process, mount, cgroup or namespace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scapguard_dev import nodeconfig
from scapguard_dev.binaries import node_binary
from scapguard_dev.images import ImageConfig, PushedImage, build_and_push
from scapguard_dev.netns import NODE_IP, NetworkNamespace, kill_all
from scapguard_dev.nodeconfig import NodeLayout

log = logging.getLogger(__name__)

#: Host-wide sysctls the kubelet sets at start (``setupKernelTunables``); restored on stop.
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
_CGROUP_MOUNT = Path("/sys/fs/cgroup")
PAUSE_REPOSITORY = "scapguard-dev/pause"
#: One record per running real node: what to undo if its owner dies without stopping it.
STATE_DIR = Path("/run/scapguard-dev")


class NodeError(RuntimeError):
    """The node could not be prepared or cleaned up."""


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls(keys: tuple[str, ...] = KUBELET_SYSCTLS) -> dict[str, str]:
    """The current values of ``keys`` (those the kernel has)."""
    values: dict[str, str] = {}
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            values[key] = _sysctl_path(key).read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = _sysctl_path(key)
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
                log.info("restored %s = %s", key, value)
        except OSError as exc:
            log.warning("could not restore %s = %s: %s", key, value, exc)


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (and the v2 one when the machine has one)."""
    if (_CGROUP_MOUNT / "cgroup.controllers").exists():
        return [_CGROUP_MOUNT]
    return sorted(p for p in _CGROUP_MOUNT.iterdir() if p.is_dir() and not p.is_symlink())


def cgroup_pids(cgroup_root: str) -> set[int]:
    """Every process in the node's pod cgroups, in any hierarchy."""
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def make_cgroups(cgroup_root: str) -> None:
    """Create the node's cgroup parent in every hierarchy (the kubelet requires it to exist).

    A new cgroup v1 cpuset starts with no CPUs and no memory nodes: it gets its parent's.
    """
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / cgroup_root.lstrip("/")
        top.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            own, parent = top / name, hierarchy / name
            if own.exists() and not own.read_text().strip():
                own.write_text(parent.read_text())


def remove_cgroups(cgroup_root: str) -> None:
    """Remove the node's cgroup directories, deepest first (they must be empty of processes)."""
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (from /proc/self/mountinfo)."""
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(set(found), key=lambda p: -len(p.parts))


def unmount_all(root: Path) -> None:
    for point in mounts_under(root):
        proc = subprocess.run(
            ["umount", "--lazy", str(point)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 and point.exists():
            log.warning("could not unmount %s: %s", point, proc.stderr.strip())


def remove_tree(root: Path, attempts: int = 5) -> None:
    """Remove a cluster's work directory for good: unmount what is left under it (a container
    shim may still hold an overlay when its cluster has just stopped), then delete, a few
    times. ``rmtree(..., ignore_errors=True)`` left 2 GB behind per real-node run that way,
    until the disk filled and the kubelet tainted its node with disk pressure."""
    for attempt in range(attempts):
        unmount_all(root)
        try:
            shutil.rmtree(root)
        except FileNotFoundError:
            return
        except OSError as exc:
            if attempt == attempts - 1:
                log.warning("could not remove %s: %s", root, exc)
                return
            time.sleep(1.0)
        else:
            return


def pause_image(registry: str, workdir: Path) -> PushedImage:
    """Build the pod sandbox image (one static ``/pause``) and push it to ``registry``."""
    rootfs = workdir / "pause-rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    target = rootfs / "pause"
    target.write_bytes(node_binary("pause").read_bytes())
    target.chmod(0o755)
    config = ImageConfig(cmd=(), entrypoint=("/pause",), env=(), user="65535:65535")
    return build_and_push(rootfs, registry, PAUSE_REPOSITORY, "1", workdir=workdir, config=config)


def _start_time(pid: int) -> str | None:
    """A live process's start time (clock ticks since boot): with the pid, who it is."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has already died
        return None
    return fields[19]


@dataclass(frozen=True)
class NodeRecord:
    """What a running node changed on the host, kept in STATE_DIR while it runs."""

    netns: str
    root: str
    cgroup_root: str
    owner_pid: int
    owner_start: str
    #: The host's sysctls from before any local node's kubelet changed them.
    sysctls: dict[str, str]

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.netns}.json"

    def alive(self) -> bool:
        return _start_time(self.owner_pid) == self.owner_start

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        self.path.write_text(json.dumps(self.__dict__))

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def node_records() -> list[NodeRecord]:
    records = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            records.append(NodeRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring the unreadable node record %s: %s", path, exc)
    return records


def undo(record: NodeRecord) -> None:
    """Kill a node's pods, remove its namespace, mounts and cgroups (not the sysctls)."""
    kill_all(cgroup_pids(record.cgroup_root))
    NetworkNamespace(record.netns).delete()
    unmount_all(Path(record.root))
    remove_cgroups(record.cgroup_root)


def clean_stale_nodes() -> None:
    """Undo what nodes whose owner died (SIGKILL, a CI timeout) left on the host; restore the
    host's sysctls when no local node runs any more."""
    records = node_records()
    stale = [r for r in records if not r.alive()]
    for record in stale:
        log.warning("cleaning up after the local node %s (its owner is gone)", record.netns)
        undo(record)
        record.forget()
    if stale and len(stale) == len(records):  # no local node runs any more
        write_sysctls(stale[0].sysctls)


@dataclass
class RealNode:
    """One node's state directory, namespace and the host settings to give back on stop."""

    layout: NodeLayout
    netns: NetworkNamespace
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    def write_configs(
        self,
        *,
        ca: Path,
        serving: tuple[Path, Path],
        sandbox_image: str,
        registries: tuple[str, ...],
        kube_proxy_kubeconfig: Path,
        coredns_kubeconfig: Path,
    ) -> None:
        lay = self.layout
        for d in (lay.containerd_dir, lay.cni_conf_dir, lay.cni_ipam_dir, lay.kubelet_dir,
                  lay.pod_logs_dir):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True)
        lay.containerd_config.write_text(
            nodeconfig.containerd_config(lay, node_binary("runc"), sandbox_image)
        )
        for host in registries:
            hosts = lay.registry_hosts_dir / host / "hosts.toml"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_text(nodeconfig.registry_hosts_toml(host))
        (lay.cni_conf_dir / "10-scapguard.conflist").write_text(
            json.dumps(nodeconfig.cni_conflist(lay), indent=2)
        )
        # No upstream resolver: pods get the cluster DNS and nothing from the host.
        lay.resolv_conf.write_text("")
        lay.kubelet_config.write_text(yaml.safe_dump(nodeconfig.kubelet_config(lay, ca, serving)))
        lay.kube_proxy_config.write_text(
            yaml.safe_dump(nodeconfig.kube_proxy_config(kube_proxy_kubeconfig, lay.node_name))
        )
        lay.corefile.write_text(nodeconfig.corefile(coredns_kubeconfig, "scapguard-dev"))

    def containerd_argv(self) -> list[str]:
        return [str(node_binary("containerd")), f"--config={self.layout.containerd_config}"]

    def containerd_env(self) -> dict[str, str]:
        """containerd finds its shim on PATH."""
        env = dict(os.environ)
        env["PATH"] = f"{node_binary('containerd-shim-runc-v2').parent}:{env.get('PATH', '')}"
        return env

    def kubelet_argv(self, binary: Path, kubeconfig: Path) -> list[str]:
        lay = self.layout
        return [
            str(binary),
            "kubelet",
            f"--config={lay.kubelet_config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={lay.kubelet_dir}",
            f"--cert-dir={lay.kubelet_dir / 'pki'}",
            f"--hostname-override={lay.node_name}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]

    def kube_proxy_argv(self, binary: Path) -> list[str]:
        return [str(binary), "kube-proxy", f"--config={self.layout.kube_proxy_config}"]

    def coredns_argv(self) -> list[str]:
        return [str(node_binary("coredns")), "-conf", str(self.layout.corefile)]

    def record(self) -> NodeRecord:
        pid = os.getpid()
        return NodeRecord(self.netns.name, str(self.layout.root), self.layout.cgroup_root, pid,
                          _start_time(pid) or "", self.saved_sysctls)  # fmt: skip

    def save_host_settings(self) -> None:
        """Before the kubelet starts: remember the host's sysctls (from before any local node
        changed them) where a later start finds them if this process dies; make the cgroup."""
        clean_stale_nodes()
        running = [r for r in node_records() if r.alive()]
        self.saved_sysctls = running[0].sysctls if running else read_sysctls()
        self.record().save()
        make_cgroups(self.layout.cgroup_root)

    def cleanup(self) -> None:
        """After the node's processes stopped: kill pods, unmount, remove cgroups and netns;
        the last local node to stop restores the host's sysctls."""
        record = self.record()
        undo(record)
        record.forget()
        others = [r for r in node_records() if r.alive()]
        if self.saved_sysctls and not others:
            write_sysctls(self.saved_sysctls)


BUSYBOX = Path("/bin/busybox")
BUSYBOX_REPOSITORY = "scapguard-dev/busybox"
_BUSYBOX_APPLETS = ("sh", "cat", "echo", "id", "sleep", "wget", "nslookup", "httpd", "ls", "ip")


RUNNABLE = ImageConfig(cmd=("/bin/sh",), user="65532:65532")


def add_busybox(rootfs: Path) -> Path:
    """Make ``rootfs`` runnable: Debian's static busybox as /bin/sh and a few applets, a /tmp."""
    if not BUSYBOX.is_file():
        raise NodeError(f"{BUSYBOX} not found (install busybox-static, see hack/apt-packages.txt)")
    bindir = rootfs / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "busybox").write_bytes(BUSYBOX.read_bytes())
    (bindir / "busybox").chmod(0o755)
    for applet in _BUSYBOX_APPLETS:
        link = bindir / applet
        if not link.is_symlink() and not link.exists():
            link.symlink_to("busybox")
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    return rootfs


def busybox_image(registry: str, workdir: Path) -> PushedImage:
    """A small image of Debian's static busybox (sh, wget, nslookup, httpd...), user 65532."""
    rootfs = add_busybox(workdir / "busybox-rootfs")
    return build_and_push(rootfs, registry, BUSYBOX_REPOSITORY, "1", workdir=workdir,
                          config=RUNNABLE)  # fmt: skip
