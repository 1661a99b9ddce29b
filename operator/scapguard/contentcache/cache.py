"""The operator's content cache: each distinct feed or datastream fetched once, verified, kept
by sha256 in a :class:`~scapguard.contentcache.store.ContentStore`, and handed out as a file.

Sources:

- a URL with its sha256 (a policy's override): fetched on first use, kept while used;
- a catalogue feed (:mod:`scapguard.contentcache.catalogue`): fetched on first use, then checked
  again (``If-None-Match`` / ``If-Modified-Since``) once ``poll_seconds`` have passed since the
  last check; a check that fails keeps serving the last good copy;
- an OCI artifact or image in a registry (how air-gapped clusters mirror content): the tag is
  resolved on each use (one manifest request), the blob fetched once per digest;
- bytes the operator read itself (a ConfigMap), stored as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scapguard.contentcache import catalogue
from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.fetch import fetch_url
from scapguard.contentcache.oci import RegistryClient, parse_reference
from scapguard.contentcache.store import ContentStore, SourceRecord

log = logging.getLogger(__name__)

#: After a failed check of a source that has a good copy, the next check waits this long.
RETRY_AFTER_FAILURE: Final = 300.0


@dataclass(frozen=True)
class Entry:
    """One stored piece of content and where it came from."""

    path: Path
    sha256: str
    source: str  # url | catalogue | oci | configMap
    origin: str  # the URL, the reference with its manifest digest, or namespace/configmap/key


class _NotModified(Exception):
    pass


class ContentCache:
    def __init__(
        self,
        store: ContentStore,
        *,
        catalogue_overrides: Mapping[str, str],
        poll_seconds: float,
        max_download: int,
        timeout: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.catalogue_overrides = dict(catalogue_overrides)
        self.poll_seconds = poll_seconds
        self.max_download = max_download
        self.timeout = timeout
        self._clock = clock
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- by digest ---------------------------------------------------------------------------

    def put_bytes(self, data: bytes, *, origin: str) -> str:
        return self.store.add_bytes(data, origin=origin)

    def blob(self, sha256: str) -> Path | None:
        return self.store.path(sha256)

    def url(self, url: str, sha256: str) -> Entry:
        """The content at ``url``, which must hash to ``sha256``."""
        sha256 = sha256.lower()
        with self.store.single_flight(f"sha256:{sha256}"):
            path = self.store.path(sha256)
            if path is None:
                self.store.add(self._downloader(url), expected=sha256, origin=url)
                path = self._stored(sha256, url)
        return Entry(path, sha256, "url", url)

    # -- catalogue ---------------------------------------------------------------------------

    def catalogue_url(self, key: str) -> str | None:
        return catalogue.catalogue_url(key, self.catalogue_overrides)

    def catalogue(self, key: str, *, refresh: bool = True) -> Entry:
        """The catalogue feed ``key``, checked upstream when its last check is old enough.

        ``refresh`` False never touches the network: the last good copy or ContentFetchError.
        """
        url = self.catalogue_url(key)
        if url is None:
            raise ContentFetchError(
                f"no catalogue feed for {key}: give the policy a feed, or add {key} to the "
                "operator's content catalogue"
            )
        rkey = f"catalogue:{key}"
        with self.store.single_flight(rkey):
            record = self.store.source(rkey)
            if record is not None and record.origin != url:
                record = None  # the admin pointed the key elsewhere
            held = self.store.path(record.sha256) if record is not None else None
            now = self._clock()
            if record is not None and held is not None:
                due = now - record.checked_at >= self.poll_seconds
                if not refresh or not due or now < self._retry_at.get(rkey, 0.0):
                    return Entry(held, record.sha256, "catalogue", url)
            elif not refresh:
                raise ContentFetchError(f"{url}: not fetched yet")
            try:
                return self._refresh(rkey, url, record if held is not None else None)
            except ContentFetchError as exc:
                if record is None or held is None:
                    raise
                with self._lock:
                    self._retry_at[rkey] = now + min(self.poll_seconds, RETRY_AFTER_FAILURE)
                log.warning("%s; serving the copy fetched before (sha256 %s)", exc, record.sha256)
                return Entry(held, record.sha256, "catalogue", url)

    def _refresh(self, rkey: str, url: str, record: SourceRecord | None) -> Entry:
        headers: dict[str, str | None] = {}

        def fill(dest: Path) -> None:
            got = fetch_url(
                url,
                dest,
                max_bytes=self.max_download,
                timeout=self.timeout,
                etag=record.etag if record else None,
                last_modified=record.last_modified if record else None,
            )
            if not got.modified:
                raise _NotModified
            headers.update(etag=got.etag, last_modified=got.last_modified)

        now = self._clock()
        try:
            sha = self.store.add(fill, expected=None, origin=url)
        except _NotModified:
            if record is None:  # a 304 to an unconditional GET
                raise ContentFetchError(
                    f"{url}: answered 304 Not Modified to a plain GET"
                ) from None
            sha, etag, modified = record.sha256, record.etag, record.last_modified
            log.info("catalogue feed %s unchanged (sha256 %s)", url, sha)
        else:
            etag, modified = headers.get("etag"), headers.get("last_modified")
            if record is None or record.sha256 != sha:
                log.info("catalogue feed %s: new content, sha256 %s", url, sha)
        self.store.record(
            SourceRecord(
                key=rkey, sha256=sha, origin=url, checked_at=now, etag=etag, last_modified=modified
            )
        )
        return Entry(self._stored(sha, url), sha, "catalogue", url)

    # -- OCI ---------------------------------------------------------------------------------

    def oci(
        self,
        reference: str,
        file: str | None,
        *,
        auths: Mapping[str, tuple[str, str]],
        insecure: Collection[str],
    ) -> Entry:
        """The content of ``reference`` (``file``: its title in an artifact, its path in an
        image), resolved now."""
        ref = parse_reference(reference)
        client = RegistryClient(auths=auths, insecure=insecure, timeout=min(self.timeout, 120.0))
        art = client.resolve(ref, file)
        origin = f"{ref.registry}/{ref.repository}@{art.manifest_digest}"
        if art.path:
            origin += f"#{art.path}"
        key = f"oci-blob:{art.blob_digest}#{art.path or ''}"
        with self.store.single_flight(key):
            record = self.store.source(key)
            path = self.store.path(record.sha256) if record is not None else None
            if record is not None and path is not None:
                return Entry(path, record.sha256, "oci", origin)
            sha = self.store.add(
                lambda dest: client.fetch(art, dest, max_bytes=self.max_download),
                expected=None,
                origin=str(ref),
            )
            self.store.record(
                SourceRecord(key=key, sha256=sha, origin=origin, checked_at=self._clock())
            )
        return Entry(self._stored(sha, origin), sha, "oci", origin)

    def oci_current(
        self,
        reference: str,
        file: str | None,
        *,
        auths: Callable[[], Mapping[str, tuple[str, str]]],
        insecure: Collection[str],
    ) -> str:
        """The sha256 ``reference`` holds now, resolved at most once per ``poll_seconds``.

        ``auths`` is called only when the registry is asked (reading pull secrets costs API
        requests: not on every check that is not due)."""
        rkey = f"oci-tag:{reference}#{file or ''}"
        record = self.store.source(rkey)
        now = self._clock()
        if record is not None and now - record.checked_at < self.poll_seconds:
            return record.sha256
        if record is not None and now < self._retry_at.get(rkey, 0.0):
            return record.sha256
        try:
            entry = self.oci(reference, file, auths=auths(), insecure=insecure)
        except ContentFetchError:
            with self._lock:
                self._retry_at[rkey] = now + min(self.poll_seconds, RETRY_AFTER_FAILURE)
            raise
        self.store.record(
            SourceRecord(key=rkey, sha256=entry.sha256, origin=entry.origin, checked_at=now)
        )
        return entry.sha256

    # -- helpers -----------------------------------------------------------------------------

    def _downloader(self, url: str) -> Callable[[Path], object]:
        def fill(dest: Path) -> None:
            fetch_url(url, dest, max_bytes=self.max_download, timeout=self.timeout)

        return fill

    def _stored(self, sha256: str, origin: str) -> Path:
        path = self.store.path(sha256)
        if path is None:  # evicted between add and use: only under a cache far too small
            raise ContentFetchError(f"{origin}: the content cache is too small to hold it")
        return path
