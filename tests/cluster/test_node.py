"""The real node: kubelet, containerd + runc, CNI, kube-proxy and CoreDNS in the cluster's netns.

One cluster for the module; the last test stops it and checks nothing is left behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from scapguard_dev.cluster import NODE_NAME, DevCluster, wait_for
from scapguard_dev.images import PushedImage
from scapguard_dev.netns import NODE_IP
from scapguard_dev.node import busybox_image, cgroup_pids, mounts_under, read_sysctls

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def sysctls_before() -> dict[str, str]:
    return read_sysctls()


@pytest.fixture(scope="module")
def node_cluster(sysctls_before: dict[str, str], real_cluster: DevCluster) -> DevCluster:
    return real_cluster


@pytest.fixture(scope="module")
def busybox(node_cluster: DevCluster) -> PushedImage:
    assert node_cluster.registry is not None
    image = busybox_image(node_cluster.registry.host, node_cluster.workdir / "images")
    # Pods name the image as the node's containerd sees the registry.
    return image.at(node_cluster.registry.cluster_host)


def _kubectl(dev: DevCluster, *args: str, input_text: str | None = None) -> str:
    out = dev.kubectl(*args, input_text=input_text)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


def _apply(dev: DevCluster, *objects: dict[str, Any]) -> None:
    _kubectl(dev, "apply", "-f", "-", input_text=yaml.safe_dump_all(objects))


def _get(dev: DevCluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(_kubectl(dev, "-n", namespace, "get", kind, name, "-o",
                                              "json"))  # fmt: skip
    return got


@pytest.fixture
def restricted_ns(node_cluster: DevCluster) -> Iterator[str]:
    """A namespace that enforces PodSecurity ``restricted``."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    _apply(node_cluster, {"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": name, "labels": labels}})  # fmt: skip
    wait_for(
        f"ServiceAccount {name}/default",
        lambda: node_cluster.kubectl("-n", name, "get", "sa", "default").returncode == 0,
        30,
    )
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false")


def _pod(name: str, image: PushedImage, command: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": image.by_digest,
                "command": ["/bin/sh", "-c", command],
                "securityContext": RESTRICTED,
            }
        ],
        "terminationGracePeriodSeconds": 1,
        **extra,
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": spec}  # fmt: skip


def _wait_phase(dev: DevCluster, name: str, namespace: str, phases: set[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(_get(dev, "pod", name, namespace))
        return seen.get("status", {}).get("phase") in phases

    try:
        wait_for(f"pod {namespace}/{name} in {sorted(phases)}", reached, 120, interval=0.5)
    except Exception:
        events = dev.kubectl("-n", namespace, "get", "events", "-o", "wide").stdout
        raise AssertionError(f"{json.dumps(seen.get('status'), indent=1)}\n{events}") from None
    return seen


def test_the_node_is_a_kubelet_on_containerd(node_cluster: DevCluster) -> None:
    node = node_cluster.api_request("GET", f"/api/v1/nodes/{NODE_NAME}")
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    assert info["kubeletVersion"] == "v1.34.4"
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]
    # The namespace has no route out: nothing a pod does can reach another network.
    routes = node_cluster.node_exec("ip", "route", "show", "default")
    assert routes.returncode == 0 and routes.stdout.strip() == "", routes


def test_restricted_pod_runs_and_answers_logs_and_exec(
    node_cluster: DevCluster, busybox: PushedImage, restricted_ns: str
) -> None:
    _apply(node_cluster, {**_pod("hello", busybox, "echo hello-from-pod; id; sleep 3600"),
                          "metadata": {"name": "hello", "namespace": restricted_ns}})  # fmt: skip
    pod = _wait_phase(node_cluster, "hello", restricted_ns, {"Running"})
    assert pod["status"]["podIP"].startswith("10.213.1.")

    def logged() -> bool:
        out = node_cluster.kubectl("-n", restricted_ns, "logs", "hello").stdout
        return "hello-from-pod" in out

    wait_for("the pod's log line", logged, 30)
    assert "uid=65532" in _kubectl(node_cluster, "-n", restricted_ns, "logs", "hello")
    assert _kubectl(node_cluster, "-n", restricted_ns, "exec", "hello", "--", "id", "-u").strip() \
        == "65532"  # fmt: skip


def test_pod_without_restricted_settings_is_refused_by_pod_security(
    node_cluster: DevCluster, busybox: PushedImage, restricted_ns: str
) -> None:
    pod = _pod("root", busybox, "true")
    pod["metadata"]["namespace"] = restricted_ns
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    out = node_cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(pod))
    assert out.returncode != 0
    assert "violates PodSecurity" in out.stderr


def test_job_completes(node_cluster: DevCluster, busybox: PushedImage, restricted_ns: str) -> None:
    template = _pod("job", busybox, "echo done")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": restricted_ns},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {**template["spec"], "restartPolicy": "Never"}},
        },
    }
    _apply(node_cluster, job)

    def complete() -> bool:
        status = _get(node_cluster, "job", "once", restricted_ns).get("status", {})
        return any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in status.get("conditions") or []
        )

    wait_for(f"Job {restricted_ns}/once Complete", complete, 120, interval=0.5)


def test_service_by_dns_name_through_kube_proxy(
    node_cluster: DevCluster, busybox: PushedImage, restricted_ns: str
) -> None:
    serve = "mkdir -p /tmp/www && echo pong > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www"
    server = _pod("web", busybox, serve)
    server["metadata"]["namespace"] = restricted_ns
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": restricted_ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(node_cluster, server, service)
    _wait_phase(node_cluster, "web", restricted_ns, {"Running"})
    url = f"http://web.{restricted_ns}.svc.cluster.local/"
    client = _pod("client", busybox, f"until wget -q -O- {url}; do sleep 0.5; done")
    client["metadata"]["namespace"] = restricted_ns
    client["spec"]["restartPolicy"] = "Never"
    _apply(node_cluster, client)
    _wait_phase(node_cluster, "client", restricted_ns, {"Succeeded"})
    assert _kubectl(node_cluster, "-n", restricted_ns, "logs", "client").strip() == "pong"
    # Names outside the cluster have no answer (CoreDNS has no upstream).
    lookup = node_cluster.kubectl("-n", restricted_ns, "exec", "web", "--", "nslookup",
                                  "example.org")  # fmt: skip
    assert "NXDOMAIN" in lookup.stdout + lookup.stderr


def test_stop_leaves_nothing_behind(
    node_cluster: DevCluster, sysctls_before: dict[str, str]
) -> None:
    """Runs last in this module: stops the shared cluster and looks for what could remain."""
    assert node_cluster.node is not None and node_cluster.netns is not None
    layout, netns = node_cluster.node.layout, node_cluster.netns
    assert cgroup_pids(layout.cgroup_root), "pods were running before the stop"
    node_cluster.stop()
    assert cgroup_pids(layout.cgroup_root) == set()
    assert not netns.exists()
    assert mounts_under(node_cluster.workdir) == []
    assert read_sysctls() == sysctls_before
