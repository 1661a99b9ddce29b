"""scapguard as it ships: its two images, built with buildah, installed with ``helm install`` on
a real node (kubelet, containerd + runc). The operator runs as the chart's Deployment under its
ServiceAccount; scanner Jobs run the scanner image; the webhook refuses a denied image.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from scapguard.api.constants import RESULT_KEY
from scapguard.api.naming import result_config_map_name
from scapguard.results.xccdf import parse_xccdf_results
from scapguard.scanner.pipeline import OWNERSHIP_RULE
from scapguard_dev import productimages
from scapguard_dev.cli import DEMO_PRIORITIES, demo_policy
from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.fixtureimages import FixtureImages, webapp_images
from scapguard_dev.helminstall import ChartInstall, install_scapguard
from scapguard_dev.images import PushedImage
from scapguard_dev.imagestreams import tag_image
from scapguard_dev.ovalgen import ubuntu_oval
from scapguard_dev.registry import Registry

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP_NS = "webapps"


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
    """Logs of scanner pods, streamed with ``kubectl logs -f`` from the moment each pod runs
    until its container exits (the operator deletes finished Jobs, so a pod may be gone before
    a later read: a poll could keep only the first lines)."""

    cluster: DevCluster
    namespace: str
    logs: dict[str, str] = field(default_factory=dict)
    host_users: set[bool | None] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    streams: dict[str, threading.Thread] = field(default_factory=dict)

    def _stream(self, name: str) -> None:
        got = self.cluster.kubectl("-n", self.namespace, "logs", "-f", name)
        if got.returncode == 0 and got.stdout:
            self.logs[name] = got.stdout

    def follow(self) -> None:
        while not self.done.wait(0.5):
            out = self.cluster.kubectl("-n", self.namespace, "get", "pods", "-l", "job-name",
                                       "-o", "json")  # fmt: skip
            if out.returncode != 0:
                continue
            for pod in json.loads(out.stdout)["items"]:
                name = pod["metadata"]["name"]
                self.host_users.add(pod["spec"].get("hostUsers"))
                running = pod["status"].get("phase") in ("Running", "Succeeded", "Failed")
                if running and name not in self.streams:
                    stream = threading.Thread(target=self._stream, args=(name,), daemon=True)
                    self.streams[name] = stream
                    stream.start()

    def scanner_logged(self) -> bool:
        """A whole scanner log was read: its lines name scapguard's scanner loggers."""
        return any("scapguard" in text.lower() for text in self.logs.values())


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


def _scans(cluster: DevCluster, namespace: str = APP_NS) -> dict[str, dict[str, Any]]:
    """The namespace's ImageScans by image (none while the list fails)."""
    out = cluster.kubectl("-n", namespace, "get", "imagescans", "-o", "json")
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
    policy = demo_policy(registry, APP_NS)
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
    # The release namespace enforces PodSecurity "restricted": the operator's start-up probe
    # found a user-namespace scanner pod refused there, so scanner pods ran non-root on the
    # host's user namespace and unpacked rootless (vulnerability findings do not need owners).
    assert failing["scanner"]["idMapping"] == "rootless", failing
    assert scanner_logs.host_users == {None}, scanner_logs
    digest = images["vulnerable"].digest
    image = json.loads(cluster.kubectl("get", "images.image.openshift.io", digest, "-o",
                                       "json").stdout)  # fmt: skip
    annotations = image["metadata"]["annotations"]
    assert annotations["images.openshift.io/deny-execution"] == "true"
    summary = json.loads(annotations["quality.images.openshift.io/vulnerability.scapguard"])
    assert summary["compliant"] is False
    # A scanner pod ran the scanner image and its log is readable with kubectl logs.
    assert scanner_logs.scanner_logged(), scanner_logs
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


PROFILE = "xccdf_org.ssgproject.content_profile_standard"
SSG_DEBIAN12 = "/usr/share/xml/scap/ssg/content/ssg-debian12-ds.xml"


def _stored_result(cluster: DevCluster, namespace: str, scan: str) -> dict[str, Any]:
    """The full result the operator keeps beside an ImageScan (gzip JSON in a ConfigMap)."""
    got = cluster.kubectl("-n", namespace, "get", "configmap", result_config_map_name(scan),
                          "-o", "json")  # fmt: skip
    assert got.returncode == 0, got.stderr
    cm = json.loads(got.stdout)
    raw = gzip.decompress(base64.b64decode(cm["binaryData"][RESULT_KEY]))
    result: dict[str, Any] = json.loads(raw)
    return result


def _root_oscap_with_the_images_own_oscap(image: PushedImage, work: Path) -> dict[str, str]:
    """rule id -> result of a plain ``oscap xccdf eval`` by root, with the scanner image's oscap
    and SSG, of ``image`` pulled and unpacked by root (owners kept)."""

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr[-2000:]}"
        return proc.stdout

    run("skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image.by_digest}",
        f"oci:{work / 'oci'}:ref")  # fmt: skip
    run("umoci", "unpack", "--image", f"{work / 'oci'}:ref", str(work / "bundle"))
    out = work / "out"
    (out / "apt.conf.d").mkdir(parents=True)
    # A clean apt configuration, as the scanner uses (OpenSCAP's dpkginfo reads apt's).
    (out / "apt.conf").write_text(
        'Dir::Etc::main "/dev/null";\nDir::Etc::parts "/out/apt.conf.d";\n'
    )
    scanner = productimages.build("scanner").reference
    container = run("buildah", "from", "--pull-never", scanner).strip()
    try:
        proc = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--user", "0:0",
             "--volume", f"{work / 'bundle' / 'rootfs'}:/target:ro", "--volume", f"{out}:/out",
             "--env", "OSCAP_PROBE_ROOT=/target", "--env", "APT_CONFIG=/out/apt.conf",
             container, "--", "oscap", "xccdf", "eval", "--profile", PROFILE,
             "--results", "/out/results.xml", SSG_DEBIAN12],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    finally:
        run("buildah", "rm", container)
    assert proc.returncode in {0, 2}, proc.stderr[-2000:]
    assert "dpkginfo_init has failed" not in proc.stderr
    return {r.id: r.result for r in parse_xccdf_results(out / "results.xml").rules}


def test_ssg_standard_in_the_scanner_pod_equals_a_root_oscap_run_rule_for_rule(
    real_cluster: DevCluster, registry: Registry, installed: ChartInstall
) -> None:
    """With user namespaces admitted, the scanner pod (hostUsers: false, uid 0 inside) keeps
    the image's owners and judges SSG Debian 12 ``standard`` exactly as root does."""
    cluster, namespace = real_cluster, "compliance"
    installed.allow_user_namespace_scanners()
    pods = ScannerLogs(cluster, installed.namespace)
    follower = threading.Thread(target=pods.follow, daemon=True)
    follower.start()
    work = cluster.workdir / "compliance"
    minbase = FixtureImages(registry.host, work / "images").debian12_minbase()
    assert cluster.kubectl("create", "namespace", namespace).returncode == 0
    policy = {
        "apiVersion": "scapguard.io/v1alpha1",
        "kind": "ScanPolicy",
        "metadata": {"name": "standard", "namespace": namespace},
        "spec": {
            "tags": ["*"],
            "vulnerabilities": {"enabled": False},
            "compliance": {"enabled": True, "profile": PROFILE},
            "action": "Report",
            "scanner": {"insecureRegistries": [registry.cluster_host], "timeoutSeconds": 1200},
        },
    }
    applied = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    assert applied.returncode == 0, applied.stderr
    api = kube_client.ApiClient(cluster.admin_configuration())
    try:
        tag_image(api, namespace, "base", "bookworm", f"{registry.cluster_host}/"
                  f"{minbase.repository}", minbase.digest)  # fmt: skip
    finally:
        api.close()

    def completed() -> dict[str, Any] | None:
        scans = _scans(cluster, namespace).values()
        done = [s for s in scans if (s.get("status") or {}).get("state") == "Completed"]
        return done[0] if done else None

    try:
        wait_for("the minbase compliance scan Completed", lambda: completed() is not None, 900, 2)
    finally:
        pods.done.set()
        follower.join(10)
    assert pods.host_users == {False}, pods
    scan = completed()
    assert scan is not None
    assert scan["status"]["result"] in ("Pass", "Fail"), [
        c["message"] for c in scan["status"]["conditions"]
    ]
    result = _stored_result(cluster, namespace, scan["metadata"]["name"])
    assert result["scanner"]["idMapping"] == "inherited", result["scanner"]
    compliance = result["compliance"]
    assert compliance["notCheckedReason"] is None
    got = {r["id"]: r["result"] for r in compliance["rules"]}
    reference = _root_oscap_with_the_images_own_oscap(minbase, work)
    assert got == reference
    assert sum(1 for r in got.values() if r == "fail") >= 1
    assert any(OWNERSHIP_RULE.search(rule) and res == "pass" for rule, res in got.items())
