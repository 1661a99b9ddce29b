"""History and garbage collection of the ImageScans a policy created from ImageStreams.

- a digest some selected tag points at now: kept;
- a digest in a tag's history within ``retention.keep``: kept (past scans);
- a digest in a tag's history beyond ``retention.keep``: deleted;
- a digest no selected tag knows any more: marked ``scapguard.io/untagged-since`` and deleted
  after the cleanup grace period.
Scans made for a running Pod (origin ``workload``) follow the same rules: kept while a selected
Pod runs the digest (or a tag points at it), then collected after the grace period.
Hand-made ImageScans are never collected, nor a scan that denies its image: a Deployment may
still pin that digest, and deleting the scan would lift the deny (delete it by hand to lift
it; a rescan that passes lifts it too, and the scan is collected after that). Deleting a scan
re-judges the Image's deny.
"""

from __future__ import annotations

import logging

from scapguard.api import constants as c
from scapguard.api.conditions import Reason
from scapguard.api.imagescan import format_time, parse_time
from scapguard.api.naming import scan_name
from scapguard.k8s.api import (
    IMAGESCAN,
    NotFound,
    Obj,
    annotations_of,
    labels_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.enforcement import enforce_digest
from scapguard.reconcile.scans import parsed
from scapguard.reconcile.selection import Selection
from scapguard.reconcile.status import mark_scan

logger = logging.getLogger(__name__)

_COLLECTED = frozenset({c.ORIGIN_IMAGESTREAM, c.ORIGIN_WORKLOAD})


def collect(ctx: OperatorContext, policy: Obj, selection: Selection, scans: list[Obj]) -> int:
    namespace = namespace_of(policy) or ""
    now = ctx.now()
    grace = ctx.settings.cleanup_grace_seconds
    deleted = 0
    for scan in scans:
        spec = parsed(scan)
        if spec is None or labels_of(scan).get(c.ORIGIN_LABEL) not in _COLLECTED:
            continue
        if name_of(scan) != scan_name(spec.digest, namespace, name_of(policy)):
            continue
        digest = spec.digest
        since_text = annotations_of(scan).get(c.UNTAGGED_SINCE_ANNOTATION)
        if digest in selection.selected() or digest in selection.retained:
            if since_text is not None:
                _annotate(ctx, scan, None)
            continue
        if digest in selection.expired:
            why = f"beyond retention.keep={policy_keep(policy)} in its tags' history"
        else:
            since = parse_time(since_text)
            if since is None:
                _annotate(ctx, scan, format_time(now))
                continue
            if (now - since).total_seconds() < grace:
                continue
            why = f"no tag has pointed at it and no selected Pod has run it for {grace}s"
        if (scan.get("status") or {}).get("denied") is True:
            logger.debug("keeping ImageScan %s/%s: it denies its image", namespace, name_of(scan))
            continue
        if _delete(ctx, scan, why):
            enforce_digest(ctx, digest)
            deleted += 1
    return deleted


def policy_keep(policy: Obj) -> object:
    return ((policy.get("spec") or {}).get("retention") or {}).get("keep")


def _annotate(ctx: OperatorContext, scan: Obj, value: str | None) -> None:
    mark_scan(ctx, scan, annotations={c.UNTAGGED_SINCE_ANNOTATION: value})


def _delete(ctx: OperatorContext, scan: Obj, why: str) -> bool:
    logger.info("deleting ImageScan %s/%s: %s", namespace_of(scan), name_of(scan), why)
    try:
        ctx.kube.delete(IMAGESCAN, name_of(scan), namespace_of(scan), uid=uid_of(scan))
    except NotFound:
        return False
    ctx.metrics.forget_image(
        namespace_of(scan) or "", name_of(scan), ("critical", "high", "medium", "low", "unknown")
    )
    ctx.event(scan, "Normal", Reason.SCAN_DELETED, f"deleted: {why}")
    return True
