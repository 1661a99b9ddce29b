"""Scan what runs: the images of the Pods a policy selects (``spec.workloads``).

Every container, init container and ephemeral container status of a selected Pod names the
image it runs by digest in ``imageID`` (``registry/repository@sha256:...``; Docker's
``docker-pullable://`` prefix is dropped). A digest no policy scan has yet gets an ImageScan
(origin ``workload``), deduplicated with the ImageStream tags by the scan's deterministic name
per (digest, policy). An ``imageID`` that is only a local image id (``sha256:...``, an image
loaded into the node rather than pulled) names nothing a scanner could pull and is skipped.
Scans of digests no selected Pod runs any more are collected like untagged ones
(:mod:`scapguard.reconcile.retention`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scapguard.api import constants as c
from scapguard.api.imagescan import IMAGE_BY_DIGEST
from scapguard.api.naming import scan_name
from scapguard.api.policy import ScanPolicySpec
from scapguard.builders.imagescan import build_imagescan
from scapguard.builders.job import owner_reference
from scapguard.k8s.api import (
    IMAGESCAN,
    POD,
    AlreadyExists,
    Obj,
    labels_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext

logger = logging.getLogger(__name__)

_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
_PREFIXES = ("docker-pullable://", "docker://")


@dataclass
class RunningImage:
    digest: str
    image: str  # pull spec by digest
    pods: set[str] = field(default_factory=set)  # namespace/name


def image_of(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(pull spec, digest) of a container status's ``imageID``, or None."""
    image_id = str(status.get("imageID") or "")
    for prefix in _PREFIXES:
        image_id = image_id.removeprefix(prefix)
    match = IMAGE_BY_DIGEST.fullmatch(image_id)
    return (image_id, match.group(1)) if match else None


def pod_images(pod: Obj) -> Iterable[tuple[str, str]]:
    status = pod.get("status") or {}
    for key in _STATUS_LISTS:
        for entry in status.get(key) or []:
            if isinstance(entry, Mapping) and (found := image_of(entry)) is not None:
                yield found


def running_images(
    ctx: OperatorContext, namespaces: Iterable[str], spec: ScanPolicySpec
) -> dict[str, RunningImage]:
    """By digest, what the Pods ``spec.workloads`` selects in ``namespaces`` run."""
    if spec.workloads is None:
        return {}
    selector = spec.workloads.pod_selector
    running: dict[str, RunningImage] = {}
    for namespace in namespaces:
        # matchLabels filtered by the API server; expressions here (selector.matches)
        for pod in ctx.kube.list(
            POD, namespace, label_selector=_label_selector(selector.match_labels)
        ):
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if not selector.matches(labels_of(pod)):
                continue
            for image, digest in pod_images(pod):
                entry = running.setdefault(digest, RunningImage(digest, image))
                entry.pods.add(f"{namespace_of(pod)}/{name_of(pod)}")
    return running


def _label_selector(labels: Mapping[str, str]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None


def ensure_running_scans(
    ctx: OperatorContext, policy: Obj, running: Mapping[str, RunningImage], scans: list[Obj]
) -> int:
    """Create the ImageScans of running digests the policy has none of; returns how many."""
    namespace = namespace_of(policy) or ""
    policy_name = name_of(policy)
    existing = {name_of(s) for s in scans}
    created = 0
    for digest, image in sorted(running.items()):
        name = scan_name(digest, namespace, policy_name)
        if name in existing:
            continue
        body = build_imagescan(
            name=name,
            namespace=namespace,
            image=image.image,
            digest=digest,
            policy=policy_name,
            trigger="NewImage",
            tags=[],
            origin=c.ORIGIN_WORKLOAD,
        )
        body["metadata"]["ownerReferences"] = [
            owner_reference(c.SCANPOLICY_KIND, c.API_VERSION, policy_name, uid_of(policy))
        ]
        try:
            ctx.kube.create(IMAGESCAN, body)
        except AlreadyExists:
            continue
        created += 1
        some = ", ".join(sorted(image.pods)[:3])
        logger.info(
            "created ImageScan %s/%s for %s (run by %s)", namespace, name, image.image, some
        )
    return created
