"""An ImageScan or a ScanPolicy is gone: delete scanner Jobs, re-judge the Images' denies."""

from __future__ import annotations

import logging

from scapguard.api import constants as c
from scapguard.builders.job import scanner_selector
from scapguard.k8s.api import (
    IMAGESCAN,
    JOB,
    Conflict,
    NotFound,
    Obj,
    meta,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.enforcement import enforce_digest
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.jobs import delete_job
from scapguard.reconcile.scans import parsed

logger = logging.getLogger(__name__)


def scan_deleted(ctx: OperatorContext, scan: Obj) -> None:
    selector = f"{scanner_selector()},{c.SCAN_UID_LABEL}={uid_of(scan)}"
    for job in ctx.kube.list(JOB, ctx.settings.namespace, label_selector=selector):
        logger.info("deleting scanner Job %s of deleted ImageScan %s", name_of(job), name_of(scan))
        delete_job(ctx, name_of(job))
    spec = parsed(scan)
    if spec is not None:
        enforce_digest(ctx, spec.digest)


def policy_deleted(ctx: OperatorContext, policy: Obj) -> int:
    """Reconcile the hand-made scans of a deleted policy; return how many there were.

    The scans the policy created are its children and go with it (each deletion re-judges its
    Image); hand-made ones are not, and without their policy they must stop denying now, not
    at their next repair timer.
    """
    selector = f"{c.POLICY_LABEL}={name_of(policy)}"
    hand_made = [
        scan
        for scan in ctx.kube.list(IMAGESCAN, namespace_of(policy), label_selector=selector)
        if not any(
            ref.get("uid") == uid_of(policy) for ref in meta(scan).get("ownerReferences") or []
        )
    ]
    for scan in hand_made:
        try:
            reconcile_imagescan(ctx, scan)
        except (Conflict, NotFound):
            logger.info("ImageScan %s changed meanwhile; its own reconcile follows", name_of(scan))
    return len(hand_made)
