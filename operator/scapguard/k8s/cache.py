"""Reads from memory, writes to the API: the operator's informer cache.

At scale (thousands of ImageStreams and ImageScans) listing from the API server on every event
and timer was most of the operator's load: 7,700 requests to create 2,000 scans, and 80 % of a
core while idle. ``CachedKube`` serves ``list`` of the cached kinds from ``Store``s that
informers (``scapguard.k8s.informer``) keep current, and everything else from the API.

Consistency is the API server's, not the cache's: every write the operator makes is guarded by
a resourceVersion or is idempotent, and Job names are deterministic, so a stale listing costs a
Conflict or an AlreadyExists, never a second scan. The process's own writes are put into the
store as soon as the API answers (read-your-writes), so the queue counts the Job it has just
created before the watch reports it. A store that has not finished its first listing, or whose
informer stopped, is bypassed: the list goes to the API server.

Listed objects are shallow copies: callers may replace their top-level keys (``status``,
``metadata``), never change what is inside them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from scapguard.api.constants import KOPF_STORAGE_PREFIX
from scapguard.k8s.api import Kind, Kube, Obj, labels_of, meta, name_of, namespace_of

logger = logging.getLogger(__name__)

#: Objects deleted recently, remembered so a late write-through does not bring one back.
_TOMBSTONES: Final = 4096

Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse_selector(selector: str | None) -> tuple[Requirement, ...]:
    """Equality-based label selectors (``a=b,c!=d,e,!f``); ValueError for set-based ones."""
    if not selector:
        return ()
    out: list[Requirement] = []
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if " in " in term or " notin " in term or "(" in term:
            raise ValueError(f"set-based label selector {term!r}")
        if "!=" in term:
            key, value = term.split("!=", 1)
            out.append(Requirement(key.strip(), "!=", value.strip()))
        elif "==" in term or "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            out.append(Requirement(key.strip(), "=", value.strip()))
        elif term.startswith("!"):
            out.append(Requirement(term[1:].strip(), "!exists"))
        else:
            out.append(Requirement(term, "exists"))
    return tuple(out)


def _version(obj: Obj) -> int | None:
    try:
        return int(str(meta(obj).get("resourceVersion")))
    except ValueError:
        return None


def _newer(new: Obj, old: Obj | None) -> bool:
    """Whether ``new`` supersedes ``old`` (resourceVersions compared as etcd revisions; the API
    calls them opaque, so anything else counts as newer)."""
    if old is None:
        return True
    a, b = _version(new), _version(old)
    return a is None or b is None or a >= b


def _key(obj: Obj) -> Key:
    return (namespace_of(obj) or "", name_of(obj))


#: Annotations that copy the object itself (kubectl's last-applied configuration, kopf's
#: last-handled one): as large as the object, and never read from the cache.
BULKY_ANNOTATIONS: Final = ("kubectl.kubernetes.io/last-applied-configuration",)
BULKY_PREFIXES: Final = (f"{KOPF_STORAGE_PREFIX}/",)


def _slim(kind: Kind, obj: Obj) -> Obj:
    """What the store keeps: no managedFields (the largest part of most objects) nor bulky
    annotations, and the apiVersion/kind a listing's items lack."""
    metadata = {k: v for k, v in meta(obj).items() if k != "managedFields"}
    notes = metadata.get("annotations")
    if isinstance(notes, dict) and any(_bulky(k) for k in notes):
        metadata["annotations"] = {k: v for k, v in notes.items() if not _bulky(k)}
    return {**obj, "apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata}


def _bulky(annotation: str) -> bool:
    return annotation in BULKY_ANNOTATIONS or annotation.startswith(BULKY_PREFIXES)


class Store:
    """The objects of one kind in some namespaces (or all), as an informer last saw them.

    ``scopes``: the namespaces the informers cover (``None``: all namespaces); the informers
    list and watch only objects matching ``label_selector``. The store answers a listing only
    inside its scopes, and only once each has been listed.
    """

    def __init__(
        self,
        kind: Kind,
        scopes: Iterable[str | None],
        label_selector: str | None = None,
        *,
        gets: bool = False,
    ) -> None:
        self.kind = kind
        #: Whether ``get`` is answered from memory too (a kind the operator only reads or
        #: writes without a resourceVersion guard: a stale copy must never loop a retry).
        self.gets = gets
        self.label_selector = label_selector
        self._selector = parse_selector(label_selector)
        self._scopes = frozenset(scopes)
        self._objects: dict[Key, Obj] = {}
        self._gone: dict[Key, int] = {}
        self._synced: set[str | None] = set()
        self._failed: dict[str | None, str] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)

    # -- fed by informers -------------------------------------------------------------------

    def replace(self, scope: str | None, items: list[Obj]) -> None:
        """A complete listing of ``scope``."""
        fresh = {_key(o): _slim(self.kind, o) for o in items}
        with self._lock:
            for key in [k for k in self._objects if scope is None or k[0] == scope]:
                if key not in fresh:
                    del self._objects[key]
            self._objects.update(fresh)
            self._gone.clear()
            self._synced.add(scope)
            self._failed.pop(scope, None)
            self._ready.notify_all()

    def apply(self, event: str, obj: Obj) -> None:
        """A watch event (ADDED, MODIFIED, DELETED)."""
        key = _key(obj)
        with self._lock:
            if event == "DELETED":
                self._objects.pop(key, None)
                self._bury(key, obj)
            else:
                self._put(key, obj)

    def fail(self, scope: str | None, reason: str) -> None:
        """The informer of ``scope`` stopped: listings there go to the API from now on."""
        with self._lock:
            self._failed[scope] = reason

    # -- the process's own writes -------------------------------------------------------------

    def written(self, obj: Obj) -> None:
        """An object as the API server answered a create or patch of it (kept only if the
        store's informers would see it)."""
        key = _key(obj)
        if not all(r.matches(labels_of(obj)) for r in self._selector):
            return
        with self._lock:
            if self._covers(key[0]):
                self._put(key, obj)

    def deleted(self, namespace: str | None, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace or "", name), None)

    # -- reads --------------------------------------------------------------------------------

    @property
    def scopes(self) -> list[str | None]:
        return sorted(self._scopes, key=lambda s: s or "")

    def serves(self, namespace: str | None) -> bool:
        with self._lock:
            return self._serves(namespace)

    def list(self, namespace: str | None, selector: tuple[Requirement, ...]) -> list[Obj] | None:
        """Shallow copies of the matching objects, or None when the store cannot answer."""
        with self._lock:
            if not self._serves(namespace):
                return None
            found = [
                dict(obj)
                for key, obj in self._objects.items()
                if (namespace is None or key[0] == namespace)
                and all(r.matches(labels_of(obj)) for r in selector)
            ]
        found.sort(key=_key)
        return found

    def get(self, namespace: str | None, name: str) -> Obj | None:
        """A shallow copy of one object, or None when it is not here or the store cannot
        answer (the caller asks the API)."""
        with self._lock:
            if not self._serves(namespace):
                return None
            obj = self._objects.get((namespace or "", name))
            return dict(obj) if obj is not None else None

    def wait_synced(self, timeout: float) -> bool:
        """Block until every scope has been listed once (or an informer failed)."""
        with self._lock:
            return self._ready.wait_for(
                lambda: self._synced | set(self._failed) >= self._scopes, timeout
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # -- under the lock -----------------------------------------------------------------------

    def _covers(self, namespace: str) -> bool:
        return None in self._scopes or namespace in self._scopes

    def _serves(self, namespace: str | None) -> bool:
        if self._failed:
            return False
        if namespace is None:
            return None in self._synced
        return None in self._synced or namespace in self._synced

    def _put(self, key: Key, obj: Obj) -> None:
        version = _version(obj)
        buried = self._gone.get(key)
        if buried is not None and version is not None and version <= buried:
            return
        if _newer(obj, self._objects.get(key)):
            self._objects[key] = _slim(self.kind, obj)

    def _bury(self, key: Key, obj: Obj) -> None:
        version = _version(obj)
        if version is None:
            return
        if len(self._gone) >= _TOMBSTONES:
            self._gone.pop(next(iter(self._gone)))
        self._gone[key] = version


class CachedKube:
    """A ``Kube`` whose listings of the cached kinds come from their stores."""

    def __init__(self, kube: Kube, stores: Iterable[Store]) -> None:
        self._kube = kube
        self._stores = {store.kind: store for store in stores}

    def store(self, kind: Kind) -> Store | None:
        return self._stores.get(kind)

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        store = self._stores.get(kind)
        if store is not None and store.gets:
            found = store.get(namespace, name)
            if found is not None:
                return found
        obj = self._kube.get(kind, name, namespace)
        self._written(kind, obj)
        return obj

    def serves(self, kind: Kind) -> bool:
        return self._kube.serves(kind)

    def get_metadata(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        return self._kube.get_metadata(kind, name, namespace)

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        store = self._stores.get(kind)
        if store is not None and field_selector is None:
            try:
                selector = parse_selector(label_selector)
            except ValueError:
                selector = None
            found = store.list(namespace, selector) if selector is not None else None
            if found is not None:
                return found
        return self._kube.list(
            kind, namespace, label_selector=label_selector, field_selector=field_selector
        )

    def create(self, kind: Kind, body: Obj) -> Obj:
        obj = self._kube.create(kind, body)
        self._written(kind, obj)
        return obj

    def dry_run_create(self, kind: Kind, body: Obj) -> Obj:
        return self._kube.dry_run_create(kind, body)

    def patch(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        obj = self._kube.patch(kind, name, namespace, patch)
        self._written(kind, obj)
        return obj

    def patch_status(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        obj = self._kube.patch_status(kind, name, namespace, patch)
        self._written(kind, obj)
        return obj

    def delete(
        self, kind: Kind, name: str, namespace: str | None, *, uid: str | None = None
    ) -> None:
        self._kube.delete(kind, name, namespace, uid=uid)
        store = self._stores.get(kind)
        if store is not None:
            store.deleted(namespace, name)

    def _written(self, kind: Kind, obj: Obj) -> None:
        store = self._stores.get(kind)
        if store is not None:
            store.written(obj)


def feed(store: Store, scope: str | None) -> tuple[
    Callable[[list[Obj]], None], Callable[[str, Obj], None], Callable[[str], None]
]:  # fmt: skip
    """An informer's three callbacks (replace, event, failure) feeding ``store``'s ``scope``."""

    def replace(items: list[Obj]) -> None:
        store.replace(scope, items)

    def failed(reason: str) -> None:
        logger.error("cache of %s stopped (%s); listing from the API", store.kind.plural, reason)
        store.fail(scope, reason)

    return replace, store.apply, failed
