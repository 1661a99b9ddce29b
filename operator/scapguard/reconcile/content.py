"""ConfigMap-provided SCAP content: read from the policy's namespace, and its revisions.

Air-gapped clusters update OVAL feeds, datastreams and tailoring files by updating a ConfigMap.
The policy's status records the sha256 of each source it names (``status.contentSources``); when
one changes, every image of the policy is rescanned with trigger ``ContentUpdate``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scapguard.api.policy import ConfigMapRef, ScanPolicySpec
from scapguard.k8s.api import CONFIGMAP, NotFound
from scapguard.reconcile.context import OperatorContext


@dataclass(frozen=True)
class Content:
    """One ConfigMap key a policy names; ``data`` is None when the ConfigMap or key is missing."""

    ref: ConfigMapRef
    data: bytes | None
    problem: str | None = None

    @property
    def source(self) -> str:
        return f"{self.ref.name}/{self.ref.key}"

    def record(self) -> dict[str, Any]:
        """Its entry in ``status.contentSources``."""
        entry: dict[str, Any] = {"configMap": self.ref.name, "key": self.ref.key}
        if self.data is None:
            entry["missing"] = True
        else:
            entry["sha256"] = hashlib.sha256(self.data).hexdigest()
        return entry


def read_content(ctx: OperatorContext, namespace: str, policy: ScanPolicySpec) -> list[Content]:
    out: list[Content] = []
    for ref in policy.config_map_refs():
        try:
            cm = ctx.kube.get(CONFIGMAP, ref.name, namespace)
        except NotFound:
            out.append(Content(ref, None, f"ConfigMap {namespace}/{ref.name} is missing"))
            continue
        if ref.key in (cm.get("binaryData") or {}):
            out.append(Content(ref, base64.b64decode(cm["binaryData"][ref.key])))
        elif ref.key in (cm.get("data") or {}):
            out.append(Content(ref, str(cm["data"][ref.key]).encode()))
        else:
            out.append(Content(ref, None, f"ConfigMap {namespace}/{ref.name} has no key {ref.key}"))
    return out


def changed_sources(recorded: object, current: Sequence[Content]) -> list[str]:
    """Sources whose bytes differ from what the status recorded (``name/key``).

    Nothing counts as changed before a first record, nor a source the policy did not name
    before (a spec change: that is a PolicyChange rescan).
    """
    if not isinstance(recorded, list):
        return []
    before: dict[str, Mapping[str, Any]] = {
        f"{e.get('configMap')}/{e.get('key')}": e for e in recorded if isinstance(e, Mapping)
    }
    changed = []
    for content in current:
        old = before.get(content.source)
        if old is not None and dict(old) != content.record():
            changed.append(content.source)
    return changed
