"""scapguard on plain Kubernetes: the image API switched off on the running cluster.

What is tested without it: Pods keep being admitted while the webhook is healthy, running
Pods' images are scanned, a denied digest is refused and a Deployment naming it is warned
about, an image pushed to a registry is scanned on the registry's notification, and the
promotion gate copies a passing digest and records why a failing one was not.

The module removes the APIService of image.openshift.io and restarts the operator, which then
finds no ImageStreams to select and no Images to annotate. Policies scan what runs instead
(``spec.workloads``), and the webhook refuses by the ImageScans' verdicts. At the end it puts
the image API back and restarts the operator again, for the rest of the session.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from scapguard.api import constants as c
from scapguard.results.model import Severity
from scapguard_dev.cluster import ClusterError, DevCluster, wait_for
from scapguard_dev.fixtureimages import webapp_images
from scapguard_dev.helminstall import NAMESPACE, ChartInstall
from scapguard_dev.images import PushedImage
from scapguard_dev.ovalgen import ubuntu_oval
from scapguard_dev.registry import NotificationEndpoint, Registry
from tests.e2e.conftest import E2E, REGISTRY_EVENTS_PORT, JobRecord

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
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "command": ["/bin/sh", "-c", "sleep 600"],  # busybox
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def runnable(
    cluster_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, PushedImage]:
    """The Ubuntu fixture trees (vulnerable, patched) with busybox: Pods can run them."""
    return webapp_images(tmp_path_factory.mktemp("webapp"), cluster_registry)


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


def settled(e2e: E2E, operator: ChartInstall, digest: str) -> dict[str, Any]:
    """The settled scan of ``digest``; on a timeout, what the scans and the operator said."""
    try:
        return e2e.wait_result(digest, timeout=240)
    except ClusterError as exc:
        scans = json.dumps([s.get("status") for s in e2e.scans()], indent=1)[-4000:]
        pods = kubectl(e2e.cluster, "-n", e2e.namespace, "get", "pods", "-o", "json").stdout
        where = e2e.workdir / "operator.log"
        where.write_text(f"{operator.logs()}\n\npods: {pods}")
        raise AssertionError(f"{exc}\nscans: {scans}\noperator log and pods: {where}") from exc


def test_running_pods_are_scanned_and_a_denied_digest_is_refused(
    plain_kubernetes: None,
    e2e: E2E,
    jobs: JobRecord,
    operator: ChartInstall,
    runnable: dict[str, PushedImage],
) -> None:
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy(workloads={"podSelector": {"matchLabels": {"scapguard-e2e": "scan"}}})
    bad, good = runnable["vulnerable"], runnable["patched"]
    wait_for("the webhook to admit Pods", lambda: admits_pods(e2e.cluster, e2e.namespace), 60, 0.5)

    # The webhook is healthy without Images or ImageStreams: Pods are admitted.
    for name, image in (("runs-bad", bad), ("runs-good", good)):
        made = kubectl(e2e.cluster, "-n", e2e.namespace, "create", "-f", "-",
                       input_text=json.dumps(probe_pod(name, image.by_digest,
                                                       {"scapguard-e2e": "scan"})))  # fmt: skip
        assert made.returncode == 0, made.stderr

    failing = settled(e2e, operator, bad.digest)
    status = failing["status"]
    assert failing["metadata"]["labels"]["scapguard.io/origin"] == "workload"
    assert failing["spec"]["image"] == bad.by_digest
    assert status["result"] == "Fail" and status["denied"] is True, status
    passing = settled(e2e, operator, good.digest)
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


TOKEN_SECRET = "scapguard-registry-events"  # noqa: S105 -- the Secret's name


def registry_digest(registry: Registry, reference: str) -> str | None:
    """The digest ``repository:tag`` has in ``registry`` (skopeo inspect), or None."""
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
         f"docker://{registry.host}/{reference}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def test_a_pushed_image_is_scanned_and_only_a_passing_one_is_promoted(
    plain_kubernetes: None, e2e: E2E, jobs: JobRecord, operator: ChartInstall, tmp_path: Path
) -> None:
    """Scan on push and the promotion gate: a second docker-registry in the node's network
    namespace notifies the operator's plain-HTTP listener (through its Service, as a registry
    outside the cluster would); pushing is the only trigger. The passing digest is copied to a
    release repository; the failing one is not, and its ImageScan says why."""
    token = secrets.token_urlsafe(24)
    made = e2e.cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", TOKEN_SECRET,
                               f"--from-literal=token={token}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    service = json.loads(e2e.cluster.kubectl(
        "-n", NAMESPACE, "get", "service", "scapguard-results", "-o", "json").stdout)  # fmt: skip
    endpoint = NotificationEndpoint(
        name="scapguard",
        url=f"http://{service['spec']['clusterIP']}:{REGISTRY_EVENTS_PORT}/v1/registry-events",
        headers={"Authorization": [f"Bearer {token}"]},
    )
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    try:
        with Registry(tmp_path / "pushed", netns=e2e.cluster.netns,
                      notifications=[endpoint]) as pushed:  # fmt: skip
            host = pushed.cluster_host
            release = f"{host}/{e2e.namespace}/released"
            e2e.policy(
                registryPushes={"registry": host, "repositories": [f"{e2e.namespace}/*"]},
                promotion={"repository": release, "tag": "stable"},
                scanner={"insecureRegistries": [host], "retries": 1},
            )
            # Pushed, not tagged anywhere: the registry's notification is the only trigger.
            bad = e2e.images.get("ubuntu2204", "vulnerable")
            good = e2e.images.get("ubuntu2204", "patched")
            for image in (bad, good):  # pushed from the host, where the session registry is
                copied = subprocess.run(
                    ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                     f"docker://{image.by_digest}",
                     f"docker://{pushed.host}/{e2e.namespace}/app:{image.tag}"],
                    capture_output=True, text=True, timeout=300, check=False,
                )  # fmt: skip
                assert copied.returncode == 0, copied.stderr

            failing = settled(e2e, operator, bad.digest)
            assert failing["metadata"]["labels"][c.ORIGIN_LABEL] == c.ORIGIN_REGISTRY_PUSH
            assert failing["spec"]["image"] == f"{host}/{e2e.namespace}/app@{bad.digest}"
            assert failing["status"]["result"] == "Fail", failing["status"]
            passing = settled(e2e, operator, good.digest)
            assert passing["status"]["result"] == "Pass", passing["status"]

            def promoted() -> bool:
                state = (e2e.scan_for(good.digest)["status"].get("promotion") or {}).get("state")
                return state in ("Promoted", "Failed")

            wait_for("the passing digest's promotion", promoted, 180, 1)
            promotion = e2e.scan_for(good.digest)["status"]["promotion"]
            assert promotion["state"] == "Promoted", promotion
            assert promotion["target"] == f"{release}:stable"
            # The release tag holds exactly the digest that was scanned.
            assert registry_digest(pushed, f"{e2e.namespace}/released:stable") == good.digest
            refused = e2e.scan_for(bad.digest)["status"]["promotion"]
            assert refused["state"] == "NotPromoted" and refused["reason"], refused
            assert refused["message"].startswith("Fail: ")
            e2e.wait_events("ImageScan", passing["metadata"]["name"], "Promoted")
            # One scan each: the registry's retries and the index/blob events created nothing more.
            assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2
    finally:
        e2e.cluster.kubectl("-n", NAMESPACE, "delete", "secret", TOKEN_SECRET)
