"""One thread per pod: start its containers as process groups, follow them, report status.

A worker loops every ``TICK`` seconds (or when the pod object changes): reap exited processes,
start deletion / deadline termination, start the next containers (init containers first, in
order; then all containers), then post the status if it changed. It persists its ``PodRecord``
in ``<pod dir>/state.json`` before every process start, so a restarted agent never runs a
container twice: what was running when the agent died is reported as terminated with reason
``ContainerStatusUnknown`` (exit code 137, its leftover process group killed); what it killed
when told to stop is terminated with its exit code (143 for SIGTERM) and the message "killed when
the node agent stopped". Either way the restart policy decides what follows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from scapguard.devcluster.nodeagent_api import ApiError, PodGone, TransportError
from scapguard.devcluster.nodeagent_spec import (
    JSON,
    ConfigError,
    Identity,
    ObjectSource,
    VolumeError,
    build_env,
    container_mounts,
    expand,
    materialise_volumes,
    pod_key,
    remove_tree,
    resolve_identity,
)
from scapguard.devcluster.nodeagent_status import (
    DEADLINE_MESSAGE,
    DEADLINE_REASON,
    TERMINAL_PHASES,
    ContainerRecord,
    ContainerState,
    PodRecord,
    build_status,
    new_record,
    now_rfc3339,
    restart_policy,
    terminated,
)

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between looks at the processes
RETRY = 2.0  # seconds before retrying a volume/config error or a failed API write
BACKOFF_BASE, BACKOFF_MAX = 1.0, 30.0  # restart back-off (a kubelet uses 10s..300s)
MIN_FORCE_GRACE = 2  # seconds of SIGTERM for pods that vanished from the API, as a kubelet
SHUTDOWN_GRACE = 2.0  # seconds of SIGTERM when the agent itself stops
DEFAULT_GRACE = 30
_API_ERRORS = (ApiError, TransportError)


class PodWriter(Protocol):
    """What a worker needs from the API (nodeagent_api.PodApi)."""

    @property
    def objects(self) -> ObjectSource: ...

    def patch_status(self, pod: JSON, status: JSON) -> None: ...

    def delete(self, pod: JSON) -> None: ...


@dataclass(frozen=True)
class RuntimeConfig:
    root: Path
    path_prepend: tuple[str, ...]
    service_env: Mapping[str, str]


def pod_dir(root: Path, pod: JSON) -> Path:
    """Where a pod lives on this node: ``<root>/pods/<namespace>_<name>_<uid>``."""
    return root / "pods" / pod_key(pod)


def log_path(root: Path, pod: JSON, container: str, restart_count: int) -> Path:
    """Container logs (stdout and stderr, interleaved, no timestamps)."""
    return pod_dir(root, pod) / "logs" / container / f"{restart_count}.log"


def proc_start_ticks(pid: int) -> int | None:
    """The start time of a process in clock ticks, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _killpg(pgid: int, sig: signal.Signals) -> bool:
    if pgid <= 1:  # never our own group (0) or init
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_orphan_group(pid: int, start_ticks: int) -> bool:
    """SIGKILL the process group a previous agent started, if it is still around.

    If a process with that pid exists but started at another time, the pid was reused and
    nothing is killed. If none exists, any process still in group ``pid`` is a leftover of that
    container (Linux does not hand out a pid that is still some group's id).
    """
    if pid <= 1:
        return False
    current = proc_start_ticks(pid)
    if current is not None and current != start_ticks:
        return False
    return _killpg(pid, signal.SIGKILL)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    record: ContainerRecord


class PodWorker(threading.Thread):
    """Runs one pod. ``update``/``removed``/``shutdown`` are called from other threads."""

    def __init__(
        self,
        pod: JSON,
        api: PodWriter,
        cfg: RuntimeConfig,
        done: Callable[[PodWorker], None],
    ) -> None:
        super().__init__(name=f"pod-{pod_key(pod)}", daemon=True)
        self.uid: str = pod["metadata"]["uid"]
        self.key = pod_key(pod)
        self._pod = pod
        self._api = api
        self._cfg = cfg
        self._done = done
        self._wake = threading.Event()
        self.gone = False  # the pod left the API: stop now, post nothing
        self._shutdown = False  # the agent stops: stop now, post nothing
        self._dir = pod_dir(cfg.root, pod)
        self._record = PodRecord(uid=self.uid)
        self._procs: dict[str, _Process] = {}
        self._volumes: dict[str, Path] | None = None
        self._not_before: dict[str, float] = {}  # container -> monotonic time of next try
        self._sandbox_error_at = 0.0
        self._terminating = False
        self._kill_at = 0.0
        self._posted: JSON | None = None
        self._post_retry_at = 0.0
        self._saved = ""

    @property
    def pod(self) -> JSON:
        """The newest pod object seen."""
        return self._pod

    # -- called from other threads ----------------------------------------------------------

    def update(self, pod: JSON) -> None:
        self._pod = pod
        self._wake.set()

    def removed(self) -> None:
        self.gone = True
        self._wake.set()

    def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: worker failed; killing its processes", self.key)
            self._stop_all(0.0)
            self._save()
        finally:
            self._done(self)

    def _run(self) -> None:
        pod = self._pod
        phase = pod.get("status", {}).get("phase")
        if phase in TERMINAL_PHASES:
            if pod["metadata"].get("deletionTimestamp"):
                self._finalise_deletion(pod)
            return
        self._prepare(pod)
        while True:
            if self.gone or self._shutdown:
                stopped = self._stop_all(SHUTDOWN_GRACE if self._shutdown else MIN_FORCE_GRACE)
                for rec in stopped:
                    if self._shutdown and rec.state.exit_code != 0:
                        rec.state.message = "killed when the node agent stopped"
                self._save()
                return
            pod = self._pod
            self._reap()
            if not self._terminating:
                self._check_termination(pod)
            if self._terminating:
                if self._procs and time.monotonic() >= self._kill_at:
                    for proc in self._procs.values():
                        _killpg(proc.popen.pid, signal.SIGKILL)
                if not self._procs:
                    self._record.final = True
            else:
                self._advance(pod)
            self._save()
            status = build_status(pod, self._record, now_rfc3339(), self._posted)
            posted = self._post(pod, status)
            if posted and status["phase"] in TERMINAL_PHASES and not self._procs:
                if pod["metadata"].get("deletionTimestamp"):
                    self._finalise_deletion(pod)
                self._release_volumes(pod)
                log.info("pod %s: %s", self.key, status["phase"])
                return
            self._wake.wait(TICK)
            self._wake.clear()

    def _prepare(self, pod: JSON) -> None:
        """Create the pod directory and load (or start) the record; recover lost containers."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o755)
        state = self._dir / "state.json"
        if state.exists():
            self._record = PodRecord.from_json(json.loads(state.read_text()))
            self._saved = state.read_text()
        else:
            self._record = new_record(pod)
        for rec in self._record.all():
            if rec.pid is None and rec.state.kind != "running":
                continue
            killed = rec.pid is not None and kill_orphan_group(rec.pid, rec.pid_start)
            message = "The container could not be located when the node agent restarted"
            if killed:
                message += f"; its leftover process group {rec.pid} was killed"
            log.warning("pod %s: container %s: %s", self.key, rec.name, message)
            rec.state = terminated(
                137, rec.state.started_at, reason="ContainerStatusUnknown", message=message
            )
            rec.pid = None
        if not self._record.start_time:
            self._record.start_time = now_rfc3339()
        self._save()

    def _save(self) -> None:
        text = json.dumps(self._record.to_json(), indent=1, sort_keys=True)
        if text == self._saved or not self._dir.is_dir():
            return
        tmp = self._dir / "state.json.tmp"
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(self._dir / "state.json")
        self._saved = text

    def _post(self, pod: JSON, status: JSON) -> bool:
        """Patch the status if it changed; True when the API has this status."""
        if status == self._posted:
            return True
        if time.monotonic() < self._post_retry_at:
            return False
        try:
            self._api.patch_status(pod, status)
        except PodGone as exc:
            log.warning("pod %s: gone while posting its status (%s)", self.key, exc)
            self.gone = True
            return False
        except _API_ERRORS as exc:
            log.warning("pod %s: posting status failed, will retry: %s", self.key, exc)
            self._post_retry_at = time.monotonic() + RETRY
            return False
        self._posted = status
        return True

    def _finalise_deletion(self, pod: JSON) -> None:
        while True:
            try:
                self._api.delete(pod)
                log.info("pod %s: deleted (grace 0) after its containers stopped", self.key)
                return
            except _API_ERRORS as exc:
                log.warning("pod %s: final delete failed, will retry: %s", self.key, exc)
            if self._shutdown or self.gone or self._wake.wait(RETRY):
                return

    def _release_volumes(self, pod: JSON) -> None:
        """A finished pod keeps its emptyDirs (until deleted) but not its secrets on disk."""
        spec_volumes = pod.get("spec", {}).get("volumes") or []
        keep = [v["name"] for v in spec_volumes if "emptyDir" in v]
        remove_tree(self._dir / "volumes", keep=keep)

    # -- termination -------------------------------------------------------------------------

    def _check_termination(self, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        spec_grace = spec.get("terminationGracePeriodSeconds")
        grace = DEFAULT_GRACE if spec_grace is None else int(spec_grace)
        if meta.get("deletionTimestamp"):
            deletion_grace = meta.get("deletionGracePeriodSeconds")
            self._terminate(grace if deletion_grace is None else int(deletion_grace), "deleted")
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is None or not self._record.start_time:
            return
        started = _parse_time(self._record.start_time)
        if (dt.datetime.now(dt.UTC) - started).total_seconds() >= int(deadline):
            self._record.reason, self._record.message = DEADLINE_REASON, DEADLINE_MESSAGE
            self._terminate(grace, f"past activeDeadlineSeconds={deadline}")

    def _terminate(self, grace: int, why: str) -> None:
        log.info(
            "pod %s: %s; stopping %d process group(s), grace %ds",
            self.key,
            why,
            len(self._procs),
            grace,
        )
        self._terminating = True
        self._kill_at = time.monotonic() + grace
        for proc in self._procs.values():
            _killpg(proc.popen.pid, signal.SIGKILL if grace <= 0 else signal.SIGTERM)

    def _stop_all(self, grace: float) -> list[ContainerRecord]:
        """SIGTERM every process group, SIGKILL what is left after ``grace``; reap all."""
        stopped = [proc.record for proc in self._procs.values()]
        for proc in self._procs.values():
            _killpg(proc.popen.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        while self._procs and time.monotonic() < deadline:
            self._reap()
            time.sleep(TICK)
        for proc in self._procs.values():
            _killpg(proc.popen.pid, signal.SIGKILL)
        while self._procs:
            self._reap()
            time.sleep(TICK / 10)
        return stopped

    def _reap(self) -> None:
        """Record exited processes; kill what they left in their process group first."""
        for name, proc in list(self._procs.items()):
            pid = proc.popen.pid
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is None:
                continue
            _killpg(pid, signal.SIGKILL)  # the leader is a zombie until reaped: pgid is safe
            code = proc.popen.wait()
            exit_code = code if code >= 0 else 128 - code
            rec = proc.record
            rec.state = terminated(
                exit_code, rec.state.started_at, container_id=rec.state.container_id
            )
            rec.pid = None
            del self._procs[name]
            log.info("pod %s: container %s exited with %d", self.key, name, exit_code)

    # -- starting containers -------------------------------------------------------------------

    def _advance(self, pod: JSON) -> None:
        spec = pod.get("spec", {})
        if self._volumes is None and not self._make_sandbox(pod):
            return
        policy = restart_policy(pod)
        for container, rec in zip(spec.get("initContainers") or [], self._record.init, strict=True):
            if rec.succeeded:
                continue
            if rec.name in self._procs:
                return
            if rec.state.kind == "terminated" and policy == "Never":
                return  # the pod has failed
            self._start_or_back_off(pod, container, rec)
            return
        for container, rec in zip(
            spec.get("containers") or [], self._record.containers, strict=True
        ):
            if rec.name in self._procs:
                continue
            done = rec.state.kind == "terminated" and (
                policy == "Never" or (policy == "OnFailure" and rec.state.exit_code == 0)
            )
            if done:
                continue
            self._start_or_back_off(pod, container, rec)

    def _make_sandbox(self, pod: JSON) -> bool:
        if time.monotonic() < self._sandbox_error_at + RETRY:
            return False
        try:
            self._volumes = materialise_volumes(pod, self._dir / "volumes", self._api.objects)
        except (VolumeError, ConfigError, *_API_ERRORS) as exc:
            log.warning("pod %s: volumes not ready, will retry: %s", self.key, exc)
            self._sandbox_error_at = time.monotonic()
            for rec in self._record.all():
                if rec.state.kind == "waiting":
                    rec.state.message = f"volumes not ready: {exc}"
            return False
        (self._dir / "volumes").chmod(0o755)
        return True

    def _start_or_back_off(self, pod: JSON, container: JSON, rec: ContainerRecord) -> None:
        now = time.monotonic()
        if rec.state.kind == "terminated":
            rec.last_state = rec.state
            rec.restart_count += 1
            delay = min(BACKOFF_BASE * 2 ** (rec.restart_count - 1), BACKOFF_MAX)
            meta = pod["metadata"]
            rec.state = ContainerState(
                "waiting",
                reason="CrashLoopBackOff",
                message=f"back-off {delay:.0f}s restarting failed container={rec.name} "
                f"pod={meta['name']}_{meta['namespace']}({meta['uid']})",
            )
            self._not_before[rec.name] = now + delay
        if now < self._not_before.get(rec.name, 0.0):
            return
        try:
            self._start(pod, container, rec)
        except ConfigError as exc:
            self._not_before[rec.name] = now + RETRY
            if rec.state.message != str(exc):
                log.warning("pod %s: container %s: %s", self.key, rec.name, exc)
            rec.state = ContainerState("waiting", "CreateContainerConfigError", str(exc))
        except _API_ERRORS as exc:
            self._not_before[rec.name] = now + RETRY
            log.warning("pod %s: container %s: API error, will retry: %s", self.key, rec.name, exc)

    def _base_env(self, pod: JSON, identity: Identity) -> dict[str, str]:
        """What an image config and runtime would provide: PATH, HOSTNAME, HOME."""
        path = os.pathsep.join([*self._cfg.path_prepend, os.environ.get("PATH", os.defpath)])
        uid = os.getuid() if identity.uid is None else identity.uid
        hostname = pod.get("spec", {}).get("hostname") or pod["metadata"]["name"]
        return {"PATH": path, "HOSTNAME": hostname, "HOME": "/root" if uid == 0 else "/"}

    def _start(self, pod: JSON, container: JSON, rec: ContainerRecord) -> None:
        """Start one container; ConfigError leaves it waiting, a start failure terminates it."""
        assert self._volumes is not None  # noqa: S101 - _advance made the sandbox first
        identity = resolve_identity(pod, container)
        env = build_env(
            pod,
            container,
            self._api.objects,
            base=self._base_env(pod, identity),
            service_env=self._cfg.service_env,
        )
        rewriter = container_mounts(container, self._volumes, env)
        command = [str(c) for c in container.get("command") or []]
        if not command:
            self._start_failed(
                rec,
                "container has no command: the node agent runs command+args as a local process "
                "and has no image entrypoint to fall back on; set command",
            )
            return
        args = [str(a) for a in container.get("args") or []]
        argv = [rewriter.rewrite(expand(part, env)) for part in command + args]
        env = {name: rewriter.rewrite(value) for name, value in env.items()}
        cwd = rewriter.rewrite(str(container.get("workingDir") or "/"))
        if not Path(cwd).is_dir():
            self._start_failed(rec, f"workingDir {cwd} does not exist (the agent creates none)")
            return
        logfile = log_path(self._cfg.root, pod, rec.name, rec.restart_count)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        (self._dir / "logs").chmod(0o750)
        rec.pid, rec.pid_start = 0, 0  # "being started": a restarted agent will not rerun it
        self._save()
        try:
            with logfile.open("ab") as out:
                popen = self._spawn(argv, env, cwd, identity, out)
        except (OSError, subprocess.SubprocessError) as exc:
            self._start_failed(rec, f"failed to start {argv[0]!r}: {exc}")
            return
        rec.pid, rec.pid_start = popen.pid, proc_start_ticks(popen.pid) or 0
        rec.state = ContainerState(
            "running", started_at=now_rfc3339(), container_id=f"process://{popen.pid}"
        )
        self._procs[rec.name] = _Process(popen, rec)
        self._save()
        log.info(
            "pod %s: container %s started as pid %d (uid %s, gid %s): %s",
            self.key,
            rec.name,
            popen.pid,
            identity.uid,
            identity.gid,
            argv,
        )

    @staticmethod
    def _spawn(
        argv: list[str], env: dict[str, str], cwd: str, identity: Identity, out: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        switch_user = identity.uid is not None or identity.gid is not None
        return subprocess.Popen(  # the pod's own command line, as a kubelet would run it
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=identity.uid,
            group=identity.gid,
            extra_groups=list(identity.groups) if switch_user or identity.groups else None,
            umask=0o022,
            close_fds=True,
        )

    def _start_failed(self, rec: ContainerRecord, message: str) -> None:
        log.warning("pod %s: container %s: %s", self.key, rec.name, message)
        rec.pid = None
        rec.state = terminated(128, "", reason="StartError", message=message)
