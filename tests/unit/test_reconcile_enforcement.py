"""Denies that must hold: a failed rescan, a tampered stored result; and orphaned denies lifted."""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from typing import Any

import pytest

from scapguard.api import constants as c
from scapguard.k8s.api import CONFIGMAP, EVENT, IMAGE, IMAGESCAN, SCANPOLICY, Obj
from scapguard.reconcile.cleanup import policy_deleted
from scapguard.reconcile.context import Throttle
from scapguard.reconcile.enforcement import repair_denies
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.reconcile.verdicts import UntrustedResult, load_result
from tests.harness import (
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

VULN = digest(11)
OTHER = digest(12)


def the_scan(h: Harness) -> Obj:
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    return scan


def deny_annotations(h: Harness, image: str = VULN) -> dict[str, str]:
    notes: dict[str, str] = h.kube.get(IMAGE, image)["metadata"].get("annotations") or {}
    return {k: v for k, v in notes.items() if k != c.QUALITY_ANNOTATION}


def enforced(scan: Obj) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in scan["status"]["conditions"] if x["type"] == "Enforced")
    return found


def critical_posted(
    h: Harness, image_annotations: dict[str, str] | None = None, **policy: Any
) -> None:
    """An enforcing policy failing on high, one image, its scan's result posted (not judged):
    a critical CVE."""
    add_image(h, VULN, image_annotations)
    add_policy(h, action="Enforce", failOn="high", scanner={"retries": 0}, **policy)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    reconcile_imagescan(h.ctx, the_scan(h))
    (job,) = jobs(h)
    assert (
        post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "critical")])).status == 200
    )


def failed_and_denied(h: Harness, **policy: Any) -> str:
    """An enforcing policy, one image scanned once: a critical CVE, so Fail and denied."""
    critical_posted(h, **policy)
    reconcile_imagescan(h.ctx, the_scan(h))
    scan = the_scan(h)
    assert scan["status"]["result"] == "Fail" and scan["status"]["denied"] is True
    assert deny_annotations(h)[c.DENY_MARKER_ANNOTATION] == "true"
    name: str = scan["metadata"]["name"]
    return name


def rescan(h: Harness, name: str, value: str, result: Any) -> Obj:
    h.kube.patch(
        IMAGESCAN, name, "apps", {"metadata": {"annotations": {c.RESCAN_ANNOTATION: value}}}
    )
    reconcile_imagescan(h.ctx, the_scan(h))  # new request -> queue -> Job
    (job,) = jobs(h)
    assert post(h, job["metadata"]["name"], result).status == 200
    reconcile_imagescan(h.ctx, the_scan(h))
    return the_scan(h)


def edit_policy(h: Harness, **spec: Any) -> None:
    h.kube.patch(SCANPOLICY, "default", "apps", {"spec": spec})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))


# ---------------------------------------------------------------- 1. a failed rescan


def test_rescan_ending_in_error_keeps_the_deny_of_the_last_completed_scan() -> None:
    h = harness()
    name = failed_and_denied(h)
    scan = rescan(h, name, "again", scan_result(VULN, error=("PullFailed", "secret gone")))
    status = scan["status"]
    assert status["result"] == "Error"
    assert status["denied"] is True, "onError Allow must not free a known-failing image"
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert deny_annotations(h)[c.DENY_MARKER_ANNOTATION] == "true"
    condition = enforced(scan)
    assert condition["status"] == "True"
    assert "last completed scan" in condition["message"]
    # The ImageScan's own repair agrees (no flapping message).
    reconcile_imagescan(h.ctx, the_scan(h), repair=True)
    assert enforced(the_scan(h)) == condition

    # A policy edit re-judges the last completed findings: still failing, still denied.
    edit_policy(h, failOn="critical")
    status = the_scan(h)["status"]
    assert status["result"] == "Error" and status["denied"] is True
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"

    # A later Pass lifts it.
    scan = rescan(h, name, "third", scan_result(VULN))
    assert scan["status"]["result"] == "Pass" and scan["status"]["denied"] is False
    assert deny_annotations(h) == {}


def test_exception_for_the_last_findings_lifts_a_deny_held_through_an_error() -> None:
    h = harness()
    name = failed_and_denied(h)
    rescan(h, name, "again", scan_result(VULN, error=("PullFailed", "secret gone")))
    edit_policy(h, exceptions=[{"id": "CVE-1", "reason": "accepted"}])
    status = the_scan(h)["status"]
    assert status["result"] == "Error" and status["denied"] is False
    assert deny_annotations(h) == {}


def test_error_with_on_error_deny_still_denies_and_first_error_allows() -> None:
    h = harness()
    name = failed_and_denied(h, onError="Deny")
    scan = rescan(h, name, "again", scan_result(VULN, error=("PullFailed", "secret gone")))
    assert scan["status"]["denied"] is True
    assert enforced(scan)["message"] == "image denied execution"

    # With no completed scan behind it, an Error under onError Allow denies nothing.
    h = harness()
    add_policy(h, action="Enforce", scanner={"retries": 0})
    add_image(h, OTHER)
    add_stream(h, "app", "apps", {"latest": [OTHER]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    reconcile_imagescan(h.ctx, the_scan(h))
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(OTHER, error=("PullFailed", "x")))
    reconcile_imagescan(h.ctx, the_scan(h))
    assert the_scan(h)["status"]["result"] == "Error"
    assert the_scan(h)["status"]["denied"] is False
    assert deny_annotations(h, OTHER) == {}


# ---------------------------------------------------------------- 2. the stored result


def stored_blob(h: Harness, name: str) -> bytes:
    cm = h.kube.get(CONFIGMAP, f"{name}-result", "apps")
    return base64.b64decode(cm["binaryData"][c.RESULT_KEY])


def replace_stored(h: Harness, name: str, blob: bytes) -> None:
    h.kube.patch(
        CONFIGMAP,
        f"{name}-result",
        "apps",
        {"binaryData": {c.RESULT_KEY: base64.b64encode(blob).decode()}},
    )


def test_ingest_records_the_stored_result_digest() -> None:
    h = harness()
    name = failed_and_denied(h)
    recorded = the_scan(h)["status"]["report"]["resultSha256"]
    assert recorded == hashlib.sha256(stored_blob(h, name)).hexdigest()


def test_tampered_stored_result_is_not_reevaluated_and_asks_for_a_rescan() -> None:
    h = harness()
    name = failed_and_denied(h)
    # A namespace editor empties the findings, then any policy edit would re-judge them.
    clean = gzip.compress(scan_result(VULN).to_json().encode(), mtime=0)
    replace_stored(h, name, clean)
    created = len(h.kube.created("jobs"))
    edit_policy(h, failOn="medium")
    scan = the_scan(h)
    assert scan["status"]["result"] == "Fail" and scan["status"]["denied"] is True
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    warnings = [e for e in h.kube.list(EVENT) if e["reason"] == "StoredResultTampered"]
    assert warnings and warnings[0]["type"] == "Warning"
    asked = scan["metadata"]["annotations"][c.RESCAN_ANNOTATION]
    assert asked.startswith("OnDemand:")
    # The rescan happens: a new request and a new Job; the deny holds meanwhile.
    reconcile_imagescan(h.ctx, the_scan(h))
    assert len(h.kube.created("jobs")) == created + 1
    assert the_scan(h)["status"]["request"]["rescan"] == asked
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"


def test_tampered_stored_result_does_not_lift_a_deny_held_through_an_error() -> None:
    h = harness()
    name = failed_and_denied(h)
    replace_stored(h, name, gzip.compress(scan_result(VULN).to_json().encode(), mtime=0))
    scan = rescan(h, name, "again", scan_result(VULN, error=("PullFailed", "secret gone")))
    assert scan["status"]["result"] == "Error" and scan["status"]["denied"] is True
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert any(e["reason"] == "StoredResultTampered" for e in h.kube.list(EVENT))


def test_result_changed_between_post_and_judgement_fails_the_attempt() -> None:
    h = harness()
    add_policy(h, action="Enforce", scanner={"retries": 1})
    add_image(h, VULN)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    reconcile_imagescan(h.ctx, the_scan(h))
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "critical")]))
    name = the_scan(h)["metadata"]["name"]
    replace_stored(h, name, gzip.compress(scan_result(VULN).to_json().encode(), mtime=0))
    reconcile_imagescan(h.ctx, the_scan(h))
    status = the_scan(h)["status"]
    assert "result" not in status
    assert status["lastAttempt"]["reason"] == "StoredResultTampered"
    assert reconcile_imagescan(h.ctx, the_scan(h)).retry_after == 10  # retried, not judged


def test_stored_result_is_decompressed_with_a_bound() -> None:
    h = harness(SCAPGUARD_RESULTS_MAX_BYTES="2048")
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    scan = the_scan(h)
    name = scan["metadata"]["name"]
    bomb = gzip.compress(b"[" + b" " * (4 * 1024 * 1024) + b"]", mtime=0)
    h.kube.create(
        CONFIGMAP,
        {
            "metadata": {"name": f"{name}-result", "namespace": "apps"},
            "binaryData": {c.RESULT_KEY: base64.b64encode(bomb).decode()},
        },
    )
    # Even with a matching digest recorded, the blob is inflated only up to the bound.
    h.kube.patch_status(
        IMAGESCAN,
        name,
        "apps",
        {"status": {"report": {"resultSha256": hashlib.sha256(bomb).hexdigest()}}},
    )
    with pytest.raises(UntrustedResult, match="limit"):
        load_result(h.ctx, the_scan(h))


# ---------------------------------------------------------------- 3. orphaned denies


def test_repair_lifts_denies_no_scan_wants_and_never_a_persons() -> None:
    h = harness()
    ours = {
        c.OPENSHIFT_DENY_ANNOTATION: "true",
        c.DENY_MARKER_ANNOTATION: "true",
        c.DENIED_BY_ANNOTATION: "apps/gone",
    }
    add_image(h, VULN, ours)  # its ImageScan was deleted while the operator was down
    add_image(h, OTHER, {c.OPENSHIFT_DENY_ANNOTATION: "true"})  # a person's
    add_image(h, digest(13))
    assert repair_denies(h.ctx) == 1
    assert deny_annotations(h) == {}
    assert deny_annotations(h, OTHER) == {c.OPENSHIFT_DENY_ANNOTATION: "true"}
    assert any(e["reason"] == "DenyLifted" for e in h.kube.list(EVENT))
    # Throttled: a second call within the interval costs no API call.
    h.kube.actions.clear()
    assert repair_denies(h.ctx) == 0
    assert h.kube.actions == []


def test_repair_keeps_a_deny_a_live_scan_wants() -> None:
    h = harness()
    failed_and_denied(h)
    before = h.kube.get(IMAGE, VULN)
    assert repair_denies(h.ctx) == 0
    assert h.kube.get(IMAGE, VULN) == before


def test_hand_made_scan_whose_policy_is_deleted_stops_denying() -> None:
    h = harness()
    add_policy(h, action="Enforce", scanner={"retries": 0})
    add_image(h, VULN)
    h.kube.create(
        IMAGESCAN,
        {
            "metadata": {"name": "by-hand", "namespace": "apps"},
            "spec": {"image": f"registry.local:5000/apps/app@{VULN}", "policy": "default"},
        },
    )
    reconcile_imagescan(h.ctx, the_scan(h))
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "critical")]))
    reconcile_imagescan(h.ctx, the_scan(h))
    assert the_scan(h)["status"]["denied"] is True
    policy = h.kube.get(SCANPOLICY, "default", "apps")
    h.kube.delete(SCANPOLICY, "default", "apps")
    assert policy_deleted(h.ctx, policy) == 1  # the policy's DELETED event
    assert the_scan(h)["status"]["denied"] is False
    assert deny_annotations(h) == {}
    # The policy comes back: the stored findings are judged again, the deny returns.
    add_policy(h, action="Enforce", scanner={"retries": 0})
    reconcile_imagescan(h.ctx, the_scan(h))
    assert the_scan(h)["status"]["denied"] is True
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"


# ---------------------------------------------------------------- 5. races and people


def test_a_policy_relaxed_while_a_rescan_waits_lifts_the_deny_at_once() -> None:
    h = harness()
    name = failed_and_denied(h)
    h.kube.patch(IMAGESCAN, name, "apps", {"metadata": {"annotations": {c.RESCAN_ANNOTATION: "x"}}})
    reconcile_imagescan(h.ctx, the_scan(h))
    assert the_scan(h)["status"]["state"] == "Running"
    scanned = next(x for x in the_scan(h)["status"]["conditions"] if x["type"] == "Scanned")

    edit_policy(h, action="Report")  # the admin's emergency lever, before the rescan ends
    scan = the_scan(h)
    assert scan["status"]["denied"] is False and deny_annotations(h) == {}
    assert enforced(scan)["reason"] == "ReportOnly"
    # The rescan is still under way, and its Scanned condition says so.
    assert scan["status"]["state"] == "Running"
    assert next(x for x in scan["status"]["conditions"] if x["type"] == "Scanned") == scanned

    # Back to Enforce, through the scan's own reconcile this time: denied again, still running.
    h.kube.patch(SCANPOLICY, "default", "apps", {"spec": {"action": "Enforce"}})
    reconcile_imagescan(h.ctx, the_scan(h))
    assert the_scan(h)["status"]["denied"] is True
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert len(jobs(h)) == 1


def test_two_scans_of_one_digest_finishing_at_once_keep_the_deny() -> None:
    """strict (Fail) and lax (Pass) judged in two threads: lax must not lift strict's deny
    between strict's Image patch and strict's status write."""
    h = harness()
    add_policy(h, "strict", action="Enforce", failOn="high", scanner={"retries": 0})
    add_policy(h, "lax", action="Enforce", failOn="critical", scanner={"retries": 0})
    add_image(h, VULN)
    add_stream(h, "app", "apps", {"latest": [VULN]})
    for policy in ("strict", "lax"):
        reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, policy, "apps"))

    def scan_of(policy: str) -> Obj:
        (scan,) = h.kube.list(IMAGESCAN, "apps", label_selector=f"{c.POLICY_LABEL}={policy}")
        return scan

    for policy in ("strict", "lax"):
        reconcile_imagescan(h.ctx, scan_of(policy))
    for job in jobs(h):
        post(h, job["metadata"]["name"], scan_result(VULN, [("CVE-1", "high")]))

    original = h.kube.patch
    racer: list[threading.Thread] = []

    def patch_then_race(kind: Any, name: str, namespace: str | None, patch: Obj) -> Obj:
        out = original(kind, name, namespace, patch)
        if kind == IMAGE and not racer:
            racer.append(threading.Thread(target=reconcile_imagescan, args=(h.ctx, scan_of("lax"))))
            racer[0].start()
            racer[0].join(0.5)  # without the digest lock, lax finishes here
        return out

    h.kube.patch = patch_then_race  # type: ignore[method-assign]
    reconcile_imagescan(h.ctx, scan_of("strict"))
    racer[0].join(10)
    h.kube.patch = original  # type: ignore[method-assign]
    assert scan_of("strict")["status"]["denied"] is True
    assert scan_of("lax")["status"]["result"] == "Pass"
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    assert deny_annotations(h)[c.DENIED_BY_ANNOTATION] == "apps/strict"


def test_a_persons_deny_added_while_scapguard_patches_is_never_adopted() -> None:
    h = harness()
    get = h.kube.get
    person: list[bool] = []

    def get_then_person(kind: Any, name: str, namespace: str | None = None) -> Obj:
        out = get(kind, name, namespace)
        if kind == IMAGE and not person:  # between scapguard's read and its patch
            person.append(True)
            annotations = {c.OPENSHIFT_DENY_ANNOTATION: "true"}
            h.kube.patch(IMAGE, name, None, {"metadata": {"annotations": annotations}})
        return out

    critical_posted(h)
    h.kube.get = get_then_person  # type: ignore[method-assign]
    reconcile_imagescan(h.ctx, the_scan(h))
    h.kube.get = get  # type: ignore[method-assign]
    assert deny_annotations(h) == {c.OPENSHIFT_DENY_ANNOTATION: "true"}  # no marker
    assert enforced(the_scan(h))["status"] == "True"  # denied, by the person's annotation
    edit_policy(h, action="Report")
    assert deny_annotations(h) == {c.OPENSHIFT_DENY_ANNOTATION: "true"}


@pytest.mark.parametrize("value", ["True", "false"])
def test_a_persons_deny_execution_value_of_any_spelling_is_left_alone(value: str) -> None:
    h = harness()
    critical_posted(h, {c.OPENSHIFT_DENY_ANNOTATION: value})
    reconcile_imagescan(h.ctx, the_scan(h))
    scan = the_scan(h)
    assert scan["status"]["result"] == "Fail" and scan["status"]["denied"] is True
    assert deny_annotations(h) == {c.OPENSHIFT_DENY_ANNOTATION: value}
    condition = enforced(scan)
    assert condition["status"] == "False" and condition["reason"] == "AllowedByPerson"
    assert repr(value) in condition["message"]
    edit_policy(h, action="Report")
    assert deny_annotations(h) == {c.OPENSHIFT_DENY_ANNOTATION: value}


def test_a_deleted_policy_reconciles_only_its_hand_made_scans() -> None:
    """Its own scans go with it (garbage collection); reconciling them would race the GC."""
    h = harness()
    failed_and_denied(h)
    image = f"registry.local:5000/apps/app@{OTHER}"
    by_hand = {"name": "by-hand", "namespace": "apps", "labels": {c.POLICY_LABEL: "default"}}
    h.kube.create(IMAGESCAN, {"metadata": by_hand, "spec": {"image": image, "policy": "default"}})
    policy = h.kube.get(SCANPOLICY, "default", "apps")
    h.kube.delete(SCANPOLICY, "default", "apps")
    h.kube.actions.clear()
    assert policy_deleted(h.ctx, policy) == 1
    assert {name for _, plural, _, name in h.kube.actions if plural == "imagescans"} == {"by-hand"}


def test_the_policy_timer_puts_back_a_deny_removed_by_hand_once_per_interval() -> None:
    """Finished scans have no timer of their own: their policy's repairs their Images, once
    after a start and then every SCAN_REPAIR_SECONDS."""
    h = harness()
    failed_and_denied(h)
    h.ctx.scan_repair_throttle = Throttle(600.0)  # a fresh start: the first pass is due
    h.kube.patch(IMAGE, VULN, None, {"metadata": {"annotations": {
        c.OPENSHIFT_DENY_ANNOTATION: None}}})  # fmt: skip
    assert c.OPENSHIFT_DENY_ANNOTATION not in deny_annotations(h)
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    assert deny_annotations(h)[c.OPENSHIFT_DENY_ANNOTATION] == "true"
    h.kube.patch(IMAGE, VULN, None, {"metadata": {"annotations": {
        c.OPENSHIFT_DENY_ANNOTATION: None}}})  # fmt: skip
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    assert c.OPENSHIFT_DENY_ANNOTATION not in deny_annotations(h), "not due again yet"
