"""What the admission webhook knows without an API call: denied digests and ImageStream tags.

Fed with whole objects by list+watch of ``image.openshift.io/v1`` Images and ImageStreams
(:mod:`scapguard.k8s.informer`), read on every Pod admission. On a cluster without the image
API (plain Kubernetes) there are no Images to annotate and no ImageStreams: the index is fed by
the ImageScans themselves, a digest being denied while any of its scans has ``status.denied``.
The watches run in threads and the webhook in kopf's event loop, so every read and write holds
one lock for microseconds; objects are reduced to the few fields the decision needs before the
lock is taken.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.naming import scan_name
from scapguard.k8s.api import Obj, annotations_of, name_of, namespace_of

IMAGES: Final = "images"
IMAGESTREAMS: Final = "imagestreams"
IMAGESCANS: Final = "imagescans"
#: What feeds the index: the image API where it is served, else the ImageScans' verdicts.
OPENSHIFT_SOURCES: Final = (IMAGES, IMAGESTREAMS)
SCAN_SOURCES: Final = (IMAGESCANS,)
_MAX_QUALITY: Final = 400
_SEVERITY_ORDER: Final = ("critical", "high", "medium", "low", "unknown")


@dataclass(frozen=True)
class DeniedImage:
    """An Image carrying ``images.openshift.io/deny-execution: "true"``."""

    digest: str
    by_scapguard: bool  # carries scapguard's marker; without it a person set the deny
    denied_by: tuple[str, ...]  # "namespace/policy" of the ScanPolicies that deny it
    quality: str | None  # the scapguard quality annotation, rendered for people
    #: From ImageScan verdicts (no image API on the cluster), not from an Image's annotation.
    from_scans: bool = False

    def describe(self) -> str:
        """One line for a refusal: who denied it, the ImageScans, the scan summary."""
        if self.from_scans:
            scans = [_scan_ref(self.digest, ref) for ref in self.denied_by]
            text = "denied by scapguard for ScanPolicy " + ", ".join(self.denied_by)
            text += " (ImageScan " + ", ".join(s for s in scans if s) + ")"
            return text + (f"; scapguard: {self.quality}" if self.quality else "")
        if self.by_scapguard:
            who = "set by scapguard"
            if self.denied_by:
                who += " for ScanPolicy " + ", ".join(self.denied_by)
                scans = [_scan_ref(self.digest, ref) for ref in self.denied_by]
                who += " (ImageScan " + ", ".join(s for s in scans if s) + ")"
        else:
            who = "set by a person, not by scapguard"
        text = f"{c.OPENSHIFT_DENY_ANNOTATION}=true, {who}"
        if self.quality:
            text += f"; scapguard: {self.quality}"
        return text


@dataclass(frozen=True)
class StreamEntry:
    """An ImageStream reduced to what admission needs."""

    namespace: str
    name: str
    tags: Mapping[str, str]  # tag -> digest of status.tags[].items[0].image
    repositories: tuple[str, ...]  # status.dockerImageRepository, publicDockerImageRepository


def _scan_ref(digest: str, policy: str) -> str:
    namespace, _, name = policy.partition("/")
    if not namespace or not name:
        return ""
    try:
        return f"{namespace}/{scan_name(digest, namespace, name)}"
    except ValueError:  # not a sha256 digest: no deterministic ImageScan name
        return ""


def render_quality(raw: str | None) -> str | None:
    """``critical=1 high=0 ... (description)`` from the quality annotation, or None."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return "unreadable quality annotation"
    if not isinstance(data, Mapping):
        return "unreadable quality annotation"
    parts: list[str] = []
    summary = data.get("summary")
    if isinstance(summary, list):
        for entry in summary:
            if isinstance(entry, Mapping) and "label" in entry:
                parts.append(f"{entry['label']}={entry.get('data', '?')}")
    text = " ".join(parts) or "no summary"
    description = data.get("description")
    if isinstance(description, str) and description:
        text += f" ({description})"
    reference = data.get("reference")
    if isinstance(reference, str) and reference:
        text += f" {reference}"
    if len(text) > _MAX_QUALITY:
        text = text[: _MAX_QUALITY - 3] + "..."
    return text


def denied_image(image: Obj) -> DeniedImage | None:
    """The deny an Image carries, whoever set it; None when it may run."""
    annotations = annotations_of(image)
    if annotations.get(c.OPENSHIFT_DENY_ANNOTATION) != "true":
        return None
    denied_by = tuple(
        p.strip() for p in annotations.get(c.DENIED_BY_ANNOTATION, "").split(",") if p.strip()
    )
    return DeniedImage(
        digest=name_of(image),
        by_scapguard=annotations.get(c.DENY_MARKER_ANNOTATION) == "true",
        denied_by=denied_by,
        quality=render_quality(annotations.get(c.QUALITY_ANNOTATION)),
    )


def scan_denial(scan: Obj) -> DeniedImage | None:
    """The deny an ImageScan's verdict asks for (``status.denied``), or None."""
    status = scan.get("status") or {}
    spec = scan.get("spec") or {}
    image = spec.get("image")
    if status.get("denied") is not True or not isinstance(image, str) or "@" not in image:
        return None
    counts = status.get("vulnerabilities")
    quality = None
    if isinstance(counts, Mapping):
        quality = " ".join(f"{k}={counts[k]}" for k in _SEVERITY_ORDER if k in counts) or None
    if quality and status.get("failedRules"):
        quality += f" failedRules={len(status['failedRules'])}"
    return DeniedImage(
        digest=image.rsplit("@", 1)[1],
        by_scapguard=True,
        denied_by=(f"{namespace_of(scan)}/{spec.get('policy', '')}",),
        quality=quality,
        from_scans=True,
    )


def _merge_scan_denials(denials: Iterable[DeniedImage]) -> dict[str, DeniedImage]:
    """One deny per digest: the policies of all its denying scans, the first one's summary."""
    merged: dict[str, DeniedImage] = {}
    for deny in sorted(denials, key=lambda d: d.denied_by):
        before = merged.get(deny.digest)
        if before is None:
            merged[deny.digest] = deny
        else:
            policies = tuple(sorted({*before.denied_by, *deny.denied_by}))
            merged[deny.digest] = DeniedImage(
                deny.digest, True, policies, before.quality, from_scans=True
            )
    return merged


def stream_entry(stream: Obj) -> StreamEntry:
    status: Mapping[str, Any] = stream.get("status") or {}
    tags: dict[str, str] = {}
    for entry in status.get("tags") or []:
        if not isinstance(entry, Mapping):
            continue
        items = entry.get("items")
        tag = entry.get("tag")
        if isinstance(tag, str) and isinstance(items, list) and items:
            top = items[0]
            image = top.get("image") if isinstance(top, Mapping) else None
            if isinstance(image, str) and image:
                tags[tag] = image
    repositories = tuple(
        normalize_repository(r)
        for r in (status.get("dockerImageRepository"), status.get("publicDockerImageRepository"))
        if isinstance(r, str) and r
    )
    return StreamEntry(
        namespace=namespace_of(stream) or "",
        name=name_of(stream),
        tags=tags,
        repositories=repositories,
    )


def normalize_repository(repository: str) -> str:
    """Registry hosts are case-insensitive; repository paths are lowercase by grammar."""
    host, slash, path = repository.partition("/")
    return f"{host.lower()}{slash}{path}" if slash else repository


class ImageIndex:
    """Denied digests and ImageStream tags, kept current by watches."""

    def __init__(self, sources: tuple[str, ...] = OPENSHIFT_SOURCES) -> None:
        self._sources = sources
        self._lock = threading.Lock()
        self._denied: dict[str, DeniedImage] = {}
        #: Without the image API: (namespace, name) of each denying ImageScan -> its deny.
        self._denying_scans: dict[tuple[str, str], DeniedImage] = {}
        self._streams: dict[tuple[str, str], StreamEntry] = {}
        self._repositories: dict[str, tuple[str, str]] = {}
        self._synced: set[str] = set()
        self._failed: dict[str, str] = {}

    # -- feeding (watch threads) ------------------------------------------------------------

    def replace_images(self, images: Iterable[Obj]) -> None:
        """A complete listing of Images: forget anything not in it."""
        denied = {d.digest: d for d in (denied_image(i) for i in images) if d is not None}
        with self._lock:
            self._denied = denied
            self._synced.add(IMAGES)
            self._failed.pop(IMAGES, None)

    def apply_image(self, event: str, image: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for an Image."""
        digest = name_of(image)
        denied = None if event == "DELETED" else denied_image(image)
        with self._lock:
            if denied is None:
                self._denied.pop(digest, None)
            else:
                self._denied[digest] = denied

    def replace_streams(self, streams: Iterable[Obj]) -> None:
        """A complete listing of ImageStreams (all namespaces): forget anything not in it."""
        entries = {(e.namespace, e.name): e for e in (stream_entry(s) for s in streams)}
        repositories: dict[str, tuple[str, str]] = {}
        for key, entry in sorted(entries.items()):
            for repository in entry.repositories:
                repositories.setdefault(repository, key)
        with self._lock:
            self._streams = entries
            self._repositories = repositories
            self._synced.add(IMAGESTREAMS)
            self._failed.pop(IMAGESTREAMS, None)

    def apply_stream(self, event: str, stream: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for an ImageStream."""
        entry = stream_entry(stream)
        key = (entry.namespace, entry.name)
        with self._lock:
            old = self._streams.pop(key, None)
            if old is not None:
                for repository in old.repositories:
                    if self._repositories.get(repository) == key:
                        del self._repositories[repository]
            if event == "DELETED":
                return
            self._streams[key] = entry
            for repository in entry.repositories:
                self._repositories.setdefault(repository, key)

    def replace_scans(self, scans: Iterable[Obj]) -> None:
        """A complete listing of ImageScans (all namespaces): forget anything not in it."""
        denying = {}
        for scan in scans:
            deny = scan_denial(scan)
            if deny is not None:
                denying[(namespace_of(scan) or "", name_of(scan))] = deny
        with self._lock:
            self._denying_scans = denying
            self._denied = _merge_scan_denials(denying.values())
            self._synced.add(IMAGESCANS)
            self._failed.pop(IMAGESCANS, None)

    def apply_scan(self, event: str, scan: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for an ImageScan."""
        key = (namespace_of(scan) or "", name_of(scan))
        deny = None if event == "DELETED" else scan_denial(scan)
        with self._lock:
            old = self._denying_scans.pop(key, None)
            if deny is not None:
                self._denying_scans[key] = deny
            for digest in {d.digest for d in (old, deny) if d is not None}:
                same = [d for d in self._denying_scans.values() if d.digest == digest]
                merged = _merge_scan_denials(same)
                if digest in merged:
                    self._denied[digest] = merged[digest]
                else:
                    self._denied.pop(digest, None)

    def fail(self, source: str, reason: str) -> None:
        """A watch stopped for good (a bug, not the network): the index can no longer be
        trusted for ``source``, so the webhook answers as if it were not synced."""
        with self._lock:
            self._failed[source] = reason
            self._synced.discard(source)

    # -- reading (the webhook) --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(s in self._synced for s in self._sources)

    def not_ready_reason(self) -> str:
        with self._lock:
            failed = [f"{s}: {r}" for s, r in sorted(self._failed.items())]
            waiting = [s for s in self._sources if s not in self._synced and s not in self._failed]
        parts = []
        if failed:
            parts.append("watch failed (" + "; ".join(failed) + ")")
        if waiting:
            parts.append("initial listing of " + " and ".join(waiting) + " not finished")
        return ", ".join(parts) or "ready"

    def denied(self, digest: str) -> DeniedImage | None:
        with self._lock:
            return self._denied.get(digest)

    def stream(self, namespace: str, name: str) -> StreamEntry | None:
        with self._lock:
            return self._streams.get((namespace, name))

    def stream_for_repository(self, repository: str) -> StreamEntry | None:
        with self._lock:
            key = self._repositories.get(normalize_repository(repository))
            return self._streams.get(key) if key is not None else None

    def counts(self) -> tuple[int, int]:
        """(denied digests, ImageStreams) for logs."""
        with self._lock:
            return len(self._denied), len(self._streams)
