"""An in-memory Kube for tests: merge patches, status subresources, resourceVersion
preconditions, label selectors, generation, owner-reference cascade on delete."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import uuid
from collections.abc import Callable
from typing import Any

from scapguard.k8s.api import (
    AlreadyExists,
    Conflict,
    Kind,
    NotFound,
    Obj,
)
from scapguard.k8s.cache import parse_selector

Key = tuple[str, str, str]  # (plural.group, namespace, name)
STATUS_SUBRESOURCE = frozenset({"scanpolicies", "imagescans", "jobs"})


def merge_patch(target: object, patch: object) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    return all(r.matches(labels) for r in parse_selector(selector))


class FakeKube:
    def __init__(self, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.objects: dict[Key, Obj] = {}
        self.kinds: dict[str, Kind] = {}
        self.actions: list[tuple[str, str, str, str]] = []  # (verb, plural, namespace, name)
        # gets the same way; lists as ("list", plural, namespace, label selector)
        self.reads: list[tuple[str, str, str, str]] = []
        self.clock = clock or (lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        self._versions = itertools.count(1)
        #: API groups the fake API server does not serve (``serves``)
        self.unserved_groups: set[str] = set()
        # Called before each write; may raise to simulate API failures or crashes.
        self.before_write: Callable[[str, Kind, Obj], None] | None = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _kid(kind: Kind) -> str:
        return f"{kind.plural}.{kind.group}"

    def _key(self, kind: Kind, namespace: str | None, name: str) -> Key:
        return (self._kid(kind), (namespace or "") if kind.namespaced else "", name)

    def _bump(self, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _check_version(self, current: Obj, patch: Obj) -> None:
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")

    def _hook(self, verb: str, kind: Kind, obj: Obj) -> None:
        if self.before_write is not None:
            self.before_write(verb, kind, obj)

    def created(self, plural: str) -> list[str]:
        return [a[3] for a in self.actions if a[0] == "create" and a[1] == plural]

    def all(self, kind: Kind) -> list[Obj]:
        return self.list(kind)

    # ------------------------------------------------------------------ Kube
    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        return self._read("get", kind, name, namespace)

    def _read(self, verb: str, kind: Kind, name: str, namespace: str | None) -> Obj:
        key = self._key(kind, namespace, name)
        self.reads.append((verb, kind.plural, key[1], name))
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(404, "NotFound", f"{kind.plural} {namespace}/{name} not found")
        return copy.deepcopy(obj)

    def get_metadata(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        obj = self._read("get_metadata", kind, name, namespace)
        return {
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj["metadata"],
        }

    def serves(self, kind: Kind) -> bool:
        return kind.group not in self.unserved_groups

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        kid = self._kid(kind)
        self.reads.append(("list", kind.plural, namespace or "", label_selector or ""))
        out = []
        for (k, ns, name), obj in sorted(self.objects.items()):
            if k != kid or (namespace and kind.namespaced and ns != namespace):
                continue
            fields = {"metadata.name": name, "metadata.namespace": ns}
            if selector_matches(label_selector, obj["metadata"].get("labels") or {}) and (
                selector_matches(field_selector, fields)
            ):
                out.append(copy.deepcopy(obj))
        return out

    def dry_run_create(self, kind: Kind, body: Obj) -> Obj:
        """Admission is ``before_write`` (verb "dry-run-create"); nothing is stored."""
        obj = copy.deepcopy(body)
        meta = obj.get("metadata") or {}
        self._hook("dry-run-create", kind, obj)
        self.actions.append(
            ("dry-run-create", kind.plural, str(meta.get("namespace", "")), str(meta["name"]))
        )
        return obj

    def create(self, kind: Kind, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        key = self._key(kind, meta.get("namespace"), meta["name"])
        self._hook("create", kind, obj)
        if key in self.objects:
            raise AlreadyExists(409, "AlreadyExists", f"{kind.plural} {meta['name']} exists")
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if kind.plural in STATUS_SUBRESOURCE:
            obj.pop("status", None)
        self._bump(obj)
        self.objects[key] = obj
        self.kinds[key[0]] = kind
        self.actions.append(("create", kind.plural, key[1], key[2]))
        return copy.deepcopy(obj)

    def patch(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        key = self._key(kind, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise NotFound(404, "NotFound", f"{kind.plural} {namespace}/{name} not found")
        self._check_version(current, patch)
        self._hook("patch", kind, patch)
        body = copy.deepcopy(patch)
        if kind.plural in STATUS_SUBRESOURCE:
            body.pop("status", None)
        (body.get("metadata") or {}).pop("resourceVersion", None)
        updated = merge_patch(current, body)
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if updated != current:
            self._bump(updated)
            self.objects[key] = updated
        self.actions.append(("patch", kind.plural, key[1], name))
        return copy.deepcopy(updated)

    def patch_status(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        key = self._key(kind, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise NotFound(404, "NotFound", f"{kind.plural} {namespace}/{name} not found")
        self._check_version(current, patch)
        self._hook("patch_status", kind, patch)
        updated = copy.deepcopy(current)
        if "status" in patch:
            updated["status"] = merge_patch(current.get("status"), patch["status"])
            if not updated["status"]:
                updated.pop("status")
        if updated != current:
            self._bump(updated)
            self.objects[key] = updated
        self.actions.append(("patch_status", kind.plural, key[1], name))
        return copy.deepcopy(updated)

    def delete(
        self, kind: Kind, name: str, namespace: str | None, *, uid: str | None = None
    ) -> None:
        key = self._key(kind, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise NotFound(404, "NotFound", f"{kind.plural} {namespace}/{name} not found")
        if uid is not None and current["metadata"]["uid"] != uid:
            raise Conflict(409, "Conflict", "uid precondition failed")
        self._hook("delete", kind, current)
        del self.objects[key]
        self.actions.append(("delete", kind.plural, key[1], name))
        self._cascade(current["metadata"]["uid"])

    def _cascade(self, owner_uid: str) -> None:
        for key, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if key in self.objects and any(o.get("uid") == owner_uid for o in owners):
                del self.objects[key]
                self._cascade(obj["metadata"]["uid"])
