"""Scanner Jobs: what state one is in, deleting them, and sweeping orphans."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.conditions import Reason
from scapguard.api.imagescan import (
    WAKE_JOB_ENDED,
    Standing,
    Wake,
    attempt_of,
    parse_time,
    parse_wake,
    read_progress,
    standing,
)
from scapguard.builders.job import CONTAINER_NAME, scanner_selector
from scapguard.k8s.api import (
    IMAGESCAN,
    JOB,
    POD,
    SECRET,
    NotFound,
    Obj,
    annotations_of,
    labels_of,
    meta,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.status import wake

logger = logging.getLogger(__name__)

ORPHAN_SECRET_AGE: Final = dt.timedelta(minutes=5)
#: How much of the scanner container's termination message (its log's tail) a reason quotes.
_TERMINATION_TAIL: Final = 500


#: Why a scanner Job whose attempt stands so serves its scan no more (the sweep deletes it).
_NOT_SERVING: Final = {
    Standing.OTHER_REQUEST: "it belongs to an earlier request",
    Standing.FINISHED: "its scan has a result",
    Standing.OTHER_ATTEMPT: "a later attempt superseded it",
    # Only after a crash or a lost write: the queue records a start under the lock the sweep
    # holds. The scan still waits, so the queue starts that attempt again (under this name).
    Standing.UNRECORDED: "its start was never recorded",
}


@dataclass(frozen=True)
class JobState:
    active: bool
    reason: str = ""
    message: str = ""


def _condition(job: Obj, type_: str) -> dict[str, str] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return {k: str(v) for k, v in cond.items()}
    return None


def job_finished(job: Obj) -> bool:
    return any(
        _condition(job, t) for t in ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet")
    )


def _scanner_container(pods: Sequence[Obj]) -> tuple[dict[str, Any], str] | None:
    """The scanner container's ``terminated`` state in one of the Job's pods, and its memory
    limit ("" when unset)."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if status.get("name") != CONTAINER_NAME or not terminated:
                continue
            limit = ""
            for container in (pod.get("spec") or {}).get("containers") or []:
                if container.get("name") == CONTAINER_NAME:
                    limits = (container.get("resources") or {}).get("limits") or {}
                    limit = str(limits.get("memory") or "")
            return dict(terminated), limit
    return None


def _container_end(pods: Sequence[Obj]) -> str | None:
    """How the scanner container ended, in words, when its pod still tells (the Job's own
    Failed condition only says "reached the specified backoff limit")."""
    found = _scanner_container(pods)
    if found is None:
        return None
    terminated, limit = found
    reason = str(terminated.get("reason") or "")
    code = terminated.get("exitCode")
    if reason == "OOMKilled":
        within = f" of {limit}" if limit else ""
        return (
            f"the scanner container was OOMKilled (exit code {code}): it needs more than the "
            f"memory limit{within} (spec.scanner.resources.limits.memory)"
        )
    text = (
        f"the scanner container ended without a result ({reason or 'no reason'}, exit code {code})"
    )
    tail = str(terminated.get("message") or "").strip()
    return f"{text}: {tail[-_TERMINATION_TAIL:]}" if tail else text


def job_state(job: Obj | None, pods: Sequence[Obj] = ()) -> JobState:
    """What a scanner Job's end means for its attempt; ``pods`` (the Job's, when still there)
    name how the container ended."""
    if job is None:
        return JobState(False, Reason.JOB_LOST, "the scanner Job disappeared before a result")
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed is not None:
        if failed.get("reason") == "DeadlineExceeded":
            return JobState(False, Reason.TIMEOUT, "the scan exceeded the policy's timeoutSeconds")
        return JobState(
            False,
            Reason.SCANNER_FAILED,
            _container_end(pods)
            or failed.get("message")
            or "the scanner pod failed without posting a result",
        )
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return JobState(False, Reason.SCANNER_FAILED, "the scanner exited without a result")
    return JobState(True)


def observe_job(ctx: OperatorContext, name: str) -> JobState:
    namespace = ctx.settings.namespace
    try:
        job = ctx.kube.get(JOB, name, namespace)
    except NotFound:
        return job_state(None)
    state = job_state(job)
    if state.active or state.reason != Reason.SCANNER_FAILED:
        return state
    # Only the pod of a Job that failed tells how (OOMKilled, an exit code, its log's tail).
    return job_state(job, ctx.kube.list(POD, namespace, label_selector=f"job-name={name}"))


def delete_job(ctx: OperatorContext, name: str) -> None:
    """Delete a scanner Job; its Secret (owned by it) and pod go with it."""
    try:
        ctx.kube.delete(JOB, name, ctx.settings.namespace)
    except NotFound:
        return
    try:
        ctx.kube.delete(SECRET, name, ctx.settings.namespace)
    except NotFound:
        return


def running_jobs(ctx: OperatorContext) -> list[Obj]:
    jobs = ctx.kube.list(JOB, ctx.settings.namespace, label_selector=scanner_selector())
    return [j for j in jobs if not job_finished(j) and not meta(j).get("deletionTimestamp")]


def _serving(ctx: OperatorContext, job: Obj) -> tuple[Obj | None, str]:
    """The ImageScan whose current attempt ``job`` runs, or None and why it serves none."""
    notes = annotations_of(job)
    namespace = notes.get(c.SCAN_NAMESPACE_ANNOTATION)
    name = notes.get(c.SCAN_NAME_ANNOTATION)
    if not namespace or not name:
        return None, "it names no ImageScan"
    try:
        scan = ctx.kube.get(IMAGESCAN, name, namespace)
    except NotFound:
        return None, f"ImageScan {namespace}/{name} is gone"
    if uid_of(scan) != labels_of(job).get(c.SCAN_UID_LABEL):
        return None, f"ImageScan {namespace}/{name} was replaced"
    ref = attempt_of(notes)
    if ref is None:
        return None, "it names no attempt"
    where = standing(read_progress(scan.get("status")), ref)
    if where is not Standing.CURRENT:
        return None, _NOT_SERVING[where]
    return scan, ""  # the current attempt: the scan's reconcile records how it ended


def _stale(ctx: OperatorContext, job: Obj) -> str | None:
    """Why a scanner Job is no longer wanted, or None if it still serves its scan."""
    scan, why = _serving(ctx, job)
    return None if scan is not None else why


def nudge_scan_of_ended_job(ctx: OperatorContext, job: Obj) -> bool:
    """A scanner Job ended without its result: wake the scan so the attempt's end is recorded
    now (``scapguard.io/wake: job-ended:<job>``).

    Otherwise only the policy's 30 s timer notices a scanner that was OOM-killed, timed out or
    crashed before posting. Like the results endpoint, this only wakes the scan: the active
    replica's reconcile reads the Job and decides. Returns whether it woke the scan.
    """
    if not job_finished(job) or meta(job).get("deletionTimestamp"):
        return False
    scan, _ = _serving(ctx, job)
    if scan is None:
        return False
    if read_progress(scan.get("status")).current_outcome() is not None:
        return False  # the result (or a recorded end) arrived: nothing to hurry
    ended = Wake(WAKE_JOB_ENDED, name_of(job))
    if parse_wake(annotations_of(scan).get(c.WAKE_ANNOTATION)) == ended:
        return False  # woken for this Job's end already
    if not wake(ctx, scan, WAKE_JOB_ENDED, name_of(job)):
        return False
    logger.info(
        "scanner Job %s ended without a result; ImageScan %s/%s reconciles now",
        name_of(job),
        namespace_of(scan),
        name_of(scan),
    )
    return True


def sweep(ctx: OperatorContext) -> int:
    """Delete scanner Jobs whose scan is gone or moved on, and Secrets no Job ever owned.

    Holds the admission lock: a Job created by the queue is recorded on its scan before a
    sweep can see it.
    """
    with ctx.admission_lock:
        return _sweep(ctx)


def _sweep(ctx: OperatorContext) -> int:
    deleted = 0
    for job in ctx.kube.list(JOB, ctx.settings.namespace, label_selector=scanner_selector()):
        reason = _stale(ctx, job)
        if reason is not None:
            logger.info("deleting scanner Job %s: %s", name_of(job), reason)
            delete_job(ctx, name_of(job))
            deleted += 1
    now = ctx.now()
    for secret in ctx.kube.list(SECRET, ctx.settings.namespace, label_selector=scanner_selector()):
        created = parse_time(meta(secret).get("creationTimestamp"))
        if meta(secret).get("ownerReferences") or created is None:
            continue
        if now - created > ORPHAN_SECRET_AGE:
            logger.info("deleting scanner Secret %s that no Job owns", name_of(secret))
            try:
                ctx.kube.delete(SECRET, name_of(secret), ctx.settings.namespace)
            except NotFound:
                continue
            deleted += 1
    return deleted
