"""ScanPolicy reconcile: rescans (annotation, policy change, cron), retention and GC, status."""

from __future__ import annotations

import base64
import hashlib
import json

from scapguard.api import constants as c
from scapguard.k8s.api import (
    CONFIGMAP,
    EVENT,
    IMAGE,
    IMAGESCAN,
    SCANPOLICY,
    SECRET,
    Conflict,
    Kind,
    NotFound,
    Obj,
)
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.imagestream import reconcile_imagestream
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.harness import (
    Harness,
    add_image,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
    set_stream_tags,
)


def policy(h: Harness, name: str = "default") -> Obj:
    return h.kube.get(SCANPOLICY, name, "apps")


def complete_all(h: Harness, findings: list[tuple[str, str]] | None = None) -> None:
    """Reconcile every scan, answer every Job (a clean result unless ``findings``: CVE id and
    severity), reconcile again."""
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    for job in jobs(h):
        image = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        result = scan_result(image.split("@")[1], findings or [])
        assert post(h, job["metadata"]["name"], result).status == 200
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)


def requests(h: Harness) -> dict[str, tuple[int, str]]:
    out = {}
    for scan in h.kube.list(IMAGESCAN, "apps"):
        req = scan["status"]["request"]
        out[scan["metadata"]["name"]] = (req["number"], req["trigger"])
    return out


def test_invalid_schedule_is_a_condition_naming_the_field() -> None:
    h = harness()
    add_policy(h, schedule="every day at noon")
    outcome = reconcile_scanpolicy(h.ctx, policy(h))
    assert outcome.permanent is not None and "spec.schedule" in outcome.permanent
    (ready,) = policy(h)["status"]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.schedule:")


def test_rescan_annotation_on_a_scan_and_on_the_policy() -> None:
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"a": [digest(1)], "b": [digest(2)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    first = next(iter(requests(h)))
    h.kube.patch(
        IMAGESCAN, first, "apps", {"metadata": {"annotations": {c.RESCAN_ANNOTATION: "please"}}}
    )
    complete_all(h)
    assert requests(h)[first] == (2, "OnDemand")
    assert len(h.kube.created("jobs")) == 3
    h.kube.patch(
        SCANPOLICY, "default", "apps", {"metadata": {"annotations": {c.RESCAN_ANNOTATION: "1"}}}
    )
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    assert sorted(requests(h).values()) == [(2, "OnDemand"), (3, "OnDemand")]
    reconcile_scanpolicy(h.ctx, policy(h))  # the same value does not rescan again
    complete_all(h)
    assert len(h.kube.created("jobs")) == 5


def test_content_change_rescans_but_failure_rule_change_does_not() -> None:
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    h.kube.patch(SCANPOLICY, "default", "apps", {"spec": {"failOn": "low"}})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    assert list(requests(h).values()) == [(1, "NewImage")]
    h.kube.patch(
        SCANPOLICY,
        "default",
        "apps",
        {
            "spec": {
                "compliance": {
                    "enabled": True,
                    "profile": "xccdf_org.ssgproject.content_profile_standard",
                }
            }
        },
    )
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    assert list(requests(h).values()) == [(2, "PolicyChange")]


def test_cron_rescans_are_spread_over_the_window() -> None:
    h = harness()
    add_policy(h, schedule="0 * * * *")
    add_stream(h, "app", "apps", {f"t{i}": [digest(10 + i)] for i in range(8)})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    h.clock.advance(3600)  # the next hour has fired; rescans spread over its first half
    seen: list[int] = []
    for _ in range(30):
        h.clock.advance(60)
        reconcile_scanpolicy(h.ctx, policy(h))
        seen.append(sum(1 for n, _ in requests(h).values() if n == 2))
        complete_all(h)
    assert seen[-1] == 8
    assert len(set(seen)) > 3, f"rescans came all at once: {seen}"
    assert {t for n, t in requests(h).values()} == {"Scheduled"}
    status = policy(h)["status"]
    assert status["lastScheduledRescan"].endswith(":00:00Z")
    assert status["nextScheduledRescan"] > status["lastScheduledRescan"]


def test_retention_and_untagged_grace() -> None:
    h = harness(SCAPGUARD_CLEANUP_GRACE_SECONDS="600")
    add_policy(h, retention={"keep": 1}, action="Enforce")
    add_image(h, digest(3))
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    set_stream_tags(h, "app", "apps", {"latest": [digest(2), digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    set_stream_tags(h, "app", "apps", {"latest": [digest(3), digest(2), digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    by_digest = {s["spec"]["image"].split("@")[1]: s for s in h.kube.list(IMAGESCAN, "apps")}
    assert set(by_digest) == {digest(2), digest(3)}, "digest 1 is beyond keep=1"
    assert by_digest[digest(2)]["spec"]["tags"] == []
    # The tag is deleted: digest 3 and 2 are known to no tag; deleted after the grace period.
    set_stream_tags(h, "app", "apps", {})
    reconcile_scanpolicy(h.ctx, policy(h))
    assert all(
        c.UNTAGGED_SINCE_ANNOTATION in s["metadata"]["annotations"]
        for s in h.kube.list(IMAGESCAN, "apps")
    )
    h.clock.advance(601)
    reconcile_scanpolicy(h.ctx, policy(h))
    assert h.kube.list(IMAGESCAN, "apps") == []


def test_a_scan_that_denies_its_image_is_never_collected() -> None:
    """Untagged or beyond retention, a failing digest may still be pinned by a Deployment:
    deleting its scan would lift the deny."""
    h = harness(SCAPGUARD_CLEANUP_GRACE_SECONDS="600")
    add_policy(h, retention={"keep": 0}, action="Enforce", failOn="high")
    add_image(h, digest(1))
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h, [("CVE-1", "critical")])
    set_stream_tags(h, "app", "apps", {"latest": [digest(2), digest(1)]})  # beyond keep=0
    reconcile_scanpolicy(h.ctx, policy(h))
    set_stream_tags(h, "app", "apps", {})
    reconcile_scanpolicy(h.ctx, policy(h))
    h.clock.advance(601)
    reconcile_scanpolicy(h.ctx, policy(h))
    (kept,) = h.kube.list(IMAGESCAN, "apps")  # digest 2's scan was collected, digest 1's kept
    assert kept["status"]["denied"] is True
    annotations = h.kube.get(IMAGE, digest(1))["metadata"]["annotations"]
    assert annotations[c.OPENSHIFT_DENY_ANNOTATION] == "true"


def test_tag_moving_updates_tags_via_the_imagestream_fast_path() -> None:
    h = harness()
    add_policy(h, tags=["v*"])
    stream = add_stream(h, "app", "apps", {"v1": [digest(1)], "latest": [digest(1)]})
    reconcile_imagestream(h.ctx, stream)
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    assert [t["tag"] for t in scan["spec"]["tags"]] == ["v1"], "tag globs apply"
    stream = set_stream_tags(h, "app", "apps", {"v1": [digest(2), digest(1)], "v2": [digest(1)]})
    reconcile_imagestream(h.ctx, stream)
    tags = {
        s["spec"]["image"].split("@")[1]: [t["tag"] for t in s["spec"]["tags"]]
        for s in h.kube.list(IMAGESCAN, "apps")
    }
    assert tags == {digest(1): ["v2"], digest(2): ["v1"]}


def test_cluster_wide_policy_covers_selected_namespaces() -> None:
    h = harness()
    from scapguard.k8s.api import NAMESPACE

    h.kube.create(NAMESPACE, {"metadata": {"name": "team-a", "labels": {"scan": "yes"}}})
    h.kube.create(NAMESPACE, {"metadata": {"name": "team-b"}})
    add_policy(
        h, "global", h.ctx.settings.namespace, namespaceSelector={"matchLabels": {"scan": "yes"}}
    )
    add_stream(h, "app", "team-a", {"latest": [digest(1)]})
    add_stream(h, "app", "team-b", {"latest": [digest(2)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "global", h.ctx.settings.namespace))
    (scan,) = h.kube.list(IMAGESCAN, h.ctx.settings.namespace)
    assert scan["spec"]["tags"] == [{"namespace": "team-a", "imageStream": "app", "tag": "latest"}]
    assert h.kube.list(IMAGE) == []


def test_hand_made_scan_is_an_on_demand_scan() -> None:
    h = harness()
    add_policy(h)
    image = f"quay.example/x/y@{digest(42)}"
    scan = h.kube.create(
        IMAGESCAN,
        {
            "metadata": {"name": "manual", "namespace": "apps"},
            "spec": {"image": image, "policy": "default"},
        },
    )
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    assert post(h, job["metadata"]["name"], scan_result(digest(42))).status == 200
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, "manual", "apps"))
    done = h.kube.get(IMAGESCAN, "manual", "apps")
    assert done["status"]["result"] == "Pass"
    assert done["status"]["trigger"] == "OnDemand"
    assert done["metadata"]["labels"][c.POLICY_LABEL] == "default"
    enforced = next(x for x in done["status"]["conditions"] if x["type"] == "Enforced")
    assert enforced["reason"] == "ReportOnly"


def test_a_tag_update_racing_another_writer_is_retried_and_ends_as_the_selection() -> None:
    h = harness()
    add_policy(h)
    app = add_stream(h, "app", "apps", {"latest": [digest(1)], "v1": [digest(1)]})
    reconcile_imagestream(h.ctx, app)
    mirror = add_stream(h, "mirror", "apps", {"stable": [digest(1)]})
    raced: list[bool] = []

    def another_writer_first(verb: str, kind: Kind, body: Obj) -> None:
        if verb == "patch" and kind.plural == "imagescans" and not raced:
            raced.append(True)
            (stored,) = [o for k, o in h.kube.objects.items() if k[0].startswith("imagescans")]
            stored["metadata"]["resourceVersion"] = "concurrent"
            raise Conflict(409, "Conflict", "modified")

    h.kube.before_write = another_writer_first
    reconcile_imagestream(h.ctx, mirror)
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    assert raced
    assert {(t["imageStream"], t["tag"]) for t in scan["spec"]["tags"]} == {
        ("app", "latest"),
        ("app", "v1"),
        ("mirror", "stable"),
    }


def test_only_policies_in_the_operator_namespace_choose_the_scanner_image() -> None:
    h = harness()
    operator_ns = h.ctx.settings.namespace
    scanner = {"image": "evil.example/scanner:1", "nodeSelector": {"pool": "scan"}}
    add_policy(h, scanner=scanner)
    add_policy(h, "admin", operator_ns, scanner=scanner)
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    add_stream(h, "app", operator_ns, {"latest": [digest(2)]})
    for namespace, name in (("apps", "default"), (operator_ns, "admin")):
        reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, name, namespace))
    for scan in h.kube.list(IMAGESCAN):
        reconcile_imagescan(h.ctx, scan)
    pods = {
        job["spec"]["template"]["spec"]["containers"][0]["args"][0].split("@")[1]: job["spec"][
            "template"
        ]["spec"]
        for job in jobs(h)
    }
    tenant, admin = pods[digest(1)], pods[digest(2)]
    assert tenant["containers"][0]["image"] == h.ctx.settings.scanner_image
    assert "nodeSelector" not in tenant
    assert admin["containers"][0]["image"] == "evil.example/scanner:1"
    assert admin["nodeSelector"] == {"pool": "scan"}
    reconcile_scanpolicy(h.ctx, policy(h))
    (ready,) = policy(h)["status"]["conditions"]
    assert ready["status"] == "True"
    assert "spec.scanner.image, spec.scanner.nodeSelector ignored" in ready["message"]
    (admin_ready,) = h.kube.get(SCANPOLICY, "admin", operator_ns)["status"]["conditions"]
    assert "spec.scanner" not in admin_ready["message"]


FEED_REF = {"configMapRef": {"name": "feed", "key": "oval.xml"}}


def set_feed(h: Harness, text: str | None) -> None:
    """The policy's feed ConfigMap holds ``text``; None deletes it."""
    body = {"metadata": {"name": "feed", "namespace": "apps"}, "data": {"oval.xml": text}}
    try:
        h.kube.get(CONFIGMAP, "feed", "apps")
    except NotFound:
        if text is not None:
            h.kube.create(CONFIGMAP, body)
        return
    if text is None:
        h.kube.delete(CONFIGMAP, "feed", "apps")
    else:
        h.kube.patch(CONFIGMAP, "feed", "apps", {"data": {"oval.xml": text}})


def test_a_changed_feed_config_map_rescans_every_image_as_content_update() -> None:
    h = harness()
    set_feed(h, "<oval>1</oval>")
    add_policy(h, vulnerabilities={"enabled": True, "feed": FEED_REF})
    add_stream(h, "app", "apps", {"a": [digest(1)], "b": [digest(2)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    reconcile_scanpolicy(h.ctx, policy(h))
    (source,) = policy(h)["status"]["contentSources"]
    assert source == {
        "configMap": "feed",
        "key": "oval.xml",
        "sha256": hashlib.sha256(b"<oval>1</oval>").hexdigest(),
        "resourceVersion": h.kube.get(CONFIGMAP, "feed", "apps")["metadata"]["resourceVersion"],
    }
    assert len(h.kube.created("jobs")) == 2

    # An unrelated key of the same ConfigMap changes nothing.
    h.kube.patch(CONFIGMAP, "feed", "apps", {"data": {"README": "not a feed"}})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    assert len(h.kube.created("jobs")) == 2

    set_feed(h, "<oval>2</oval>")
    reconcile_scanpolicy(h.ctx, policy(h))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    # The new bytes go to the scanner: the rescan Jobs' Secrets name their digest, and the
    # content cache serves those bytes under it.
    for name in h.kube.created("jobs")[2:]:
        secret = h.kube.get(SECRET, name, h.ctx.settings.namespace)
        plan = json.loads(base64.b64decode(secret["data"][c.CONTENT_KEY]))
        path = h.ctx.content.blob(plan["feed"]["sha256"])
        assert path is not None and path.read_bytes() == b"<oval>2</oval>"
        assert plan["feed"]["origin"] == "apps/feed/oval.xml"
    complete_all(h)
    assert sorted(requests(h).values()) == [(2, "ContentUpdate"), (2, "ContentUpdate")]
    assert len(h.kube.created("jobs")) == 4
    (event,) = [e for e in h.kube.list(EVENT, "apps") if e["reason"] == "ContentUpdated"]
    assert "feed/oval.xml" in event["message"] and event["involvedObject"]["kind"] == "ScanPolicy"

    reconcile_scanpolicy(h.ctx, policy(h))  # recorded: no second rescan
    complete_all(h)
    assert len(h.kube.created("jobs")) == 4


def test_an_unchanged_feed_config_map_is_checked_by_its_metadata_only() -> None:
    h = harness()
    set_feed(h, "<oval>1</oval>")
    add_policy(h, vulnerabilities={"enabled": True, "feed": FEED_REF})
    h.kube.reads.clear()
    reconcile_scanpolicy(h.ctx, policy(h))  # first record: the bytes are read
    feed_reads = [r for r in h.kube.reads if r[1:] == ("configmaps", "apps", "feed")]
    assert [verb for verb, *_ in feed_reads] == ["get"]

    h.kube.reads.clear()
    recorded = policy(h)["status"]["contentSources"]
    reconcile_scanpolicy(h.ctx, policy(h))
    reconcile_scanpolicy(h.ctx, policy(h))
    feed_reads = [r for r in h.kube.reads if r[1:] == ("configmaps", "apps", "feed")]
    assert [verb for verb, *_ in feed_reads] == ["get_metadata", "get_metadata"]
    assert policy(h)["status"]["contentSources"] == recorded

    # Deleted after it was recorded: its metadata says so, and it counts as a change.
    set_feed(h, None)
    reconcile_scanpolicy(h.ctx, policy(h))
    assert policy(h)["status"]["contentSources"] == [
        {"configMap": "feed", "key": "oval.xml", "missing": True}
    ]
    events = [e for e in h.kube.list(EVENT, "apps") if e["reason"] == "ContentUpdated"]
    assert len(events) == 1 and "feed/oval.xml" in events[0]["message"]


def test_a_feed_config_map_that_appears_later_rescans_and_one_missing_is_recorded() -> None:
    h = harness()
    add_policy(h, vulnerabilities={"enabled": True, "feed": FEED_REF})
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    reconcile_scanpolicy(h.ctx, policy(h))
    assert policy(h)["status"]["contentSources"] == [
        {"configMap": "feed", "key": "oval.xml", "missing": True}
    ]
    # The admin creates the ConfigMap the scans were missing: every image is scanned again.
    set_feed(h, "<oval/>")
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)
    assert list(requests(h).values()) == [(2, "ContentUpdate")]


def test_a_scan_under_way_is_rescanned_after_a_content_update() -> None:
    h = harness()
    set_feed(h, "<oval>1</oval>")
    add_policy(h, vulnerabilities={"enabled": True, "feed": FEED_REF})
    add_stream(h, "app", "apps", {"a": [digest(1)]})
    reconcile_scanpolicy(h.ctx, policy(h))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)  # its Job runs with the old feed
    set_feed(h, "<oval>2</oval>")
    reconcile_scanpolicy(h.ctx, policy(h))
    complete_all(h)  # the old attempt's result lands, then the rescan starts
    complete_all(h)
    assert list(requests(h).values()) == [(2, "ContentUpdate")]
    assert len(h.kube.created("jobs")) == 2


def test_a_policy_without_config_map_content_records_none() -> None:
    h = harness()
    add_policy(h, vulnerabilities={"enabled": True, "feed": FEED_REF})
    reconcile_scanpolicy(h.ctx, policy(h))
    assert policy(h)["status"]["contentSources"]
    h.kube.patch(SCANPOLICY, "default", "apps", {"spec": {"vulnerabilities": {"feed": None}}})
    reconcile_scanpolicy(h.ctx, policy(h))
    assert policy(h)["status"].get("contentSources") is None


def test_policy_counts_images_not_scans() -> None:
    """A hand-made ImageScan of a selected digest is a second scan of one image."""
    h = harness()
    vulnerable = digest(11)
    add_policy(h, action="Enforce", failOn="high", scanner={"retries": 0})
    add_image(h, vulnerable)
    add_stream(h, "app", "apps", {"latest": [vulnerable]})
    reconcile_scanpolicy(h.ctx, policy(h))
    image = f"registry.local:5000/apps/app@{vulnerable}"
    by_hand = {"name": "by-hand", "namespace": "apps"}
    h.kube.create(IMAGESCAN, {"metadata": by_hand, "spec": {"image": image, "policy": "default"}})
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    for job in jobs(h):
        post(h, job["metadata"]["name"], scan_result(vulnerable, [("CVE-1", "critical")]))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    assert len(h.kube.list(IMAGESCAN, "apps")) == 2
    reconcile_scanpolicy(h.ctx, policy(h))
    status = policy(h)["status"]
    counts = {k: status[k] for k in ("imagesSelected", "imagesScanned", "imagesFailing")}
    assert counts == {"imagesSelected": 1, "imagesScanned": 1, "imagesFailing": 1}
    assert status["imagesDenied"] == 1
