"""What the node agent knows about a pod's containers, and the pod status a kubelet would post.

``PodRecord`` is the agent's memory of one pod (also saved as JSON in the pod directory so a
restarted agent knows what it started). ``pod_phase`` follows the kubelet's ``getPhase``;
``build_status`` returns the ``status`` to patch: phase, conditions (PodScheduled kept as the
scheduler set it, Initialized, ContainersReady, Ready), host/pod IPs, startTime and container
statuses. All pure: no API calls, no processes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scapguard.devcluster.nodeagent_spec import HOST_IP, JSON

StateKind = Literal["waiting", "running", "terminated"]
TERMINAL_PHASES = ("Succeeded", "Failed")
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
_OWN_CONDITIONS = ("Initialized", "ContainersReady", "Ready")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    kind: StateKind
    reason: str = ""
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    container_id: str = ""

    def to_api(self) -> JSON:
        if self.kind == "waiting":
            body: JSON = {"reason": self.reason} if self.reason else {}
        elif self.kind == "running":
            body = {"startedAt": self.started_at}
        else:
            body = {
                "exitCode": self.exit_code,
                "reason": self.reason,
                "startedAt": self.started_at or None,
                "finishedAt": self.finished_at,
            }
            if self.container_id:
                body["containerID"] = self.container_id
        if self.message and self.kind != "running":
            body["message"] = self.message
        return {self.kind: body}

    @classmethod
    def from_api(cls, state: Any) -> ContainerState | None:
        if not isinstance(state, dict):
            return None
        for kind in ("terminated", "running", "waiting"):
            body = state.get(kind)
            if isinstance(body, dict):
                return cls(
                    kind=kind,
                    reason=str(body.get("reason") or ""),
                    message=str(body.get("message") or ""),
                    started_at=str(body.get("startedAt") or ""),
                    finished_at=str(body.get("finishedAt") or ""),
                    exit_code=int(body.get("exitCode") or 0),
                    container_id=str(body.get("containerID") or ""),
                )
        return None


def terminated(
    exit_code: int, started_at: str, *, reason: str = "", message: str = "", container_id: str = ""
) -> ContainerState:
    """A terminated state; reason defaults to Completed (exit 0) or Error."""
    return ContainerState(
        "terminated",
        reason=reason or ("Completed" if exit_code == 0 else "Error"),
        message=message,
        started_at=started_at,
        finished_at=now_rfc3339(),
        exit_code=exit_code,
        container_id=container_id,
    )


@dataclass
class ContainerRecord:
    name: str
    image: str
    state: ContainerState
    last_state: ContainerState | None = None
    restart_count: int = 0
    # The process group leader while the container runs (or was being started: pid 0),
    # and its start time in clock ticks (/proc/PID/stat field 22) to recognise it later.
    pid: int | None = None
    pid_start: int = 0

    @property
    def succeeded(self) -> bool:
        return self.state.kind == "terminated" and self.state.exit_code == 0

    def to_api(self) -> JSON:
        running = self.state.kind == "running"
        status: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state.to_api(),
            "lastState": self.last_state.to_api() if self.last_state else {},
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
        }
        container_id = self.state.container_id or (
            self.last_state.container_id if self.last_state else ""
        )
        if container_id:
            status["containerID"] = container_id
        return status


@dataclass
class PodRecord:
    uid: str
    start_time: str = ""
    init: list[ContainerRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    # Set when the agent decides the pod failed as a whole (DeadlineExceeded).
    reason: str = ""
    message: str = ""
    # Set once the pod is over for good (deleted, or past its deadline, and stopped).
    final: bool = False

    def all(self) -> list[ContainerRecord]:
        return self.init + self.containers

    def to_json(self) -> JSON:
        return asdict(self)

    @classmethod
    def from_json(cls, data: JSON) -> PodRecord:
        def container(raw: JSON) -> ContainerRecord:
            last = raw.get("last_state")
            return ContainerRecord(
                name=raw["name"],
                image=raw["image"],
                state=ContainerState(**raw["state"]),
                last_state=ContainerState(**last) if last else None,
                restart_count=raw["restart_count"],
                pid=raw.get("pid"),
                pid_start=raw.get("pid_start", 0),
            )

        return cls(
            uid=data["uid"],
            start_time=data["start_time"],
            init=[container(c) for c in data["init"]],
            containers=[container(c) for c in data["containers"]],
            reason=data["reason"],
            message=data["message"],
            final=data["final"],
        )


def _spec(pod: JSON) -> JSON:
    spec = pod.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(pod: JSON) -> JSON:
    status = pod.get("status")
    return status if isinstance(status, dict) else {}


def new_record(pod: JSON) -> PodRecord:
    """A record for a pod the agent sees for the first time, from its spec and any status a
    previous run of the agent posted (containers it had started are taken as they were)."""
    spec = _spec(pod)
    status = _status(pod)

    def records(kind: str, status_key: str, waiting: str) -> list[ContainerRecord]:
        posted = {s.get("name"): s for s in status.get(status_key) or [] if isinstance(s, dict)}
        out = []
        for container in spec.get(kind) or []:
            prior = posted.get(container["name"], {})
            state = ContainerState.from_api(prior.get("state")) or ContainerState(
                "waiting", reason=waiting
            )
            if state.kind == "running":
                state.container_id = str(prior.get("containerID") or "")
            out.append(
                ContainerRecord(
                    name=container["name"],
                    image=str(container.get("image", "")),
                    state=state,
                    last_state=ContainerState.from_api(prior.get("lastState")),
                    restart_count=int(prior.get("restartCount") or 0),
                )
            )
        return out

    waiting = "PodInitializing" if spec.get("initContainers") else "ContainerCreating"
    return PodRecord(
        uid=pod["metadata"]["uid"],
        start_time=str(status.get("startTime") or ""),
        init=records("initContainers", "initContainerStatuses", "PodInitializing"),
        containers=records("containers", "containerStatuses", waiting),
    )


def restart_policy(pod: JSON) -> str:
    return str(_spec(pod).get("restartPolicy") or "Always")


def init_done(record: PodRecord) -> bool:
    return all(c.succeeded for c in record.init)


def pod_phase(pod: JSON, record: PodRecord) -> str:
    """The kubelet's getPhase over the record; a final pod is always Succeeded or Failed."""
    policy = restart_policy(pod)
    if record.reason and record.final:  # DeadlineExceeded, once its processes are gone
        return "Failed"
    pending_init = failed_init = 0
    for c in record.init:
        st, last = c.state, c.last_state
        if st.kind == "terminated":
            failed_init += st.exit_code != 0
        elif st.kind == "waiting" and last is not None and last.kind == "terminated":
            failed_init += last.exit_code != 0
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for c in record.containers:
        if c.state.kind == "running":
            running += 1
        elif c.state.kind == "terminated":
            stopped += 1
            succeeded += c.state.exit_code == 0
        elif c.last_state is not None and c.last_state.kind == "terminated":
            stopped += 1
        else:
            waiting += 1
    everything_succeeded = succeeded == len(record.containers) and not pending_init
    if failed_init and policy == "Never":
        phase = "Failed"
    elif pending_init or waiting:
        phase = "Pending"
    elif running:
        phase = "Running"
    elif stopped:
        if record.final:
            phase = "Succeeded" if stopped == succeeded else "Failed"
        elif policy == "Always":
            phase = "Running"
        elif stopped == succeeded:
            phase = "Succeeded"
        elif policy == "Never":
            phase = "Failed"
        else:
            phase = "Running"
    else:
        phase = "Pending"
    if record.final and phase not in TERMINAL_PHASES:
        phase = "Succeeded" if everything_succeeded else "Failed"
    return phase


def _condition(
    kind: str, ok: bool, previous: dict[str, JSON], now: str, reason: str = "", message: str = ""
) -> JSON:
    status = "True" if ok else "False"
    before = previous.get(kind, {})
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    cond: JSON = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or now,
    }
    if not ok:
        cond["reason"] = reason
        if message:
            cond["message"] = message
    return cond


def build_status(pod: JSON, record: PodRecord, now: str, posted: JSON | None = None) -> JSON:
    """The pod status a kubelet would post for this record.

    ``posted`` is the status this agent last posted: its conditions count as the current ones
    (the pod object may lag behind), so lastTransitionTime only moves when a status changes.
    """
    phase = pod_phase(pod, record)
    current = _status(pod)
    previous = {c["type"]: c for c in current.get("conditions") or [] if isinstance(c, dict)}
    for cond in (posted or {}).get("conditions") or []:
        if cond["type"] in _OWN_CONDITIONS:
            previous[cond["type"]] = cond
    unfinished_init = [c.name for c in record.init if not c.succeeded]
    unready = [c.name for c in record.containers if c.state.kind != "running"]
    if phase == "Succeeded":
        ready_args = ("PodCompleted", "")
    else:
        names = " ".join(unready)
        ready_args = ("ContainersNotReady", f"containers with unready status: [{names}]")
    ready = phase != "Succeeded" and not unready
    gates = [str(g.get("conditionType")) for g in _spec(pod).get("readinessGates") or []]
    gates_ok = all(previous.get(g, {}).get("status") == "True" for g in gates)
    conditions = [
        _condition(
            "Initialized",
            not unfinished_init,
            previous,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(unfinished_init)}]",
        ),
        _condition("ContainersReady", ready, previous, now, *ready_args),
        _condition(
            "Ready",
            ready and gates_ok,
            previous,
            now,
            *(ready_args if not ready else ("ReadinessGatesNotReady", "")),
        ),
    ]
    # Keep what others own (PodScheduled from the scheduler, DisruptionTarget, gates).
    conditions += [c for t, c in previous.items() if t not in _OWN_CONDITIONS]
    status: JSON = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": HOST_IP,
        "podIPs": [{"ip": HOST_IP}],
        "initContainerStatuses": [c.to_api() for c in record.init],
        "containerStatuses": [c.to_api() for c in record.containers],
    }
    if record.start_time:
        status["startTime"] = record.start_time
    if record.reason:
        status["reason"] = record.reason
        status["message"] = record.message
    return status
