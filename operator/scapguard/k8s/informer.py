"""List+watch of one resource kind in a thread, feeding an in-memory index or a callback.

Why not kopf's own watches (``@kopf.on.event``): with kopf peering, standby replicas pause their
watches, yet every replica behind the webhook Service answers admission requests; kopf does
not tell a handler when the initial listing is complete; and kopf watches every resource in the
same namespaces (all of them), while scanner Jobs live in the operator's namespace only. This
informer hands ``on_replace`` a complete listing before any event (``on_event``), relists after a
watch expires (410 Gone) and reconnects with backoff after network errors. Any resource with an
API group works (CustomObjectsApi only builds ``/apis/<group>/<version>/...`` paths), cluster-wide
or in one namespace, optionally with a label selector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final

import urllib3
from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from scapguard.k8s.api import Kind, Obj

logger = logging.getLogger(__name__)

_GONE: Final = 410
_BACKOFF: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
_EVENTS: Final = ("ADDED", "MODIFIED", "DELETED")


class Informer:
    """Keep ``on_replace``/``on_event`` fed with the objects of ``kind``.

    All namespaces unless ``namespace`` is given; only objects matching ``label_selector``.
    """

    def __init__(
        self,
        api_client: Any,
        kind: Kind,
        *,
        on_replace: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        on_failure: Callable[[str], None],
        namespace: str | None = None,
        label_selector: str | None = None,
        watch_seconds: int = 300,
        page_size: int = 500,
    ) -> None:
        if not kind.group:
            raise ValueError("Informer watches resources of an API group only")
        if namespace is not None and not kind.namespaced:
            raise ValueError(f"{kind.plural} are cluster-scoped: no namespace")
        self._namespace = namespace
        self._selector = {"label_selector": label_selector} if label_selector else {}
        self._api = k8s_client.CustomObjectsApi(api_client)
        self._kind = kind
        self._on_replace = on_replace
        self._on_event = on_event
        self._on_failure = on_failure
        self._watch_seconds = watch_seconds
        self._page_size = page_size
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: k8s_watch.Watch | None = None
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        where = f" in {self._namespace}" if self._namespace else ""
        return f"{self._kind.plural}.{self._kind.group}{where}"

    def _call(self) -> tuple[Any, tuple[str, ...]]:
        """The list function and its leading arguments (a list, or a watch with watch=True)."""
        kind = self._kind
        if self._namespace is None:
            return self._api.list_cluster_custom_object, (kind.group, kind.version, kind.plural)
        return self._api.list_namespaced_custom_object, (
            kind.group,
            kind.version,
            self._namespace,
            kind.plural,
        )

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"informer for {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            current = self._watch
        if current is not None:
            current.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("informer for %s did not stop within %.0fs", self.name, timeout)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list()
                failures = 0
                self._watch_from(version)
            except ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status == _GONE:
                    logger.info("watch of %s expired (410 Gone); relisting", self.name)
                    continue
                failures += 1
                self._pause(failures, f"{exc.status} {exc.reason}")
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if self._stop.is_set():  # stop() cut the connection
                    return
                failures += 1
                self._pause(failures, str(exc) or type(exc).__name__)
            except Exception as exc:
                # A bug (in the index or here): stop feeding a possibly inconsistent index and
                # tell it, so the webhook stops trusting it instead of answering from stale data.
                logger.exception("informer for %s stopped", self.name)
                self._on_failure(f"{type(exc).__name__}: {exc}")
                return

    def _pause(self, failures: int, reason: str) -> None:
        delay = _BACKOFF[min(failures, len(_BACKOFF)) - 1]
        logger.warning("list/watch of %s failed (%s); retrying in %.0fs", self.name, reason, delay)
        self._stop.wait(delay)

    def _list(self) -> str:
        items: list[Obj] = []
        token: str | None = None
        version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size}
            if token:
                kwargs["_continue"] = token
            func, args = self._call()
            page: Any = func(*args, _request_timeout=60, **self._selector, **kwargs)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    items.append(item)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                break
        self._on_replace(items)
        logger.info("listed %d %s at resourceVersion %s", len(items), self.name, version)
        return version

    def _watch_from(self, version: str) -> None:
        while not self._stop.is_set():
            stream = k8s_watch.Watch()
            with self._lock:
                self._watch = stream
            func, args = self._call()
            try:
                for event in stream.stream(
                    func,
                    *args,
                    **self._selector,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self._watch_seconds,
                    _request_timeout=self._watch_seconds + 30,
                ):
                    kind = event.get("type")
                    obj = event.get("object")
                    if not isinstance(obj, dict):
                        continue
                    if kind in _EVENTS:
                        self._on_event(str(kind), obj)
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            finally:
                with self._lock:
                    self._watch = None
