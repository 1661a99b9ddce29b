"""Judge a scan's stored findings under its policy, write the verdict, enforce it."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from scapguard.api import conditions as cond
from scapguard.api.conditions import Condition, Reason
from scapguard.api.constants import OPENSHIFT_DENY_ANNOTATION, RESCAN_ANNOTATION, RESULT_KEY
from scapguard.api.evaluation import ERROR, FAIL, PASS, ResultLike, Verdict, evaluate
from scapguard.api.imagescan import (
    ImageScanSpec,
    StatusPatch,
    judged,
    read_progress,
    rescan_value,
    verdict_conditions,
)
from scapguard.api.naming import result_config_map_name
from scapguard.api.policy import ScanPolicySpec
from scapguard.api.summary import result_status
from scapguard.k8s.api import (
    CONFIGMAP,
    NotFound,
    Obj,
    annotations_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.enforcement import Enforcement, enforce_digest
from scapguard.reconcile.status import mark_scan, write_change
from scapguard.results.model import _gunzip_bounded

logger = logging.getLogger(__name__)


class UntrustedResult(Exception):
    """The stored result is not the one the operator stored (edited, replaced or a bomb)."""


def max_result_bytes(ctx: OperatorContext) -> int:
    """Bound of a stored result once inflated: it came from a post of at most
    ``results_max_bytes``, and re-encoding (``\\u`` escapes) at most triples a JSON text."""
    return 4 * ctx.settings.results_max_bytes


def load_result(ctx: OperatorContext, scan: Obj) -> dict[str, Any] | None:
    """The full stored result (gzip JSON in the scan's result ConfigMap), if there is one.

    Namespace users who may edit ConfigMaps may edit this one, so it is trusted only when its
    blob has the sha256 ingest recorded in ``status.report`` (which only the operator writes).
    ``None`` when nothing is stored or no digest was recorded: the status is then the record.
    Raises :class:`UntrustedResult` when the blob differs or inflates past the bound.
    """
    name = result_config_map_name(name_of(scan))
    recorded = read_progress(scan.get("status")).result_sha256
    try:
        cm = ctx.kube.get(CONFIGMAP, name, namespace_of(scan))
    except NotFound:
        return None
    packed = (cm.get("binaryData") or {}).get(RESULT_KEY)
    if not isinstance(packed, str) or recorded is None:
        return None
    try:
        blob = base64.b64decode(packed, validate=True)
    except binascii.Error as exc:
        raise UntrustedResult(f"ConfigMap {name}: {RESULT_KEY} is not base64") from exc
    actual = hashlib.sha256(blob).hexdigest()
    if not hmac.compare_digest(actual, recorded):
        raise UntrustedResult(
            f"ConfigMap {name}: {RESULT_KEY} has sha256 {actual[:12]}..., not the "
            f"{recorded[:12]}... recorded when the operator stored it"
        )
    try:
        doc = json.loads(_gunzip_bounded(blob, max_result_bytes(ctx), RESULT_KEY))
    except ValueError as exc:  # ScanResultError (not gzip, over the bound), bad JSON
        raise UntrustedResult(f"ConfigMap {name}: {exc}") from exc
    return doc if isinstance(doc, dict) else None


def distrust(ctx: OperatorContext, scan: Obj, exc: UntrustedResult, *, rescan: bool) -> None:
    """Report a stored result that is not the operator's; ask for a rescan if ``rescan``.

    The rescan value is keyed by the current request, so asking again is a no-op.
    """
    message = f"{exc}; not judged from it"
    request = read_progress(scan.get("status")).request
    if rescan and request is not None:
        value = rescan_value("OnDemand", f"stored-result/{request.number}")
        if annotations_of(scan).get(RESCAN_ANNOTATION) != value:
            mark_scan(ctx, scan, annotations={RESCAN_ANNOTATION: value})
        message += "; verdict kept, rescan requested"
    logger.warning("ImageScan %s/%s: %s", namespace_of(scan), name_of(scan), message)
    ctx.event(scan, "Warning", Reason.STORED_RESULT_TAMPERED, message)


def last_completed_fails(
    ctx: OperatorContext, scan: Obj, policy: ScanPolicySpec, now: dt.datetime
) -> bool:
    """Whether the scan's last completed result (if it has one) fails ``policy`` now.

    A scan ending in Error says nothing about the image. Lifting a failing image's deny on it
    (onError Allow) would free a known-vulnerable image for anyone who can break a scan
    (delete a pull secret, break the registry): the deny stands until a scan completes.
    """
    try:
        stored: ResultLike | None = load_result(ctx, scan)
    except UntrustedResult as exc:
        distrust(ctx, scan, exc, rescan=False)
        stored = None
    if stored is None:  # the operator-written status keeps the last completed findings
        stored = result_from_status(scan.get("status") or {})
    return evaluate(stored, policy, now).result == FAIL


def result_from_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """A result document rebuilt from the (capped) status, when the stored one is gone."""
    return {
        "outcome": "Completed",
        "vulnerabilities": {"findings": list(status.get("findings") or [])},
        "compliance": {"rules": [{**r, "result": "fail"} for r in status.get("failedRules") or []]},
    }


def wants_deny(policy: ScanPolicySpec, verdict: Verdict) -> bool:
    if not policy.enforcing:
        return False
    return verdict.result == FAIL or (verdict.result == ERROR and policy.on_error == "Deny")


def owners_lost(scanner: object) -> str | None:
    """Why a completed scan lost the image's file owners although a user namespace was set up."""
    fallback = scanner.get("idMappingFallback") if isinstance(scanner, Mapping) else None
    return str(fallback) if fallback else None


def conditions_for(
    verdict: Verdict,
    policy: ScanPolicySpec,
    enforcement: Enforcement,
    denied: bool,
    scanner: object = None,
) -> list[Condition]:
    """Scanned, Compliant, Enforced and the summary Ready for a verdict and its enforcement.

    ``scanner``: the status' ``scanner`` block (id mapping) of the scan being judged.
    """
    scanned = _scanned(verdict, scanner)
    compliant = (
        Condition(cond.COMPLIANT, cond.UNKNOWN, Reason.NOT_EVALUATED, "the scan did not complete")
        if verdict.result == ERROR
        else Condition(
            cond.COMPLIANT,
            cond.TRUE if verdict.result == PASS else cond.FALSE,
            verdict.reason,
            verdict.message,
        )
    )
    enforced = _enforced(verdict, policy, enforcement, denied)
    ready_ok = scanned.true and enforced.true
    ready = Condition(
        cond.READY,
        cond.TRUE if ready_ok else cond.FALSE,
        compliant.reason if ready_ok else (enforced.reason if scanned.true else scanned.reason),
        f"{verdict.result}: {verdict.message}",
    )
    return [scanned, compliant, enforced, ready]


def _scanned(verdict: Verdict, scanner: object) -> Condition:
    if verdict.result == ERROR:
        return Condition(cond.SCANNED, cond.FALSE, verdict.reason, verdict.message)
    lost = owners_lost(scanner)
    if lost is None:
        return Condition(cond.SCANNED, cond.TRUE, Reason.SCAN_COMPLETED, "scan completed")
    return Condition(
        cond.SCANNED,
        cond.TRUE,
        Reason.OWNERS_NOT_PRESERVED,
        f"scan completed rootless, the image's file owners were lost ({lost}): "
        "ownership and permission rules are notchecked",
    )


def _enforced(
    verdict: Verdict, policy: ScanPolicySpec, enforcement: Enforcement, denied: bool
) -> Condition:
    """The Enforced condition: what the Image (or the admission webhook) does about ``denied``."""
    if denied:
        return _enforced_deny(verdict, policy, enforcement)
    if enforcement.by_person:
        return Condition(
            cond.ENFORCED,
            cond.TRUE,
            Reason.DENIED_BY_PERSON,
            "denied by a deny-execution annotation scapguard did not set",
        )
    if enforcement.denied:
        return Condition(
            cond.ENFORCED,
            cond.TRUE,
            Reason.DENIED,
            f"denied by another policy ({', '.join(enforcement.denied_by)})",
        )
    if not policy.enforcing:
        return Condition(cond.ENFORCED, cond.TRUE, Reason.REPORT_ONLY, "the policy only reports")
    return Condition(cond.ENFORCED, cond.TRUE, Reason.NOT_DENIED, "image not denied")


def _enforced_deny(verdict: Verdict, policy: ScanPolicySpec, enforcement: Enforcement) -> Condition:
    """The Enforced condition of a scan that wants its image denied."""
    if enforcement.by_admission:
        return Condition(
            cond.ENFORCED,
            cond.TRUE,
            Reason.DENIED,
            "image denied: the cluster has no image.openshift.io API, so the admission "
            "webhook refuses Pods that run this digest (no Image to annotate)",
        )
    if not enforcement.image_found:
        return Condition(
            cond.ENFORCED,
            cond.FALSE,
            Reason.IMAGE_NOT_FOUND,
            "no image.openshift.io Image for this digest to annotate",
        )
    if enforcement.person_value is not None and not enforcement.denied:
        return Condition(
            cond.ENFORCED,
            cond.FALSE,
            Reason.ALLOWED_BY_PERSON,
            f"the policy denies this image, but a person set {OPENSHIFT_DENY_ANNOTATION}="
            f"{enforcement.person_value!r}; scapguard leaves it as it is",
        )
    held = verdict.result == ERROR and policy.on_error != "Deny"
    return Condition(
        cond.ENFORCED,
        cond.TRUE if enforcement.denied else cond.FALSE,
        Reason.DENIED,
        "image denied execution: this scan did not complete, the deny stands from the "
        "last completed scan, which fails the policy"
        if held
        else "image denied execution",
    )


def apply_verdict(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    verdict: Verdict,
    settled: StatusPatch | None = None,
    *,
    pending: bool = False,
) -> Enforcement:
    """Write ``verdict`` (with ``settled``, the end of the request it judges: ``completed``
    or ``gave_up``) and bring the Image in line with it.

    ``pending``: the verdict is on the last result while a rescan is under way.
    """
    now = ctx.now()
    denied = wants_deny(policy, verdict)
    if verdict.result == ERROR and policy.enforcing and not denied:
        denied = last_completed_fails(ctx, scan, policy, now)
    change = judged(
        verdict,
        denied=denied,
        evaluation_hash=policy.evaluation_hash(now),
        now=now,
        display_image=spec.display_image(),
    )
    if settled is not None:
        change = settled | change
    fresh = {**scan, "status": {**(scan.get("status") or {}), **change.fields}}
    previous = (scan.get("status") or {}).get("result")
    with ctx.digest_lock(spec.digest):  # until the status other scans' enforcement reads
        enforcement = enforce_digest(ctx, spec.digest, {uid_of(scan): fresh})
        conditions = verdict_conditions(
            conditions_for(verdict, policy, enforcement, denied, fresh["status"].get("scanner"))
        )
        if pending:  # a rescan is queued or running: its own Scanned condition stands
            conditions = conditions.without(cond.SCANNED)
        write_change(ctx, scan, change | conditions)
    if enforcement.lifted:
        ctx.event(scan, "Normal", Reason.DENY_LIFTED, "deny-execution lifted from the image")
    if previous and previous != verdict.result:
        logger.info(
            "ImageScan %s/%s: %s -> %s", namespace_of(scan), name_of(scan), previous, verdict.result
        )
    return enforcement


def reevaluate(
    ctx: OperatorContext, scan: Obj, spec: ImageScanSpec, policy: ScanPolicySpec
) -> Verdict | None:
    """Judge the stored findings again (failOn, exceptions, action, onError changed).

    Also while a rescan is queued or running: an admin who switches a policy to Report or adds
    an exception must not wait for the rescan to lift a deny. ``None`` when the stored result
    is not the operator's: the last verdict is kept and a rescan asked for.
    """
    status = scan.get("status") or {}
    now = ctx.now()
    if status.get("result") == ERROR:
        error = status.get("error") or {}
        verdict = Verdict(
            result=ERROR,
            reason=str(error.get("reason") or Reason.SCAN_FAILED),
            message=str(error.get("message") or "the scan did not complete"),
        )
    else:
        try:
            stored: ResultLike | None = load_result(ctx, scan)
        except UntrustedResult as exc:
            distrust(ctx, scan, exc, rescan=True)
            return None
        if stored is None:
            stored = result_from_status(status)
        verdict = evaluate(stored, policy, now)
    previous = status.get("result")
    pending = not read_progress(status).finished
    apply_verdict(ctx, scan, spec, policy, verdict, pending=pending)
    if previous != verdict.result:
        ctx.event(
            scan,
            "Normal",
            Reason.REEVALUATED,
            f"re-evaluated without a rescan: {previous} -> {verdict.result}",
        )
    return verdict


def completed_fields(result: ResultLike) -> dict[str, Any]:
    return result_status(result)
