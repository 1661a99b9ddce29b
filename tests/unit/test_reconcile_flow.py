"""The main flow over the fake API: ImageStream -> ImageScan -> Job -> result -> deny."""

from __future__ import annotations

import dataclasses
import json

from scapguard.api import constants as c
from scapguard.k8s.api import (
    CONFIGMAP,
    EVENT,
    IMAGE,
    IMAGESCAN,
    IMAGESTREAM,
    SCANPOLICY,
    SECRET,
    Obj,
)
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.imagestream import reconcile_imagestream
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.results import model as m
from tests.harness import (
    OPERATOR_NS,
    Harness,
    add_image,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
)

VULN = digest(1)
PATCHED = digest(2)


def scans(h: Harness, namespace: str = "apps") -> list[Obj]:
    return h.kube.list(IMAGESCAN, namespace)


def reconcile_all(h: Harness) -> None:
    for scan in h.kube.list(IMAGESCAN):
        reconcile_imagescan(h.ctx, scan)


def setup_enforcing(h: Harness) -> None:
    add_policy(h, action="Enforce", failOn="high")
    add_image(h, VULN)
    add_image(h, PATCHED)


def test_one_scan_per_digest_however_many_tags_and_streams() -> None:
    h = harness()
    setup_enforcing(h)
    add_stream(h, "app", "apps", {"latest": [VULN], "v1": [VULN]})
    add_stream(h, "mirror", "apps", {"stable": [VULN]})
    for stream in h.kube.list(IMAGESTREAM, "apps"):
        reconcile_imagestream(h.ctx, stream)
    found = scans(h)
    assert len(found) == 1
    spec = found[0]["spec"]
    assert {(t["imageStream"], t["tag"]) for t in spec["tags"]} == {
        ("app", "latest"),
        ("app", "v1"),
        ("mirror", "stable"),
    }
    assert spec["trigger"] == "NewImage"
    # The policy reconcile agrees and creates nothing more.
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    assert len(scans(h)) == 1


def test_fail_denies_then_pass_and_relaxed_policy_lift_only_our_deny() -> None:
    h = harness()
    setup_enforcing(h)
    add_image(h, digest(3), {c.OPENSHIFT_DENY_ANNOTATION: "true"})  # a person's deny
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = scans(h)
    reconcile_imagescan(h.ctx, scan)  # request -> queue -> Job
    (job,) = jobs(h)
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    result = scan_result(
        VULN, [("CVE-2024-0001", "critical"), ("CVE-2024-0002", "high"), ("CVE-2024-0003", "low")]
    )
    answer = post(h, job["metadata"]["name"], result)
    assert answer.status == 200, answer
    reconcile_all(h)
    (scan,) = scans(h)
    status = scan["status"]
    assert status["result"] == "Fail"
    assert status["vulnerabilities"] == {
        "critical": 1,
        "high": 1,
        "medium": 0,
        "low": 1,
        "unknown": 0,
    }
    assert status["denied"] is True
    assert [f["id"] for f in status["findings"]][:2] == ["CVE-2024-0001", "CVE-2024-0002"]
    image = h.kube.get(IMAGE, VULN)
    notes = image["metadata"]["annotations"]
    assert notes[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert notes[c.DENY_MARKER_ANNOTATION] == "true"
    quality = json.loads(notes[c.QUALITY_ANNOTATION])
    assert quality["compliant"] is False
    assert {s["label"]: s["data"] for s in quality["summary"]}["critical"] == "1"
    assert not jobs(h), "the finished Job is deleted"
    assert h.kube.get(CONFIGMAP, f"{scan['metadata']['name']}-result", "apps")
    reasons = {e["reason"] for e in h.kube.list(EVENT)}
    assert {"Denied", "VulnerabilitiesFound"} <= reasons
    conditions = {x["type"]: x["status"] for x in status["conditions"]}
    assert conditions == {
        "Scanned": "True",
        "Compliant": "False",
        "Enforced": "True",
        "Ready": "True",
    }

    # Relax the policy: re-evaluated from the stored result, no new Job, deny lifted.
    created_jobs = len(h.kube.created("jobs"))
    policy = h.kube.get(SCANPOLICY, "default", "apps")
    h.kube.patch(
        SCANPOLICY,
        "default",
        "apps",
        {
            "spec": {
                "failOn": "critical",
                "exceptions": [{"id": "CVE-2024-0001", "reason": "accepted"}],
            }
        },
    )
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = scans(h)
    assert scan["status"]["result"] == "Pass"
    assert scan["status"]["excepted"] == ["CVE-2024-0001"]
    assert len(h.kube.created("jobs")) == created_jobs
    notes = h.kube.get(IMAGE, VULN)["metadata"]["annotations"]
    assert c.OPENSHIFT_DENY_ANNOTATION not in notes and c.DENY_MARKER_ANNOTATION not in notes
    assert json.loads(notes[c.QUALITY_ANNOTATION])["compliant"] is True
    # The person's deny on another Image was never touched.
    assert h.kube.get(IMAGE, digest(3))["metadata"]["annotations"] == {
        c.OPENSHIFT_DENY_ANNOTATION: "true"
    }
    assert policy["metadata"]["uid"]


def test_report_policy_never_denies_and_person_deny_is_kept() -> None:
    h = harness()
    add_policy(h, action="Report")
    add_image(h, VULN, {c.OPENSHIFT_DENY_ANNOTATION: "true"})
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    reconcile_all(h)
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "critical")]))
    reconcile_all(h)
    (scan,) = scans(h)
    assert scan["status"]["result"] == "Fail" and scan["status"]["denied"] is False
    notes = h.kube.get(IMAGE, VULN)["metadata"]["annotations"]
    assert notes[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert c.DENY_MARKER_ANNOTATION not in notes
    enforced = next(x for x in scan["status"]["conditions"] if x["type"] == "Enforced")
    assert enforced["reason"] == "DeniedByPerson"


def test_any_enforcing_policy_failing_denies() -> None:
    h = harness()
    add_policy(h, "strict", action="Enforce", failOn="low")
    add_policy(h, "lax", action="Enforce", failOn="critical")
    add_image(h, VULN)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    for name in ("strict", "lax"):
        reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, name, "apps"))
    reconcile_all(h)
    assert len(jobs(h)) == 2
    for job in jobs(h):
        post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "medium")]))
    reconcile_all(h)
    results = {s["spec"]["policy"]: s["status"]["result"] for s in scans(h)}
    assert results == {"strict": "Fail", "lax": "Pass"}
    notes = h.kube.get(IMAGE, VULN)["metadata"]["annotations"]
    assert notes[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert notes[c.DENIED_BY_ANNOTATION] == "apps/strict"
    assert not h.kube.list(SECRET, OPERATOR_NS) or all(
        s["metadata"].get("ownerReferences") for s in h.kube.list(SECRET, OPERATOR_NS)
    )


def scanned_with(scanner: m.ScannerInfo) -> tuple[Harness, Obj]:
    """A Report policy's one scan, completed with a result from ``scanner``."""
    h = harness()
    add_policy(h, action="Report")
    add_image(h, VULN)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    reconcile_all(h)
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], dataclasses.replace(scan_result(VULN, []), scanner=scanner))
    reconcile_all(h)
    (scan,) = scans(h)
    return h, scan


def test_a_scan_that_lost_owners_says_so_in_status_condition_event_and_metric() -> None:
    fallback = "uid 65532 has subordinate ids, but the user namespace probe failed: newuidmap"
    h, scan = scanned_with(m.ScannerInfo("0.1.0", "1.3.7", "rootless", fallback))
    assert scan["status"]["scanner"]["idMapping"] == "rootless"
    assert scan["status"]["scanner"]["idMappingFallback"] == fallback
    scanned = next(x for x in scan["status"]["conditions"] if x["type"] == "Scanned")
    assert (scanned["status"], scanned["reason"]) == ("True", "OwnersNotPreserved")
    assert fallback in scanned["message"]
    reasons = {e.get("reason") for e in h.kube.list(EVENT, "apps")}
    assert "OwnersNotPreserved" in reasons
    value = h.ctx.metrics.registry.get_sample_value("scapguard_scans_owners_not_preserved_total")
    assert value == 1.0


def test_a_scan_with_a_user_namespace_reports_its_mode_and_plain_scanned() -> None:
    h, scan = scanned_with(m.ScannerInfo("0.1.0", "1.3.7", "userns", None))
    assert scan["status"]["scanner"]["idMapping"] == "userns"
    assert "idMappingFallback" not in scan["status"]["scanner"]
    scanned = next(x for x in scan["status"]["conditions"] if x["type"] == "Scanned")
    assert scanned["reason"] == "ScanCompleted"
    value = h.ctx.metrics.registry.get_sample_value("scapguard_scans_owners_not_preserved_total")
    assert value == 0.0
