"""Starting a Job with the Secret it reads, so that a crash at any step is harmless.

Job names are deterministic (the scan's attempt, the promotion's request): a second try after
a crash finds the Secret (kept) and the Job (adopted, 409) and ends in the same state. The
Secret is created first, so the Job's pod never starts without it, then made the Job's
dependent, so the garbage collector removes it with the Job.
"""

from __future__ import annotations

import logging

from scapguard.builders.job import owner_reference
from scapguard.k8s.api import JOB, SECRET, AlreadyExists, Obj, name_of, namespace_of, uid_of
from scapguard.reconcile.context import OperatorContext

logger = logging.getLogger(__name__)


def launch(ctx: OperatorContext, job: Obj, secret: Obj | None) -> tuple[Obj, bool]:
    """Create ``secret`` (if any) and ``job``; returns the Job and whether this call created
    it (False: adopted after a crash)."""
    name, namespace = name_of(job), namespace_of(job)
    if secret is not None:
        try:
            ctx.kube.create(SECRET, secret)
        except AlreadyExists:
            logger.info("Secret %s/%s exists already (adopting)", namespace, name_of(secret))
    try:
        created, fresh = ctx.kube.create(JOB, job), True
    except AlreadyExists:
        created, fresh = ctx.kube.get(JOB, name, namespace), False
        logger.info("Job %s/%s exists already (adopting)", namespace, name)
    if secret is not None:
        owner = owner_reference("Job", "batch/v1", name, uid_of(created))
        ctx.kube.patch(
            SECRET, name_of(secret), namespace, {"metadata": {"ownerReferences": [owner]}}
        )
    return created, fresh
