"""Rescans end to end: on demand (annotation on an ImageScan or a ScanPolicy, a hand-made
ImageScan), by the policy's cron schedule, and when its feed ConfigMap changes. Each rescan is a
new request with its own Job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Any

import pytest

from scapguard.api.constants import RESCAN_ANNOTATION
from scapguard.api.imagescan import parse_time
from scapguard.reconcile.scheduling import offset, window
from scapguard_dev.cluster import wait_for
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Timers poll every 30 s; an annotation must act through the watch, well before that.
PROMPT = 15.0


def request_of(scan: dict[str, Any]) -> dict[str, Any]:
    return dict(scan["status"]["request"])


def job_names(e2e: E2E, jobs: JobRecord, scan: dict[str, Any]) -> list[str]:
    return jobs.for_scan(e2e.namespace, scan["metadata"]["name"])


def test_rescan_by_annotation_on_a_scan_then_on_its_policy(e2e: E2E, jobs: JobRecord) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    e2e.policy(action="Report")
    one = e2e.tag("app", "v1", e2e.images.get("ubuntu2204", "patched"))
    two = e2e.tag("app", "v2", e2e.images.get("ubuntu2204", "vulnerable"))
    first = e2e.wait_result(one)
    other = e2e.wait_result(two)
    assert request_of(first)["trigger"] == "NewImage" and first["status"]["trigger"] == "NewImage"
    name = first["metadata"]["name"]
    assert jobs.attempts_of(e2e.namespace, name) == [(1, 1)]

    # A person asks for a rescan of one ImageScan: a new request, a new Job, nothing else.
    e2e.annotate_scan(name, {RESCAN_ANNOTATION: "by-hand-1"})
    asked = time.monotonic()
    wait_for(
        "a Job for the on-demand rescan",
        lambda: len(job_names(e2e, jobs, first)) == 2,
        PROMPT,
        0.1,
    )
    print(f"annotation -> rescan Job: {time.monotonic() - asked:.2f}s")
    again = e2e.wait_settled(name, request=2)
    request = request_of(again)
    assert (request["number"], request["trigger"]) == (2, "OnDemand")
    assert request["rescan"] == "by-hand-1"
    assert again["status"]["trigger"] == "OnDemand"
    assert again["status"]["result"] == "Pass"
    assert jobs.attempts_of(e2e.namespace, name)[1] == (2, 1)
    e2e.wait_events("ImageScan", name, "RescanRequested")
    assert len(job_names(e2e, jobs, other)) == 1, "only the annotated scan is rescanned"

    # The policy's annotation (here through the CLI) rescans every image it selects.
    asked = time.monotonic()
    out = e2e.scapguard("rescan", "--policy", "policy").decode()
    value = out.strip().rsplit("(", 1)[1].rstrip(")")
    wanted = f"OnDemand:policy/{value}"
    wait_for(
        "a Job for each image of the policy",
        lambda: len(job_names(e2e, jobs, first)) == 3 and len(job_names(e2e, jobs, other)) == 2,
        PROMPT,
        0.1,
    )
    print(f"CLI policy rescan -> both rescan Jobs: {time.monotonic() - asked:.2f}s")
    for scan, number in ((first, 3), (other, 2)):
        done = e2e.wait_settled(scan["metadata"]["name"], request=number)
        request = request_of(done)
        assert (request["number"], request["trigger"], request["rescan"]) == (
            number,
            "OnDemand",
            wanted,
        )
        assert jobs.attempts_of(e2e.namespace, scan["metadata"]["name"])[-1] == (number, 1)
    assert other["status"]["result"] == "Fail"
    assert e2e.wait_result(two, request=2)["status"]["result"] == "Fail"
    policy = e2e.policy_object()
    assert policy["status"]["observedRescan"] == value
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 5


def test_hand_made_imagescan_of_any_pullable_image(e2e: E2E, jobs: JobRecord) -> None:
    xml, expected = ubuntu_oval()
    e2e.feed(xml)
    e2e.policy(action="Report")
    image = e2e.images.get("ubuntu2204", "vulnerable").at(e2e.registry.cluster_host)
    created = e2e.make_scan("by-hand", image.by_digest)
    assert created["spec"]["trigger"] == "OnDemand"  # the CRD's default

    scan = e2e.wait_settled("by-hand")
    status = scan["status"]
    assert request_of(scan)["trigger"] == "OnDemand" and status["trigger"] == "OnDemand"
    assert status["result"] == "Fail" and status["denied"] is False  # Report only
    assert sorted(f["id"] for f in status["findings"]) == sorted({x.cve for x in expected})
    labels = scan["metadata"]["labels"]
    assert labels["scapguard.io/policy"] == "policy"
    assert labels["scapguard.io/digest"] == image.digest[7:70]
    names = jobs.for_scan(e2e.namespace, "by-hand")
    assert len(names) == 1 and names[0].endswith("-1-1")
    # Nothing else: the policy selects no ImageStream here.
    assert [s["metadata"]["name"] for s in e2e.scans()] == ["by-hand"]


def test_cron_schedule_rescans_within_the_window(e2e: E2E, jobs: JobRecord) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    e2e.policy(action="Report", schedule="* * * * *")
    digest = e2e.tag("app", "v1", e2e.images.get("ubuntu2204", "patched"))
    first = e2e.wait_result(digest)
    name = first["metadata"]["name"]
    assert request_of(first)["trigger"] == "NewImage"

    # The next fire is at most 60 s away, the scan's point at most 30 s after it, and the
    # policy timer looks every 30 s.
    scheduled = e2e.wait_result(digest, request=2, timeout=150)
    request = request_of(scheduled)
    assert request["trigger"] == "Scheduled", request
    assert request["rescan"].startswith("Scheduled:"), request
    fire = parse_time(request["rescan"].removeprefix("Scheduled:"))
    requested = parse_time(request["requestedAt"])
    assert fire is not None and requested is not None
    # Spread over the window: this scan's own point after the fire, never before it.
    spread = offset(name, window("* * * * *", fire + dt.timedelta(seconds=1)))
    slack = dt.timedelta(seconds=1)  # RFC 3339 seconds
    assert fire + spread - slack <= requested <= fire + spread + dt.timedelta(seconds=45)
    # One Job per request, first attempt each (the schedule may have fired again meanwhile).
    runs = jobs.attempts_of(e2e.namespace, name)
    assert runs[: request["number"]] == [(r, 1) for r in range(1, request["number"] + 1)]
    assert all(attempt == 1 for _, attempt in runs), runs
    policy = e2e.policy_object()
    assert policy["status"]["nextScheduledRescan"] > policy["status"]["lastScheduledRescan"]


def test_a_new_feed_in_the_config_map_rescans_and_denies(e2e: E2E, jobs: JobRecord) -> None:
    # The first feed rates every CVE negligible: the vulnerable image passes `failOn: high`.
    mild, _ = ubuntu_oval([("negligible", "low")])
    e2e.feed(mild)
    e2e.policy()
    digest = e2e.tag("app", "v1", e2e.images.get("ubuntu2204", "vulnerable"))
    first = e2e.wait_result(digest)
    assert first["status"]["result"] == "Pass" and first["status"]["denied"] is False
    name = first["metadata"]["name"]

    # The air-gapped admin loads a newer feed into the same ConfigMap.
    severe, expected = ubuntu_oval()
    e2e.core.patch_namespaced_config_map("feed", e2e.namespace, {"data": {"oval.xml": severe}})
    changed = time.monotonic()
    # The policy's timer looks every 30 s; then a scan.
    rescanned = e2e.wait_result(digest, request=2, timeout=150)
    print(f"feed ConfigMap changed -> rescan settled: {time.monotonic() - changed:.1f}s")
    request = request_of(rescanned)
    assert request["trigger"] == "ContentUpdate", request
    status = rescanned["status"]
    assert status["result"] == "Fail" and status["denied"] is True
    assert sorted(f["id"] for f in status["findings"]) == sorted({x.cve for x in expected})
    assert len(job_names(e2e, jobs, rescanned)) == 2
    e2e.wait_events("ScanPolicy", "policy", "ContentUpdated")
    sources = e2e.policy_object()["status"]["contentSources"]
    config_map = e2e.core.read_namespaced_config_map("feed", e2e.namespace).metadata
    assert config_map is not None
    assert sources == [
        {
            "configMap": "feed",
            "key": "oval.xml",
            "sha256": hashlib.sha256(severe.encode()).hexdigest(),
            "resourceVersion": config_map.resource_version,
        }
    ]
    assert name == rescanned["metadata"]["name"]
