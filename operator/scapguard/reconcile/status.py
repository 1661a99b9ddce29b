"""Writing ImageScans: optimistic (resourceVersion-guarded) status merge patches, conditions,
and the labels and annotations scapguard marks them with."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from scapguard.api import conditions as cond
from scapguard.api.imagescan import format_time
from scapguard.k8s.api import (
    IMAGESCAN,
    NotFound,
    Obj,
    generation_of,
    meta,
    name_of,
    namespace_of,
)
from scapguard.reconcile.context import OperatorContext

logger = logging.getLogger(__name__)


def mark_scan(
    ctx: OperatorContext,
    scan: Obj,
    *,
    labels: Mapping[str, str | None] | None = None,
    annotations: Mapping[str, str | None] | None = None,
) -> bool:
    """Merge-patch labels/annotations (None removes one); updates ``scan`` in place.

    No resourceVersion precondition: each mark is idempotent and level-based. Returns False
    when the scan is gone.
    """
    metadata: dict[str, Any] = {}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    try:
        updated = ctx.kube.patch(
            IMAGESCAN, name_of(scan), namespace_of(scan), {"metadata": metadata}
        )
    except NotFound:
        logger.info("ImageScan %s/%s is gone", namespace_of(scan), name_of(scan))
        return False
    scan.update(updated)
    return True


def write_status(ctx: OperatorContext, scan: Obj, patch: Mapping[str, Any]) -> Obj:
    """Merge-patch the status, refusing (Conflict) if the scan changed since it was read.

    Updates ``scan`` in place with the server's answer so later steps see the new version.
    """
    body: dict[str, Any] = {"status": dict(patch)}
    version = meta(scan).get("resourceVersion")
    if version:
        body["metadata"] = {"resourceVersion": version}
    updated = ctx.kube.patch_status(IMAGESCAN, name_of(scan), namespace_of(scan), body)
    scan.clear()
    scan.update(updated)
    return scan


def with_conditions(
    ctx: OperatorContext,
    scan: Obj,
    patch: dict[str, Any],
    updates: Sequence[cond.Condition],
) -> dict[str, Any]:
    """Add ``conditions`` to ``patch`` from ``updates``."""
    status = scan.get("status") or {}
    conditions, changed = cond.set_conditions(
        status.get("conditions"),
        updates,
        observed_generation=generation_of(scan),
        now=format_time(ctx.now()),
    )
    if changed:
        patch["conditions"] = conditions
    patch.setdefault("observedGeneration", generation_of(scan))
    return patch


def differs(scan: Obj, patch: Mapping[str, Any]) -> bool:
    """Whether applying ``patch`` would change the status (no patch when nothing changed)."""
    status = scan.get("status") or {}
    return any(status.get(key) != value for key, value in patch.items())
