"""Writing ImageScans: their status, one named transition at a time
(``scapguard.api.imagescan``), as resourceVersion-guarded merge patches; and the labels and
annotations scapguard marks them with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from scapguard.api import constants as c
from scapguard.api.imagescan import StatusPatch, format_time, format_wake
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


def wake(ctx: OperatorContext, scan: Obj, cause: str, job: str) -> bool:
    """Wake the scan's reconcile (``scapguard.io/wake``: ``cause`` of scanner Job ``job``).

    The only poke from outside the ImageScan handler: the results endpoint and the Job watch
    run in every replica and only record; the active replica's reconcile decides.
    Returns False when the scan is gone.
    """
    return mark_scan(ctx, scan, annotations={c.WAKE_ANNOTATION: format_wake(cause, job)})


def write_change(
    ctx: OperatorContext, scan: Obj, change: StatusPatch, *, guarded: bool = True
) -> Obj:
    """Merge-patch ``change`` into the status, refusing (Conflict) if the scan changed since
    it was read. ``guarded=False`` drops that precondition: only for the results endpoint,
    whose write must land once the credential is spent (and which sets no conditions).

    Updates ``scan`` in place with the server's answer so later steps see the new version.
    """
    return _write(ctx, scan, _rendered(ctx, scan, change), guarded=guarded)


def write_if_changed(ctx: OperatorContext, scan: Obj, change: StatusPatch) -> bool:
    """``write_change`` unless the status says all of ``change`` already; whether it wrote."""
    patch = _rendered(ctx, scan, change)
    status = scan.get("status") or {}
    if all(status.get(key) == value for key, value in patch.items()):
        return False
    _write(ctx, scan, patch, guarded=True)
    return True


def _rendered(ctx: OperatorContext, scan: Obj, change: StatusPatch) -> dict[str, Any]:
    return change.merge_patch(
        scan.get("status"), generation=generation_of(scan), now=format_time(ctx.now())
    )


def _write(ctx: OperatorContext, scan: Obj, patch: dict[str, Any], *, guarded: bool) -> Obj:
    body: dict[str, Any] = {"status": patch}
    version = meta(scan).get("resourceVersion")
    if guarded and version:
        body["metadata"] = {"resourceVersion": version}
    return _replace(scan, ctx.kube.patch_status(IMAGESCAN, name_of(scan), namespace_of(scan), body))


def reread(ctx: OperatorContext, scan: Obj) -> bool:
    """Read ``scan`` again, in place (after a Conflict, before trying again); False if gone."""
    try:
        _replace(scan, ctx.kube.get(IMAGESCAN, name_of(scan), namespace_of(scan)))
    except NotFound:
        return False
    return True


def _replace(scan: Obj, fresh: Obj) -> Obj:
    scan.clear()
    scan.update(fresh)
    return scan
