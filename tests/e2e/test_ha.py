"""Two operator replicas with kopf peering (the chart's default), the active one SIGKILLed
twice while scans are queued: the other (or the restarted one) takes over, only one process
starts Jobs between two kills, and every scan completes with exactly one Job.

The session's release runs one standalone replica (tests/e2e/conftest.py); this test upgrades
it to two replicas with peering and back (``helm upgrade --reuse-values``), and waits until the
single replica is Ready again, so the tests after it see the release they expect. A second
release cannot run beside it: the chart's cluster-scoped objects (ClusterRoles, the webhook
configuration, the peering object) would collide, and both operators would act on every
namespace. The feed is served by URL: ConfigMap content is recorded by the active replica only
and a scanner request that reaches the other replica is refused (bench/ha.py --feed configmap).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from functools import partial

import pytest
from kubernetes import client

from scapguard.api.naming import scan_name
from scapguard_dev.binaries import repo_root
from scapguard_dev.cluster import wait_for
from scapguard_dev.helminstall import RELEASE, RESULTS_CA_CONFIGMAP, ChartInstall
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, FeedServer, JobRecord
from tests.e2e.crashes import (
    LogBook,
    Peer,
    active_peer,
    completed,
    explain,
    jobs_since,
    kill_pod,
    peers,
    ready_pods,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BATCH = 8
KILLS = 2


def upgrade(operator: ChartInstall, replicas: str, peering: str) -> None:
    chart = repo_root() / "charts" / "scapguard"
    operator.helm("upgrade", RELEASE, str(chart), f"--namespace={operator.namespace}",
                  "--reuse-values", f"--set=replicas={replicas}",
                  f"--set=peering={peering}")  # fmt: skip


@pytest.fixture
def two_replicas(operator: ChartInstall, admin_api: client.ApiClient) -> Iterator[ChartInstall]:
    """The session release with two replicas and peering while the test runs."""
    upgrade(operator, "2", "scapguard")
    try:
        operator.wait_available(180)
        wait_for("two operator pods, both Ready, the standalone one gone",
                 lambda: len(ready_pods(operator)) == len(operator.operator_pods()) == 2,
                 180, 0.5)  # fmt: skip
        wait_for("one active replica", lambda: active(admin_api) is not None, 90, 0.5)
        yield operator
    finally:
        upgrade(operator, "1", "")
        wait_for("the single standalone replica Ready again", operator.ready, 180, 1.0)
        # The service CA's injections (done once at install) outlive the upgrades.
        ca = client.CoreV1Api(admin_api).read_namespaced_config_map(
            RESULTS_CA_CONFIGMAP, operator.namespace
        )
        assert (ca.data or {}).get("service-ca.crt"), "the upgrade dropped the injected CA"


def active(api: client.ApiClient) -> Peer | None:
    return active_peer(peers(api))


def test_the_active_replica_killed_twice_every_scan_runs_once(
    e2e: E2E,
    jobs: JobRecord,
    feed_server: FeedServer,
    two_replicas: ChartInstall,
    admin_api: client.ApiClient,
) -> None:
    xml, _ = ubuntu_oval()
    data = xml.encode()
    feed_server.put(f"ha-{e2e.namespace}.xml", data)
    feed = {"url": feed_server.url(f"ha-{e2e.namespace}.xml"),
            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    images = e2e.distinct_images(BATCH)
    e2e.policy(action="Report", vulnerabilities={"enabled": True, "feed": feed})
    key = f"{e2e.namespace}/policy"
    book = LogBook(two_replicas)
    since = began = time.time()
    for index, image in enumerate(images):
        e2e.tag("burst", f"t{index}", image)
    kills = []
    for _ in range(KILLS):
        wait_for("a scanner Job since the last kill", partial(jobs_since, jobs, since), 120, 0.1)
        # A restarted process may act before its pod is Ready again.
        wait_for("an active replica in the peering record",
                 lambda: active(admin_api) is not None, 90, 0.2)  # fmt: skip
        assert len(jobs.for_policy(key)) < BATCH, "the queue drained before the kill"
        top = active(admin_api)
        assert top is not None
        book.collect()
        kill = kill_pod(two_replicas, top.pod, book)
        kills.append(kill.at)
        since = kill.at
        takeover = partial(jobs_since, jobs, kill.at)
        wait_for("a replica to take over (a new scanner Job)", takeover, 120, 0.2)
        book.collect()

    wait_for(f"all {BATCH} ImageScans to complete",
             lambda: sum(1 for s in e2e.scans() if completed(s)) == BATCH, 240, 0.5)  # fmt: skip
    book.collect()
    story = "\n".join(explain(e2e.scans(), jobs, book, began))
    for image in images:
        name = scan_name(image.digest, e2e.namespace, "policy")
        created = jobs.for_scan(e2e.namespace, name)
        assert len(created) == 1 and created[0].endswith("-1-1"), story
    for scan in e2e.scans():
        assert scan["status"]["result"] == "Pass", scan["status"]
        assert scan["status"]["attempts"] == 1, scan["status"]
    # Never two active: between two kills (and after the last) one process starts Jobs.
    starts = book.job_starts()
    assert len(starts) == BATCH, [name for _, name in starts]
    edges = [*kills, float("inf")]
    for begin, end in itertools.pairwise(edges):
        by = {line.container for line, _ in starts if begin < line.at < end}
        assert len(by) == 1, f"Jobs between kills started by {by}"
    assert book.tracebacks() == 0, "\n".join(book.texts.values())[-5000:]
