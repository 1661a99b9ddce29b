"""ImageScan handlers: reconcile on change, clean up on deletion.

"On change" includes two annotations: ``scapguard.io/rescan`` (a new request, from a person or
the policy) and ``scapguard.io/wake`` (``result-received:<job>`` from the results endpoint,
``job-ended:<job>`` from the Job watch; docs/operator.md, "Wake-up annotation"), the operator's
one internal wake-up. The reconcile never asks why it runs: it reads the status and decides.

ImageScans have no kopf timer: kopf keeps the whole last body of every object with a timer in
memory (about 70 KiB a scan at scale), and thousands of timer tasks cost CPU while idle. Their
policy's timer looks at the scans under way every 30 s (the fallback for the Job watch) and
repairs the Images of finished ones every 10 minutes (``reconcile.scanpolicy``)."""

from __future__ import annotations

from typing import Any

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
from scapguard.reconcile.imagescan import reconcile_imagescan


@kopf.on.resume(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
@kopf.on.create(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
@kopf.on.update(GROUP, VERSION, IMAGESCAN_PLURAL, when=in_scope, backoff=10)
def reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retried():
        finish(reconcile_imagescan(context(memo), dict(body)))


@kopf.on.event(GROUP, VERSION, IMAGESCAN_PLURAL, when=deletion)
def deleted(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    with retried():  # a failure leaves Jobs to the sweep and denies to the policies' repair
        scan_deleted(context(memo), dict(body))
    logger.info("ImageScan deleted: its Jobs removed, the Image's deny re-judged")
