"""Scanner pods' content requests (``GET /v1/content/<job>/<what>``) and upstream
ContentUpdate rescans, against the fake API and a real HTTP upstream on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import pytest

from scapguard.k8s.api import CONFIGMAP, EVENT, IMAGESCAN, SCANPOLICY, Obj
from scapguard.reconcile.contentserve import serve
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.results import model as m
from scapguard.results.model import ErrorReason
from scapguard.results_server import build_app
from scapguard.scanner import content
from scapguard.scanner.errors import ScanFailure
from scapguard_dev.ovalgen import ubuntu_oval
from tests.aioserve import serving
from tests.harness import (
    Harness,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
    secret_token,
)
from tests.httpupstream import Upstream

FEED = b"<oval_definitions>v1</oval_definitions>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def policy(h: Harness) -> Obj:
    return h.kube.get(SCANPOLICY, "default", "apps")


def start_scans(h: Harness) -> list[str]:
    reconcile_scanpolicy(h.ctx, policy(h))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    return [j["metadata"]["name"] for j in jobs(h)]


def with_config_map_feed(h: Harness, data: bytes = FEED) -> None:
    h.kube.create(
        CONFIGMAP,
        {"metadata": {"name": "feed", "namespace": "apps"}, "data": {"oval.xml": data.decode()}},
    )
    add_policy(
        h,
        vulnerabilities={
            "enabled": True,
            "feed": {"configMapRef": {"name": "feed", "key": "oval.xml"}},
        },
    )


def test_a_scan_gets_the_config_map_bytes_the_operator_read_when_it_started() -> None:
    h = harness()
    with_config_map_feed(h)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    token = secret_token(h, job)
    h.kube.patch(CONFIGMAP, "feed", "apps", {"data": {"oval.xml": "<changed/>"}})

    served = serve(h.ctx, job, token, "feed")
    assert served.entry is not None, served
    assert served.entry.path.read_bytes() == FEED
    assert (served.entry.source, served.entry.origin) == ("configMap", "apps/feed/oval.xml")
    assert served.entry.sha256 == sha(FEED)


def test_another_replica_serves_the_config_map_bytes_by_reading_them_again(
    tmp_path: Path,
) -> None:
    """The results Service sends a scanner to any replica: one whose cache never read the
    ConfigMap reads it now, and serves it only while it still holds the recorded bytes."""
    h = harness()
    with_config_map_feed(h)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    token = secret_token(h, job)
    other = dataclasses.replace(h.ctx, _content=None, settings=dataclasses.replace(
        h.ctx.settings, content_cache_dir=str(tmp_path / "other")))  # fmt: skip
    served = serve(other, job, token, "feed")
    assert served.entry is not None and served.entry.path.read_bytes() == FEED
    assert served.entry.path.is_relative_to(tmp_path / "other")
    h.kube.patch(CONFIGMAP, "feed", "apps", {"data": {"oval.xml": "<changed/>"}})
    third = dataclasses.replace(other, _content=None, settings=dataclasses.replace(
        h.ctx.settings, content_cache_dir=str(tmp_path / "third")))  # fmt: skip
    refused = serve(third, job, token, "feed")
    assert (refused.status, refused.reason) == (409, "ContentUnavailable")
    assert "no longer holds the bytes read when the scan started" in refused.message


def test_content_requests_are_authenticated_and_limited_to_the_scans_own_policy() -> None:
    h = harness()
    with_config_map_feed(h)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    token = secret_token(h, job)
    assert serve(h.ctx, job, "forged", "feed").status == 401
    assert serve(h.ctx, "scapguard-scan-000000000000-1-1", token, "feed").status == 401
    assert serve(h.ctx, "../../etc", token, "feed").status == 404
    refused = serve(h.ctx, job, token, "catalogue/debian-bookworm")
    assert (refused.status, refused.message) == (403, "the scan's policy names its own feed")
    assert serve(h.ctx, job, token, "tailoring").status == 404
    assert serve(h.ctx, job, token, "../feed").status == 404
    # Once the result is in, the credential fetches nothing more.
    assert post(h, job, scan_result(digest(1))).status == 200
    assert serve(h.ctx, job, token, "feed").status == 410


def test_a_missing_config_map_is_answered_with_the_problem() -> None:
    h = harness()
    add_policy(h, vulnerabilities={"feed": {"configMapRef": {"name": "absent", "key": "oval.xml"}}})
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    served = serve(h.ctx, job, secret_token(h, job), "feed")
    assert (served.status, served.reason) == (404, "ContentUnavailable")
    assert served.message == "ConfigMap apps/absent is missing"


def test_a_url_feed_is_fetched_once_for_every_scan(upstream: Upstream) -> None:
    upstream.files["/rhel-8.oval.xml.bz2"] = FEED
    h = harness()
    url = upstream.url("/rhel-8.oval.xml.bz2")
    add_policy(h, vulnerabilities={"feed": {"url": url, "sha256": sha(FEED)}})
    add_stream(h, "app", "apps", {"a": [digest(1)], "b": [digest(2)]})
    names = start_scans(h)
    assert len(names) == 2
    for job in names:
        served = serve(h.ctx, job, secret_token(h, job), "feed")
        assert served.entry is not None and served.entry.path.read_bytes() == FEED
        assert (served.entry.source, served.entry.origin) == ("url", url)
    assert len(upstream.requests) == 1


def test_a_url_feed_that_changed_upstream_is_content_invalid(upstream: Upstream) -> None:
    upstream.files["/feed.xml"] = b"<tampered/>"
    h = harness()
    add_policy(h, vulnerabilities={"feed": {"url": upstream.url("/feed.xml"), "sha256": sha(FEED)}})
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    served = serve(h.ctx, job, secret_token(h, job), "feed")
    assert (served.status, served.reason) == (422, "ContentInvalid")
    assert "does not match the expected" in served.message


def catalogue_harness(upstream: Upstream) -> Harness:
    return harness(
        SCAPGUARD_CONTENT_CATALOGUE=json.dumps(
            {"debian-bookworm": upstream.url("/oval-definitions-bookworm.xml.bz2")}
        ),
        SCAPGUARD_CONTENT_POLL_SECONDS="600",
    )


def test_catalogue_feeds_are_served_from_the_cache(upstream: Upstream) -> None:
    upstream.files["/oval-definitions-bookworm.xml.bz2"] = FEED
    h = catalogue_harness(upstream)
    add_policy(h)
    add_stream(h, "app", "apps", {"a": [digest(1)], "b": [digest(2)]})
    for job in start_scans(h):
        served = serve(h.ctx, job, secret_token(h, job), "catalogue/debian-bookworm")
        assert served.entry is not None and served.entry.sha256 == sha(FEED)
        assert served.entry.source == "catalogue"
        assert serve(h.ctx, job, secret_token(h, job), "catalogue/rocky-9").status == 502
    assert len(upstream.requests) == 1


def test_a_new_catalogue_feed_rescans_the_images_scanned_with_the_old_one(
    upstream: Upstream,
) -> None:
    upstream.files["/oval-definitions-bookworm.xml.bz2"] = FEED
    h = catalogue_harness(upstream)
    add_policy(h)
    add_stream(h, "app", "apps", {"a": [digest(1)], "b": [digest(2)]})
    used = m.ContentInfo("oval:debian-bookworm", "catalogue", sha(FEED), None)
    for job in start_scans(h):
        assert serve(h.ctx, job, secret_token(h, job), "catalogue/debian-bookworm").entry
        image = next(j for j in jobs(h) if j["metadata"]["name"] == job)
        ref = image["spec"]["template"]["spec"]["containers"][0]["args"][0]
        assert post(h, job, scan_result(ref.split("@")[1], content=used)).status == 200
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)

    reconcile_scanpolicy(h.ctx, policy(h))  # same content: nothing to do
    assert all("scapguard.io/rescan" not in s["metadata"].get("annotations", {})
               for s in h.kube.list(IMAGESCAN, "apps"))  # fmt: skip

    upstream.files["/oval-definitions-bookworm.xml.bz2"] = b"<oval_definitions>v2"
    h.clock.advance(300)
    reconcile_scanpolicy(h.ctx, policy(h))  # not due yet: upstream not asked
    assert len(upstream.requests) == 1
    h.clock.advance(301)
    reconcile_scanpolicy(h.ctx, policy(h))
    new = sha(b"<oval_definitions>v2")
    wanted = f"ContentUpdate:debian-bookworm@{new[:12]}"
    for scan in h.kube.list(IMAGESCAN, "apps"):
        assert scan["metadata"]["annotations"]["scapguard.io/rescan"] == wanted
    (event,) = [e for e in h.kube.list(EVENT, "apps") if e["reason"] == "ContentUpdated"]
    assert event["message"] == "new content in debian-bookworm: rescan of 2 images requested"


def test_a_catalogue_feed_that_cannot_be_checked_costs_one_check_per_pass(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.files["/oval-definitions-bookworm.xml.bz2"] = FEED
    h = catalogue_harness(upstream)
    add_policy(h)
    add_stream(h, "app", "apps", {t: [digest(n)] for n, t in enumerate("abcd")})
    used = m.ContentInfo("oval:debian-bookworm", "catalogue", sha(FEED), None)
    for job in start_scans(h):
        image = next(j for j in jobs(h) if j["metadata"]["name"] == job)
        ref = image["spec"]["template"]["spec"]["containers"][0]["args"][0]
        assert post(h, job, scan_result(ref.split("@")[1], content=used)).status == 200
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    del upstream.files["/oval-definitions-bookworm.xml.bz2"]
    h.clock.advance(601)
    before = len(upstream.requests)
    with caplog.at_level(logging.WARNING):
        reconcile_scanpolicy(h.ctx, policy(h))
    assert len(upstream.requests) - before == 1
    assert len([r for r in caplog.records if "cannot check catalogue feed" in r.message]) == 1


# -- over HTTP: the results server's endpoint and the scanner's client -------------------------


def results_server(h: Harness, port: int = 0) -> contextlib.AbstractContextManager[str]:
    """The operator's real results/content app on 127.0.0.1."""
    return serving(build_app(h.ctx), port)


def test_the_scanner_fetches_and_checks_served_content(tmp_path: Path) -> None:
    h = harness()
    feed = ubuntu_oval()[0].encode()
    with_config_map_feed(h, feed)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    token_file = tmp_path / "token"
    token_file.write_text(secret_token(h, job))
    with results_server(h) as base:
        server = content.ContentServer(f"{base}/v1/content/{job}", token_file)
        resolved = content.resolve(
            "oval",
            "oval:ubuntu-jammy",
            tmp_path / "work",
            override=content.ContentOverride(served="feed"),
            server=server,
        )
        assert resolved.info.source == "configMap"
        assert resolved.info.origin == "apps/feed/oval.xml"
        assert resolved.info.sha256 == sha(feed)
        assert resolved.path.read_bytes() == feed

        # A pin in the policy that the served bytes do not match: ContentInvalid.
        with pytest.raises(ScanFailure, match="does not match the expected") as info:
            content.resolve(
                "oval",
                "oval:ubuntu-jammy",
                tmp_path / "pinned",
                override=content.ContentOverride(served="feed", sha256="0" * 64),
                server=server,
            )
        assert info.value.reason == ErrorReason.CONTENT_INVALID

        # The operator's refusal reaches the scan's error, message and all.
        with pytest.raises(ScanFailure, match="the scan's policy names its own feed") as info:
            content.resolve(
                "oval",
                "oval:ubuntu-jammy",
                tmp_path / "cat",
                override=None,
                catalogue_key="ubuntu-jammy",
                server=server,
            )
        assert info.value.reason == ErrorReason.CONTENT_UNAVAILABLE
        token_file.write_text("forged")
        with pytest.raises(ScanFailure, match="HTTP 401"):
            content.resolve(
                "oval",
                "x",
                tmp_path / "forged",
                override=content.ContentOverride(served="feed"),
                server=server,
            )


def test_the_scanner_rides_out_an_operator_restart_but_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection refused (the operator restarting) is retried like the result post; an
    answer from the operator (a refusal, or 502: the source failed) is final."""
    h = harness()
    feed = ubuntu_oval()[0].encode()
    with_config_map_feed(h, feed)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    (job,) = start_scans(h)
    token_file = tmp_path / "token"
    token_file.write_text(secret_token(h, job))
    with results_server(h) as base:
        port = int(base.rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}/v1/content/{job}"
    served = content.ContentOverride(served="feed")
    sleeps: list[float] = []
    with contextlib.ExitStack() as stack:

        def sleep(seconds: float) -> None:  # the operator is back after the second wait
            sleeps.append(seconds)
            if len(sleeps) == 2 and not restarted:
                restarted.append(stack.enter_context(results_server(h, port)))

        restarted: list[str] = []
        monkeypatch.setattr(time, "sleep", sleep)
        server = content.ContentServer(url, token_file)
        got = content.resolve("oval", "x", tmp_path / "w", override=served, server=server)
        assert got.info.sha256 == sha(feed)
        assert sleeps == [2.0, 4.0]

    sleeps.clear()  # down for good: 8 attempts over about two minutes, then the error
    with pytest.raises(ScanFailure, match="Connection refused") as info:
        content.resolve("oval", "x", tmp_path / "v", override=served, server=server)
    assert info.value.reason == ErrorReason.CONTENT_UNAVAILABLE
    assert sleeps == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]

    sleeps.clear()
    with results_server(h) as base:
        server = content.ContentServer(f"{base}/v1/content/{job}", token_file)
        with pytest.raises(ScanFailure, match="names its own feed"):
            content.resolve("oval", "x", tmp_path / "c", override=None,
                            catalogue_key="ubuntu-jammy", server=server)  # fmt: skip
    assert sleeps == []
