"""scapguard as it ships: its two images, built with buildah, installed with ``helm install`` on
a real node (kubelet, containerd + runc). The operator runs as the chart's Deployment under its
ServiceAccount; scanner Jobs run the scanner image; the webhook refuses a denied image.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from scapguard.devcluster.cli import DEMO_PRIORITIES
from scapguard.devcluster.cluster import DevCluster, wait_for
from scapguard.devcluster.fixtureimages import webapp_images
from scapguard.devcluster.helminstall import ChartInstall, install_scapguard
from scapguard.devcluster.images import PushedImage
from scapguard.devcluster.imagestreams import tag_image
from scapguard.devcluster.ovalgen import ubuntu_oval
from scapguard.devcluster.registry import Registry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP_NS = "webapps"


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[DevCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-installed-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir, real_node=True)
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(real_cluster: DevCluster) -> Registry:
    assert real_cluster.registry is not None
    return real_cluster.registry


@pytest.fixture(scope="module")
def installed(real_cluster: DevCluster) -> Iterator[ChartInstall]:
    release = install_scapguard(real_cluster, replicas="1")
    yield release
    log = release.logs()
    release.uninstall()
    assert "Traceback" not in log, log[-5000:]


@dataclass
class ScannerLogs:
    """Logs of scanner pods, read while they exist (the operator deletes finished Jobs)."""

    cluster: DevCluster
    namespace: str
    logs: dict[str, str] = field(default_factory=dict)
    host_users: set[bool | None] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        while not self.done.wait(0.5):
            out = self.cluster.kubectl("-n", self.namespace, "get", "pods", "-l", "job-name",
                                       "-o", "json")  # fmt: skip
            if out.returncode != 0:
                continue
            for pod in json.loads(out.stdout)["items"]:
                name = pod["metadata"]["name"]
                self.host_users.add(pod["spec"].get("hostUsers"))
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    got = self.cluster.kubectl("-n", self.namespace, "logs", name)
                    if got.returncode == 0 and got.stdout:
                        self.logs.setdefault(name, got.stdout)


def test_operator_runs_from_its_image_as_the_charts_deployment(
    installed: ChartInstall,
) -> None:
    (pod,) = installed.operator_pods()
    spec, status = pod["spec"], pod["status"]
    assert spec["serviceAccountName"] == "scapguard"
    (container,) = spec["containers"]
    assert container["image"].startswith(installed.operator_image.registry + "/scapguard/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert status["phase"] == "Running"
    (state,) = status["containerStatuses"]
    assert state["ready"] is True
    # The image the kubelet ran is the one built and pushed here.
    assert state["imageID"].endswith(installed.operator_image.digest)
    assert "scapguard_" in installed.metrics()


def _scans(cluster: DevCluster) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("-n", APP_NS, "get", "imagescans", "-o", "json")
    if out.returncode != 0:
        return {}
    return {s["spec"]["image"]: s for s in json.loads(out.stdout)["items"]}


def _run_pod(cluster: DevCluster, name: str, image: PushedImage) -> Any:
    return cluster.kubectl(
        "-n", APP_NS, "run", name, f"--image={image.by_digest}", "--restart=Never",
        "--command", "--", "/bin/sh", "-c", "echo running-as-$(id -u)",
    )  # fmt: skip


def test_vulnerable_image_fails_is_denied_and_refused_passing_image_runs(
    real_cluster: DevCluster, registry: Registry, installed: ChartInstall
) -> None:
    cluster = real_cluster
    images = webapp_images(cluster.workdir / "webapp", registry)
    cluster.kubectl("create", "namespace", APP_NS)
    feed, _ = ubuntu_oval(DEMO_PRIORITIES)
    feed_file = cluster.workdir / "ubuntu-jammy.oval.xml"
    feed_file.write_text(feed)
    made = cluster.kubectl("-n", APP_NS, "create", "configmap", "oval-feed",
                           f"--from-file=ubuntu-jammy.oval.xml={feed_file}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    policy = {
        "apiVersion": "scapguard.io/v1alpha1",
        "kind": "ScanPolicy",
        "metadata": {"name": "cve-gate", "namespace": APP_NS},
        "spec": {
            "tags": ["*"],
            "vulnerabilities": {
                "enabled": True,
                "feed": {"configMapRef": {"name": "oval-feed", "key": "ubuntu-jammy.oval.xml"}},
            },
            "failOn": "high",
            "action": "Enforce",
            "onError": "Allow",
            "scanner": {"insecureRegistries": [registry.cluster_host], "retries": 1},
        },
    }
    applied = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    assert applied.returncode == 0, applied.stderr
    scanner_logs = ScannerLogs(cluster, installed.namespace)
    follower = threading.Thread(target=scanner_logs.follow, daemon=True)
    follower.start()
    api = kube_client.ApiClient(cluster.admin_configuration())
    try:
        repository = f"{registry.cluster_host}/webapp"
        for tag, variant in (("1.0", "vulnerable"), ("1.1", "patched")):
            tag_image(api, APP_NS, "webapp", tag, repository, images[variant].digest)

        def settled() -> bool:
            scans = _scans(cluster)
            return len(scans) == 2 and all(
                (s.get("status") or {}).get("state") == "Completed" for s in scans.values()
            )

        wait_for("both webapp scans Completed", settled, 300, 1.0)
        wait_for("a scanner pod's log", lambda: bool(scanner_logs.logs), 30, 0.5)
    finally:
        scanner_logs.done.set()
        follower.join(10)
        api.close()
    scans = _scans(cluster)
    failing = scans[images["vulnerable"].by_digest]["status"]
    passing = scans[images["patched"].by_digest]["status"]
    assert failing["result"] == "Fail", failing
    assert passing["result"] == "Pass", passing
    # Scanner pods ran in a user namespace of their own (hostUsers: false) as its uid 0, under
    # PodSecurity "restricted": the image's file owners were kept.
    assert failing["scanner"]["idMapping"] == "inherited", failing
    assert scanner_logs.host_users == {False}, scanner_logs
    digest = images["vulnerable"].digest
    image = json.loads(cluster.kubectl("get", "images.image.openshift.io", digest, "-o",
                                       "json").stdout)  # fmt: skip
    annotations = image["metadata"]["annotations"]
    assert annotations["images.openshift.io/deny-execution"] == "true"
    summary = json.loads(annotations["quality.images.openshift.io/vulnerability.scapguard"])
    assert summary["compliant"] is False
    # A scanner pod ran the scanner image and its log is readable with kubectl logs.
    assert any("scapguard" in text.lower() for text in scanner_logs.logs.values()), scanner_logs
    refused = _run_pod(cluster, "vulnerable", images["vulnerable"])
    assert refused.returncode != 0
    assert 'admission webhook "pod-images.scapguard.io" denied the request' in refused.stderr
    admitted = _run_pod(cluster, "patched", images["patched"])
    assert admitted.returncode == 0, admitted.stderr

    def ran() -> bool:
        pod = json.loads(cluster.kubectl("-n", APP_NS, "get", "pod", "patched", "-o",
                                         "json").stdout)  # fmt: skip
        return bool(pod["status"].get("phase") == "Succeeded")

    wait_for("the passing image's pod Succeeded", ran, 120, 0.5)
    assert cluster.kubectl("-n", APP_NS, "logs", "patched").stdout.strip() == "running-as-65532"
