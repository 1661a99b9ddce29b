"""The node agent: a kubelet stand-in that runs bound Pods as local processes.

``python -m scapguard.devcluster.nodeagent --kubeconfig K --node-name N --root DIR
[--path-prepend DIR ...]``

There is no container runtime on the machines this runs on, so the agent:

- registers Node ``N`` (Ready, no taints, this machine's cpu/memory/disk, 110 pods, address
  127.0.0.1) and keeps it Ready: it renews Lease ``kube-node-lease/N`` every 10 s and re-posts the
  node status every 60 s (at once if anything marked it not Ready);
- watches Pods with ``spec.nodeName == N`` in all namespaces and runs each container's
  ``command`` + ``args`` as a process in its own session and process group. The image is only
  recorded in the status; ``command`` is required (no image entrypoint exists): a container without
  one terminates with reason ``StartError``, as does one whose executable cannot be started;
- gives the process the pod's environment (``env`` with ``value``, ``$(VAR)`` expansion,
  ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``; ``envFrom`` with prefixes), ``PATH`` =
  the ``--path-prepend`` dirs + the agent's ``PATH`` (standing in for the image's), ``HOSTNAME``,
  ``HOME`` (``/root`` for uid 0, else ``/``) and ``KUBERNETES_SERVICE_HOST/PORT`` pointing at the
  real API server (there is no kube-proxy, so no other service variables);
- materialises volumes under ``<root>/pods/<namespace>_<name>_<uid>/volumes/<volume>/``:
  secret, configMap, downwardAPI, projected (those three + serviceAccountToken through the
  TokenRequest API), emptyDir, hostPath (used in place), honouring items, defaultMode, mode and
  optional (see ``nodeagent_spec.materialise_volumes`` for ownership and modes);
- stands in for mounts by **rewriting paths**: in the command, args, every env value and
  workingDir, every occurrence of a container's mountPath (longest first, whole path components
  only, one pass) is replaced by the materialised directory (or ``<dir>/<subPath>``). So
  ``--config=/etc/app/cfg.yaml`` with a volume mounted at ``/etc/app`` becomes
  ``--config=<root>/pods/.../volumes/app/cfg.yaml``. Paths a program computes itself, or reads
  from files, are not rewritten: a program that hard-codes ``/var/run/secrets/...`` (in-cluster
  client config) will not find its token. ``readOnly`` is best effort: secret-like files carry
  no write bits; an emptyDir that every container mounts readOnly loses its write bits;
- runs the process as ``runAsUser``/``runAsGroup`` (container over pod; gid 0 when only a uid is
  given) with ``fsGroup`` + ``supplementalGroups`` as its groups, and refuses, like the kubelet
  (waiting, ``CreateContainerConfigError``), ``runAsNonRoot`` without ``runAsUser`` or with uid 0;
- runs init containers first, one at a time, in order, then all containers together;
  restartPolicy Never / OnFailure / Always with a short back-off (1 s doubling to 30 s);
- reports status like a kubelet through ``pods/status``: phase Pending -> Running ->
  Succeeded/Failed, conditions Initialized, ContainersReady, Ready (PodScheduled kept),
  podIP/hostIP 127.0.0.1, startTime, container states (waiting/running/terminated with exit code,
  reason Completed/Error, start and finish times), restartCount;
- honours ``activeDeadlineSeconds`` (phase Failed, reason DeadlineExceeded) and deletion: SIGTERM
  to the process groups, SIGKILL after the grace period, terminal status, then a delete with grace
  0 and a uid precondition. When a container's main process exits, whatever is left in its
  process group is killed (a container dies with its pid 1);
- keeps container logs (stdout and stderr interleaved, plain text) in
  ``<root>/pods/<namespace>_<name>_<uid>/logs/<container>/<restartCount>.log``. They stay after the
  pod is deleted; volumes of finished pods are removed (emptyDirs when the pod is deleted);
- survives its own restart without running anything twice: ``state.json`` in the pod directory
  says what was started; a container that was running (or being started) when the agent died
  becomes terminated, exit code 137, reason ``ContainerStatusUnknown`` (its leftover process group
  is killed) and the restart policy decides; terminal pods are left alone;
- on SIGTERM/SIGINT kills its pods' process groups (SIGTERM, SIGKILL after 2 s) and exits; those
  containers are reported terminated (exit 143, "killed when the node agent stopped") when an
  agent runs again for the node, since the API server may be going away too.

What it does not do: images (nothing is pulled or unpacked; the host filesystem is the "image"),
isolation (no namespaces, cgroups or resource limits; OOMKilled never happens; a process that
leaves its process group escapes), probes (containers are ready once started), lifecycle hooks,
sidecars (restartPolicy on init containers), ephemeral containers, container ports, pod networking
beyond 127.0.0.1, ``resourceFieldRef``, PVCs and other volume types, updates of volumes after start,
token rotation, Events, and the kubelet API: ``kubectl logs/exec/port-forward`` do not work; read
the log files instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from scapguard.devcluster.nodeagent_api import (
    ApiError,
    NodeRegistration,
    PodApi,
    Rest,
    TransportError,
    service_env,
)
from scapguard.devcluster.nodeagent_spec import JSON, remove_tree
from scapguard.devcluster.nodeagent_status import TERMINAL_PHASES
from scapguard.devcluster.nodeagent_worker import PodWorker, RuntimeConfig, pod_dir

log = logging.getLogger(__name__)

LEASE_RENEW_SECONDS = 10.0
WATCH_SECONDS = 300
_API_ERRORS = (ApiError, TransportError)


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""


def forget_pod_files(directory: Path) -> None:
    """Remove what a deleted pod left on disk except its logs."""
    remove_tree(directory, keep=("logs",))


class Agent:
    def __init__(
        self, kubeconfig: Path, node_name: str, root: Path, path_prepend: Sequence[str]
    ) -> None:
        self.node_name = node_name
        self.root = root
        self._rest = Rest(kubeconfig)
        self._node = NodeRegistration(self._rest, node_name, root)
        self._pods = PodApi(self._rest)
        self._cfg = RuntimeConfig(root, tuple(path_prepend), service_env(self._rest.host))
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._stop = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Register, then run pods until ``stop`` is set; then kill them all and return."""
        self._stop = stop
        while not stop.is_set():
            try:
                self._node.register(time.monotonic())
                break
            except _API_ERRORS as exc:
                log.warning("registering node %s failed, will retry: %s", self.node_name, exc)
                stop.wait(1.0)
        if stop.is_set():
            return
        threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        log.info("node %s is Ready; running pods under %s", self.node_name, self.root)
        stop.wait()
        with self._lock:
            workers = list(self._workers.values())
        log.info("stopping: killing the processes of %d pod(s)", len(workers))
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join()
        self._rest.close()
        log.info("node agent stopped")

    def _heartbeats(self) -> None:
        while not self._stop.wait(LEASE_RENEW_SECONDS):
            try:
                self._node.heartbeat(time.monotonic())
            except _API_ERRORS as exc:
                log.warning("node heartbeat failed, will retry: %s", exc)

    # -- pods -------------------------------------------------------------------------------------

    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.node_name}"}

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._relist()
                while not self._stop.is_set():
                    version = self._watch_once(version)
            except _Expired:
                log.info("pod watch expired; listing again")
            except _API_ERRORS as exc:
                log.warning("pod watch failed, will list again: %s", exc)
                self._stop.wait(1.0)

    def _relist(self) -> str:
        listed = self._rest.call("GET", "/api/v1/pods", query=self._selector())
        pods: list[JSON] = listed.get("items") or []
        for pod in pods:
            self._dispatch(pod)
        present = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            for uid, worker in self._workers.items():
                if uid not in present:
                    worker.removed()
            busy = set(self._workers)
        pods_dir = self.root / "pods"
        for directory in pods_dir.iterdir() if pods_dir.is_dir() else []:
            uid = directory.name.rsplit("_", 1)[-1]
            if uid not in present and uid not in busy:
                forget_pod_files(directory)
        return str(listed["metadata"]["resourceVersion"])

    def _watch_once(self, version: str) -> str:
        query = {**self._selector(), "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self._rest.watch("/api/v1/pods", query, WATCH_SECONDS):
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired()
                raise ApiError(int(obj.get("code") or 0), "watch error", str(obj.get("message")))
            version = str(obj["metadata"]["resourceVersion"])
            if kind == "DELETED":
                self._forget(obj)
            elif kind in ("ADDED", "MODIFIED"):
                self._dispatch(obj)
            if self._stop.is_set():
                break
        return version

    def _dispatch(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is not None:
                worker.update(pod)
                return
            if self._stop.is_set() or not self._needs_worker(pod):
                return
            worker = PodWorker(pod, self._pods, self._cfg, self._worker_done)
            self._workers[uid] = worker
            worker.start()

    @staticmethod
    def _needs_worker(pod: JSON) -> bool:
        """Every pod not yet terminal; a terminal one only to finish a graceful deletion."""
        meta = pod["metadata"]
        if pod.get("status", {}).get("phase") not in TERMINAL_PHASES:
            return True
        return bool(meta.get("deletionTimestamp")) and meta.get("deletionGracePeriodSeconds") != 0

    def _worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            gone = worker.gone
        if gone:
            forget_pod_files(pod_dir(self.root, worker.pod))

    def _forget(self, pod: JSON) -> None:
        """The pod left the API: stop its worker (which cleans up) or clean up now."""
        with self._lock:
            worker = self._workers.get(pod["metadata"]["uid"])
            if worker is not None:
                worker.removed()
                return
        forget_pod_files(pod_dir(self.root, pod))


def _warn_if_unreachable(root: Path) -> None:
    """Processes running as other users must traverse every parent of --root."""
    for parent in [root, *root.parents]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            log.warning(
                "%s is not traversable by other users: pods with runAsUser will not reach their "
                "volumes under %s",
                parent,
                root,
            )
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scapguard.devcluster.nodeagent",
        description="Run the Pods bound to one Node as local processes (a kubelet stand-in).",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--root", type=Path, required=True, help="pod directories go here")
    parser.add_argument(
        "--path-prepend",
        action="append",
        default=[],
        metavar="DIR",
        help="put DIR before the agent's PATH for pod processes (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if os.getuid() == root.stat().st_uid:
        root.chmod(0o755)
    _warn_if_unreachable(root)
    prepend = [p for entry in args.path_prepend for p in str(entry).split(os.pathsep) if p]
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Agent(args.kubeconfig, args.node_name, root, prepend).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
