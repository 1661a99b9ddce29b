"""What every reconcile needs: the API, the settings, the metrics, a clock and the locks."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from scapguard.builders.events import build_event
from scapguard.config import Settings
from scapguard.contentcache.cache import ContentCache
from scapguard.contentcache.store import ContentStore
from scapguard.k8s.api import EVENT, Kube, KubeError
from scapguard.metrics import Metrics

logger = logging.getLogger(__name__)

DENY_REPAIR_SECONDS: Final = 240.0  # at most one re-judging of all marked Images this often
SCAN_REPAIR_SECONDS: Final = 600.0  # a policy's finished scans: their Images put back in line


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Throttle:
    """Let an action (per ``key``) run at most once per ``interval`` seconds (per process)."""

    def __init__(self, interval: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str = "") -> bool:
        with self._lock:
            now = self._monotonic()
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return False
            self._last[key] = now
            return True


class DigestLocks:
    """Re-entrant locks by image digest, striped so their number stays fixed.

    Enforcement reads every scan of a digest, patches its Image, then writes the scan's own
    status: two scans of one digest finishing at once in two handler threads must not
    interleave those steps, or one lifts the deny the other is about to record.
    """

    def __init__(self, stripes: int = 64) -> None:
        self._locks = tuple(threading.RLock() for _ in range(stripes))

    def __call__(self, digest: str) -> threading.RLock:
        return self._locks[zlib.crc32(digest.encode()) % len(self._locks)]


ADMIT: Final = "admit"  # start waiting scans as the limits allow (reconcile.queue)
SELECT: Final = "select"  # a policy's ImageStream selection -> ImageScans (reconcile.scans)


@dataclass(frozen=True)
class Task:
    """Work for the operator's one background loop (``reconcile.background``)."""

    kind: str  # ADMIT | SELECT
    key: str = ""  # SELECT: "<namespace>/<policy name>"


ALL_TASKS: Final = frozenset({ADMIT, SELECT})


class Wakeups:
    """Tasks asked for and not yet run, each at most once: a burst of requests (2,000
    ImageStream events at start-up, a hundred scans finishing) costs one run per task.

    ``take`` serves one lane (a set of task kinds): the selection may create thousands of
    scans, and admission must not wait behind it."""

    def __init__(self) -> None:
        self._pending: dict[Task, None] = {}
        self._changed = threading.Condition()

    def request(self, task: Task) -> None:
        with self._changed:
            self._pending[task] = None
            self._changed.notify_all()

    def take(
        self, timeout: float, settle: float = 0.0, kinds: frozenset[str] = ALL_TASKS
    ) -> list[Task]:
        """Wait up to ``timeout`` for a task of ``kinds``; then ``settle`` seconds more for
        others to join it (a burst of events); return and forget those pending."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._has(kinds), timeout):
                return []
        if settle > 0:
            time.sleep(settle)
        with self._changed:
            tasks = [t for t in self._pending if t.kind in kinds]
            for task in tasks:
                del self._pending[task]
        return tasks

    def _has(self, kinds: frozenset[str]) -> bool:
        return any(t.kind in kinds for t in self._pending)

    def __len__(self) -> int:
        with self._changed:
            return len(self._pending)


@dataclass
class OperatorContext:
    kube: Kube
    settings: Settings
    metrics: Metrics
    #: Whether scanner pods get a user namespace of their own (decided once at start:
    #: ``scapguard.reconcile.runtime.scanner_user_namespace``).
    scanner_user_namespace: bool = False
    #: Whether the cluster serves image.openshift.io (decided once at start): without it there
    #: are no ImageStreams to select nor Images to annotate (plain Kubernetes).
    image_api: bool = True
    clock: Callable[[], dt.datetime] = utcnow
    token_factory: Callable[[], str] = new_token
    # Serialises queue admission so the concurrency limits hold (one active replica: peering).
    admission_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Work for the background loop: handlers ask, the loop (``reconcile.background``) runs it.
    wakeups: Wakeups = field(default_factory=Wakeups)
    sweep_throttle: Throttle = field(default_factory=lambda: Throttle(60.0))
    deny_repair_throttle: Throttle = field(default_factory=lambda: Throttle(DENY_REPAIR_SECONDS))
    #: Per policy (uid): the repair pass over its finished scans (``reconcile.scanpolicy``).
    scan_repair_throttle: Throttle = field(default_factory=lambda: Throttle(SCAN_REPAIR_SECONDS))
    digest_lock: DigestLocks = field(default_factory=DigestLocks)
    _content: ContentCache | None = field(default=None, repr=False)
    _content_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def content(self) -> ContentCache:
        """The content cache under ``settings.content_cache_dir`` (made on first use)."""
        with self._content_lock:
            if self._content is None:
                settings = self.settings
                store = ContentStore(
                    Path(settings.content_cache_dir),
                    max_bytes=settings.content_cache_max_bytes,
                    clock=lambda: self.clock().timestamp(),
                )
                self._content = ContentCache(
                    store,
                    catalogue_overrides=settings.content_catalogue,
                    poll_seconds=settings.content_poll_seconds,
                    max_download=settings.content_max_download,
                    clock=lambda: self.clock().timestamp(),
                )
            return self._content

    def now(self) -> dt.datetime:
        return self.clock()

    def admit(self) -> None:
        """Ask the background loop to start waiting scans (queue admission)."""
        self.wakeups.request(Task(ADMIT))

    def select(self, namespace: str, policy: str) -> None:
        """Ask the background loop to bring a policy's ImageScans in line with its selection."""
        self.wakeups.request(Task(SELECT, f"{namespace}/{policy}"))

    def event(self, regarding: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event; a failure to post is logged, never fatal to the reconcile."""
        body = build_event(
            regarding=regarding,
            type_=type_,
            reason=reason,
            message=message,
            now=self.now(),
        )
        try:
            self.kube.create(EVENT, body)
        except KubeError as exc:
            logger.warning(
                "could not post Event %s about %s: %s",
                reason,
                (regarding.get("metadata") or {}).get("name"),
                exc,
            )

    def scan_namespaces(self) -> list[str | None]:
        """Namespaces to list ImageScans in: [None] (all) or the watched ones."""
        if not self.settings.watch_namespaces:
            return [None]
        return [*sorted(self.settings.watch_namespaces | {self.settings.namespace})]


@dataclass(frozen=True)
class Outcome:
    """How a reconcile ended, for the handler to map to kopf terms."""

    retry_after: float | None = None  # not done yet: try again after this many seconds
    permanent: str | None = None  # input no retry can fix (already reported as a condition)
    message: str = ""
