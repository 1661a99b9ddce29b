"""The operator end to end: ImageStream -> ImageScan -> scanner Job -> result -> deny-execution.

The real control plane, the operator under its own ServiceAccount and RBAC, the real registry,
and the real scanner (skopeo, umoci, oscap) running as non-root pods on the real node.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from scapguard.results.model import Severity
from scapguard_dev.cluster import wait_for
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DENY = "images.openshift.io/deny-execution"
QUALITY = "quality.images.openshift.io/vulnerability.scapguard"
# One high, two medium, one low finding on the vulnerable Ubuntu image.
PRIORITIES: list[tuple[str, Severity]] = [
    ("high", "high"),
    ("medium", "medium"),
    ("low", "low"),
    ("medium", "medium"),
]


def image_annotations(e2e: E2E, digest: str) -> dict[str, str]:
    meta: dict[str, Any] = e2e.image_object(digest)["metadata"]
    return dict(meta.get("annotations") or {})


def test_vulnerable_fails_and_is_denied_patched_passes(e2e: E2E, jobs: JobRecord) -> None:
    xml, expected = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy()
    bad = e2e.tag("app", "latest", e2e.images.get("ubuntu2204", "vulnerable"))

    scan = e2e.wait_result(bad)
    status = scan["status"]
    assert status["result"] == "Fail", status
    assert status["vulnerabilities"] == {
        "critical": 0,
        "high": 1,
        "medium": 2,
        "low": 1,
        "unknown": 0,
    }
    assert sorted(f["id"] for f in status["findings"]) == sorted({x.cve for x in expected})
    assert status["os"]["id"] == "ubuntu"
    assert status["denied"] is True
    assert status["displayImage"] == "app:latest"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Enforced"]["status"] == "True"

    marks = image_annotations(e2e, bad)
    assert marks[DENY] == "true"
    quality = json.loads(marks[QUALITY])
    assert quality["name"].startswith("scapguard")
    assert quality["compliant"] is False
    for key in ("timestamp", "description", "reference", "scannerVersion", "summary"):
        assert key in quality, key
    labels = {s["label"]: s for s in quality["summary"]}
    # OpenShift's documented examples carry data as strings ("B", "3").
    assert str(labels["high"]["data"]) == "1" and str(labels["medium"]["data"]) == "2"
    assert all(isinstance(s["severityIndex"], int) for s in quality["summary"])
    assert any(k.startswith("scapguard.io/") for k in marks), marks
    e2e.wait_events("ImageScan", scan["metadata"]["name"], "VulnerabilitiesFound")
    # The full report and result are retrievable with the scapguard CLI.
    report = e2e.scapguard("report", scan["metadata"]["name"])
    assert b"<html" in report[:2000].lower()
    result = json.loads(e2e.scapguard("result", scan["metadata"]["name"]))
    assert result["image"]["digest"] == bad
    e2e.wait_events("ImageStream", "app", "Denied")

    # The patched image, tagged into the same stream: its own scan passes, no deny.
    good = e2e.tag("app", "latest", e2e.images.get("ubuntu2204", "patched"))
    passed = e2e.wait_result(good)["status"]
    assert passed["result"] == "Pass", passed
    assert passed["vulnerabilities"]["high"] == 0
    assert DENY not in image_annotations(e2e, good)
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2


def test_one_digest_under_three_tags_in_two_streams_is_scanned_once(
    e2e: E2E, jobs: JobRecord
) -> None:
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy(action="Report")
    image = e2e.images.get("ubuntu2204", "patched")
    for stream, tag in (("one", "a"), ("one", "b"), ("two", "c")):
        e2e.tag(stream, tag, image)
    scan = e2e.wait_result(image.digest)

    def all_tags() -> bool:
        tags = e2e.scan_for(image.digest)["spec"].get("tags") or []
        return {(t["imageStream"], t["tag"]) for t in tags} == {
            ("one", "a"),
            ("one", "b"),
            ("two", "c"),
        }

    wait_for("the ImageScan to list all three tags", all_tags, 60, 0.5)
    assert len(e2e.scans()) == 1
    assert scan["status"]["result"] == "Pass"
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 1


def test_relaxed_policy_reevaluates_without_a_rescan_and_lifts_only_its_deny(
    e2e: E2E, jobs: JobRecord
) -> None:
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy()
    bad = e2e.tag("app", "v1", e2e.images.get("ubuntu2204", "vulnerable"))
    assert e2e.wait_result(bad)["status"]["result"] == "Fail"
    assert image_annotations(e2e, bad)[DENY] == "true"

    # A person's deny on another Image, which scapguard must never touch.
    other = e2e.tag("other", "v1", e2e.images.get("debian12", "patched"))
    e2e.custom.patch_cluster_custom_object(
        "image.openshift.io", "v1", "images", other,
        {"metadata": {"annotations": {DENY: "true"}}},
    )  # fmt: skip
    # The policy selects that stream too; its scan passes and must leave the person's deny.
    assert e2e.wait_result(other)["status"]["result"] == "Pass"
    assert image_annotations(e2e, other)[DENY] == "true"
    key = f"{e2e.namespace}/policy"
    jobs_before = len(jobs.for_policy(key))

    e2e.patch_policy("policy", {"failOn": "critical"})

    def passed() -> bool:
        return bool(e2e.scan_for(bad)["status"]["result"] == "Pass")

    wait_for("the Fail to be re-evaluated to Pass", passed, 90, 0.5)
    wait_for("the deny to be lifted", lambda: DENY not in image_annotations(e2e, bad), 60, 0.5)
    assert len(jobs.for_policy(key)) == jobs_before, "re-evaluation must not start a Job"
    assert image_annotations(e2e, other)[DENY] == "true"
