"""Ensure one ImageScan per (current digest, policy), with the tags that point at it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scapguard.api import constants as c
from scapguard.api.errors import SpecError
from scapguard.api.imagescan import ImageScanSpec, TagRef, parse_imagescan_spec
from scapguard.api.naming import scan_name
from scapguard.builders.imagescan import build_imagescan, sorted_tags
from scapguard.builders.job import owner_reference
from scapguard.k8s.api import (
    IMAGESCAN,
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
from scapguard.reconcile.selection import CurrentImage
from scapguard.reconcile.status import reread

logger = logging.getLogger(__name__)

MAX_TAG_RETRIES = 5
#: Concurrent creates: at start-up a policy may select thousands of new images at once.
CREATE_WORKERS = 4


def policy_scans(ctx: OperatorContext, namespace: str, policy: str) -> list[Obj]:
    return ctx.kube.list(IMAGESCAN, namespace, label_selector=f"{c.POLICY_LABEL}={policy}")


def parsed(scan: Obj) -> ImageScanSpec | None:
    try:
        return parse_imagescan_spec(scan.get("spec"))
    except SpecError as exc:
        logger.warning(
            "ImageScan %s/%s has an invalid spec: %s", namespace_of(scan), name_of(scan), exc
        )
        return None


def from_imagestream(scan: Obj) -> bool:
    return labels_of(scan).get(c.ORIGIN_LABEL) == c.ORIGIN_IMAGESTREAM


def ensure_scans(
    ctx: OperatorContext, policy: Obj, current: Mapping[str, CurrentImage], scans: list[Obj]
) -> dict[str, Obj]:
    """Create missing scans and set each scan's spec.tags to the tags that point at its digest
    now; returns the scans by digest."""
    namespace = namespace_of(policy) or ""
    policy_name = name_of(policy)
    by_digest: dict[str, Obj] = {}
    for scan in scans:
        spec = parsed(scan)
        if spec is None or not from_imagestream(scan):
            continue
        if name_of(scan) != scan_name(spec.digest, namespace, policy_name):
            continue
        by_digest[spec.digest] = scan
        image = current.get(spec.digest)
        _sync_tags(
            ctx, scan, functools.partial(_replace, fresh=frozenset(image.tags if image else ()))
        )
    missing = [image for digest, image in current.items() if digest not in by_digest]
    if len(missing) > 1:
        with ThreadPoolExecutor(CREATE_WORKERS, thread_name_prefix="scapguard-create") as pool:
            created = list(pool.map(lambda image: _create(ctx, policy, image), missing))
    else:
        created = [_create(ctx, policy, image) for image in missing]
    for image, scan in zip(missing, created, strict=True):
        by_digest[image.digest] = scan
    return by_digest


def _create(ctx: OperatorContext, policy: Obj, image: CurrentImage) -> Obj:
    """The policy's ImageScan of ``image`` with all its tags (or the existing one, tagged)."""
    namespace = namespace_of(policy) or ""
    policy_name = name_of(policy)
    body = build_imagescan(
        name=scan_name(image.digest, namespace, policy_name),
        namespace=namespace,
        image=image.image,
        digest=image.digest,
        policy=policy_name,
        trigger="NewImage",
        tags=sorted(image.tags, key=lambda t: (t.namespace, t.image_stream, t.tag)),
    )
    body["metadata"]["ownerReferences"] = [
        owner_reference(c.SCANPOLICY_KIND, c.API_VERSION, policy_name, uid_of(policy))
    ]
    try:
        scan = ctx.kube.create(IMAGESCAN, body)
        logger.info("created ImageScan %s/%s for %s", namespace, name_of(body), image.image)
        return scan
    except AlreadyExists:
        existing = ctx.kube.get(IMAGESCAN, name_of(body), namespace)
        _sync_tags(ctx, existing, functools.partial(_add, new=frozenset(image.tags)))
        return existing


def _replace(_tags: set[TagRef], *, fresh: frozenset[TagRef]) -> set[TagRef]:
    return set(fresh)


def _add(tags: set[TagRef], *, new: frozenset[TagRef]) -> set[TagRef]:
    return tags | new


def _sync_tags(
    ctx: OperatorContext, scan: Obj, wanted: Callable[[set[TagRef]], set[TagRef]]
) -> None:
    """Set spec.tags to ``wanted(current tags)``: a read-modify-write guarded by the scan's
    resourceVersion (the scan's own reconcile writes it too)."""
    for _ in range(MAX_TAG_RETRIES):
        spec = parsed(scan)
        if spec is None:
            return
        tags = wanted(set(spec.tags))
        patch: dict[str, Any] = {}
        if set(spec.tags) != tags:
            patch["spec"] = {"tags": sorted_tags(list(tags))}
        if tags and c.UNTAGGED_SINCE_ANNOTATION in annotations_of(scan):
            patch["metadata"] = {"annotations": {c.UNTAGGED_SINCE_ANNOTATION: None}}
        if not patch:
            return
        patch.setdefault("metadata", {})["resourceVersion"] = meta(scan).get("resourceVersion")
        try:
            updated = ctx.kube.patch(IMAGESCAN, name_of(scan), namespace_of(scan), patch)
        except NotFound:
            logger.info(
                "ImageScan %s/%s went away while its tags were updated",
                namespace_of(scan),
                name_of(scan),
            )
            return
        except Conflict:
            if not reread(ctx, scan):
                return
            continue
        scan.clear()
        scan.update(updated)
        return
    raise Conflict(409, "Conflict", f"ImageScan {name_of(scan)} kept changing; retrying later")
