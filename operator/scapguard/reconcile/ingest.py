"""Accept a scanner's result post: per-scan bearer token, single use, bounded, checked.

The endpoint only records (result ConfigMap, ``status.lastAttempt``) and pokes the scan with an
annotation; the active operator's reconcile judges and enforces. So a standby replica serving
a post cannot race the active one's decisions.
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
from scapguard.api.imagescan import RUNNING, format_time, parse_imagescan_spec, read_progress
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
    uid_of,
)
from scapguard.reconcile.context import OperatorContext
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


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else -1


def ingest(ctx: OperatorContext, job: str, token: str, body: bytes) -> Ingested:
    settings = ctx.settings
    if parse_job_name(job) is None:
        return _reject(ctx, job, 404, "UnknownJob", "no such scan")
    if len(body) > settings.results_max_bytes:
        return _reject(ctx, job, 413, "TooLarge", "result larger than the limit")
    try:
        secret = ctx.kube.get(SECRET, job, settings.namespace)
    except NotFound:
        return _reject(ctx, job, 401, "Unauthorized", "unknown scan or bad credential")
    if not token_ok(secret, token):
        return _reject(ctx, job, 401, "Unauthorized", "unknown scan or bad credential")
    notes = annotations_of(secret)
    if notes.get(c.CONSUMED_ANNOTATION) == "true":
        return _reject(ctx, job, 409, "Replayed", "this scan credential was used already")
    request, attempt = _int(notes.get(c.REQUEST_ANNOTATION)), _int(notes.get(c.ATTEMPT_ANNOTATION))
    namespace = notes.get(c.SCAN_NAMESPACE_ANNOTATION, "")
    name = notes.get(c.SCAN_NAME_ANNOTATION, "")
    try:
        scan = ctx.kube.get(IMAGESCAN, name, namespace)
    except NotFound:
        return _reject(ctx, job, 410, "ScanGone", f"ImageScan {namespace}/{name} is gone")
    if uid_of(scan) != labels_of(secret).get(c.SCAN_UID_LABEL):
        return _reject(ctx, job, 410, "ScanGone", f"ImageScan {namespace}/{name} was replaced")
    progress = read_progress(scan.get("status"))
    current = progress.request
    if current is None or current.number != request or progress.finished:
        return _reject(ctx, job, 409, "Stale", "the scan is not waiting for this result")
    if attempt not in (progress.attempts, progress.attempts + 1):
        return _reject(ctx, job, 409, "Stale", "not the scan's current attempt")
    last = progress.last_attempt
    if last is not None and (last.request, last.attempt) == (request, attempt):
        return _reject(ctx, job, 409, "Replayed", "this attempt has a result already")
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
    status: dict[str, Any] = {"attempts": max(progress.attempts, attempt)}
    if attempt == progress.attempts + 1:
        # The attempt's start was never recorded (the operator crashed or lost a write race
        # right after creating the Job): record it as start_attempt would have, or the queue
        # would still see the scan waiting and start attempt + 1 next to this result.
        status.update({"state": RUNNING, "job": job, "nextAttemptAt": None})
    if result.outcome == "Completed":
        status["report"] = _store(ctx, scan, result, report)
    error = result.error
    status["lastAttempt"] = {
        "request": request,
        "attempt": attempt,
        "outcome": result.outcome,
        "reason": error.reason if error else None,
        "message": error.message if error else None,
        "finishedAt": format_time(result.finished_at),
    }
    ctx.kube.patch_status(IMAGESCAN, name, namespace, {"status": status})
    ctx.kube.patch(
        IMAGESCAN,
        name,
        namespace,
        {"metadata": {"annotations": {c.RESULT_RECEIVED_ANNOTATION: f"{request}.{attempt}"}}},
    )
    logger.info(
        "accepted %s result for ImageScan %s/%s (request %s, attempt %s)",
        result.outcome,
        namespace,
        name,
        request,
        attempt,
    )
    return Ingested(200, "Accepted")


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
) -> dict[str, Any]:
    """Put the full result and the report in the scan's ConfigMap; the report only if it fits."""
    result_gz = gzip.compress(result.to_json().encode(), mtime=0)
    report_gz = gzip.compress(report, mtime=0) if report is not None else None
    info: dict[str, Any] = {
        "configMap": result_config_map_name(str(meta(scan).get("name"))),
        "resultKey": c.RESULT_KEY,
        # The ConfigMap is editable by the namespace's users; this status is not. Re-evaluation
        # trusts the stored result only when it still has this digest.
        "resultSha256": hashlib.sha256(result_gz).hexdigest(),
        "reportKey": c.REPORT_KEY,
        "available": report_gz is not None,
        "message": "" if report_gz is not None else "the scanner sent no report",
    }
    if report_gz is not None and len(result_gz) + len(report_gz) > MAX_STORED:
        report_gz = None
        info.update(available=False, message="the report is too large to keep in a ConfigMap")
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
    return info
