"""ImageScan handlers: reconcile on change, watch progress on a timer, clean up.

Finished scans have no timer of their own (thousands of them would cost a timer task each):
their policy's timer repairs their Images (``reconcile.scanpolicy``)."""

from __future__ import annotations

from typing import Any, Final

import kopf

from scapguard.api.constants import GROUP, IMAGESCAN_PLURAL, VERSION
from scapguard.handlers.context import (
    Logger,
    context,
    deletion,
    finish,
    in_scope,
    retried,
)
from scapguard.reconcile.cleanup import scan_deleted
from scapguard.reconcile.imagescan import in_progress, reconcile_imagescan

PROGRESS_INTERVAL: Final = 30.0  # scans under way: the fallback for the Job watch (handlers.cache)


@kopf.on.resume(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
@kopf.on.create(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
@kopf.on.update(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
def reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retried():
        finish(reconcile_imagescan(context(memo), dict(body)))


def under_way(body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> bool:
    """Filter of the progress timer: kopf stops a scan's timer when it finishes and starts it
    again when a rescan is asked for, so thousands of finished scans cost no timer at all."""
    return in_scope(namespace=namespace, memo=memo) and in_progress(dict(body))


@kopf.timer(
    GROUP,
    VERSION,
    IMAGESCAN_PLURAL,
    interval=PROGRESS_INTERVAL,
    initial_delay=PROGRESS_INTERVAL,
    when=under_way,
)
def progress(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retried():
        reconcile_imagescan(context(memo), dict(body))


@kopf.on.event(GROUP, VERSION, IMAGESCAN_PLURAL, when=deletion)
def deleted(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    with retried():  # a failure leaves Jobs to the sweep and denies to the policies' repair
        scan_deleted(context(memo), dict(body))
    logger.info("ImageScan deleted: its Jobs removed, the Image's deny re-judged")
