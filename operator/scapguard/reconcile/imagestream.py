"""An ImageStream changed: ensure the ImageScans of every policy that covers it (fast path).

Only this stream's tags are touched on each scan; the policies' own reconcile does the full
recomputation, retention and garbage collection.
"""

from __future__ import annotations

import logging

from scapguard.api.errors import SpecError
from scapguard.api.imagescan import TagRef
from scapguard.api.policy import parse_policy_spec
from scapguard.k8s.api import (
    NAMESPACE,
    SCANPOLICY,
    NotFound,
    Obj,
    labels_of,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext, Outcome
from scapguard.reconcile.scans import ensure_scans, policy_scans
from scapguard.reconcile.selection import Selection, add_stream, policy_covers_stream

logger = logging.getLogger(__name__)


def candidate_policies(ctx: OperatorContext, namespace: str) -> list[Obj]:
    policies = {uid_of(p): p for p in ctx.kube.list(SCANPOLICY, namespace)}
    if namespace != ctx.settings.namespace:
        for policy in ctx.kube.list(SCANPOLICY, ctx.settings.namespace):
            if (policy.get("spec") or {}).get("namespaceSelector") is not None:
                policies[uid_of(policy)] = policy
    return sorted(policies.values(), key=lambda p: (namespace_of(p) or "", name_of(p)))


def reconcile_imagestream(ctx: OperatorContext, stream: Obj) -> Outcome:
    namespace = namespace_of(stream) or ""
    name = name_of(stream)
    if not ctx.settings.watches(namespace):
        return Outcome()
    namespace_labels: dict[str, str] | None = None
    for policy in candidate_policies(ctx, namespace):
        try:
            spec = parse_policy_spec(policy.get("spec"))
        except SpecError as exc:
            logger.info(
                "skipping invalid ScanPolicy %s/%s: %s", namespace_of(policy), name_of(policy), exc
            )
            continue
        if namespace_of(policy) != namespace and namespace_labels is None:
            try:
                namespace_labels = labels_of(ctx.kube.get(NAMESPACE, namespace))
            except NotFound:
                return Outcome()
        if not policy_covers_stream(
            ctx, namespace_of(policy) or "", spec, stream, namespace_labels
        ):
            continue
        selection = Selection()
        add_stream(selection, stream, spec)

        def in_scope(tag: TagRef) -> bool:
            return tag.namespace == namespace and tag.image_stream == name

        ensure_scans(
            ctx,
            policy,
            selection.current,
            policy_scans(ctx, namespace_of(policy) or "", name_of(policy)),
            in_scope,
        )
    return Outcome()
