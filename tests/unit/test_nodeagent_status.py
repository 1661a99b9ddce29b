"""The pod status the node agent posts: phase, conditions, container statuses; node basics."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from scapguard.devcluster.nodeagent_api import kubelet_version, node_status, service_env
from scapguard.devcluster.nodeagent_spec import JSON
from scapguard.devcluster.nodeagent_status import (
    ContainerRecord,
    ContainerState,
    PodRecord,
    build_status,
    new_record,
    pod_phase,
)
from scapguard.devcluster.nodeagent_worker import kill_orphan_group, proc_start_ticks

T0, T1 = "2030-01-01T00:00:00Z", "2030-01-01T00:00:05Z"


def pod(policy: str = "Never", init: int = 0, containers: int = 1, **status: object) -> JSON:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "restartPolicy": policy,
            "initContainers": [{"name": f"i{n}", "image": "img"} for n in range(init)],
            "containers": [{"name": f"c{n}", "image": "img"} for n in range(containers)],
        },
        "status": status,
    }


def waiting(reason: str = "ContainerCreating") -> ContainerState:
    return ContainerState("waiting", reason=reason)


def running() -> ContainerState:
    return ContainerState("running", started_at=T0, container_id="process://9")


def exited(code: int) -> ContainerState:
    return ContainerState(
        "terminated",
        reason="Completed" if code == 0 else "Error",
        started_at=T0,
        finished_at=T1,
        exit_code=code,
        container_id="process://9",
    )


def rec(name: str, state: ContainerState, last: ContainerState | None = None) -> ContainerRecord:
    return ContainerRecord(name, "img", state, last_state=last, restart_count=int(bool(last)))


def record(
    init: list[ContainerState] | None = None,
    containers: list[ContainerState] | None = None,
    **kw: object,
) -> PodRecord:
    r = PodRecord(
        uid="u",
        start_time=T0,
        init=[rec(f"i{n}", s) for n, s in enumerate(init or [])],
        containers=[rec(f"c{n}", s) for n, s in enumerate(containers or [])],
    )
    for key, value in kw.items():
        setattr(r, key, value)
    return r


@pytest.mark.parametrize(
    ("policy", "init", "containers", "final", "phase"),
    [
        ("Never", [], [waiting()], False, "Pending"),
        ("Never", [], [running()], False, "Running"),
        ("Never", [], [exited(0)], False, "Succeeded"),
        ("Never", [], [exited(1)], False, "Failed"),
        ("Never", [], [exited(0), running()], False, "Running"),
        ("Never", [], [exited(0), exited(2)], False, "Failed"),
        ("OnFailure", [], [exited(1)], False, "Running"),  # about to restart
        ("OnFailure", [], [exited(0)], False, "Succeeded"),
        ("Always", [], [exited(0)], False, "Running"),
        ("Never", [running()], [waiting("PodInitializing")], False, "Pending"),
        ("Never", [exited(0), waiting()], [waiting("PodInitializing")], False, "Pending"),
        ("Never", [exited(1)], [waiting("PodInitializing")], False, "Failed"),
        ("OnFailure", [exited(1)], [waiting("PodInitializing")], False, "Pending"),
        # deleted (final): terminal whatever the restart policy
        ("Always", [], [exited(0)], True, "Succeeded"),
        ("Always", [], [exited(137)], True, "Failed"),
        ("Never", [], [waiting()], True, "Failed"),
    ],
)
def test_phase_follows_the_kubelet(
    policy: str,
    init: list[ContainerState],
    containers: list[ContainerState],
    final: bool,
    phase: str,
) -> None:
    p = pod(policy, init=len(init), containers=len(containers))
    assert pod_phase(p, record(init, containers, final=final)) == phase


def test_crash_loop_counts_as_stopped() -> None:
    r = record([], [waiting("CrashLoopBackOff")])
    r.containers[0].last_state = exited(1)
    assert pod_phase(pod("OnFailure"), r) == "Running"


def test_deadline_fails_the_pod_once_its_processes_are_gone() -> None:
    r = record([], [running()], reason="DeadlineExceeded", message="too long")
    assert pod_phase(pod(), r) == "Running"
    r.containers[0].state, r.final = exited(143), True
    status = build_status(pod(), r, T1)
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")


def conditions(status: JSON) -> dict[str, JSON]:
    return {c["type"]: c for c in status["conditions"]}


def test_status_while_running() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "x"}
    p = pod(init=1, conditions=[scheduled])
    status = build_status(p, record([exited(0)], [running()]), T1)
    assert status["phase"] == "Running"
    assert (status["podIP"], status["hostIP"], status["startTime"]) == ("127.0.0.1",) * 2 + (T0,)
    conds = conditions(status)
    assert conds["PodScheduled"] == scheduled
    assert {t: c["status"] for t, c in conds.items()} == {
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
        "PodScheduled": "True",
    }
    assert status["containerStatuses"] == [
        {
            "name": "c0",
            "image": "img",
            "imageID": "",
            "containerID": "process://9",
            "state": {"running": {"startedAt": T0}},
            "lastState": {},
            "ready": True,
            "started": True,
            "restartCount": 0,
        }
    ]
    assert status["initContainerStatuses"][0]["state"] == {
        "terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": T0,
            "finishedAt": T1,
            "containerID": "process://9",
        }
    }


def test_status_before_init_and_after_success() -> None:
    pending = build_status(pod(init=1), record([waiting("PodInitializing")], [waiting()]), T0)
    conds = conditions(pending)
    assert conds["Initialized"]["reason"] == "ContainersNotInitialized"
    assert conds["Initialized"]["message"] == "containers with incomplete status: [i0]"
    assert conds["Ready"]["message"] == "containers with unready status: [c0]"
    assert pending["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    done = build_status(pod(), record([], [exited(0)]), T1)
    assert done["phase"] == "Succeeded"
    assert conditions(done)["Ready"]["reason"] == "PodCompleted"


def test_transition_times_only_move_when_status_changes() -> None:
    first = build_status(pod(), record([], [running()]), T0)
    # the pod object lags behind: what this agent posted counts
    again = build_status(pod(), record([], [running()]), T1, posted=first)
    assert conditions(again)["Ready"]["lastTransitionTime"] == T0
    later = build_status(pod(), record([], [exited(1)]), T1, posted=first)
    assert conditions(later)["Ready"]["lastTransitionTime"] == T1
    assert conditions(later)["Initialized"]["lastTransitionTime"] == T0


def test_record_round_trips_and_resumes_from_posted_status() -> None:
    r = record([exited(0)], [running()])
    r.containers[0].pid, r.containers[0].pid_start = 123, 456
    assert PodRecord.from_json(r.to_json()) == r
    posted = build_status(pod(init=1), r, T1)
    resumed = new_record(pod(init=1, **posted))
    assert resumed.start_time == T0
    assert resumed.init[0].state == exited(0)
    assert resumed.containers[0].state == running()
    assert resumed.containers[0].pid is None  # the API does not know pids
    fresh = new_record(pod(init=1))
    assert [c.state.reason for c in fresh.all()] == ["PodInitializing", "PodInitializing"]


# --- node -------------------------------------------------------------------------------------


def test_node_status_is_ready_with_capacity(tmp_path: Path) -> None:
    status = node_status("n1", tmp_path, "v1.33.0", T0)
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert int(status["capacity"]["cpu"]) == os.cpu_count()
    assert status["capacity"]["memory"].endswith("Ki")
    assert status["allocatable"]["pods"] == "110"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["nodeInfo"]["kubeletVersion"] == "v1.33.0"


def test_kubelet_version_and_service_env() -> None:
    assert kubelet_version({"gitVersion": "v1.33.2", "major": "1", "minor": "33"}) == "v1.33.2"
    unstamped = {"gitVersion": "v0.0.0-master+$Format:%H$", "major": "1", "minor": "33+"}
    assert kubelet_version(unstamped) == "v1.33.0"
    assert service_env("https://127.0.0.1:6443") == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "6443",
        "KUBERNETES_PORT": "tcp://127.0.0.1:6443",
    }


# --- leftover process groups of a previous agent -----------------------------------------------


def test_orphan_group_is_killed_only_when_it_is_the_same_process() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = proc_start_ticks(proc.pid)
        assert ticks is not None
        assert not kill_orphan_group(proc.pid, ticks + 1)  # a reused pid: left alone
        assert proc.poll() is None
        assert kill_orphan_group(proc.pid, ticks)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert proc_start_ticks(proc.pid) is None
    assert not kill_orphan_group(proc.pid, 0)
    assert not kill_orphan_group(0, 0)
