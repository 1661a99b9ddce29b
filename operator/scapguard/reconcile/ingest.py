"""Accept a scanner's result post: per-scan bearer token, single use, bounded, checked.

The endpoint only records (result ConfigMap, ``status.lastAttempt``) and wakes the scan
(``scapguard.io/wake: result-received:<job>``); the active operator's reconcile judges and
enforces. So a standby replica serving a post cannot race the active one's decisions.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.imagescan import (
    WAKE_RESULT_RECEIVED,
    AttemptOutcome,
    AttemptRef,
    ScanProgress,
    Standing,
    StoredResult,
    attempt_of,
    format_time,
    parse_imagescan_spec,
    read_progress,
    result_received,
    standing,
)
from scapguard.api.naming import parse_job_name, result_config_map_name
from scapguard.builders.imagescan import build_result_config_map
from scapguard.k8s.api import (
    CONFIGMAP,
    IMAGESCAN,
    SECRET,
    AlreadyExists,
    Conflict,
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
from scapguard.reconcile.status import wake, write_change
from scapguard.results.model import ScanResult, ScanResultError, decode_handoff

logger = logging.getLogger(__name__)

CONSUME_TRIES = 5

MAX_STORED: Final = 1024 * 1024 - 64 * 1024  # a ConfigMap holds at most 1 MiB


@dataclass(frozen=True)
class Ingested:
    status: int  # the HTTP status to answer
    reason: str  # CamelCase, also the metric label
    message: str = ""


def _reject(ctx: OperatorContext, job: str, status: int, reason: str, message: str) -> Ingested:
    ctx.metrics.results_rejected.labels(reason).inc()
    logger.warning("refused result post for %s: %s (%s)", job, reason, message)
    return Ingested(status, reason, message)


def token_ok(secret: Obj, presented: str) -> bool:
    stored = (secret.get("data") or {}).get(c.TOKEN_KEY)
    if not isinstance(stored, str):
        return False
    expected = hashlib.sha256(base64.b64decode(stored)).digest()
    return hmac.compare_digest(expected, hashlib.sha256(presented.encode()).digest())


def ingest(ctx: OperatorContext, job: str, token: str, body: bytes) -> Ingested:
    """Check a scanner's result post for Job ``job``, spend its credential, store the result,
    record the attempt's outcome and wake the scan's reconcile."""
    if parse_job_name(job) is None:
        return _reject(ctx, job, 404, "UnknownJob", "no such scan")
    if len(body) > ctx.settings.results_max_bytes:
        return _reject(ctx, job, 413, "TooLarge", "result larger than the limit")
    secret = _credential(ctx, job, token)
    if isinstance(secret, Ingested):
        return secret
    waiting = _waiting_scan(ctx, job, secret)
    if isinstance(waiting, Ingested):
        return waiting
    scan, progress, ref = waiting
    try:
        result, report = decode_handoff(json.loads(body))
    except (ValueError, ScanResultError) as exc:
        return _reject(ctx, job, 422, "InvalidResult", str(exc)[:500])
    digest = parse_imagescan_spec(scan.get("spec")).digest
    if result.image.digest != digest:
        return _reject(
            ctx,
            job,
            422,
            "DigestMismatch",
            f"result is for {result.image.digest}, the scan is for {digest}",
        )
    if not _consume(ctx, job, secret):
        return _reject(ctx, job, 409, "Replayed", "this scan credential was used concurrently")
    _record(ctx, scan, progress, ref, job, result, report)
    return Ingested(200, "Accepted")


def _credential(ctx: OperatorContext, job: str, token: str) -> Obj | Ingested:
    """The Job's Secret if ``token`` is its unused credential."""
    try:
        secret = ctx.kube.get(SECRET, job, ctx.settings.namespace)
    except NotFound:
        return _reject(ctx, job, 401, "Unauthorized", "unknown scan or bad credential")
    if not token_ok(secret, token):
        return _reject(ctx, job, 401, "Unauthorized", "unknown scan or bad credential")
    if annotations_of(secret).get(c.CONSUMED_ANNOTATION) == "true":
        return _reject(ctx, job, 409, "Replayed", "this scan credential was used already")
    return secret


def _waiting_scan(
    ctx: OperatorContext, job: str, secret: Obj
) -> tuple[Obj, ScanProgress, AttemptRef] | Ingested:
    """The ImageScan the Secret names, if it waits for the result of the Secret's attempt."""
    notes = annotations_of(secret)
    namespace = notes.get(c.SCAN_NAMESPACE_ANNOTATION, "")
    name = notes.get(c.SCAN_NAME_ANNOTATION, "")
    try:
        scan = ctx.kube.get(IMAGESCAN, name, namespace)
    except NotFound:
        return _reject(ctx, job, 410, "ScanGone", f"ImageScan {namespace}/{name} is gone")
    if uid_of(scan) != labels_of(secret).get(c.SCAN_UID_LABEL):
        return _reject(ctx, job, 410, "ScanGone", f"ImageScan {namespace}/{name} was replaced")
    progress = read_progress(scan.get("status"))
    ref = attempt_of(notes)
    where = None if ref is None else standing(progress, ref)
    if ref is None or where in (Standing.OTHER_REQUEST, Standing.FINISHED):
        return _reject(ctx, job, 409, "Stale", "the scan is not waiting for this result")
    if where is Standing.OTHER_ATTEMPT:
        return _reject(ctx, job, 409, "Stale", "not the scan's current attempt")
    last = progress.last_attempt
    if last is not None and last.ref == ref:
        return _reject(ctx, job, 409, "Replayed", "this attempt has a result already")
    return scan, progress, ref


def _record(
    ctx: OperatorContext,
    scan: Obj,
    progress: ScanProgress,
    ref: AttemptRef,
    job: str,
    result: ScanResult,
    report: bytes | None,
) -> None:
    """Store the result, record the attempt's outcome on the scan and wake its reconcile."""
    stored = _store(ctx, scan, result, report) if result.outcome == "Completed" else None
    error = result.error
    outcome = AttemptOutcome(
        ref.request,
        ref.attempt,
        result.outcome,
        error.reason if error else None,
        error.message if error else None,
        format_time(result.finished_at),
    )
    write_change(ctx, scan, result_received(progress, outcome, job, stored), guarded=False)
    wake(ctx, scan, WAKE_RESULT_RECEIVED, job)
    logger.info(
        "accepted %s result for ImageScan %s/%s (request %s, attempt %s)",
        result.outcome,
        namespace_of(scan),
        name_of(scan),
        ref.request,
        ref.attempt,
    )


def _consume(ctx: OperatorContext, job: str, secret: Obj) -> bool:
    """Mark the scan's credential used, once (guarded by the Secret's resourceVersion).

    Another change to the Secret is not a use: the queue gives a new Secret its owner
    reference right after creating the Job, and a fast scanner can post in between. Such a
    conflict is read again and retried; only a Secret marked consumed refuses."""
    namespace = ctx.settings.namespace
    for _ in range(CONSUME_TRIES):
        if annotations_of(secret).get(c.CONSUMED_ANNOTATION) == "true":
            return False
        patch = {
            "metadata": {
                "resourceVersion": meta(secret).get("resourceVersion"),
                "annotations": {c.CONSUMED_ANNOTATION: "true"},
            }
        }
        try:
            ctx.kube.patch(SECRET, job, namespace, patch)
            return True
        except Conflict:
            try:
                secret = ctx.kube.get(SECRET, job, namespace)
            except NotFound:
                return False
    return False


def _store(
    ctx: OperatorContext, scan: Obj, result: ScanResult, report: bytes | None
) -> StoredResult:
    """Put the full result and the report in the scan's ConfigMap; the report only if it fits."""
    result_gz = gzip.compress(result.to_json().encode(), mtime=0)
    report_gz = gzip.compress(report, mtime=0) if report is not None else None
    message = "" if report_gz is not None else "the scanner sent no report"
    if report_gz is not None and len(result_gz) + len(report_gz) > MAX_STORED:
        report_gz, message = None, "the report is too large to keep in a ConfigMap"
    body = build_result_config_map(
        scan_name=str(meta(scan).get("name")),
        namespace=str(meta(scan).get("namespace")),
        scan_uid=uid_of(scan),
        result_gz=result_gz,
        report_gz=report_gz,
    )
    try:
        ctx.kube.create(CONFIGMAP, body)
    except AlreadyExists:
        binary: dict[str, Any] = dict(body["binaryData"])
        binary.setdefault(c.REPORT_KEY, None)
        ctx.kube.patch(
            CONFIGMAP,
            body["metadata"]["name"],
            body["metadata"]["namespace"],
            {"binaryData": binary},
        )
    return StoredResult(
        config_map=result_config_map_name(str(meta(scan).get("name"))),
        # The ConfigMap is editable by the namespace's users; this status is not. Re-evaluation
        # trusts the stored result only when it still has this digest.
        result_sha256=hashlib.sha256(result_gz).hexdigest(),
        report_kept=report_gz is not None,
        message=message,
    )
