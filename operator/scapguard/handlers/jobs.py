"""Scanner Jobs, watched in the operator's namespace: one that ends without a result pokes its
scan at once, instead of waiting for the ImageScan progress timer (30 s).

A thread of its own (``scapguard.k8s.informer``) rather than ``@kopf.on.event``: kopf would
watch Jobs in every namespace it serves (all of them), which needs cluster-wide access to Jobs.
"""

from __future__ import annotations

import logging

from scapguard.builders.job import scanner_selector
from scapguard.k8s.api import JOB, Obj, name_of
from scapguard.k8s.informer import Informer, load_api_client
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.jobs import nudge_scan_of_ended_job

logger = logging.getLogger(__name__)


def watch_scanner_jobs(ctx: OperatorContext) -> Informer:
    """Start the watch; blocking (reads the kubeconfig): call it through ``asyncio.to_thread``."""

    def nudge(job: Obj) -> None:
        try:
            nudge_scan_of_ended_job(ctx, job)
        except Exception:  # the progress timer still sees the Job
            logger.exception("could not poke the ImageScan of scanner Job %s", name_of(job))

    def replace(jobs: list[Obj]) -> None:
        for job in jobs:
            nudge(job)

    def event(kind: str, job: Obj) -> None:
        if kind != "DELETED":
            nudge(job)

    def failed(reason: str) -> None:
        logger.error("watch of scanner Jobs stopped (%s); the progress timer remains", reason)

    informer = Informer(
        load_api_client(),
        JOB,
        namespace=ctx.settings.namespace,
        label_selector=scanner_selector(),
        on_replace=replace,
        on_event=event,
        on_failure=failed,
    )
    informer.start()
    return informer
