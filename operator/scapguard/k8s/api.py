"""The Kubernetes operations scapguard uses, as a Protocol with typed errors.

Reconcile code depends on this module only; ``scapguard.k8s.client`` implements it with the
``kubernetes`` package and the tests implement it in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

from scapguard.api import constants as c

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


SCANPOLICY: Final = Kind(c.GROUP, c.VERSION, c.SCANPOLICY_PLURAL, c.SCANPOLICY_KIND)
IMAGESCAN: Final = Kind(c.GROUP, c.VERSION, c.IMAGESCAN_PLURAL, c.IMAGESCAN_KIND)
IMAGESTREAM: Final = Kind(c.IMAGE_GROUP, c.IMAGE_VERSION, c.IMAGESTREAM_PLURAL, "ImageStream")
IMAGE: Final = Kind(c.IMAGE_GROUP, c.IMAGE_VERSION, c.IMAGE_PLURAL, "Image", namespaced=False)
JOB: Final = Kind("batch", "v1", "jobs", "Job")
POD: Final = Kind("", "v1", "pods", "Pod")
SECRET: Final = Kind("", "v1", "secrets", "Secret")
CONFIGMAP: Final = Kind("", "v1", "configmaps", "ConfigMap")
EVENT: Final = Kind("", "v1", "events", "Event")
NAMESPACE: Final = Kind("", "v1", "namespaces", "Namespace", namespaced=False)


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when there was no response)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """No answer, too many requests, or a server-side failure: the same call may succeed
        later (an API server restarting, etcd busy)."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: a resourceVersion precondition failed (or, as AlreadyExists, the name is taken)."""


class AlreadyExists(Conflict):
    pass


class Forbidden(KubeError):
    pass


class Invalid(KubeError):
    pass


def error_for(status: int, reason: str, message: str) -> KubeError:
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(status, reason, message)
        return Conflict(status, reason, message)
    if status == 403:
        return Forbidden(status, reason, message)
    if status == 422:
        return Invalid(status, reason, message)
    return KubeError(status, reason, message)


class Kube(Protocol):
    """JSON objects in, JSON objects out; patches are JSON merge patches."""

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj: ...

    def serves(self, kind: Kind) -> bool:
        """Whether the API server serves ``kind``'s group and version (discovery)."""
        ...

    def get_metadata(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        """The object's ``metadata`` only (a PartialObjectMetadata): no data, no status."""
        ...

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        """``field_selector``: only ``metadata.name=`` / ``metadata.namespace=`` terms (all that
        custom resources support)."""
        ...

    def create(self, kind: Kind, body: Obj) -> Obj: ...

    def dry_run_create(self, kind: Kind, body: Obj) -> Obj:
        """What the API server would store (admission included), storing nothing."""
        ...

    def patch(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj: ...

    def patch_status(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj: ...

    def delete(
        self, kind: Kind, name: str, namespace: str | None, *, uid: str | None = None
    ) -> None: ...


def meta(obj: Obj) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name", ""))


def namespace_of(obj: Obj) -> str | None:
    ns = meta(obj).get("namespace")
    return str(ns) if ns else None


def uid_of(obj: Obj) -> str:
    return str(meta(obj).get("uid", ""))


def labels_of(obj: Obj) -> dict[str, str]:
    value = meta(obj).get("labels")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def annotations_of(obj: Obj) -> dict[str, str]:
    value = meta(obj).get("annotations")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def generation_of(obj: Obj) -> int | None:
    value = meta(obj).get("generation")
    return value if isinstance(value, int) else None
