"""Scans that cannot succeed: a registry that refuses the pull, an unsupported OS, a scanner
pod killed before it posts. Each ends in `Error` with its reason after the policy's retries
(one Job per attempt), and the policy's onError decides whether the Image is denied."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from scapguard.api.constants import WAKE_ANNOTATION
from scapguard.api.imagescan import WAKE_JOB_ENDED, Wake, parse_wake
from scapguard.api.naming import scan_name
from scapguard_dev.cluster import free_port, wait_for
from scapguard_dev.helminstall import NAMESPACE
from scapguard_dev.images import build_and_push
from scapguard_dev.netns import NODE_IP
from scapguard_dev.ovalgen import ubuntu_oval
from scapguard_dev.registry import BasicAuth, Registry
from tests.e2e.conftest import E2E, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DENY = "images.openshift.io/deny-execution"
MARKER = "scapguard.io/deny-execution"


def image_marks(e2e: E2E, digest: str) -> dict[str, str]:
    return dict(e2e.image_object(digest)["metadata"].get("annotations") or {})


def assert_error(
    e2e: E2E, jobs: JobRecord, scan: dict[str, Any], reason: str, retries: int
) -> dict[str, Any]:
    status: dict[str, Any] = scan["status"]
    assert status["result"] == "Error", status
    assert status["error"]["reason"] == reason, status["error"]
    assert status["reason"] == reason
    assert f"after {retries + 1} attempts" in status["error"]["message"], status["error"]
    assert status["attempts"] == retries + 1
    expected = [(1, n) for n in range(1, retries + 2)]
    assert jobs.attempts_of(e2e.namespace, scan["metadata"]["name"]) == expected
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Scanned"]["status"] == "False"
    assert conditions["Scanned"]["reason"] == reason
    e2e.wait_events("ImageScan", scan["metadata"]["name"], "Retrying", "ScanFailed")
    return status


def test_registry_nobody_listens_on_is_an_error_after_retries_and_denied(
    e2e: E2E, jobs: JobRecord
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    dead = f"{NODE_IP}:{free_port()}"  # on the node: nothing listens there
    e2e.policy(onError="Deny", scanner={"insecureRegistries": [dead], "retries": 2})
    digest = f"sha256:{hashlib.sha256(e2e.namespace.encode()).hexdigest()}"
    e2e.tag_pull_spec("app", "v1", f"{dead}/nowhere/app", digest)

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=150), "PullFailed", 2)
    assert status["denied"] is True
    marks = image_marks(e2e, digest)
    assert marks[DENY] == "true" and MARKER in marks, marks


def test_registry_refusing_a_pull_without_credentials_with_on_error_allow(
    e2e: E2E, jobs: JobRecord, tmp_path: Path
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    auth = BasicAuth("scapguard", "e2e-only-secret")
    private = Registry(tmp_path / "private", auth=auth, netns=e2e.cluster.netns)
    with private:
        (image,) = e2e.distinct_images(1, registry=private)
        # No imagePullSecrets: the registry answers 401 to the scanner.
        pods_reach = private.cluster_host
        e2e.policy(onError="Allow", scanner={"insecureRegistries": [pods_reach], "retries": 1})
        digest = e2e.tag_pull_spec("app", "v1", f"{pods_reach}/{image.repository}", image.digest)
        scan = e2e.wait_result(digest, timeout=150)
    status = assert_error(e2e, jobs, scan, "PullFailed", 1)
    message = status["error"]["message"].lower()
    assert "unauthorized" in message or "authentication required" in message, status["error"]
    assert status["denied"] is False
    assert DENY not in image_marks(e2e, digest)


def test_unsupported_os_is_an_error_with_its_reason_and_denied(
    e2e: E2E, jobs: JobRecord, tmp_path: Path
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    e2e.policy(onError="Deny")  # retries: 1
    root = tmp_path / "alpine"
    (root / "etc").mkdir(parents=True)
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "etc/os-release").write_text(
        'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"\n',
        encoding="utf-8",
    )
    (root / "etc/scapguard-e2e-id").write_text(e2e.namespace, encoding="utf-8")
    (root / "lib/apk/db/installed").write_text("P:musl\nV:1.2.5-r0\n\n", encoding="utf-8")
    image = build_and_push(
        root, e2e.registry.host, f"e2e/{e2e.namespace}-alpine", "3.20", workdir=tmp_path / "b"
    )
    digest = e2e.tag("app", "v1", image)

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=150), "UnsupportedOS", 1)
    assert "Alpine" in status["error"]["message"], status["error"]
    assert status["denied"] is True
    assert image_marks(e2e, digest)[DENY] == "true"


def test_a_scanner_pod_killed_before_its_post_is_noticed_through_the_job_watch(
    e2e: E2E, jobs: JobRecord, silent_registry: str
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    # The registry never answers: the scanner waits in its pull until its pod is deleted.
    e2e.policy(
        scanner={"insecureRegistries": [silent_registry], "retries": 0, "timeoutSeconds": 300}
    )
    digest = "sha256:" + "7a" * 32
    e2e.tag_pull_spec("app", "v1", f"{silent_registry}/quiet/app", digest)
    name = scan_name(digest, e2e.namespace, "policy")
    pods: list[Any] = []

    def scanner_running() -> bool:
        job = jobs.for_scan(e2e.namespace, name)
        if not job:
            return False
        found = e2e.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job[0]}")
        pods[:] = [p for p in found.items if p.status and p.status.phase == "Running"]
        return bool(pods)

    wait_for("the scanner pod to run", scanner_running, 60, 0.2)
    e2e.core.delete_namespaced_pod(pods[0].metadata.name, NAMESPACE, grace_period_seconds=0)
    killed = time.monotonic()
    # The job-ended wake-up (asserted below) says the end came through the watch of scanner
    # Jobs, not the policy timer's fallback.
    scan = e2e.wait_result(digest, timeout=60)
    print(f"scanner pod deleted -> Error recorded: {time.monotonic() - killed:.1f}s")
    status = scan["status"]
    assert (status["result"], status["reason"]) == ("Error", "ScannerFailed"), status
    (job,) = jobs.for_scan(e2e.namespace, name)
    woken = parse_wake(scan["metadata"]["annotations"][WAKE_ANNOTATION])
    assert woken == Wake(WAKE_JOB_ENDED, job), woken
    e2e.wait_events("ImageScan", name, "ScanFailed")
