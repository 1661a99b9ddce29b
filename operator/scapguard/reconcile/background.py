"""The operator's background work: queue admission and ImageStream selection.

Handlers never start other scans nor create ImageScans themselves: they ask
(``OperatorContext.admit``/``select``) and a loop does it, one thread per lane: the admitter
(the only code that starts scans) and the selector (the only code that creates ImageScans
from ImageStreams). Requests coalesce (``Wakeups``), so 2,000 ImageStream events at start-up
cost one selection per policy, and a hundred scans finishing at once one admission pass; one
thread per lane means no two passes race to create the same scan or start the same attempt,
and admission never waits behind a selection that creates thousands of scans.

Only handlers ask, and kopf runs handlers only in the active replica (peering), so a standby
replica's loop stays idle.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from scapguard.api.errors import SpecError
from scapguard.api.policy import parse_policy_spec
from scapguard.k8s.api import SCANPOLICY, KubeError, NotFound
from scapguard.reconcile.context import ADMIT, SELECT, OperatorContext, Task
from scapguard.reconcile.queue import pump_queue
from scapguard.reconcile.scans import ensure_scans, policy_scans
from scapguard.reconcile.selection import select

logger = logging.getLogger(__name__)

#: How long a first request waits for others to join it (a burst of watch events).
SETTLE_SECONDS: Final = 0.25
#: A failed task is asked for again after this long (the policies' timers would too, later).
RETRY_SECONDS: Final = 5.0


def run_task(ctx: OperatorContext, task: Task) -> None:
    if task.kind == ADMIT:
        pump_queue(ctx)
    elif task.kind == SELECT:
        namespace, name = task.key.split("/", 1)
        sync_selection(ctx, namespace, name)
    else:
        raise ValueError(f"unknown background task {task}")


def sync_selection(ctx: OperatorContext, namespace: str, name: str) -> None:
    """Create the ImageScans a policy's current selection lacks; set every scan's tags."""
    try:
        policy = ctx.kube.get(SCANPOLICY, name, namespace)
        spec = parse_policy_spec(policy.get("spec"))
    except NotFound:
        return
    except SpecError:
        return  # the policy's reconcile reports it
    selection = select(ctx, namespace, spec, image_api=ctx.image_api, workloads=False)
    ensure_scans(ctx, policy, selection.current, policy_scans(ctx, namespace, name))


def in_order(tasks: list[Task]) -> list[Task]:
    """Selections first (they create scans that then queue), admission last."""
    return sorted(tasks, key=lambda t: (t.kind == ADMIT, t.key))


def run_pending(ctx: OperatorContext, tasks: list[Task]) -> list[Task]:
    """Run ``tasks`` (``in_order``); returns those that failed."""
    failed: list[Task] = []
    for task in in_order(tasks):
        try:
            run_task(ctx, task)
        except KubeError as exc:
            logger.warning("%s %s failed (%s); again in %.0fs", task.kind, task.key, exc,
                           RETRY_SECONDS)  # fmt: skip
            failed.append(task)
        except Exception:
            logger.exception("%s %s failed; again in %.0fs", task.kind, task.key, RETRY_SECONDS)
            failed.append(task)
    return failed


class BackgroundLoop:
    """A thread that runs what handlers ask for, of some ``kinds`` (its lane)."""

    def __init__(self, ctx: OperatorContext, kinds: frozenset[str]) -> None:
        self._ctx = ctx
        self._kinds = kinds
        self._stop = threading.Event()
        name = f"scapguard-{'-'.join(sorted(kinds))}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        retry: dict[Task, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            for task in [t for t, due in retry.items() if due <= now]:
                del retry[task]
                self._ctx.wakeups.request(task)
            wait = min([1.0, *(due - now for due in retry.values())])
            tasks = self._ctx.wakeups.take(max(0.05, wait), SETTLE_SECONDS, self._kinds)
            if tasks:
                for task in run_pending(self._ctx, tasks):
                    retry[task] = time.monotonic() + RETRY_SECONDS


def start_loops(ctx: OperatorContext) -> list[BackgroundLoop]:
    """The admitter and the selector, started."""
    loops = [BackgroundLoop(ctx, frozenset({ADMIT})), BackgroundLoop(ctx, frozenset({SELECT}))]
    for loop in loops:
        loop.start()
    return loops
