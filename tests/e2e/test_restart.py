"""The operator's container SIGKILLed while scans are queued and running, and restarted by the
kubelet: every scan finishes, each with exactly one Job (its first attempt), nothing lost or
started twice."""

from __future__ import annotations

import pytest

from scapguard.api.naming import scan_name
from scapguard_dev.cluster import ClusterError, wait_for
from scapguard_dev.helminstall import ChartInstall
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, MAX_CONCURRENT, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BATCH = 9  # three rounds at the limit of 3


def serving(operator: ChartInstall) -> bool:
    try:
        return operator.ready() and "scapguard_scan_queue_depth" in operator.metrics()
    except ClusterError:
        return False


def test_killed_operator_resumes_every_scan_exactly_once(
    e2e: E2E, jobs: JobRecord, operator: ChartInstall
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    images = e2e.distinct_images(BATCH)
    e2e.policy(action="Report")
    key = f"{e2e.namespace}/policy"
    names = {scan_name(image.digest, e2e.namespace, "policy") for image in images}
    restarts = operator.restarts()
    for index, image in enumerate(images):
        e2e.tag("burst", f"t{index}", image)
    # Kill as soon as the first Jobs exist: they run, the other scans wait.
    wait_for("the first scanner Job", lambda: len(jobs.for_policy(key)) >= 1, 60, 0.02)
    running_at_kill = jobs.active_for(key)
    jobs_at_kill = len(jobs.for_policy(key))
    operator.kill()
    wait_for("the restarted operator to serve metrics", lambda: serving(operator), 120, 0.5)
    assert operator.restarts() == restarts + 1
    assert running_at_kill, "no scanner Job was running when the operator was killed"
    assert jobs_at_kill <= MAX_CONCURRENT < BATCH, "scans were queued when it was killed"

    def all_settled() -> bool:
        done = [
            s
            for s in e2e.scans()
            if (s.get("status") or {}).get("state") == "Completed" and s["status"].get("result")
        ]
        return len(done) == BATCH

    wait_for(f"all {BATCH} ImageScans to settle after the restart", all_settled, 300, 0.5)
    scans = e2e.scans()
    assert {s["metadata"]["name"] for s in scans} == names, "a scan was lost"
    for scan in scans:
        status = scan["status"]
        assert status["result"] == "Pass", status
        assert status["request"]["number"] == 1 and status["attempts"] == 1, status
        created = jobs.for_scan(e2e.namespace, scan["metadata"]["name"])
        assert len(created) == 1 and created[0].endswith("-1-1"), created
    assert len(jobs.for_policy(key)) == BATCH
    assert jobs.max_active_total <= MAX_CONCURRENT
    log = operator.logs()
    assert "Traceback" not in log, log[-5000:]
