"""Policy content for scanner pods, from the operator's content cache.

When the operator starts a scan attempt it reads the ConfigMap content the policy names, stores
it in the cache by sha256 and records those digests in the per-scan Secret (``content.json``):
the scanner gets exactly the bytes the operator saw, whatever size (the Secret no longer
carries content). URL, OCI and catalogue content is fetched by the operator on a scanner's
first request and kept; later scans of any image are served from disk.

``GET /v1/content/<job>/<what>`` (``what``: ``feed``, ``datastream``, ``tailoring`` or
``catalogue/<key>``) with the scan's bearer token. A scan may fetch only what its own policy
snapshot (in its Secret) names, and catalogue feeds only when the policy names no feed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.errors import SpecError
from scapguard.api.naming import parse_job_name
from scapguard.api.policy import ConfigMapRef, ContentSource, ScanPolicySpec, parse_policy_spec
from scapguard.contentcache import catalogue
from scapguard.contentcache.cache import Entry
from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.oci import auths_from_config
from scapguard.k8s.api import SECRET, NotFound, Obj, annotations_of
from scapguard.reconcile.content import Content, read_content, read_one
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.ingest import token_ok

logger = logging.getLogger(__name__)

KINDS: Final = ("feed", "datastream", "tailoring")


@dataclass(frozen=True)
class Served:
    """The answer to a content request: a file to send, or an error (status, reason)."""

    status: int
    reason: str
    message: str = ""
    entry: Entry | None = None


def _kind_of(policy: ScanPolicySpec, ref: ConfigMapRef) -> list[str]:
    named = {
        "feed": policy.vulnerabilities.feed.config_map if policy.vulnerabilities.feed else None,
        "datastream": (
            policy.compliance.datastream.config_map if policy.compliance.datastream else None
        ),
        "tailoring": policy.compliance.tailoring,
    }
    return [kind for kind, named_ref in named.items() if named_ref == ref]


def content_plan(ctx: OperatorContext, namespace: str, policy: ScanPolicySpec) -> dict[str, Any]:
    """Read the policy's ConfigMap content into the cache; its record for the scan's Secret.

    A missing ConfigMap or key is recorded as such: the scanner's request for it is answered
    with the problem, and the scan ends ``ContentUnavailable`` naming it (retries, onError).
    """
    plan: dict[str, Any] = {}
    for item in read_content(ctx, namespace, policy):
        entry = _plan_entry(ctx, namespace, item)
        for kind in _kind_of(policy, item.ref):
            plan[kind] = entry
    return plan


def _plan_entry(ctx: OperatorContext, namespace: str, item: Content) -> dict[str, Any]:
    origin = f"{namespace}/{item.ref.name}/{item.ref.key}"
    if item.data is None:
        logger.warning("%s (named by the policy)", item.problem)
        return {"origin": origin, "missing": item.problem}
    sha = ctx.content.put_bytes(item.data, origin=f"ConfigMap {origin}")
    return {"origin": origin, "sha256": sha}


def serve(ctx: OperatorContext, job: str, token: str, what: str) -> Served:
    """Authenticate a scanner's content request and find (or fetch) what it asks for."""
    if parse_job_name(job) is None:
        return _refuse(ctx, 404, "UnknownJob", "no such scan")
    try:
        secret = ctx.kube.get(SECRET, job, ctx.settings.namespace)
    except NotFound:
        return _refuse(ctx, 401, "Unauthorized", "unknown scan or bad credential")
    if not token_ok(secret, token):
        return _refuse(ctx, 401, "Unauthorized", "unknown scan or bad credential")
    if annotations_of(secret).get(c.CONSUMED_ANNOTATION) == "true":
        return _refuse(ctx, 410, "Finished", "this scan has posted its result")
    try:
        policy = parse_policy_spec(_secret_json(secret, c.POLICY_KEY))
        plan = _secret_json(secret, c.CONTENT_KEY)
    except (SpecError, ValueError) as exc:
        return _refuse(ctx, 500, "BadSecret", f"scan Secret {job}: {exc}")
    namespace = annotations_of(secret).get(c.SCAN_NAMESPACE_ANNOTATION, "")
    try:
        return _find(ctx, secret, policy, plan, namespace, what)
    except ContentFetchError as exc:
        reason = "ContentInvalid" if exc.invalid else "ContentUnavailable"
        ctx.metrics.content_fetches.labels(_source_label(what), "error").inc()
        return _refuse(ctx, 422 if exc.invalid else 502, reason, str(exc))


def _find(
    ctx: OperatorContext,
    secret: Obj,
    policy: ScanPolicySpec,
    plan: Mapping[str, Any],
    namespace: str,
    what: str,
) -> Served:
    if what.startswith("catalogue/"):
        key = what.removeprefix("catalogue/")
        if policy.vulnerabilities.feed is not None:
            return _refuse(ctx, 403, "NotNamed", "the scan's policy names its own feed")
        if not catalogue.KEY.fullmatch(key):
            return _refuse(ctx, 404, "NotNamed", f"{key!r} is not a catalogue feed key")
        return _ok(ctx, ctx.content.catalogue(key))
    if what not in KINDS:
        return _refuse(ctx, 404, "NotNamed", f"{what!r} is not feed, datastream or tailoring")
    source: ContentSource | None = {
        "feed": policy.vulnerabilities.feed,
        "datastream": policy.compliance.datastream,
        "tailoring": None,
    }[what]
    if source is None and what == "tailoring" and policy.compliance.tailoring is not None:
        source = ContentSource(config_map=policy.compliance.tailoring)
    if source is None:
        return _refuse(ctx, 404, "NotNamed", f"the scan's policy names no {what}")
    if source.config_map is not None:
        return _config_map(ctx, plan.get(what), what)
    if source.oci is not None:
        auths, insecure = _registry_access(secret, policy)
        entry = ctx.content.oci(
            source.oci.reference, source.oci.file, auths=auths, insecure=insecure
        )
        return _ok(ctx, entry)
    if source.url is not None and source.sha256 is not None:
        return _ok(ctx, ctx.content.url(source.url, source.sha256))
    return _refuse(ctx, 404, "NotNamed", f"the scan's policy names no {what} source")


def _config_map(ctx: OperatorContext, recorded: object, what: str) -> Served:
    if not isinstance(recorded, Mapping):
        return _refuse(ctx, 404, "ContentUnavailable", f"no {what} was read for this scan")
    origin = str(recorded.get("origin", ""))
    if recorded.get("missing"):
        return _refuse(ctx, 404, "ContentUnavailable", str(recorded["missing"]))
    sha = str(recorded.get("sha256", ""))
    path = ctx.content.blob(sha) or _reread(ctx, origin, sha)
    if path is None:
        return _refuse(
            ctx,
            409,
            "ContentUnavailable",
            f"ConfigMap {origin} no longer holds the bytes read when the scan started "
            f"(sha256 {sha}); the next attempt reads it again",
        )
    return _ok(ctx, Entry(path, sha, "configMap", origin))


def _reread(ctx: OperatorContext, origin: str, sha: str) -> Path | None:
    """The recorded ConfigMap bytes, read again: the scanner's request reaches any replica
    behind the results Service, not only the one that started the scan (nor is a cache
    eviction final). Only the very bytes recorded are served."""
    parts = origin.split("/")
    if len(parts) != 3:
        return None
    namespace, name, key = parts
    data = read_one(ctx, namespace, ConfigMapRef(name, key)).data
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        return None
    return ctx.content.blob(ctx.content.put_bytes(data, origin=f"ConfigMap {origin}"))


def _ok(ctx: OperatorContext, entry: Entry) -> Served:
    ctx.metrics.content_fetches.labels(entry.source, "served").inc()
    return Served(200, "OK", entry=entry)


def _refuse(ctx: OperatorContext, status: int, reason: str, message: str) -> Served:
    logger.warning("content request refused: %s (%s)", reason, message)
    return Served(status, reason, message)


def _source_label(what: str) -> str:
    return "catalogue" if what.startswith("catalogue/") else "policy"


def _secret_json(secret: Obj, key: str) -> Any:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return {}
    try:
        return json.loads(base64.b64decode(raw))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"key {key} is not JSON: {exc}") from None


def _registry_access(
    secret: Obj, policy: ScanPolicySpec
) -> tuple[dict[str, tuple[str, str]], frozenset[str]]:
    """Registry credentials from the scan's merged pull secrets, and its insecure registries."""
    try:
        doc = _secret_json(secret, c.AUTH_KEY)
    except ValueError:
        doc = {}
    return auths_from_config(doc), frozenset(policy.scanner.insecure_registries)
