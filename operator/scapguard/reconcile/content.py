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
    resource_version: str | None = None  # of the ConfigMap the bytes were read from

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
        if self.resource_version:
            entry["resourceVersion"] = self.resource_version
        return entry


def read_one(ctx: OperatorContext, namespace: str, ref: ConfigMapRef) -> Content:
    try:
        cm = ctx.kube.get(CONFIGMAP, ref.name, namespace)
    except NotFound:
        return Content(ref, None, f"ConfigMap {namespace}/{ref.name} is missing")
    version = str((cm.get("metadata") or {}).get("resourceVersion") or "") or None
    if ref.key in (cm.get("binaryData") or {}):
        return Content(ref, base64.b64decode(cm["binaryData"][ref.key]), None, version)
    if ref.key in (cm.get("data") or {}):
        return Content(ref, str(cm["data"][ref.key]).encode(), None, version)
    problem = f"ConfigMap {namespace}/{ref.name} has no key {ref.key}"
    return Content(ref, None, problem, version)


def read_content(ctx: OperatorContext, namespace: str, policy: ScanPolicySpec) -> list[Content]:
    return [read_one(ctx, namespace, ref) for ref in policy.config_map_refs()]


def content_records(
    ctx: OperatorContext, namespace: str, policy: ScanPolicySpec, recorded: object
) -> list[dict[str, Any]]:
    """The ``status.contentSources`` entries as the ConfigMaps are now.

    A ConfigMap whose resourceVersion still equals the recorded one has not changed since its
    bytes were hashed: only its metadata is read (a feed ConfigMap holds up to ~1 MiB, read
    every policy timer otherwise). Any other change reads and hashes the key again.
    """
    before = _by_source(recorded)
    out: list[dict[str, Any]] = []
    for ref in policy.config_map_refs():
        old = before.get(f"{ref.name}/{ref.key}")
        if old is not None and old.get("resourceVersion"):
            try:
                meta = ctx.kube.get_metadata(CONFIGMAP, ref.name, namespace)
            except NotFound:
                out.append(Content(ref, None).record())
                continue
            if (meta.get("metadata") or {}).get("resourceVersion") == old["resourceVersion"]:
                out.append(dict(old))
                continue
        out.append(read_one(ctx, namespace, ref).record())
    return out


def _by_source(recorded: object) -> dict[str, Mapping[str, Any]]:
    if not isinstance(recorded, list):
        return {}
    return {f"{e.get('configMap')}/{e.get('key')}": e for e in recorded if isinstance(e, Mapping)}


def identity(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its resourceVersion, which also moves when another key changes."""
    return {k: v for k, v in entry.items() if k != "resourceVersion"}


def changed_sources(recorded: object, current: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sources whose bytes differ from what the status recorded (``name/key``).

    Nothing counts as changed before a first record, nor a source the policy did not name
    before (a spec change: that is a PolicyChange rescan).
    """
    before = _by_source(recorded)
    changed = []
    for entry in current:
        source = f"{entry.get('configMap')}/{entry.get('key')}"
        old = before.get(source)
        if old is not None and identity(old) != identity(entry):
            changed.append(source)
    return changed
