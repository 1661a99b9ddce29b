"""A burst of new digests under the concurrency limit: queued, never more than the limit of
scanner Jobs at a time, all scanned, one Job each. Also measures tag -> Job latency."""

from __future__ import annotations

import math
import re
import statistics
import time

import pytest

from scapguard.api.constants import SCAN_NAME_ANNOTATION
from scapguard.api.naming import scan_name
from scapguard_dev.cluster import wait_for
from scapguard_dev.helminstall import ChartInstall
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, MAX_CONCURRENT, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BATCH = 20


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def test_twenty_new_digests_run_at_most_the_limit_at_a_time(
    e2e: E2E, jobs: JobRecord, operator: ChartInstall
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    images = e2e.distinct_images(BATCH)
    assert len({image.digest for image in images}) == BATCH
    e2e.policy(action="Report")
    key = f"{e2e.namespace}/policy"
    names = {image.digest: scan_name(image.digest, e2e.namespace, "policy") for image in images}

    tagged_at: dict[str, float] = {}
    for index, image in enumerate(images):
        e2e.tag("batch", f"t{index:02d}", image)
        tagged_at[names[image.digest]] = time.time()

    depth = re.compile(rf'^scapguard_scan_queue_depth\{{policy="{re.escape(key)}"\}} (\S+)$', re.M)
    peak_queue = 0.0

    def all_settled() -> bool:
        nonlocal peak_queue
        for value in depth.findall(operator.metrics()):
            peak_queue = max(peak_queue, float(value))
        settled = [
            s
            for s in e2e.scans()
            if (s.get("status") or {}).get("state") == "Completed" and s["status"].get("result")
        ]
        return len(settled) == BATCH

    started = time.monotonic()
    wait_for(f"all {BATCH} ImageScans to settle", all_settled, 300, 0.25)
    elapsed = time.monotonic() - started

    created = jobs.for_policy(key)
    assert len(created) == BATCH, created
    assert all(name.endswith("-1-1") for name in created), "no retries, no second Jobs"
    by_scan = {jobs.created[name][SCAN_NAME_ANNOTATION]: name for name in created}
    assert set(by_scan) == set(names.values())
    assert all(s["status"]["result"] == "Pass" for s in e2e.scans())
    # The limit was reached (so the burst really queued) and never exceeded.
    assert jobs.max_active[key] == MAX_CONCURRENT, jobs.max_active[key]
    assert jobs.max_active_total <= MAX_CONCURRENT, jobs.max_active_total
    assert peak_queue >= 1, "the queue depth metric never showed waiting scans"

    latencies = [jobs.seen_at[by_scan[scan]] - tagged for scan, tagged in tagged_at.items()]
    first = sorted(latencies)[:MAX_CONCURRENT]
    print(
        f"\n{BATCH} digests settled in {elapsed:.1f}s; peak queue depth {peak_queue:.0f}; "
        f"tag -> Job p50 {statistics.median(latencies):.2f}s "
        f"p99 {percentile(latencies, 99):.2f}s (max {max(latencies):.2f}s); "
        f"first {MAX_CONCURRENT} (not queued) {', '.join(f'{x:.2f}' for x in first)}s"
    )
