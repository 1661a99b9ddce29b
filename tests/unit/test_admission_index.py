"""The watch-fed index: listings replace, events patch, readiness, failures."""

from __future__ import annotations

import json
from typing import Any

from scapguard.api import constants as c
from scapguard.reconcile.imageindex import IMAGES, SCAN_SOURCES, ImageIndex, render_quality

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def image(digest: str, deny: bool) -> dict[str, Any]:
    annotations = {c.OPENSHIFT_DENY_ANNOTATION: "true"} if deny else {}
    return {"metadata": {"name": digest, "annotations": annotations}}


def stream(namespace: str, name: str, repository: str, **tags: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "status": {
            "dockerImageRepository": repository,
            "tags": [{"tag": t, "items": [{"image": d}, {"image": D1}]} for t, d in tags.items()],
        },
    }


def test_ready_only_after_both_listings() -> None:
    index = ImageIndex()
    assert not index.ready
    index.replace_images([])
    assert not index.ready
    assert index.not_ready_reason() == "initial listing of imagestreams not finished"
    index.replace_streams([])
    assert index.ready


def test_images_listing_replaces_and_events_follow() -> None:
    index = ImageIndex()
    index.replace_images([image(D1, True), image(D2, False)])
    assert index.denied(D1) is not None
    assert index.denied(D2) is None
    index.apply_image("MODIFIED", image(D2, True))
    index.apply_image("MODIFIED", image(D1, False))
    assert index.denied(D1) is None
    assert index.denied(D2) is not None
    index.apply_image("DELETED", image(D2, True))
    assert index.denied(D2) is None
    # A relist forgets what is gone even without a DELETED event.
    index.apply_image("ADDED", image(D1, True))
    index.replace_images([])
    assert index.denied(D1) is None
    assert index.counts() == (0, 0)


def test_deny_value_must_be_true() -> None:
    index = ImageIndex()
    odd = {"metadata": {"name": D1, "annotations": {c.OPENSHIFT_DENY_ANNOTATION: "yes"}}}
    index.replace_images([odd])
    assert index.denied(D1) is None


def test_streams_map_tags_to_the_newest_item_and_repositories() -> None:
    index = ImageIndex()
    index.replace_streams([stream("ns", "app", "Reg.Example:5000/ns/app", latest=D2)])
    entry = index.stream("ns", "app")
    assert entry is not None
    assert entry.tags == {"latest": D2}
    assert index.stream_for_repository("reg.example:5000/ns/app") == entry
    # The stream moves to another repository: the old one no longer resolves.
    index.apply_stream("MODIFIED", stream("ns", "app", "other:5000/ns/app", latest=D1))
    assert index.stream_for_repository("reg.example:5000/ns/app") is None
    moved = index.stream_for_repository("other:5000/ns/app")
    assert moved is not None
    assert moved.tags == {"latest": D1}
    index.apply_stream("DELETED", stream("ns", "app", "other:5000/ns/app"))
    assert index.stream("ns", "app") is None
    assert index.stream_for_repository("other:5000/ns/app") is None


def test_stream_without_status_has_no_tags() -> None:
    index = ImageIndex()
    index.replace_streams([{"metadata": {"namespace": "ns", "name": "new"}}])
    entry = index.stream("ns", "new")
    assert entry is not None
    assert entry.tags == {}
    assert entry.repositories == ()


def test_failed_watch_makes_the_index_not_ready_until_relisted() -> None:
    index = ImageIndex()
    index.replace_images([])
    index.replace_streams([])
    index.fail(IMAGES, "KeyError: 'metadata'")
    assert not index.ready
    assert index.not_ready_reason() == "watch failed (images: KeyError: 'metadata')"
    index.replace_images([])
    assert index.ready


def test_render_quality() -> None:
    raw = json.dumps(
        {
            "description": "Fail",
            "summary": [{"label": "critical", "data": "3"}, {"label": "failed rules", "data": "1"}],
        }
    )
    assert render_quality(raw) == "critical=3 failed rules=1 (Fail)"
    assert render_quality(None) is None
    assert render_quality("{not json") == "unreadable quality annotation"
    long = render_quality(json.dumps({"description": "x" * 1000}))
    assert long is not None
    assert len(long) == 400
    assert long.endswith("...")


# -- plain Kubernetes: no image API, the ImageScans' verdicts feed the index --------------------


def scan(namespace: str, name: str, digest: str, policy: str, denied: bool) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"image": f"registry.local:5000/apps/app@{digest}", "policy": policy},
        "status": {"denied": denied, "vulnerabilities": {"critical": 1, "high": 0}},
    }


def test_without_the_image_api_scans_feed_the_index() -> None:
    index = ImageIndex(SCAN_SOURCES)
    assert index.not_ready_reason() == "initial listing of imagescans not finished"
    index.replace_scans(
        [scan("apps", "s1", D1, "strict", True), scan("apps", "s2", D2, "p", False)]
    )
    assert index.ready  # no ImageStreams to wait for
    deny = index.denied(D1)
    assert deny is not None and deny.from_scans and deny.denied_by == ("apps/strict",)
    assert deny.describe().startswith("denied by scapguard for ScanPolicy apps/strict (ImageScan")
    assert "critical=1 high=0" in deny.describe()
    assert index.denied(D2) is None

    # A second policy denies D1 too; the first lifts: still denied, by the second only.
    index.apply_scan("ADDED", scan("ops", "s3", D1, "baseline", True))
    assert index.denied(D1).denied_by == ("apps/strict", "ops/baseline")  # type: ignore[union-attr]
    index.apply_scan("MODIFIED", scan("apps", "s1", D1, "strict", False))
    assert index.denied(D1).denied_by == ("ops/baseline",)  # type: ignore[union-attr]
    index.apply_scan("DELETED", scan("ops", "s3", D1, "baseline", True))
    assert index.denied(D1) is None
    # A scan that denies its digest on a later verdict.
    index.apply_scan("MODIFIED", scan("apps", "s2", D2, "p", True))
    assert index.denied(D2) is not None
    # A relist forgets what is gone.
    index.replace_scans([])
    assert index.denied(D2) is None


def test_a_scan_without_a_digest_denies_nothing() -> None:
    index = ImageIndex(SCAN_SOURCES)
    odd = scan("apps", "s", D1, "p", True)
    odd["spec"]["image"] = "registry.local:5000/apps/app:latest"
    index.replace_scans([odd])
    assert index.counts() == (0, 0)
