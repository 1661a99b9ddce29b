"""The scan queue: fair admission under global and per-policy limits, starting attempts.

All state is in the API: a scan waits while its status says Queued/Retrying and no Job of
its current attempt exists; running = scanner Jobs not finished. Both are read from the
operator's cache (``scapguard.k8s.cache``). Admission runs in the admitter thread only
(``reconcile.background``; one active operator: kopf peering), under a lock the Job sweep
shares, so the limits hold. Fairness: scans are taken round-robin across policies, oldest
first within a policy.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scapguard.api import constants as c
from scapguard.api.errors import SpecError
from scapguard.api.imagescan import (
    QUEUED,
    RETRYING,
    AttemptRef,
    ScanProgress,
    Standing,
    attempt_started,
    parse_time,
    read_progress,
    standing,
)
from scapguard.api.naming import job_name
from scapguard.api.policy import ScanPolicySpec, parse_policy_spec
from scapguard.builders.job import (
    ScanJobInput,
    build_scan_job,
    build_scan_secret,
)
from scapguard.k8s.api import (
    IMAGESCAN,
    SCANPOLICY,
    SECRET,
    Conflict,
    NotFound,
    Obj,
    annotations_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.contentserve import content_plan
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.jobs import running_jobs
from scapguard.reconcile.launch import launch
from scapguard.reconcile.scans import parsed
from scapguard.reconcile.status import reread, write_change

logger = logging.getLogger(__name__)

POLICY_ANNOTATION = f"{c.PREFIX}/policy"
ATTEMPT_WRITE_TRIES = 5


@dataclass(frozen=True)
class Candidate:
    namespace: str
    name: str
    policy_key: str  # "<namespace>/<policy name>"
    queued_at: str


def in_queue(progress: ScanProgress) -> bool:
    """The current request waits for an attempt (first or retry)."""
    return (
        progress.request is not None
        and not progress.finished
        and progress.state in (QUEUED, RETRYING)
    )


def waiting(scan: Obj, now: dt.datetime) -> bool:
    """In the queue and due now: queue admission may start its next attempt."""
    progress = read_progress(scan.get("status"))
    if not in_queue(progress):
        return False
    if progress.state == QUEUED and progress.current_outcome() is not None:
        # A Job started before a crash and not yet recorded posted its result: the scan's
        # reconcile judges it (or schedules the retry); starting another attempt would rerun it.
        return False
    return progress.next_attempt_at is None or progress.next_attempt_at <= now


def fair_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Round-robin across policies; oldest first within each policy."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.policy_key].append(cand)
    ranked: list[tuple[int, str, str, Candidate]] = []
    for key, group in groups.items():
        group.sort(key=lambda x: (x.queued_at, x.namespace, x.name))
        ranked.extend((rank, cand.queued_at, key, cand) for rank, cand in enumerate(group))
    ranked.sort(key=lambda item: item[:3])
    return [item[3] for item in ranked]


def admit(
    ordered: Iterable[Candidate],
    running_by_policy: Mapping[str, int],
    global_limit: int,
    per_policy_limit: int,
) -> list[Candidate]:
    """Which candidates start now without exceeding either limit."""
    running = Counter(running_by_policy)
    total = sum(running.values())
    admitted: list[Candidate] = []
    for cand in ordered:
        if total >= global_limit:
            break
        if running[cand.policy_key] >= per_policy_limit:
            continue
        admitted.append(cand)
        running[cand.policy_key] += 1
        total += 1
    return admitted


def _queued_scans(ctx: OperatorContext, now: dt.datetime) -> dict[tuple[str, str], Obj]:
    """The scans due for an attempt, by their status (read from the operator's cache)."""
    found: dict[tuple[str, str], Obj] = {}
    for namespace in ctx.scan_namespaces():
        for scan in ctx.kube.list(IMAGESCAN, namespace):
            if waiting(scan, now):
                found[(namespace_of(scan) or "", name_of(scan))] = scan
    return found


def pump_queue(ctx: OperatorContext) -> int:
    """Start as many waiting scans as the limits allow; returns how many started."""
    with ctx.admission_lock:
        now = ctx.now()
        scans = _queued_scans(ctx, now)
        candidates: list[Candidate] = []
        for (namespace, name), scan in scans.items():
            spec = parsed(scan)
            if spec is None:
                continue
            status = scan.get("status") or {}
            candidates.append(
                Candidate(
                    namespace, name, f"{namespace}/{spec.policy}", str(status.get("queuedAt") or "")
                )
            )
        running = Counter(annotations_of(j).get(POLICY_ANNOTATION, "") for j in running_jobs(ctx))
        _export_queue_metrics(ctx, candidates, running, now)
        admitted = admit(
            fair_order(candidates),
            running,
            ctx.settings.max_concurrent_scans,
            ctx.settings.max_concurrent_scans_per_policy,
        )
        started = 0
        policies: dict[str, tuple[Obj, ScanPolicySpec] | None] = {}
        for cand in admitted:
            if cand.policy_key not in policies:
                policies[cand.policy_key] = _policy(ctx, cand.policy_key)
            policy = policies[cand.policy_key]
            if policy is None:
                continue
            if start_attempt(ctx, scans[(cand.namespace, cand.name)], *policy):
                started += 1
        return started


def _export_queue_metrics(
    ctx: OperatorContext, candidates: list[Candidate], running: Counter[str], now: dt.datetime
) -> None:
    depth = Counter(cand.policy_key for cand in candidates)
    for key in set(depth) | set(running):
        ctx.metrics.queue_depth.labels(key).set(depth.get(key, 0))
        ctx.metrics.running.labels(key).set(running.get(key, 0))
    oldest = min((parse_time(cand.queued_at) or now for cand in candidates), default=now)
    ctx.metrics.oldest_queued.set((now - oldest).total_seconds())


def _policy(ctx: OperatorContext, key: str) -> tuple[Obj, ScanPolicySpec] | None:
    namespace, name = key.split("/", 1)
    try:
        obj = ctx.kube.get(SCANPOLICY, name, namespace)
        return obj, parse_policy_spec(obj.get("spec"))
    except NotFound:
        logger.info("ScanPolicy %s is gone; its queued scans wait", key)
    except SpecError as exc:
        logger.info("ScanPolicy %s is invalid (%s); its queued scans wait", key, exc)
    return None


def registry_auth(ctx: OperatorContext, namespace: str, policy: ScanPolicySpec) -> str | None:
    """The policy's pull secrets merged into one containers-auth.json document."""
    auths: dict[str, Any] = {}
    for name in policy.scanner.image_pull_secrets:
        try:
            secret = ctx.kube.get(SECRET, name, namespace)
        except NotFound:
            logger.warning("pull secret %s/%s not found; pulling without it", namespace, name)
            continue
        data = secret.get("data") or {}
        if ".dockerconfigjson" in data:
            doc = json.loads(base64.b64decode(data[".dockerconfigjson"]))
            auths.update(doc.get("auths") or {})
        elif ".dockercfg" in data:
            auths.update(json.loads(base64.b64decode(data[".dockercfg"])))
    return json.dumps({"auths": auths}, sort_keys=True) if auths else None


def start_attempt(ctx: OperatorContext, scan: Obj, policy_obj: Obj, policy: ScanPolicySpec) -> bool:
    """Create the next attempt's Secret and Job, then record the attempt on the scan.

    Names are deterministic, so after a crash the same Job is found (409) and adopted: a scan
    attempt is never started twice.
    """
    progress = read_progress(scan.get("status"))
    spec = parsed(scan)
    if progress.request is None or spec is None:
        return False
    ref = AttemptRef(progress.request.number, progress.attempts + 1)
    name = job_name(uid_of(scan), ref.request, ref.attempt)
    namespace = namespace_of(scan) or ""
    key = f"{namespace}/{spec.policy}"
    if _launch_attempt(ctx, scan, spec.image, policy_obj, policy, ref, name, key):
        ctx.metrics.scan_attempts.labels(key).inc()
    now = ctx.now()
    if not _record_attempt(ctx, scan, ref, name):
        logger.info(
            "ImageScan %s/%s moved on while starting Job %s; its reconcile adopts it",
            namespace,
            name_of(scan),
            name,
        )
        return True
    requested = parse_time(progress.request.requested_at)
    if ref.attempt == 1 and requested is not None:
        ctx.metrics.queue_wait.observe(max(0.0, (now - requested).total_seconds()))
    logger.info(
        "started scanner Job %s for ImageScan %s/%s (attempt %s)",
        name,
        namespace,
        name_of(scan),
        ref.attempt,
    )
    return True


def _launch_attempt(
    ctx: OperatorContext,
    scan: Obj,
    image: str,
    policy_obj: Obj,
    policy: ScanPolicySpec,
    ref: AttemptRef,
    name: str,
    key: str,
) -> bool:
    """Create (or adopt) the attempt's Secret and Job, both marked with the policy ``key``;
    whether the Job is new."""
    settings = ctx.settings
    namespace = namespace_of(scan) or ""
    auth = registry_auth(ctx, namespace, policy)
    content = content_plan(ctx, namespace, policy)
    inp = ScanJobInput(
        job_name=name,
        namespace=settings.namespace,
        scan_namespace=namespace,
        scan_name=name_of(scan),
        scan_uid=uid_of(scan),
        policy_uid=uid_of(policy_obj),
        request=ref.request,
        attempt=ref.attempt,
        image=image,
        policy=policy,
        scanner_image=settings.scanner_image,
        results_url=settings.results_url,
        ttl_seconds=settings.job_ttl_seconds,
        ca_config_map=settings.results_ca_config_map,
        image_pull_secrets=settings.scanner_image_pull_secrets,
        service_account=settings.scanner_service_account,
        registry_auth=auth is not None,
        run_as_user=settings.scanner_run_as_user,
        user_namespace=ctx.scanner_user_namespace,
    )
    secret = build_scan_secret(
        inp,
        token=ctx.token_factory(),
        policy_json=json.dumps(dict(policy.raw), sort_keys=True),
        registry_auth_json=auth,
        content_plan_json=json.dumps(content, sort_keys=True),
    )
    job_body = build_scan_job(inp)
    for body in (secret, job_body):
        body["metadata"]["annotations"][POLICY_ANNOTATION] = key
    _, created = launch(ctx, job_body, secret)
    return created


def _record_attempt(ctx: OperatorContext, scan: Obj, ref: AttemptRef, job: str) -> bool:
    """Write the attempt's start on the scan; False if the scan moved on meanwhile.

    The admitter reads scans from the cache, and kopf writes its own annotations on a scan
    right after its handler asked for admission: a Conflict here is usually only that. The
    scan is read again and, while it still waits for this attempt, written again (else the
    Job would run unrecorded and its end go unnoticed by the Job watch).
    """
    for _ in range(ATTEMPT_WRITE_TRIES):
        progress = read_progress(scan.get("status"))
        if standing(progress, ref) is not Standing.UNRECORDED:
            return False
        try:
            write_change(
                ctx, scan, attempt_started(progress, ref.attempt, job, ctx.settings.namespace)
            )
            return True
        except Conflict:
            if not reread(ctx, scan):
                return False
    return False
