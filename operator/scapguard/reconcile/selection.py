"""Which images a policy selects: ImageStream tags -> current digest, history, retention."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scapguard.api.imagescan import IMAGE_BY_DIGEST, TagRef
from scapguard.api.policy import ScanPolicySpec
from scapguard.k8s.api import IMAGESTREAM, NAMESPACE, Obj, labels_of, name_of, namespace_of
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.workloads import RunningImage, running_images


@dataclass
class CurrentImage:
    digest: str
    image: str
    tags: set[TagRef] = field(default_factory=set)


@dataclass
class Selection:
    current: dict[str, CurrentImage] = field(default_factory=dict)
    retained: set[str] = field(default_factory=set)  # past digests within retention
    expired: set[str] = field(default_factory=set)  # past digests beyond retention
    #: digests selected Pods run (``spec.workloads``)
    running: dict[str, RunningImage] = field(default_factory=dict)

    def selected(self) -> set[str]:
        """The digests the policy covers now: current tags and what selected Pods run."""
        return set(self.current) | set(self.running)


def pull_spec(reference: str, digest: str) -> str:
    """``repo@digest`` from an item's dockerImageReference (by digest or by tag)."""
    if IMAGE_BY_DIGEST.fullmatch(reference):
        return reference
    repo = reference.split("@", 1)[0]
    slash = repo.rfind("/")
    colon = repo.rfind(":")
    if colon > slash:
        repo = repo[:colon]
    return f"{repo}@{digest}"


def tag_matches(tag: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(tag, pattern) for pattern in patterns)


def _items(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = entry.get("items")
    if not isinstance(items, list):
        return []
    return [
        i for i in items if isinstance(i, Mapping) and str(i.get("image", "")).startswith("sha256:")
    ]


def add_stream(selection: Selection, stream: Obj, spec: ScanPolicySpec) -> None:
    """Fold one ImageStream's status.tags into ``selection`` (items newest first)."""
    namespace = namespace_of(stream) or ""
    name = name_of(stream)
    tags = (stream.get("status") or {}).get("tags") or []
    for entry in tags:
        if not isinstance(entry, Mapping) or not tag_matches(str(entry.get("tag")), spec.tags):
            continue
        items = _items(entry)
        if not items:
            continue
        digest = str(items[0]["image"])
        ref = str(items[0].get("dockerImageReference") or "")
        image = selection.current.setdefault(
            digest, CurrentImage(digest=digest, image=pull_spec(ref, digest))
        )
        image.tags.add(TagRef(namespace=namespace, image_stream=name, tag=str(entry["tag"])))
        for position, item in enumerate(items[1:]):
            past = str(item["image"])
            (selection.retained if position < spec.keep else selection.expired).add(past)
    selection.retained -= set(selection.current)
    selection.expired -= set(selection.current) | selection.retained


def policy_namespaces(
    ctx: OperatorContext, policy_namespace: str, spec: ScanPolicySpec
) -> list[str]:
    """The policy's own namespace, or for a cluster-wide policy the namespaces it selects."""
    if policy_namespace != ctx.settings.namespace or spec.namespace_selector is None:
        return [policy_namespace] if ctx.settings.watches(policy_namespace) else []
    selector = spec.namespace_selector
    return sorted(
        name_of(ns)
        for ns in ctx.kube.list(NAMESPACE)
        if selector.matches(labels_of(ns)) and ctx.settings.watches(name_of(ns))
    )


def select(
    ctx: OperatorContext,
    policy_namespace: str,
    spec: ScanPolicySpec,
    *,
    image_api: bool = True,
    workloads: bool = True,
) -> Selection:
    """ImageStream tags (when the cluster serves the image API) and, unless ``workloads`` is
    False, running Pods' images."""
    selection = Selection()
    namespaces = policy_namespaces(ctx, policy_namespace, spec)
    for namespace in namespaces if image_api else ():
        for stream in ctx.kube.list(IMAGESTREAM, namespace):
            if spec.selector.matches(labels_of(stream)):
                add_stream(selection, stream, spec)
    if workloads:
        selection.running = running_images(ctx, namespaces, spec)
    return selection


def policy_covers_stream(
    ctx: OperatorContext,
    policy_namespace: str,
    spec: ScanPolicySpec,
    stream: Obj,
    namespace_labels: Mapping[str, str] | None,
) -> bool:
    stream_ns = namespace_of(stream) or ""
    if not spec.selector.matches(labels_of(stream)):
        return False
    if policy_namespace == ctx.settings.namespace and spec.namespace_selector is not None:
        return namespace_labels is not None and spec.namespace_selector.matches(namespace_labels)
    return stream_ns == policy_namespace
