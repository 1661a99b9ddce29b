"""Reconcile one ImageScan: request -> queue -> Job -> outcome -> verdict -> enforcement.

Level-based: every run reads the scan's status and the Job of its current attempt and does
whatever is missing. Status writes are guarded by resourceVersion, so a concurrent writer
(the queue, the results endpoint) makes this run fail with Conflict and run again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from scapguard.api import constants as c
from scapguard.api.conditions import Reason
from scapguard.api.errors import SpecError
from scapguard.api.evaluation import ERROR, Verdict, evaluate
from scapguard.api.imagescan import (
    QUEUED,
    RETRYING,
    AttemptOutcome,
    ImageScanSpec,
    ScanProgress,
    ScanRequest,
    StatusPatch,
    attempt_ended,
    completed,
    deny_released,
    format_time,
    gave_up,
    job_released,
    not_ready,
    parse_imagescan_spec,
    parse_time,
    queued,
    read_progress,
    requeued,
    retry_message,
    retry_scheduled,
    trigger_of,
    verdict_conditions,
)
from scapguard.api.naming import digest_label, job_name, result_config_map_name
from scapguard.api.policy import ScanPolicySpec, parse_policy_spec
from scapguard.k8s.api import (
    SCANPOLICY,
    NotFound,
    Obj,
    annotations_of,
    labels_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext, Outcome
from scapguard.reconcile.enforcement import enforce_digest
from scapguard.reconcile.jobs import delete_job, observe_job
from scapguard.reconcile.promotion import ensure_promotion
from scapguard.reconcile.promotion import pending as promotion_pending
from scapguard.reconcile.status import mark_scan, write_change, write_if_changed
from scapguard.reconcile.verdicts import (
    UntrustedResult,
    apply_verdict,
    completed_fields,
    conditions_for,
    load_result,
    owners_lost,
    reevaluate,
)

logger = logging.getLogger(__name__)

POLICY_RETRY_SECONDS = 60.0


def backoff(ctx: OperatorContext, attempt: int) -> float:
    base = ctx.settings.retry_backoff_seconds
    return float(min(base * 2 ** max(0, attempt - 1), ctx.settings.retry_backoff_max_seconds))


def reconcile_imagescan(ctx: OperatorContext, scan: Obj, *, repair: bool = False) -> Outcome:
    try:
        spec = parse_imagescan_spec(scan.get("spec"))
    except SpecError as exc:
        _not_ready(ctx, scan, Reason.INVALID_SPEC, str(exc))
        return Outcome(permanent=str(exc))
    _ensure_labels(ctx, scan, spec)
    try:
        policy_obj = ctx.kube.get(SCANPOLICY, spec.policy, namespace_of(scan))
        policy = parse_policy_spec(policy_obj.get("spec"))
    except NotFound:
        message = f"ScanPolicy {namespace_of(scan)}/{spec.policy} not found"
        _not_ready(ctx, scan, Reason.POLICY_NOT_FOUND, message)
        _release_deny(ctx, scan, spec, message)
        return Outcome(retry_after=POLICY_RETRY_SECONDS)
    except SpecError as exc:
        _not_ready(ctx, scan, Reason.INVALID_POLICY, f"ScanPolicy {spec.policy}: {exc}")
        return Outcome(retry_after=POLICY_RETRY_SECONDS)

    progress = read_progress(scan.get("status"))
    now = ctx.now()
    rescan = annotations_of(scan).get(c.RESCAN_ANNOTATION)
    request = progress.request
    if request is None or progress.new_request_due(rescan):
        _new_request(ctx, scan, spec, policy, progress, rescan, now)
        ctx.admit()
        return Outcome()
    if progress.finished:
        return _settled(ctx, scan, spec, policy, progress, repair=repair)
    if progress.verdict_outdated(policy.evaluation_hash(now)):
        # The rules changed while a rescan waits or runs: the last result is judged anew now.
        reevaluate(ctx, scan, spec, policy)
        progress = read_progress(scan.get("status"))
    return _advance(ctx, scan, spec, policy, progress, request)


def in_progress(scan: Obj) -> bool:
    """Whether the scan has work under way or asked for (no API call: status and annotations)."""
    progress = read_progress(scan.get("status"))
    rescan = annotations_of(scan).get(c.RESCAN_ANNOTATION)
    return not progress.finished or promotion_pending(scan) or progress.new_request_due(rescan)


def _ensure_labels(ctx: OperatorContext, scan: Obj, spec: ImageScanSpec) -> None:
    """Hand-made scans get the digest and policy labels the operator selects by."""
    wanted = {c.DIGEST_LABEL: digest_label(spec.digest), c.POLICY_LABEL: spec.policy}
    labels = labels_of(scan)
    missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
    if missing:
        mark_scan(ctx, scan, labels=missing)


def _not_ready(ctx: OperatorContext, scan: Obj, reason: str, message: str) -> None:
    if write_if_changed(ctx, scan, not_ready(reason, message)):
        ctx.event(scan, "Warning", reason, message)


def _release_deny(ctx: OperatorContext, scan: Obj, spec: ImageScanSpec, message: str) -> None:
    """No policy, no deny: a scan whose policy is gone (a hand-made one) wants nothing.

    The evaluation is forgotten too, so a policy of that name, if it comes back, judges the
    stored result again.
    """
    status = scan.get("status") or {}
    if status.get("denied") is not True:
        return
    change = deny_released(message)
    fresh = {**scan, "status": {**status, **change.fields}}
    with ctx.digest_lock(spec.digest):
        enforcement = enforce_digest(ctx, spec.digest, {uid_of(scan): fresh})
        write_change(ctx, scan, change)
    if enforcement.lifted:
        ctx.event(scan, "Normal", Reason.DENY_LIFTED, "deny-execution lifted from the image")


def _new_request(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    progress: ScanProgress,
    rescan: str | None,
    now: dt.datetime,
) -> None:
    previous = progress.request
    request = ScanRequest(
        number=1 if previous is None else previous.number + 1,
        trigger=spec.trigger if previous is None else trigger_of(rescan or ""),
        rescan=rescan,
        content_hash=policy.content_hash(),
        requested_at=format_time(now),
    )
    write_change(ctx, scan, queued(progress, request, spec.display_image(), now))
    if previous is not None:
        ctx.event(scan, "Normal", Reason.RESCAN_REQUESTED, f"rescan requested ({request.trigger})")


def _settled(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    progress: ScanProgress,
    *,
    repair: bool,
) -> Outcome:
    """The current request has its result: re-judge if the rules changed, keep Image in line."""
    if progress.job:
        delete_job(ctx, progress.job)
        write_change(ctx, scan, job_released())
    if progress.verdict_outdated(policy.evaluation_hash(ctx.now())):
        reevaluate(ctx, scan, spec, policy)
    elif repair:
        _repair_enforcement(ctx, scan, spec, policy)
    ensure_promotion(ctx, scan, spec, policy)
    return Outcome()


def _repair_enforcement(
    ctx: OperatorContext, scan: Obj, spec: ImageScanSpec, policy: ScanPolicySpec
) -> None:
    status = scan.get("status") or {}
    verdict = Verdict(
        result=str(status.get("result")),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
    )
    with ctx.digest_lock(spec.digest):
        enforcement = enforce_digest(ctx, spec.digest)
        denied = status.get("denied") is True
        conditions = conditions_for(verdict, policy, enforcement, denied, status.get("scanner"))
        write_if_changed(ctx, scan, verdict_conditions(conditions))


def _advance(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    progress: ScanProgress,
    request: ScanRequest,
) -> Outcome:
    """The request has no result yet: queue it, wait for its attempt, or act on how it ended."""
    attempt = progress.attempts
    if attempt == 0:
        if progress.state not in (QUEUED, RETRYING):
            write_change(ctx, scan, requeued(ctx.now()))
        ctx.admit()
        return Outcome()
    outcome = progress.current_outcome() or _ended_unposted(ctx, scan, request, attempt)
    if outcome is None:
        return Outcome()  # the attempt's Job still runs
    if outcome.outcome == "Completed":
        return _complete(ctx, scan, spec, policy, request, outcome)
    if attempt > policy.scanner.retries:
        return _give_up(ctx, scan, spec, policy, request, outcome)
    due = progress.next_attempt_at
    if progress.state != RETRYING or due is None:
        # The scanner's clock may run ahead of ours: never wait longer than the backoff.
        finished = min(parse_time(outcome.finished_at) or ctx.now(), ctx.now())
        due = finished + dt.timedelta(seconds=backoff(ctx, attempt))
        _schedule_retry(ctx, scan, progress, outcome, due)
    wait = (due - ctx.now()).total_seconds()
    if wait > 0:
        return Outcome(retry_after=wait)
    ctx.admit()
    return Outcome()


def _ended_unposted(
    ctx: OperatorContext, scan: Obj, request: ScanRequest, attempt: int
) -> AttemptOutcome | None:
    """How the attempt ended if its Job ended without posting a result (None: it runs)."""
    state = observe_job(ctx, job_name(uid_of(scan), request.number, attempt))
    if state.active:
        return None
    outcome = AttemptOutcome(
        request.number, attempt, "Error", state.reason, state.message, format_time(ctx.now())
    )
    write_change(ctx, scan, attempt_ended(outcome))
    return outcome


def _schedule_retry(
    ctx: OperatorContext,
    scan: Obj,
    progress: ScanProgress,
    outcome: AttemptOutcome,
    due: dt.datetime,
) -> None:
    ctx.metrics.errors.labels(outcome.reason or Reason.SCAN_FAILED).inc()
    if progress.job:
        delete_job(ctx, progress.job)
    write_change(ctx, scan, retry_scheduled(progress, outcome, due, ctx.now()))
    ctx.event(scan, "Warning", Reason.RETRYING, retry_message(outcome))


def _complete(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    request: ScanRequest,
    outcome: AttemptOutcome,
) -> Outcome:
    missing_cm = f"ConfigMap {result_config_map_name(name_of(scan))} is missing"
    reason, message = "ResultMissing", missing_cm
    try:
        doc = load_result(ctx, scan)
    except UntrustedResult as exc:  # changed since it was posted: this attempt proves nothing
        doc, reason, message = None, Reason.STORED_RESULT_TAMPERED, str(exc)
        ctx.event(scan, "Warning", reason, f"{message}; the attempt counts as failed")
    if doc is None:
        missing = AttemptOutcome(
            outcome.request, outcome.attempt, "Error", reason, message, format_time(ctx.now())
        )
        write_change(ctx, scan, attempt_ended(missing))
        return Outcome(retry_after=1.0)
    verdict = evaluate(doc, policy, ctx.now())
    settled = completed(request, completed_fields(doc))
    _finish(ctx, scan, spec, policy, request, verdict, settled, doc)
    return Outcome()


def _give_up(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    request: ScanRequest,
    outcome: AttemptOutcome,
) -> Outcome:
    reason = outcome.reason or Reason.SCAN_FAILED
    ctx.metrics.errors.labels(reason).inc()
    message = f"{outcome.message or 'scan failed'} (after {outcome.attempt} attempts)"
    verdict = Verdict(result=ERROR, reason=reason, message=message)
    _finish(ctx, scan, spec, policy, request, verdict, gave_up(request, reason, message), None)
    return Outcome()


def _finish(
    ctx: OperatorContext,
    scan: Obj,
    spec: ImageScanSpec,
    policy: ScanPolicySpec,
    request: ScanRequest,
    verdict: Verdict,
    settled: StatusPatch,
    doc: dict[str, Any] | None,
) -> None:
    job = (scan.get("status") or {}).get("job")
    apply_verdict(ctx, scan, spec, policy, verdict, settled)
    if isinstance(job, str) and job:
        delete_job(ctx, job)
    ctx.metrics.scans.labels(verdict.result, request.trigger).inc()
    status = scan.get("status") or {}
    started = parse_time(status.get("startedAt"))
    finished = parse_time(status.get("finishedAt"))
    if started and finished:
        ctx.metrics.scan_duration.labels(verdict.result).observe(
            max(0.0, (finished - started).total_seconds())
        )
    if doc is not None:
        _content_metrics(ctx, doc)
        lost = owners_lost(doc.get("scanner"))
        if lost is not None:
            ctx.metrics.owners_not_preserved.inc()
            ctx.event(
                scan,
                "Warning",
                Reason.OWNERS_NOT_PRESERVED,
                f"scanned rootless, file owners lost: {lost}",
            )
        counts = status.get("vulnerabilities")
        if isinstance(counts, dict):
            ctx.metrics.set_image_vulnerabilities(
                namespace_of(scan) or "", name_of(scan), {k: int(v) for k, v in counts.items()}
            )
    kind = "Normal" if verdict.result == "Pass" else "Warning"
    ctx.event(
        scan,
        kind,
        verdict.reason if verdict.result != ERROR else Reason.SCAN_FAILED,
        f"{verdict.result}: {verdict.message}",
    )
    ensure_promotion(ctx, scan, spec, policy)  # at once: a status write wakes no handler
    ctx.admit()


def _content_metrics(ctx: OperatorContext, doc: dict[str, Any]) -> None:
    for kind in ("vulnerabilities", "compliance"):
        section = doc.get(kind)
        content = section.get("content") if isinstance(section, dict) else None
        if not isinstance(content, dict):
            continue
        produced = parse_time(content.get("version"))
        if produced is not None:
            ctx.metrics.content_age.labels(kind, str(content.get("name", ""))).set(
                max(0.0, (ctx.now() - produced).total_seconds())
            )
