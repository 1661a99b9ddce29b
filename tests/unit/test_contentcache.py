"""The operator's content cache: a content-addressed store, fetches once, conditional checks.

Upstream is a real HTTP server on 127.0.0.1 (http.server) that counts requests and answers
``If-None-Match`` with 304, as vendors' feed servers do.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from scapguard.contentcache.cache import ContentCache
from scapguard.contentcache.catalogue import catalogue_url, feed_name, key_of_name
from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.store import ContentStore
from tests.httpupstream import Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cache_at(tmp_path: Path, clock: Clock, **overrides: str) -> ContentCache:
    store = ContentStore(tmp_path / "cache", max_bytes=1 << 30, clock=clock)
    return ContentCache(
        store,
        catalogue_overrides=overrides,
        poll_seconds=600,
        max_download=1 << 20,
        timeout=10,
        clock=clock,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- store ------------------------------------------------------------------------------------


def test_store_keeps_blobs_by_their_sha256_read_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, max_bytes=1 << 20)
    digest = store.add_bytes(b"<oval/>", origin="test")
    path = store.path(digest)
    assert digest == sha(b"<oval/>")
    assert path is not None and path.read_bytes() == b"<oval/>"
    assert path.stat().st_mode & 0o222 == 0
    assert store.path("0" * 64) is None
    assert store.path("../../etc/passwd") is None


def test_store_refuses_bytes_that_are_not_the_promised_ones(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ContentFetchError, match=r"https://feeds\.example/x\.xml: sha256") as info:
        store.add(
            lambda p: p.write_bytes(b"evil"),
            expected="0" * 64,
            origin="https://feeds.example/x.xml",
        )
    assert info.value.invalid
    assert list((tmp_path / "sha256").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_store_evicts_least_recently_used_but_never_a_blob_in_use(tmp_path: Path) -> None:
    clock = Clock()
    store = ContentStore(tmp_path, max_bytes=25, keep_seconds=60, clock=clock)
    old, recent = store.add_bytes(b"a" * 10, origin="a"), store.add_bytes(b"b" * 10, origin="b")
    os.utime(tmp_path / "sha256" / old, (clock.now - 3600, clock.now - 3600))
    os.utime(tmp_path / "sha256" / recent, (clock.now - 10, clock.now - 10))
    newest = store.add_bytes(b"c" * 10, origin="c")  # 30 bytes > 25: the oldest goes
    assert store.path(old) is None
    assert store.path(recent) is not None and store.path(newest) is not None
    # Over capacity again, but both remaining blobs were used within keep_seconds: kept.
    store.add_bytes(b"d" * 10, origin="d")
    assert store.path(recent) is not None and store.path(newest) is not None


# -- URL with sha256 ---------------------------------------------------------------------------


def test_a_url_is_fetched_once_and_served_from_disk_after(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.files["/rhel-8.oval.xml.bz2"] = b"BZh9 feed bytes"
    cache = cache_at(tmp_path, Clock())
    url = upstream.url("/rhel-8.oval.xml.bz2")
    first = cache.url(url, sha(b"BZh9 feed bytes"))
    second = cache.url(url, sha(b"BZh9 feed bytes"))
    assert first == second
    assert first.path.read_bytes() == b"BZh9 feed bytes"
    assert (first.source, first.origin) == ("url", url)
    assert [p for p, _ in upstream.requests] == ["/rhel-8.oval.xml.bz2"]


def test_a_url_whose_bytes_differ_from_its_sha256_is_invalid(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.files["/feed.xml"] = b"changed upstream"
    cache = cache_at(tmp_path, Clock())
    with pytest.raises(ContentFetchError, match="does not match the expected") as info:
        cache.url(upstream.url("/feed.xml"), "1" * 64)
    assert info.value.invalid


def test_a_url_that_fails_names_it(tmp_path: Path, upstream: Upstream) -> None:
    cache = cache_at(tmp_path, Clock())
    with pytest.raises(ContentFetchError, match=r"/gone.xml: download failed: HTTP 404") as info:
        cache.url(upstream.url("/gone.xml"), "1" * 64)
    assert not info.value.invalid


def test_a_download_over_the_limit_is_refused(tmp_path: Path, upstream: Upstream) -> None:
    upstream.files["/big.xml"] = b"x" * ((1 << 20) + 1)
    cache = cache_at(tmp_path, Clock())
    with pytest.raises(ContentFetchError, match=r"larger than 1048576 bytes"):
        cache.url(upstream.url("/big.xml"), sha(b"x" * ((1 << 20) + 1)))


# -- catalogue --------------------------------------------------------------------------------


def test_catalogue_keys_names_and_overrides() -> None:
    assert feed_name("debian-bookworm") == "oval:debian-bookworm"
    assert key_of_name("oval:rhel-8") == "rhel-8"
    assert key_of_name("ssg-rhel8-ds.xml") is None
    assert catalogue_url("rhel-8", {}) == (
        "https://security.access.redhat.com/data/oval/v2/RHEL8/rhel-8.oval.xml.bz2"
    )
    assert catalogue_url("rocky-9", {}) is None
    assert catalogue_url("rocky-9", {"rocky-9": "https://mirror.internal/r9.xml"}) == (
        "https://mirror.internal/r9.xml"
    )
    assert catalogue_url("debian-12", {}) is None  # Debian's feeds go by codename


def test_catalogue_feed_is_checked_conditionally_once_per_poll_interval(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.files["/bookworm.xml.bz2"] = b"v1"
    clock = Clock()
    cache = cache_at(tmp_path, clock, **{"debian-bookworm": upstream.url("/bookworm.xml.bz2")})
    first = cache.catalogue("debian-bookworm")
    assert (first.sha256, first.source) == (sha(b"v1"), "catalogue")
    clock.now += 599
    assert cache.catalogue("debian-bookworm") == first
    assert len(upstream.requests) == 1  # within the interval: not asked again

    clock.now += 2
    assert cache.catalogue("debian-bookworm") == first
    assert upstream.requests[1] == ("/bookworm.xml.bz2", f'"{sha(b"v1")}"')  # 304

    upstream.files["/bookworm.xml.bz2"] = b"v2"
    clock.now += 601
    second = cache.catalogue("debian-bookworm")
    assert second.sha256 == sha(b"v2") and second.path.read_bytes() == b"v2"
    assert first.path.read_bytes() == b"v1"  # a scan still reading the old copy keeps it


def test_a_failed_check_keeps_serving_the_last_good_copy(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.files["/jammy.xml"] = b"v1"
    clock = Clock()
    cache = cache_at(tmp_path, clock, **{"ubuntu-jammy": upstream.url("/jammy.xml")})
    good = cache.catalogue("ubuntu-jammy")
    upstream.status = 503
    clock.now += 601
    assert cache.catalogue("ubuntu-jammy") == good
    asked = len(upstream.requests)
    assert cache.catalogue("ubuntu-jammy") == good  # backs off after a failure
    assert len(upstream.requests) == asked
    # Never fetched and failing: an error naming the URL.
    cache2 = cache_at(tmp_path / "other", clock, **{"ubuntu-noble": upstream.url("/noble.xml")})
    with pytest.raises(ContentFetchError, match=r"/noble.xml: download failed: HTTP 503"):
        cache2.catalogue("ubuntu-noble")


def test_a_key_without_a_feed_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ContentFetchError, match="no catalogue feed for rocky-9: give the policy"):
        cache_at(tmp_path, Clock()).catalogue("rocky-9")


def test_the_cache_survives_a_restart(tmp_path: Path, upstream: Upstream) -> None:
    """Records and blobs are on disk (a PVC, or an emptyDir across container restarts)."""
    upstream.files["/f.xml"] = b"v1"
    clock = Clock()
    first = cache_at(tmp_path, clock, **{"debian-trixie": upstream.url("/f.xml")})
    entry = first.catalogue("debian-trixie")
    again = cache_at(tmp_path, clock, **{"debian-trixie": upstream.url("/f.xml")})
    assert again.catalogue("debian-trixie") == entry
    assert len(upstream.requests) == 1
