"""ContentUpdate rescans for upstream content: catalogue feeds and OCI tags that moved.

ConfigMap content is compared by the policy (``status.contentSources``, see
:mod:`scapguard.reconcile.content`). Content the operator fetches from upstream is compared per
scan instead: a finished scan whose ``status.content`` names a catalogue feed or an OCI source
is rescanned when the content cache now holds other bytes for that source. The cache checks
upstream at most once per ``SCAPGUARD_CONTENT_POLL_SECONDS`` (a conditional GET for a feed, a
manifest request for a tag), whichever policy asks; a URL pinned by sha256 cannot change.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scapguard.api.imagescan import read_progress, rescan_value
from scapguard.api.policy import ContentSource, ScanPolicySpec
from scapguard.contentcache import catalogue
from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.oci import auths_from_config
from scapguard.k8s.api import Obj, name_of
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.queue import registry_auth

logger = logging.getLogger(__name__)


def _content_entries(scan: Obj) -> Iterable[Mapping[str, Any]]:
    entries = (scan.get("status") or {}).get("content")
    return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


def upstream_updates(
    ctx: OperatorContext, namespace: str, spec: ScanPolicySpec, scans: list[Obj]
) -> dict[str, str]:
    """Finished scans (by name) whose upstream content moved: the rescan annotation value."""
    finished = [s for s in scans if read_progress(s.get("status")).finished]
    if not finished:
        return {}
    # (status.content kind, source) -> sha256 now, or None when it could not be checked (once
    # per source and pass: a thousand scans of one feed cost one check and one warning)
    current: dict[tuple[str, str], str | None] = {}
    labels: dict[tuple[str, str], str] = {}
    sections = (
        ("vulnerabilities", spec.vulnerabilities.feed if spec.vulnerabilities.enabled else None),
        ("compliance", spec.compliance.datastream if spec.compliance.enabled else None),
    )
    if any(src is not None and src.oci is not None for _, src in sections):

        @functools.cache
        def auths() -> Mapping[str, tuple[str, str]]:
            doc = registry_auth(ctx, namespace, spec)
            return auths_from_config(json.loads(doc)) if doc else {}

        for kind, src in sections:
            sha = _oci_now(ctx, src, auths, spec)
            if sha is not None and src is not None and src.oci is not None:
                current[(kind, "oci")] = sha
                labels[(kind, "oci")] = src.oci.reference
    out: dict[str, str] = {}
    for scan in finished:
        for entry in _content_entries(scan):
            kind, source = str(entry.get("kind", "")), str(entry.get("source", ""))
            key = (kind, source)
            if source == "catalogue" and kind == "vulnerabilities" and sections[0][1] is None:
                feed_key = catalogue.key_of_name(str(entry.get("name", "")))
                if feed_key is None:
                    continue
                key = (kind, f"catalogue:{feed_key}")
                if key not in current:
                    current[key], labels[key] = _catalogue_now(ctx, feed_key), feed_key
            sha = current.get(key)
            if sha is not None and entry.get("sha256") != sha:
                out[name_of(scan)] = rescan_value("ContentUpdate", f"{labels[key]}@{sha[:12]}")
    return out


def _oci_now(
    ctx: OperatorContext,
    src: ContentSource | None,
    auths: Callable[[], Mapping[str, tuple[str, str]]],
    spec: ScanPolicySpec,
) -> str | None:
    if src is None or src.oci is None:
        return None
    try:
        return ctx.content.oci_current(
            src.oci.reference,
            src.oci.file,
            auths=auths,
            insecure=frozenset(spec.scanner.insecure_registries),
        )
    except ContentFetchError as exc:
        logger.warning("cannot check %s for new content: %s", src.oci.reference, exc)
        return None


def _catalogue_now(ctx: OperatorContext, key: str) -> str | None:
    try:
        return ctx.content.catalogue(key).sha256
    except ContentFetchError as exc:
        logger.warning("cannot check catalogue feed %s for new content: %s", key, exc)
        return None
