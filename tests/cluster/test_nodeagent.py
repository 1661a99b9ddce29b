"""The node agent runs real pods for the real control plane (Job controller, scheduler...)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scapguard.devcluster.cluster import NODE_NAME, ClusterError, DevCluster
from scapguard.devcluster.nodeagent_api import microtime
from scapguard.devcluster.nodeagent_worker import log_path, pod_dir

pytestmark = pytest.mark.cluster

T = TypeVar("T")
JSON = dict[str, Any]


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def node_root(cluster: DevCluster) -> Path:
    return cluster.workdir / "node"


def create(cluster: DevCluster, path: str, obj: JSON) -> JSON:
    return cluster.api_request("POST", path, obj)


def get(cluster: DevCluster, path: str) -> JSON | None:
    try:
        return cluster.api_request("GET", path)
    except ClusterError as exc:  # it carries the status code in its text only
        if ": 404 " in str(exc):
            return None
        raise


def make_pod(name: str, namespace: str, containers: list[JSON], **spec: Any) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def run_pod(cluster: DevCluster, pod: JSON) -> JSON:
    ns = pod["metadata"]["namespace"]
    created = create(cluster, f"/api/v1/namespaces/{ns}/pods", pod)
    return created


def pod_path(pod: JSON) -> str:
    return f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"


def wait_phase(
    cluster: DevCluster, pod: JSON, phases: tuple[str, ...], timeout: float = 60
) -> JSON:
    def probe() -> JSON | None:
        got = get(cluster, pod_path(pod))
        return got if got and got.get("status", {}).get("phase") in phases else None

    return eventually(f"pod {pod['metadata']['name']} reaching {phases}", probe, timeout)


def container_status(pod: JSON, name: str = "main") -> JSON:
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    return next(s for s in statuses if s["name"] == name)


def pid_of(status: JSON) -> int:
    container_id = status.get("containerID") or ""
    assert container_id.startswith("process://"), status
    return int(container_id.removeprefix("process://"))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def secret(namespace: str, name: str, data: dict[str, str]) -> JSON:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": encoded,
    }


# --- the Node --------------------------------------------------------------------------------


def test_node_is_ready_untainted_and_heartbeats(cluster: DevCluster) -> None:
    def untainted() -> JSON | None:
        node = cluster.api_request("GET", f"/api/v1/nodes/{NODE_NAME}")
        return None if node["spec"].get("taints") else node

    node = eventually("the node without taints (not-ready is lifted once Ready)", untainted, 10)
    status = node["status"]
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds == {
        "Ready": "True",
        "MemoryPressure": "False",
        "DiskPressure": "False",
        "PIDPressure": "False",
    }
    assert int(status["allocatable"]["cpu"]) >= 1
    assert status["allocatable"]["pods"] == "110"
    assert status["allocatable"]["memory"].endswith("Ki")
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE_NAME}"
    lease = cluster.api_request("GET", lease_path)
    assert lease["spec"]["holderIdentity"] == NODE_NAME
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    before = lease["spec"]["renewTime"]
    eventually(
        "the node Lease renewed",
        lambda: cluster.api_request("GET", lease_path)["spec"]["renewTime"] > before,
        20,
    )


# --- Jobs ------------------------------------------------------------------------------------


def job(name: str, namespace: str, command: list[str], backoff_limit: int = 0) -> JSON:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "example/img:1", "command": command}],
                }
            },
        },
    }


def job_condition(cluster: DevCluster, namespace: str, name: str, kind: str) -> JSON | None:
    got = get(cluster, f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}") or {}
    conds = got.get("status", {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind and c["status"] == "True"), None)


def job_pods(cluster: DevCluster, namespace: str, name: str) -> list[JSON]:
    listed = cluster.api_request(
        "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{name}"
    )
    items: list[JSON] = listed["items"]
    return items


def test_job_pod_runs_and_job_completes(cluster: DevCluster, namespace: str) -> None:
    create(
        cluster,
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        job("hello", namespace, ["sh", "-c", "echo hello from $HOSTNAME; echo to stderr >&2"]),
    )
    eventually(
        "Job hello Complete", lambda: job_condition(cluster, namespace, "hello", "Complete"), 60
    )
    [pod] = job_pods(cluster, namespace, "hello")
    status = pod["status"]
    assert status["phase"] == "Succeeded"
    assert (status["podIP"], status["hostIP"]) == ("127.0.0.1", "127.0.0.1")
    assert status["startTime"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["PodScheduled"]["status"] == "True"
    assert conds["Initialized"]["status"] == "True"
    assert conds["Ready"]["reason"] == "PodCompleted"
    main = container_status(pod)
    assert main["image"] == "example/img:1"
    terminated = main["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["startedAt"] <= terminated["finishedAt"]
    assert main["restartCount"] == 0
    log = log_path(node_root(cluster), pod, "main", 0).read_text()
    assert log == f"hello from {pod['metadata']['name']}\nto stderr\n"


def test_failing_job_pods_fail_with_exit_code_and_job_retries(
    cluster: DevCluster, namespace: str
) -> None:
    create(
        cluster,
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        job("fails", namespace, ["sh", "-c", "echo failing; exit 3"], backoff_limit=1),
    )
    failed = eventually(
        "Job fails Failed", lambda: job_condition(cluster, namespace, "fails", "Failed"), 90
    )
    assert failed["reason"] == "BackoffLimitExceeded"
    pods = job_pods(cluster, namespace, "fails")
    assert len(pods) == 2  # backoffLimit 1: the first pod and one retry
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        terminated = container_status(pod)["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")


# --- what the process sees ----------------------------------------------------------------------


def test_env_and_volumes_are_visible_to_the_process(cluster: DevCluster, namespace: str) -> None:
    create(
        cluster,
        f"/api/v1/namespaces/{namespace}/secrets",
        secret(namespace, "creds", {"user": "alice", "token": "t0k"}),
    )
    create(
        cluster,
        f"/api/v1/namespaces/{namespace}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": namespace},
            "data": {"mode": "fast", "app.yaml": "a: 1"},
        },
    )
    # $(cat ...) is no known variable, so Kubernetes expansion leaves it for the shell.
    script = "\n".join(
        [
            "{",
            'echo "user=$USER_NAME"',
            'echo "mode=$MODE"',
            'echo "pod=$POD_NAME ns=$POD_NS ip=$POD_IP"',
            'echo "greeting=$GREETING"',
            'echo "cm_mode=$CM_mode s_user=$S_user"',
            'echo "token=$(cat /secrets/nested/tok)"',
            'echo "config=$(cat $CONFIG)"',
            'echo "podinfo=$(cat /etc/podinfo/name)"',
            'echo "sa_ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"',
            'echo "sa_token=$(head -c 3 /var/run/secrets/kubernetes.io/serviceaccount/token)"',
            'echo "api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"',
            'echo "pwd=$(pwd)"',
            "} > report.txt",
        ]
    )
    pod = make_pod(
        "env-and-volumes",
        namespace,
        [
            {
                "name": "main",
                "image": "example/img:1",
                "command": ["sh", "-c", script],
                "workingDir": "/scratch",
                "env": [
                    {
                        "name": "USER_NAME",
                        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}},
                    },
                    {
                        "name": "MODE",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                    },
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "POD_NS",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    },
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "GREETING", "value": "hello $(POD_NAME)"},
                    {"name": "CONFIG", "value": "/config/app.yaml"},
                ],
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                    {"secretRef": {"name": "creds"}, "prefix": "S_"},
                ],
                "volumeMounts": [
                    {"name": "sec", "mountPath": "/secrets", "readOnly": True},
                    {"name": "cfg", "mountPath": "/config"},
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "info", "mountPath": "/etc/podinfo"},
                ],
            }
        ],
        volumes=[
            {
                "name": "sec",
                "secret": {
                    "secretName": "creds",
                    "items": [{"key": "token", "path": "nested/tok"}],
                },
            },
            {"name": "cfg", "configMap": {"name": "settings"}},
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]
                },
            },
        ],
    )
    run_pod(cluster, pod)
    done = wait_phase(cluster, pod, ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    volumes = pod_dir(node_root(cluster), done) / "volumes"
    report = (volumes / "scratch" / "report.txt").read_text().splitlines()
    port = cluster.server.rsplit(":", 1)[1]
    assert report == [
        "user=alice",
        "mode=fast",
        f"pod=env-and-volumes ns={namespace} ip=127.0.0.1",
        "greeting=hello env-and-volumes",
        "cm_mode=fast s_user=alice",
        "token=t0k",
        "config=a: 1",
        "podinfo=env-and-volumes",
        f"sa_ns={namespace}",
        "sa_token=eyJ",  # a JWT from the TokenRequest API
        f"api=127.0.0.1:{port}",
        f"pwd={volumes / 'scratch'}",
    ]
    # Finished pods keep their emptyDirs but not their secrets on disk.
    assert not (volumes / "sec").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="switching users needs root")
def test_run_as_user_is_really_applied(cluster: DevCluster, namespace: str) -> None:
    create(
        cluster,
        f"/api/v1/namespaces/{namespace}/secrets",
        secret(namespace, "creds", {"user": "alice"}),
    )
    script = (
        "id -u > /scratch/uid; id -g > /scratch/gid; id -G > /scratch/groups; "
        "cat /secrets/user > /scratch/secret-copy; touch /scratch/mine; "
        "if touch /secrets/x 2>/dev/null; then echo yes; else echo no; fi > /scratch/secrets-rw"
    )
    pod = make_pod(
        "run-as",
        namespace,
        [
            {
                "name": "main",
                "image": "example/img:1",
                "command": ["sh", "-c", script],
                "securityContext": {"runAsUser": 4321},  # container wins over pod
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "sec", "mountPath": "/secrets"},
                ],
            }
        ],
        securityContext={
            "runAsUser": 1111,
            "runAsGroup": 4322,
            "fsGroup": 4323,
            "supplementalGroups": [4324],
            "runAsNonRoot": True,
        },
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o440}},
        ],
    )
    run_pod(cluster, pod)
    done = wait_phase(cluster, pod, ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    scratch = pod_dir(node_root(cluster), done) / "volumes" / "scratch"
    assert (scratch / "uid").read_text().strip() == "4321"
    assert (scratch / "gid").read_text().strip() == "4322"
    assert set((scratch / "groups").read_text().split()) == {"4322", "4323", "4324"}
    assert (scratch / "secret-copy").read_text() == "alice"  # 0440, group fsGroup
    assert (scratch / "secrets-rw").read_text().strip() == "no"
    mine = (scratch / "mine").stat()
    assert (mine.st_uid, mine.st_gid) == (4321, 4323)  # setgid emptyDir: fsGroup owns files


def test_run_as_non_root_without_a_user_is_refused(cluster: DevCluster, namespace: str) -> None:
    pod = make_pod(
        "non-root",
        namespace,
        [{"name": "main", "image": "example/img:1", "command": ["true"]}],
        securityContext={"runAsNonRoot": True},
    )
    run_pod(cluster, pod)

    def refused() -> JSON | None:
        got = get(cluster, pod_path(pod)) or {}
        statuses = got.get("status", {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        return got if waiting.get("reason") == "CreateContainerConfigError" else None

    got = eventually("container waiting with CreateContainerConfigError", refused, 60)
    assert got["status"]["phase"] == "Pending"
    assert "runAsUser" in container_status(got)["state"]["waiting"]["message"]


def test_container_without_command_fails_with_a_clear_reason(
    cluster: DevCluster, namespace: str
) -> None:
    pod = make_pod("no-command", namespace, [{"name": "main", "image": "example/img:1"}])
    run_pod(cluster, pod)
    done = wait_phase(cluster, pod, ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Failed"
    terminated = container_status(done)["state"]["terminated"]
    assert terminated["reason"] == "StartError"
    assert "no command" in terminated["message"]


def test_init_containers_run_first_in_order(cluster: DevCluster, namespace: str) -> None:
    def step(name: str) -> JSON:
        return {
            "name": name,
            "image": "example/img:1",
            "command": ["sh", "-c", f"echo {name} >> /scratch/order"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        }

    pod = make_pod(
        "init-order",
        namespace,
        [step("main")],
        initContainers=[step("first"), step("second")],
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    run_pod(cluster, pod)
    done = wait_phase(cluster, pod, ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    order = pod_dir(node_root(cluster), done) / "volumes" / "scratch" / "order"
    assert order.read_text().split() == ["first", "second", "main"]
    init = done["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["exitCode"] for s in init] == [0, 0]


def test_on_failure_restarts_the_container(cluster: DevCluster, namespace: str) -> None:
    script = (
        "if [ -e /scratch/once ]; then echo second; exit 0; fi; "
        "touch /scratch/once; echo first; exit 1"
    )
    pod = make_pod(
        "on-failure",
        namespace,
        [
            {
                "name": "main",
                "image": "example/img:1",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        restartPolicy="OnFailure",
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    run_pod(cluster, pod)
    done = wait_phase(cluster, pod, ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded"
    main = container_status(done)
    assert main["restartCount"] == 1
    assert main["lastState"]["terminated"]["exitCode"] == 1
    assert main["state"]["terminated"]["exitCode"] == 0
    root = node_root(cluster)
    assert log_path(root, done, "main", 0).read_text() == "first\n"
    assert log_path(root, done, "main", 1).read_text() == "second\n"


def test_always_restarts_even_after_success(cluster: DevCluster, namespace: str) -> None:
    pod = make_pod(
        "always",
        namespace,
        [{"name": "main", "image": "example/img:1", "command": ["echo", "tick"]}],
        restartPolicy="Always",
    )
    run_pod(cluster, pod)

    def restarted_twice() -> JSON | None:
        got = get(cluster, pod_path(pod)) or {}
        statuses = got.get("status", {}).get("containerStatuses") or [{}]
        return got if statuses[0].get("restartCount", 0) >= 2 else None

    got = eventually("container restarted twice", restarted_twice, 30)
    assert got["status"]["phase"] == "Running"
    main = container_status(got)
    assert main["lastState"]["terminated"]["exitCode"] == 0
    logs = log_path(node_root(cluster), got, "main", 0).parent
    assert (logs / "0.log").read_text() == (logs / "1.log").read_text() == "tick\n"


# --- stopping processes -------------------------------------------------------------------------


def sleeper(name: str, namespace: str, script: str, **spec: Any) -> JSON:
    """A pod whose main process starts a background child in its process group."""
    return make_pod(
        name,
        namespace,
        [{"name": "main", "image": "example/img:1", "command": ["sh", "-c", script]}],
        **spec,
    )


def running_group(
    cluster: DevCluster, pod: JSON, ready_line: str = "", root: Path | None = None
) -> int:
    """Wait for the pod to run (and to log ``ready_line``); its process group id."""
    got = wait_phase(cluster, pod, ("Running",))
    pgid = pid_of(container_status(got))
    if ready_line:
        logfile = log_path(root or node_root(cluster), got, "main", 0)
        eventually(
            f"{ready_line!r} in {logfile}",
            lambda: logfile.exists() and ready_line in logfile.read_text(),
            30,
        )
    assert len(group_members(pgid)) >= 2  # sh and its background sleep
    return pgid


def test_active_deadline_kills_the_process_group(cluster: DevCluster, namespace: str) -> None:
    pod = sleeper("deadline", namespace, "sleep 300 & echo started; wait", activeDeadlineSeconds=3)
    run_pod(cluster, pod)
    pgid = running_group(cluster, pod, "started")
    done = wait_phase(cluster, pod, ("Failed", "Succeeded"), timeout=30)
    status = done["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert container_status(done)["state"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert group_members(pgid) == []


def test_pod_deletion_stops_the_process_group_gracefully(
    cluster: DevCluster, namespace: str
) -> None:
    script = 'trap "echo got TERM; exit 0" TERM; sleep 300 & echo trapping; wait'
    pod = sleeper("graceful", namespace, script)
    created = run_pod(cluster, pod)
    pgid = running_group(cluster, pod, "trapping")
    cluster.api_request("DELETE", pod_path(pod))  # default grace: 30s
    eventually("pod graceful deleted", lambda: get(cluster, pod_path(pod)) is None, 15)
    assert group_members(pgid) == []
    logfile = log_path(node_root(cluster), created, "main", 0)
    assert logfile.read_text() == "trapping\ngot TERM\n"


def test_pod_deletion_kills_what_ignores_sigterm(cluster: DevCluster, namespace: str) -> None:
    pod = sleeper("stubborn", namespace, 'trap "" TERM; sleep 300 & echo ignoring; wait')
    run_pod(cluster, pod)
    pgid = running_group(cluster, pod, "ignoring")
    began = time.monotonic()
    cluster.api_request("DELETE", pod_path(pod), {"gracePeriodSeconds": 2})
    eventually("pod stubborn deleted", lambda: get(cluster, pod_path(pod)) is None, 20)
    assert time.monotonic() - began >= 1.5  # it got its grace period before SIGKILL
    assert group_members(pgid) == []


# --- the agent's own restarts -------------------------------------------------------------------


class Agents:
    """Node agent processes for a node of their own (tainted, so the scheduler leaves it to
    pods that name it), started through the same CLI DevCluster uses."""

    def __init__(self, cluster: DevCluster, root: Path) -> None:
        self.cluster = cluster
        self.node = f"test-node-{uuid.uuid4().hex[:6]}"
        self.root = root
        self.log = root / "agent.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        since = microtime()
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scapguard.devcluster.nodeagent",
                    f"--kubeconfig={self.cluster.kubeconfig}",
                    f"--node-name={self.node}",
                    f"--root={self.root / 'node'}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"

        def ready() -> bool:
            assert proc.poll() is None, self.log.read_text()
            lease = get(self.cluster, lease_path) or {}
            return str(lease.get("spec", {}).get("renewTime", "")) >= since

        eventually(f"node agent for {self.node} ready", ready, 30)
        node = get(self.cluster, f"/api/v1/nodes/{self.node}") or {}
        if not node.get("spec", {}).get("taints"):
            tainted = self.cluster.kubectl(
                "taint", "node", self.node, "scapguard.io/test-only=:NoSchedule"
            )
            assert tainted.returncode == 0, tainted.stderr
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if get(self.cluster, f"/api/v1/nodes/{self.node}") is not None:
            self.cluster.api_request("DELETE", f"/api/v1/nodes/{self.node}")


@pytest.fixture
def agents(cluster: DevCluster, namespace: str, tmp_path: Path) -> Iterator[Agents]:
    own = Agents(cluster, tmp_path)
    try:
        yield own
    finally:
        own.stop_all()


def test_agent_restart_neither_reruns_nor_forgets_pods(
    cluster: DevCluster, namespace: str, agents: Agents
) -> None:
    root = agents.root / "node"
    first = agents.start()
    once = make_pod(
        "once",
        namespace,
        [{"name": "main", "image": "example/img:1", "command": ["sh", "-c", "echo ran"]}],
        nodeName=agents.node,
    )
    run_pod(cluster, once)
    finished = wait_phase(cluster, once, ("Succeeded",))
    busy = sleeper("busy", namespace, "sleep 300 & echo started; wait", nodeName=agents.node)
    run_pod(cluster, busy)
    pgid = running_group(cluster, busy, "started", root=root)

    first.send_signal(signal.SIGKILL)  # a crash: the pod's processes stay behind
    first.wait(10)
    assert group_members(pgid)
    later = make_pod(
        "later",
        namespace,
        [{"name": "main", "image": "example/img:1", "command": ["echo", "later"]}],
        nodeName=agents.node,
    )
    run_pod(cluster, later)

    second = agents.start()
    lost = wait_phase(cluster, busy, ("Failed", "Succeeded"))
    assert lost["status"]["phase"] == "Failed"
    terminated = container_status(lost)["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("ContainerStatusUnknown", 137)
    assert f"leftover process group {pgid} was killed" in terminated["message"]
    assert group_members(pgid) == []
    assert wait_phase(cluster, later, ("Succeeded",))
    assert log_path(root, finished, "main", 0).read_text() == "ran\n"  # not run again
    again = get(cluster, pod_path(once)) or {}
    assert again["status"]["containerStatuses"] == finished["status"]["containerStatuses"]

    last = sleeper("last", namespace, "sleep 300 & echo started; wait", nodeName=agents.node)
    run_pod(cluster, last)
    last_group = running_group(cluster, last, "started", root=root)
    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0
    assert group_members(last_group) == []
    log = agents.log.read_text()
    assert "Traceback" not in log
    assert "killing the processes of" in log

    agents.start()  # reports what the clean shutdown killed
    stopped = wait_phase(cluster, last, ("Failed", "Succeeded"))
    assert stopped["status"]["phase"] == "Failed"
    terminated = container_status(stopped)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (
        143,
        "killed when the node agent stopped",
    )
