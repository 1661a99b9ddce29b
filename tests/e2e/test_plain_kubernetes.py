"""scapguard on plain Kubernetes: the image API switched off on the running cluster.

The module removes the APIService of image.openshift.io and restarts the operator, which then
finds no ImageStreams to select and no Images to annotate. Policies scan what runs instead
(``spec.workloads``), and the webhook refuses by the ImageScans' verdicts. At the end it puts
the image API back and restarts the operator again, for the rest of the session.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from scapguard.devcluster.cluster import DevCluster, wait_for
from scapguard.devcluster.helminstall import ChartInstall
from scapguard.devcluster.ovalgen import ubuntu_oval
from scapguard.results.model import Severity
from tests.e2e.conftest import E2E, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APISERVICE = "v1.image.openshift.io"
PRIORITIES: list[tuple[str, Severity]] = [("high", "high"), ("medium", "medium")]


def kubectl(
    cluster: DevCluster, *args: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, input_text=input_text)


def restart_operator(operator: ChartInstall) -> None:
    operator.kill()
    wait_for("the restarted operator to be Ready", operator.ready, 120, 0.5)


def admits_pods(cluster: DevCluster, namespace: str) -> bool:
    """A server-side dry run goes through the webhooks: True once the index has synced."""
    pod = probe_pod("probe", "registry.invalid/x@sha256:" + "0" * 64)
    out = kubectl(cluster, "-n", namespace, "create", "--dry-run=server", "-f", "-",
                  input_text=json.dumps(pod))  # fmt: skip
    return out.returncode == 0


def probe_pod(name: str, image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": image, "command": ["sleep", "600"]}],
        },
    }


@pytest.fixture(scope="module")
def plain_kubernetes(cluster: DevCluster, operator: ChartInstall) -> Iterator[None]:
    saved = kubectl(cluster, "get", "apiservice", APISERVICE, "-o", "json")
    assert saved.returncode == 0, saved.stderr
    service = json.loads(saved.stdout)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        service["metadata"].pop(key, None)
    service.pop("status", None)
    gone = kubectl(cluster, "delete", "apiservice", APISERVICE)
    assert gone.returncode == 0, gone.stderr
    try:
        restart_operator(operator)
        assert "no image.openshift.io API" in operator.logs()
        yield
    finally:
        back = kubectl(cluster, "create", "-f", "-", input_text=json.dumps(service))
        assert back.returncode == 0, back.stderr

        def image_api_back() -> bool:
            return kubectl(cluster, "get", "imagestreams", "-A").returncode == 0

        wait_for("the image API to be served again", image_api_back, 120, 0.5)
        restart_operator(operator)
        wait_for(
            "the webhook to admit Pods again", lambda: admits_pods(cluster, "default"), 120, 0.5
        )


def test_running_pods_are_scanned_and_a_denied_digest_is_refused(
    plain_kubernetes: None, e2e: E2E, jobs: JobRecord
) -> None:
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy(workloads={"podSelector": {"matchLabels": {"scapguard-e2e": "scan"}}})
    registry = e2e.registry.cluster_host
    bad = e2e.images.get("ubuntu2204", "vulnerable").at(registry)
    good = e2e.images.get("ubuntu2204", "patched").at(registry)
    wait_for("the webhook to admit Pods", lambda: admits_pods(e2e.cluster, e2e.namespace), 60, 0.5)

    # The webhook is healthy without Images or ImageStreams: Pods are admitted.
    for name, image in (("runs-bad", bad), ("runs-good", good)):
        made = kubectl(e2e.cluster, "-n", e2e.namespace, "create", "-f", "-",
                       input_text=json.dumps(probe_pod(name, image.by_digest,
                                                       {"scapguard-e2e": "scan"})))  # fmt: skip
        assert made.returncode == 0, made.stderr

    failing = e2e.wait_result(bad.digest, timeout=240)
    status = failing["status"]
    assert failing["metadata"]["labels"]["scapguard.io/origin"] == "workload"
    assert failing["spec"]["image"] == bad.by_digest
    assert status["result"] == "Fail" and status["denied"] is True, status
    passing = e2e.wait_result(good.digest, timeout=240)
    assert passing["status"]["result"] == "Pass", passing["status"]
    enforced = {c["type"]: c for c in status["conditions"]}["Enforced"]
    assert enforced["status"] == "True", enforced

    # A new Pod with the denied digest is refused, naming the policy; the passing one runs.
    def refused() -> subprocess.CompletedProcess[str]:
        return kubectl(e2e.cluster, "-n", e2e.namespace, "create", "-f", "-",
                       input_text=json.dumps(probe_pod("again", bad.by_digest)))  # fmt: skip

    wait_for("the webhook to refuse the denied digest", lambda: refused().returncode != 0, 60, 0.5)
    out = refused()
    assert "denied by scapguard for ScanPolicy" in out.stderr, out.stderr
    assert bad.digest in out.stderr
    ok = kubectl(e2e.cluster, "-n", e2e.namespace, "create", "-f", "-",
                 input_text=json.dumps(probe_pod("fine", good.by_digest)))  # fmt: skip
    assert ok.returncode == 0, ok.stderr

    # A Deployment naming it is stored, with a warning.
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": probe_pod("x", bad.by_digest)["spec"] | {"restartPolicy": "Always"},
            },
        },
    }
    stored = kubectl(e2e.cluster, "-n", e2e.namespace, "create", "-f", "-",
                     input_text=json.dumps(deployment))  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert "Deployment " in stored.stderr and "its Pods will be refused by scapguard" in (
        stored.stderr
    ), stored.stderr
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2
    with pytest.raises(ApiException) as gone:
        e2e.image_object(bad.digest)
    assert gone.value.status == 404
