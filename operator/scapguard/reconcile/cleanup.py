"""An ImageScan is gone: delete its scanner Jobs, re-judge the Image's deny."""

from __future__ import annotations

import logging

from scapguard.api import constants as c
from scapguard.builders.job import scanner_selector
from scapguard.k8s.api import JOB, Obj, name_of, uid_of
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.enforcement import enforce_digest
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
