"""ScanPolicy handlers: reconcile on change and on a timer (schedule, GC, drift)."""

from __future__ import annotations

from typing import Any, Final

import kopf

from scapguard.api.constants import GROUP, SCANPOLICY_PLURAL, VERSION
from scapguard.handlers.context import (
    Logger,
    context,
    deletion,
    finish,
    in_scope,
    retried,
)
from scapguard.reconcile.cleanup import policy_deleted
from scapguard.reconcile.enforcement import repair_denies
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy

TIMER_INTERVAL: Final = 30.0
# Orphaned denies (an ImageScan deletion the operator missed). Any policy's timer will do: the
# repair itself runs at most once per interval per process, only in the active replica.
DENY_REPAIR_INTERVAL: Final = 300.0


@kopf.on.resume(GROUP, VERSION, SCANPOLICY_PLURAL, when=in_scope, backoff=10)
@kopf.on.create(GROUP, VERSION, SCANPOLICY_PLURAL, when=in_scope, backoff=10)
@kopf.on.update(GROUP, VERSION, SCANPOLICY_PLURAL, when=in_scope, backoff=10)
def reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retried():
        finish(reconcile_scanpolicy(context(memo), dict(body)))


@kopf.timer(GROUP, VERSION, SCANPOLICY_PLURAL, interval=TIMER_INTERVAL, when=in_scope)
def repair(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retried():
        reconcile_scanpolicy(context(memo), dict(body))


@kopf.timer(
    GROUP,
    VERSION,
    SCANPOLICY_PLURAL,
    interval=DENY_REPAIR_INTERVAL,
    initial_delay=TIMER_INTERVAL,
    when=in_scope,
)
def repair_orphaned_denies(memo: Any, logger: Logger, **_: Any) -> None:
    with retried():
        lifted = repair_denies(context(memo))
    if lifted:
        logger.info("lifted %s deny-execution annotations no ImageScan wants", lifted)


@kopf.on.event(GROUP, VERSION, SCANPOLICY_PLURAL, when=deletion)
def deleted(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    with retried():
        left = policy_deleted(context(memo), dict(body))
    logger.info("ScanPolicy deleted: %s of its ImageScans reconciled", left)
