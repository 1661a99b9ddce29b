"""The promotion gate (``spec.promotion``): a digest that passes is copied to the target
repository; one that does not stays where it is, and its ImageScan says why.

Level-based, from the settled scan's reconcile: for the scan's current request,
``status.promotion`` goes ``Pending`` (a copy Job with skopeo from the operator's scanner image,
the policy's pull secrets as credentials) -> ``Promoted`` or ``Failed`` (the Job's message);
a result other than Pass is ``NotPromoted`` with the result's reason and message. A rescan (a
new request) judges again: a digest that passes after an update of the feed is promoted then.
While a copy is pending the ScanPolicy timer keeps looking at it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from scapguard.api.conditions import Reason
from scapguard.api.imagescan import (
    NOT_PROMOTED,
    PROMOTED,
    PROMOTION_FAILED,
    PROMOTION_PENDING,
    ImageScanSpec,
    PromotionRecord,
    promotion_changed,
    read_progress,
)
from scapguard.api.naming import promotion_job_name
from scapguard.api.policy import Promotion, ScanPolicySpec
from scapguard.builders.job import (
    PromotionInput,
    build_promotion_job,
    build_promotion_secret,
)
from scapguard.k8s.api import (
    JOB,
    POD,
    NotFound,
    Obj,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.jobs import delete_job
from scapguard.reconcile.launch import launch
from scapguard.reconcile.queue import registry_auth
from scapguard.reconcile.status import write_change

logger = logging.getLogger(__name__)

_MESSAGE_MAX: Final = 1000


def promotion_target(spec: ImageScanSpec, promotion: Promotion) -> str:
    tag = promotion.tag or (spec.tags[0].tag if spec.tags else f"sha256-{spec.digest[7:]}")
    return f"{promotion.repository}:{tag}"


def pending(scan: Obj) -> bool:
    """Whether a promotion copy is under way (the policy timer keeps reconciling the scan)."""
    promotion = (scan.get("status") or {}).get("promotion")
    return isinstance(promotion, dict) and promotion.get("state") == PROMOTION_PENDING


def ensure_promotion(
    ctx: OperatorContext, scan: Obj, spec: ImageScanSpec, policy: ScanPolicySpec
) -> None:
    """Bring ``status.promotion`` (and the copy Job) in line with the settled result."""
    promotion = policy.promotion
    status = scan.get("status") or {}
    progress = read_progress(status)
    if promotion is None or progress.request is None or not progress.finished:
        return
    request = progress.request.number
    target = promotion_target(spec, promotion)
    current: dict[str, Any] = dict(status.get("promotion") or {})
    same = current.get("request") == request and current.get("target") == target
    if status.get("result") != "Pass":
        wanted = PromotionRecord(
            NOT_PROMOTED,
            target,
            request,
            reason=str(status.get("reason") or status.get("result") or "NotPassed"),
            message=f"{status.get('result')}: {status.get('message') or ''}"[:_MESSAGE_MAX],
        )
        fields = wanted.to_dict().items()
        if same and all(current.get(k) == v for k, v in fields if k != "message"):
            return
        _write(ctx, scan, wanted)
        ctx.event(
            scan, "Normal", Reason.NOT_PROMOTED, f"not promoted to {target}: {wanted.message}"
        )
        return
    if same and current.get("state") in (PROMOTED, PROMOTION_FAILED):
        return
    name = promotion_job_name(uid_of(scan), request)
    if same and current.get("state") == PROMOTION_PENDING and current.get("job") == name:
        _observe(ctx, scan, name, target, request)
        return
    _start(ctx, scan, spec, policy, name, target, request)


def _start(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    name: str,
    target: str,
    request: int,
) -> None:
    settings = ctx.settings
    namespace = namespace_of(scan) or ""
    auth = registry_auth(ctx, namespace, policy)
    inp = PromotionInput(
        job_name=name,
        namespace=settings.namespace,
        scan_namespace=namespace,
        scan_name=name_of(scan),
        scan_uid=uid_of(scan),
        request=request,
        source=spec.image,
        target=target,
        scanner_image=settings.scanner_image,
        ttl_seconds=settings.job_ttl_seconds,
        insecure_registries=policy.scanner.insecure_registries,
        registry_auth=auth is not None,
        run_as_user=settings.scanner_run_as_user,
        image_pull_secrets=settings.scanner_image_pull_secrets,
        service_account=settings.scanner_service_account,
    )
    secret = build_promotion_secret(inp, auth) if auth is not None else None
    launch(ctx, build_promotion_job(inp), secret)
    copying = f"copying {spec.image} to {target}"
    _write(ctx, scan, PromotionRecord(PROMOTION_PENDING, target, request, name, message=copying))
    logger.info("promoting %s to %s (Job %s)", spec.image, target, name)


def _observe(ctx: OperatorContext, scan: Obj, name: str, target: str, request: int) -> None:
    try:
        job = ctx.kube.get(JOB, name, ctx.settings.namespace)
    except NotFound:
        job = None
    conditions = {
        str(k.get("type")): k
        for k in ((job or {}).get("status") or {}).get("conditions") or []
        if k.get("status") == "True"
    }
    if job is not None and "Complete" not in conditions and "Failed" not in conditions:
        return  # still copying
    if "Complete" in conditions:
        _write(
            ctx, scan, PromotionRecord(PROMOTED, target, request, message=f"promoted to {target}")
        )
        ctx.event(scan, "Normal", Reason.PROMOTED, f"promoted to {target}")
    else:
        why = _failure_message(ctx, name) if job is not None else "the copy Job disappeared"
        failed = PromotionRecord(
            PROMOTION_FAILED, target, request, reason="CopyFailed", message=why[:_MESSAGE_MAX]
        )
        _write(ctx, scan, failed)
        ctx.event(scan, "Warning", Reason.PROMOTION_FAILED, f"promotion to {target} failed: {why}")
    delete_job(ctx, name)


def _failure_message(ctx: OperatorContext, job: str) -> str:
    """skopeo's own words: the copy pod's termination message (its log's tail)."""
    pods = ctx.kube.list(POD, ctx.settings.namespace, label_selector=f"job-name={job}")
    for pod in pods:
        for state in (pod.get("status") or {}).get("containerStatuses") or []:
            message = ((state.get("state") or {}).get("terminated") or {}).get("message")
            if message:
                return str(message).strip().splitlines()[-1]
    return "the copy Job failed"


def _write(ctx: OperatorContext, scan: Obj, promotion: PromotionRecord) -> None:
    write_change(ctx, scan, promotion_changed(promotion, ctx.now()))
