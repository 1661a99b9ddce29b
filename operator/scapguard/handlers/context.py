"""Reaching the operator context from kopf's kwargs, and mapping outcomes to kopf terms."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

import kopf

from scapguard.k8s.api import Conflict, KubeError
from scapguard.reconcile.context import OperatorContext, Outcome

Logger = logging.Logger | logging.LoggerAdapter[Any]
MEMO_KEY: Final = "scapguard"
CONFLICT_RETRY_SECONDS: Final = 1.0
UNAVAILABLE_RETRY_SECONDS: Final = 5.0


def context(memo: Any) -> OperatorContext:
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        raise kopf.TemporaryError("the operator has not finished starting", delay=5)
    return ctx


def in_scope(namespace: str | None, memo: Any, **_: Any) -> bool:
    """Filter for every resource handler: only the watched namespaces."""
    ctx = memo.get(MEMO_KEY)
    return isinstance(ctx, OperatorContext) and ctx.settings.watches(namespace)


def deletion(type: str, namespace: str | None, memo: Any, **_: Any) -> bool:
    """Filter for the ``on.event`` handlers that only act on deletions: every other watch event
    (thousands a minute at scale) then costs no handler run."""
    return type == "DELETED" and in_scope(namespace=namespace, memo=memo)


def finish(outcome: Outcome) -> None:
    if outcome.permanent is not None:
        raise kopf.PermanentError(outcome.permanent)
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.message or "not done yet", delay=outcome.retry_after)


@contextlib.contextmanager
def retried() -> Iterator[None]:
    """What another try fixes is "not yet": kopf runs the handler again, soon after an
    optimistic-concurrency conflict, later when the API server is unreachable or failing (a
    restart: one log line, no traceback)."""
    try:
        yield
    except Conflict as exc:
        raise kopf.TemporaryError(
            f"changed concurrently: {exc}", delay=CONFLICT_RETRY_SECONDS
        ) from exc
    except KubeError as exc:
        if not exc.transient:
            raise
        raise kopf.TemporaryError(
            f"the API server failed: {exc}", delay=UNAVAILABLE_RETRY_SECONDS
        ) from exc
