"""A content-addressed store on the operator's disk: ``<root>/sha256/<hex>``, plus what each
upstream source last resolved to (``<root>/sources/<hash of the key>.json``).

Blobs are written to a temporary file, hashed while written, checked against the digest they
were promised, and renamed into place read-only, so a reader never sees a partial blob and a
blob's name is always its content's sha256. The store only hashes bytes: it never parses them
(the scanner decompresses and validates, sandboxed). Past ``max_bytes`` the least recently used
blobs go, except those used within ``keep_seconds`` (a scan may still be fetching them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from scapguard.contentcache.errors import ContentFetchError

log = logging.getLogger(__name__)

SHA256: Final = re.compile(r"[0-9a-f]{64}")
_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class SourceRecord:
    """What an upstream source (a catalogue URL, an OCI tag) resolved to when last checked."""

    key: str
    sha256: str
    origin: str  # the URL, or the reference with the manifest digest
    checked_at: float
    etag: str | None = None
    last_modified: str | None = None


class ContentStore:
    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        keep_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._blobs = root / "sha256"
        self._sources = root / "sources"
        self._tmp = root / "tmp"
        for d in (self._blobs, self._sources, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def single_flight(self, key: str) -> Iterator[None]:
        """One fetch per key at a time: a second caller waits, then finds the blob stored."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def path(self, sha256: str) -> Path | None:
        """The stored blob (its use time refreshed), or None."""
        if not SHA256.fullmatch(sha256):
            return None
        path = self._blobs / sha256
        try:
            self._touch(path)
        except FileNotFoundError:
            return None
        return path

    def add(self, fill: Callable[[Path], object], *, expected: str | None, origin: str) -> str:
        """Store what ``fill`` writes into the path it is given; returns its sha256.

        A mismatch with ``expected`` is a ContentFetchError (``invalid``) naming ``origin``;
        nothing is stored then.
        """
        fd, name = tempfile.mkstemp(dir=self._tmp)
        os.close(fd)
        tmp = Path(name)
        try:
            fill(tmp)
            digest = sha256_file(tmp)
            if expected is not None and digest != expected.lower():
                raise ContentFetchError(
                    f"{origin}: sha256 {digest} does not match the expected {expected}",
                    invalid=True,
                )
            tmp.chmod(0o444)
            self._touch(tmp)
            tmp.replace(self._blobs / digest)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=digest)
        return digest

    def add_bytes(self, data: bytes, *, origin: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.path(digest) is None:
            self.add(lambda p: p.write_bytes(data), expected=digest, origin=origin)
        return digest

    def _touch(self, path: Path) -> None:
        """Mark ``path`` used now (its mtime, by the store's clock) for eviction order."""
        now = self._clock()
        os.utime(path, (now, now))

    # -- sources -----------------------------------------------------------------------------

    def _source_file(self, key: str) -> Path:
        return self._sources / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def source(self, key: str) -> SourceRecord | None:
        try:
            doc = json.loads(self._source_file(key).read_text(encoding="utf-8"))
            record = SourceRecord(**doc)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("content source record for %s unreadable (%s); fetching again", key, exc)
            return None
        return record if record.key == key else None

    def record(self, record: SourceRecord) -> None:
        target = self._source_file(record.key)
        fd, name = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(record), f)
        Path(name).replace(target)

    # -- capacity ----------------------------------------------------------------------------

    def _evict(self, keep: str) -> None:
        entries = []
        for p in self._blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return
        recent = self._clock() - self.keep_seconds
        for mtime, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p.name == keep or mtime > recent:
                continue
            p.unlink(missing_ok=True)
            total -= size
            log.info("content cache: evicted sha256 %s (%d bytes)", p.name, size)
        if total > self.max_bytes:
            log.warning(
                "content cache holds %d bytes, over its %d: every blob is in use",
                total,
                self.max_bytes,
            )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
