"""An ImageStream changed: the policies that cover it select again (fast path).

The selection itself (``reconcile.background.sync_selection``) runs in the background loop;
the policies' own reconcile does retention and garbage collection.
"""

from __future__ import annotations

import logging

from scapguard.api.errors import SpecError
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
from scapguard.reconcile.selection import policy_covers_stream

logger = logging.getLogger(__name__)


def candidate_policies(ctx: OperatorContext, namespace: str) -> list[Obj]:
    policies = {uid_of(p): p for p in ctx.kube.list(SCANPOLICY, namespace)}
    if namespace != ctx.settings.namespace:
        for policy in ctx.kube.list(SCANPOLICY, ctx.settings.namespace):
            if (policy.get("spec") or {}).get("namespaceSelector") is not None:
                policies[uid_of(policy)] = policy
    return sorted(policies.values(), key=lambda p: (namespace_of(p) or "", name_of(p)))


def reconcile_imagestream(ctx: OperatorContext, stream: Obj) -> Outcome:
    """Ask for the selection of every valid policy that covers the stream (the background
    loop coalesces a burst of stream events into one selection per policy)."""
    namespace = namespace_of(stream) or ""
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
        if policy_covers_stream(ctx, namespace_of(policy) or "", spec, stream, namespace_labels):
            ctx.select(namespace_of(policy) or "", name_of(policy))
    return Outcome()
