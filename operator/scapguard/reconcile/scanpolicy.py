"""Reconcile one ScanPolicy: selection -> ImageScans, rescans, re-evaluation, GC, status."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scapguard.api import conditions as cond
from scapguard.api import constants as c
from scapguard.api.conditions import Reason
from scapguard.api.errors import SpecError
from scapguard.api.imagescan import (
    QUEUED,
    RETRYING,
    RUNNING,
    format_time,
    parse_rescan,
    parse_time,
    read_progress,
    rescan_value,
)
from scapguard.api.policy import ScanPolicySpec, fingerprint, parse_policy_spec
from scapguard.builders.job import ignored_scanner_fields
from scapguard.k8s.api import (
    SCANPOLICY,
    Conflict,
    Obj,
    annotations_of,
    generation_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.content import changed_sources, content_records, identity
from scapguard.reconcile.contentupdate import upstream_updates
from scapguard.reconcile.context import OperatorContext, Outcome
from scapguard.reconcile.imagescan import in_progress, reconcile_imagescan
from scapguard.reconcile.jobs import sweep
from scapguard.reconcile.queue import in_queue
from scapguard.reconcile.retention import collect
from scapguard.reconcile.scans import parsed, policy_scans
from scapguard.reconcile.scheduling import due_rescan, window
from scapguard.reconcile.selection import Selection, select
from scapguard.reconcile.status import mark_scan
from scapguard.reconcile.verdicts import reevaluate
from scapguard.reconcile.workloads import ensure_running_scans

logger = logging.getLogger(__name__)


def reconcile_scanpolicy(ctx: OperatorContext, policy: Obj) -> Outcome:
    namespace = namespace_of(policy) or ""
    try:
        spec = parse_policy_spec(policy.get("spec"))
    except SpecError as exc:
        _write_status(ctx, policy, {}, _ready(cond.FALSE, Reason.INVALID_SPEC, str(exc)))
        ctx.event(policy, "Warning", Reason.INVALID_SPEC, str(exc))
        return Outcome(permanent=str(exc))
    selection = select(ctx, namespace, spec, image_api=ctx.image_api)
    ctx.select(namespace, name_of(policy))  # the scans it lacks: the selector thread creates
    scans = policy_scans(ctx, namespace, name_of(policy))
    if ensure_running_scans(ctx, policy, selection.running, scans):
        scans = policy_scans(ctx, namespace, name_of(policy))
    collect(ctx, policy, selection, scans)
    fields = _rescans(ctx, policy, spec, scans)
    _reevaluate(ctx, spec, scans)
    fields.update(_aggregates(ctx, policy, selection, scans))
    note = ""
    if spec.namespace_selector is not None and namespace != ctx.settings.namespace:
        note = f"; namespaceSelector is ignored outside {ctx.settings.namespace}"
    ignored = ignored_scanner_fields(spec, namespace, ctx.settings.namespace)
    if ignored:
        note += (
            f"; {', '.join(ignored)} ignored outside {ctx.settings.namespace} "
            "(the operator's scanner image and placement apply)"
        )
    _write_status(
        ctx,
        policy,
        fields,
        _ready(
            cond.TRUE,
            Reason.RECONCILED,
            f"{fields['imagesSelected']} images selected, {fields['imagesFailing']} failing, "
            f"{fields['imagesDenied']} denied{note}",
        ),
    )
    _progress(ctx, scans)
    if ctx.scan_repair_throttle.ready(uid_of(policy)):
        _repair(ctx, scans)
    ctx.admit()
    if ctx.sweep_throttle.ready():
        sweep(ctx)
    return Outcome()


def _progress(ctx: OperatorContext, scans: list[Obj]) -> None:
    """Scans under way that no event may wake: a scanner Job that ended unseen (the Job watch
    is the fast path), a promotion copy, a rescan not yet taken up. Scans waiting in the queue
    are left to admission (``ctx.admit``), new ones to their create handler."""
    for scan in scans:
        progress = read_progress(scan.get("status"))
        if progress.request is None or progress.state in (QUEUED, RETRYING):
            continue
        if in_progress(scan):
            _reconcile_scan(ctx, scan)


def _repair(ctx: OperatorContext, scans: list[Obj]) -> None:
    """Finished scans: put their Images back in line if they drifted (an annotation edited or
    removed by hand), every ``SCAN_REPAIR_SECONDS`` and once after each operator start."""
    for scan in scans:
        if read_progress(scan.get("status")).finished:
            _reconcile_scan(ctx, scan, repair=True)


def _reconcile_scan(ctx: OperatorContext, scan: Obj, *, repair: bool = False) -> None:
    try:
        reconcile_imagescan(ctx, scan, repair=repair)
    except Conflict:
        logger.info("ImageScan %s/%s changed meanwhile; its own reconcile takes over",
                    namespace_of(scan), name_of(scan))  # fmt: skip


def _annotate_rescan(ctx: OperatorContext, scan: Obj, value: str) -> None:
    if annotations_of(scan).get(c.RESCAN_ANNOTATION) != value:
        mark_scan(ctx, scan, annotations={c.RESCAN_ANNOTATION: value})


@dataclass(frozen=True)
class _Asks:
    """What a policy asks its scans to rescan for on one reconcile."""

    policy: str | None  # the policy's own rescan annotation, while not yet observed
    content_hash: str  # of the policy's scan content now (a change: PolicyChange)
    content_update: str | None  # a ContentUpdate: value when a ConfigMap source changed
    upstream: Mapping[str, str]  # scan name -> ContentUpdate: value (catalogue feed, OCI tag)


def _rescans(
    ctx: OperatorContext, policy: Obj, spec: ScanPolicySpec, scans: list[Obj]
) -> dict[str, Any]:
    """Ask scans for rescans (by annotation): policy rescan, policy change, content update,
    schedule. Returns the policy's status fields that record what was asked."""
    now = ctx.now()
    status = policy.get("status") or {}
    wanted = annotations_of(policy).get(c.RESCAN_ANNOTATION)
    recorded = status.get("contentSources")
    records = content_records(ctx, namespace_of(policy) or "", spec, recorded)
    updated = changed_sources(recorded, records)
    asks = _Asks(
        policy=wanted if wanted and wanted != status.get("observedRescan") else None,
        content_hash=spec.content_hash(),
        # Names the new bytes, so an operator that stops half-way asks for the same rescan again.
        content_update=(
            rescan_value("ContentUpdate", fingerprint([identity(r) for r in records]))
            if updated
            else None
        ),
        upstream=upstream_updates(ctx, namespace_of(policy) or "", spec, scans),
    )
    for scan in scans:
        value = _rescan_of(scan, asks, spec, now)
        if value is not None:
            _annotate_rescan(ctx, scan, value)
    _announce_rescans(ctx, policy, len(scans), asks, updated)
    fields: dict[str, Any] = {"contentSources": records or None, **_schedule_fields(spec, now)}
    if asks.policy is not None:
        fields["observedRescan"] = asks.policy
    return fields


def _rescan_of(scan: Obj, asks: _Asks, spec: ScanPolicySpec, now: dt.datetime) -> str | None:
    """The rescan value ``asks`` means for one scan, if any (first reason wins)."""
    progress = read_progress(scan.get("status"))
    if asks.policy is not None:
        return rescan_value("OnDemand", f"policy/{asks.policy}")
    if progress.request is None:
        return None
    if progress.finished and progress.request.content_hash != asks.content_hash:
        return rescan_value("PolicyChange", asks.content_hash)
    if asks.content_update is not None:
        # Scans under way too: their attempt may have started with the old content.
        return asks.content_update
    if name_of(scan) in asks.upstream:
        return asks.upstream[name_of(scan)]
    if progress.finished and spec.schedule:
        requested = parse_time(progress.request.requested_at)
        return due_rescan(name_of(scan), spec.schedule, requested, now)
    return None


def _announce_rescans(
    ctx: OperatorContext, policy: Obj, count: int, asks: _Asks, updated: list[str]
) -> None:
    if asks.policy is not None:
        ctx.event(policy, "Normal", Reason.RESCAN_REQUESTED, f"rescan of {count} images requested")
    if updated:
        ctx.event(
            policy,
            "Normal",
            Reason.CONTENT_UPDATED,
            f"content changed in {', '.join(updated)}: rescan of {count} images requested",
        )
    if asks.upstream:
        moved = sorted({parse_rescan(v)[1].split("@")[0] for v in asks.upstream.values()})
        ctx.event(
            policy,
            "Normal",
            Reason.CONTENT_UPDATED,
            f"new content in {', '.join(moved)}: rescan of {len(asks.upstream)} images requested",
        )


def _schedule_fields(spec: ScanPolicySpec, now: dt.datetime) -> dict[str, Any]:
    if not spec.schedule:
        return {"lastScheduledRescan": None, "nextScheduledRescan": None}
    win = window(spec.schedule, now)
    return {
        "lastScheduledRescan": format_time(win.start),
        "nextScheduledRescan": format_time(win.end),
    }


def _reevaluate(ctx: OperatorContext, spec: ScanPolicySpec, scans: list[Obj]) -> None:
    """Failure rule, exceptions, action or onError changed: re-judge without rescanning."""
    wanted = spec.evaluation_hash(ctx.now())
    for scan in scans:
        scan_spec = parsed(scan)
        # Scans with a rescan under way too: their last result is what enforcement acts on.
        if scan_spec is None or not read_progress(scan.get("status")).verdict_outdated(wanted):
            continue
        try:
            reevaluate(ctx, scan, scan_spec, spec)
        except Conflict:
            logger.info(
                "ImageScan %s/%s changed meanwhile; its own reconcile re-evaluates",
                namespace_of(scan),
                name_of(scan),
            )


def _aggregates(
    ctx: OperatorContext, policy: Obj, selection: Selection, scans: list[Obj]
) -> dict[str, Any]:
    # Images are digests: a hand-made ImageScan of a selected digest is one more scan of it.
    by_digest: dict[str, list[Obj]] = defaultdict(list)
    selected = selection.selected()
    for scan in scans:
        if (sp := parsed(scan)) and sp.digest in selected:
            by_digest[sp.digest].append(scan)
    counts: Counter[str] = Counter()
    critical: Counter[str] = Counter()
    for of_digest in by_digest.values():
        statuses = [s.get("status") or {} for s in of_digest]
        progresses = [read_progress(status) for status in statuses]
        results = {p.result for p in progresses}
        denied = any(p.denied for p in progresses)
        counts["scanned"] += bool(results - {None})
        counts["failing"] += "Fail" in results
        counts["errored"] += "Error" in results and "Fail" not in results
        counts["denied"] += denied
        for progress in progresses:  # scans, not images: each waits or runs on its own
            counts["queued"] += in_queue(progress)
            counts["running"] += not progress.finished and progress.state == RUNNING
        if any(int((st.get("vulnerabilities") or {}).get("critical") or 0) for st in statuses):
            critical["true" if denied else "false"] += 1
    key = f"{namespace_of(policy)}/{name_of(policy)}"
    ctx.metrics.images_failing.labels(key).set(counts["failing"])
    ctx.metrics.images_denied.labels(key).set(counts["denied"])
    for label in ("true", "false"):
        ctx.metrics.images_critical.labels(key, label).set(critical[label])
    return {
        "imagesSelected": len(selected),
        "imagesScanned": counts["scanned"],
        "imagesFailing": counts["failing"],
        "imagesErrored": counts["errored"],
        "imagesDenied": counts["denied"],
        "scansQueued": counts["queued"],
        "scansRunning": counts["running"],
    }


def _ready(status: str, reason: str, message: str) -> cond.Condition:
    return cond.Condition(cond.READY, status, reason, message)


def _write_status(
    ctx: OperatorContext, policy: Obj, fields: dict[str, Any], ready: cond.Condition
) -> None:
    status = policy.get("status") or {}
    patch = cond.status_patch(
        status,
        fields,
        (ready,),
        observed_generation=generation_of(policy),
        now=format_time(ctx.now()),
    )
    if all(status.get(k) == v for k, v in patch.items()):
        return
    policy.update(
        ctx.kube.patch_status(SCANPOLICY, name_of(policy), namespace_of(policy), {"status": patch})
    )
