"""The operator crashed on purpose, on the real cluster: shared by tests/e2e/test_ha.py,
bench/ha.py and bench/chaos.py.

- kopf's peering record (the ClusterKopfPeering the chart creates): which replica is active;
- SIGKILL of one operator pod's processes from the host, then either the kubelet's restart of
  the container or, once the kubelet holds it in crash-loop back-off, a replacement pod;
- every operator container's log (a pod keeps only its previous container's), parsed into the
  Jobs each one started and the kopf handlers it ran, by time;
- a record of the deny annotations Images received.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from scapguard.api import constants as c
from scapguard.api.naming import scan_name
from scapguard_dev.cluster import ClusterError, DevCluster, wait_for
from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.helminstall import ChartInstall, install_scapguard, sigkill_container
from scapguard_dev.imagestreams import GROUP as IMAGE_GROUP
from scapguard_dev.imagestreams import VERSION as IMAGE_VERSION
from scapguard_dev.node import remove_tree
from tests.conftest import admin_client
from tests.e2e.conftest import E2E, FeedServer, JobRecord, following, serving_feeds

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
PEERING_PLURAL = "clusterkopfpeerings"
PEERING = "scapguard"  # the chart's default peering name

_STARTED_JOB = re.compile(r"^started scanner Job (\S+) for ImageScan (\S+)")
_KOPF_ROUTINE = re.compile(r"^(Handler|Timer) '[^']*' succeeded\.$|^\w+ is processed: ")
_HANDLER = re.compile(r"^(Handler|Timer|Daemon) '[^']*' succeeded\.$")


# -- peering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One operator process in kopf's peering record (``user@host/started/random``)."""

    identity: str
    priority: int
    lastseen: dt.datetime
    lifetime: float

    @property
    def pod(self) -> str:
        return self.identity.split("@", 1)[-1].split("/", 1)[0]

    @property
    def started(self) -> str:
        parts = self.identity.split("/")
        return parts[1] if len(parts) > 1 else ""

    def alive(self, now: dt.datetime) -> bool:
        return now < self.lastseen + dt.timedelta(seconds=self.lifetime)


def peers(api: client.ApiClient, name: str = PEERING) -> list[Peer]:
    body = cast(
        dict[str, Any],
        client.CustomObjectsApi(api).get_cluster_custom_object(
            PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, name
        ),
    )
    found = []
    for identity, info in (body.get("status") or {}).items():
        if not isinstance(info, dict):
            continue
        lastseen = dt.datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=dt.UTC)
        found.append(
            Peer(identity, int(info.get("priority", 0)), lastseen, float(info.get("lifetime", 60)))
        )
    return found


def current_peers(found: list[Peer]) -> list[Peer]:
    """The newest process of each pod that is alive by its record (older ones are dead)."""
    now = dt.datetime.now(dt.UTC)
    newest: dict[str, Peer] = {}
    for peer in found:
        if peer.pod not in newest or peer.started > newest[peer.pod].started:
            newest[peer.pod] = peer
    return [p for p in newest.values() if p.alive(now)]


def active_peer(found: list[Peer]) -> Peer | None:
    """The peer kopf lets act: the highest priority of all live records (a killed process's
    record counts until it expires: it pauses the others meanwhile), if that is a current
    process; None while a dead record still outranks every current process."""
    now = dt.datetime.now(dt.UTC)
    live = [p for p in found if p.alive(now)]
    if not live:
        return None
    top = max(live, key=lambda p: p.priority)
    if sum(1 for p in live if p.priority == top.priority) > 1:
        return None  # equal priorities: kopf pauses them all
    return top if top in current_peers(found) else None


# -- operator pods -------------------------------------------------------------------------


def operator_pods(release: ChartInstall) -> list[dict[str, Any]]:
    """The operator pods that are not being deleted."""
    return [p for p in release.operator_pods() if not p["metadata"].get("deletionTimestamp")]


def pod_named(release: ChartInstall, name: str) -> dict[str, Any] | None:
    return next((p for p in operator_pods(release) if p["metadata"]["name"] == name), None)


def ready_pods(release: ChartInstall) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in operator_pods(release)
        if all(s.get("ready") for s in p["status"].get("containerStatuses") or [{}])
    ]


@dataclass(frozen=True)
class Kill:
    pod: str
    at: float  # time.time() of the SIGKILL
    #: "restarted" (the kubelet restarted the container) or "replaced" (a new pod, the
    #: kubelet having held the container in crash-loop back-off).
    outcome: str
    back_in: float  # seconds until the container or its replacement ran again


def kill_pod(
    release: ChartInstall, name: str, book: LogBook | None = None, restart_wait: float = 15.0
) -> Kill:
    """SIGKILL every process of operator pod ``name`` from the host (no handler runs, nothing
    is drained). The kubelet restarts the container; after a few crashes it holds it in
    crash-loop back-off (10 s doubling to 5 min): when it has not restarted it within
    ``restart_wait`` seconds, the pod is deleted and the Deployment's replacement runs instead.
    Returns once a new container runs (not necessarily Ready). ``book`` reads the killed
    container's log before its pod is deleted."""
    pod = pod_named(release, name)
    if pod is None:
        raise ClusterError(f"no operator pod {name}")
    before = sigkill_container(pod)
    at = time.time()
    others = {p["metadata"]["name"] for p in operator_pods(release)} - {name}

    def restarted() -> bool:
        now = pod_named(release, name)
        if now is None:
            return False
        (st,) = now["status"]["containerStatuses"]
        return int(st.get("restartCount", 0)) > before and "running" in (st.get("state") or {})

    try:
        wait_for(f"the kubelet to restart operator pod {name}", restarted, restart_wait, 0.2)
        return Kill(name, at, "restarted", time.time() - at)
    except ClusterError:
        pass
    if book is not None:
        book.collect()
    release.kubectl("-n", release.namespace, "delete", "pod", name, "--wait=false")

    def replaced() -> bool:
        for p in operator_pods(release):
            if p["metadata"]["name"] in others or p["metadata"]["name"] == name:
                continue
            states = p["status"].get("containerStatuses") or [{}]
            if all("running" in (s.get("state") or {}) for s in states):
                return True
        return False

    wait_for(f"a pod to replace operator pod {name}", replaced, 180, 0.2)
    return Kill(name, at, "replaced", time.time() - at)


# -- logs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    at: float  # time.time() of the line, from the container runtime's timestamp
    container: str  # "pod/containerID[:8]"
    message: str


@dataclass
class LogBook:
    """Every operator container's log (with the runtime's timestamps), kept as it is read:
    a pod's log shows only its current and previous container, so read it after each kill."""

    release: ChartInstall
    texts: dict[str, str] = field(default_factory=dict)  # container -> log

    def collect(self) -> None:
        for pod in self.release.operator_pods():
            name = pod["metadata"]["name"]
            for status in pod["status"].get("containerStatuses") or []:
                current = (status.get("containerID") or "").split("://")[-1]
                last = ((status.get("lastState") or {}).get("terminated") or {}).get(
                    "containerID", ""
                )
                for cid, extra in ((current, ()), (last.split("://")[-1], ("--previous",))):
                    if not cid:
                        continue
                    out = self.release.cluster.kubectl(
                        "-n", self.release.namespace, "logs", name, "--timestamps", *extra
                    )
                    if out.returncode == 0:
                        self.texts[f"{name}/{cid[:8]}"] = out.stdout

    def lines(self) -> list[LogLine]:
        found = []
        for container, text in self.texts.items():
            for raw in text.splitlines():
                stamp, _, rest = raw.partition(" ")
                try:
                    message = str(json.loads(rest).get("message", ""))
                except (json.JSONDecodeError, AttributeError):
                    message = rest
                found.append(LogLine(_runtime_time(stamp), container, message))
        return sorted(found, key=lambda line: line.at)

    def job_starts(self) -> list[tuple[LogLine, str]]:
        """(line, Job name) for every "started scanner Job" line, by time."""
        return [
            (line, m.group(1)) for line in self.lines() if (m := _STARTED_JOB.match(line.message))
        ]

    def acting(self) -> list[LogLine]:
        """Lines only an active replica writes: Jobs started, kopf handlers that succeeded."""
        return [
            line
            for line in self.lines()
            if _STARTED_JOB.match(line.message) or _HANDLER.match(line.message)
        ]

    def dump(self, directory: Path) -> None:
        """Each container's log into ``directory`` (kept after the cluster is gone)."""
        directory.mkdir(parents=True, exist_ok=True)
        for container, text in self.texts.items():
            (directory / (container.replace("/", "_") + ".log")).write_text(text)

    def count(self, fragment: str) -> int:
        """How many log messages contain ``fragment``."""
        return sum(1 for line in self.lines() if fragment in line.message)

    def tracebacks(self) -> int:
        return sum(text.count("Traceback") for text in self.texts.values())


def _runtime_time(stamp: str) -> float:
    """``2026-12-03T19:10:00.123456789Z`` (nanoseconds) -> seconds since the epoch."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


# -- denies on Images ----------------------------------------------------------------------


@dataclass
class DenyRecord:
    """Each Image's scapguard deny as a watch sees it: how often it was set and lifted, and
    how many updates changed any of scapguard's annotations on it."""

    denied: dict[str, bool] = field(default_factory=dict)  # Image name (digest) -> now
    marks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Counter[str] = field(default_factory=Counter)
    lifts: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)

    def observe(self, kind: str, image: Any) -> None:
        meta = image["metadata"]
        name = str(meta["name"])
        notes = meta.get("annotations") or {}
        keys = (c.OPENSHIFT_DENY_ANNOTATION, c.DENY_MARKER_ANNOTATION, c.QUALITY_ANNOTATION)
        marks = tuple(str(notes.get(k, "")) for k in keys)
        denied = kind != "DELETED" and notes.get(c.OPENSHIFT_DENY_ANNOTATION) == "true"
        was = self.denied.get(name, False)
        if denied and not was:
            self.sets[name] += 1
        if was and not denied:
            self.lifts[name] += 1
        if kind == "MODIFIED" and marks != self.marks.get(name, ("", "", "")):
            self.writes[name] += 1
        self.denied[name] = denied
        self.marks[name] = marks


@contextlib.contextmanager
def recording_denies(api: client.ApiClient) -> Iterator[DenyRecord]:
    record = DenyRecord()
    lister = client.CustomObjectsApi(api).list_cluster_custom_object
    with following(lister, IMAGE_GROUP, IMAGE_VERSION, "images", observe=record.observe):
        yield record


# -- scans ---------------------------------------------------------------------------------


def completed(scan: dict[str, Any]) -> bool:
    status = scan.get("status") or {}
    return status.get("state") == "Completed" and bool(status.get("result"))


def jobs_since(jobs: JobRecord, since: float) -> bool:
    """Whether a scanner Job was created after ``since`` (a time.time())."""
    with jobs.lock:
        return any(t > since for t in jobs.seen_at.values())


def jobs_per_scan(namespace: str, policy: str, digests: list[str], jobs: JobRecord) -> Counter[int]:
    """Histogram: number of Jobs created -> number of scans."""
    return Counter(len(jobs.for_scan(namespace, scan_name(d, namespace, policy))) for d in digests)


def explain(scans: list[dict[str, Any]], jobs: JobRecord, book: LogBook, since: float) -> list[str]:
    """For each scan that had other than one Job: its Jobs (seconds after ``since``, and the
    process whose log says it started them), what its status says about its attempts, and
    what the operator logged about it or its Jobs (kopf's routine lines left out)."""
    starts = {name: line for line, name in book.job_starts()}
    lines = book.lines()
    out = []
    for scan in scans:
        namespace, name = scan["metadata"]["namespace"], scan["metadata"]["name"]
        created = jobs.for_scan(namespace, name)
        if len(created) == 1:
            continue
        status = scan.get("status") or {}
        out.append(f"ImageScan {namespace}/{name}: {len(created)} Jobs")
        for job in created:
            line = starts.get(job)
            by = f"started by {line.container} at +{line.at - since:.1f} s" if line else "?"
            out.append(f"  Job {job} seen at +{jobs.seen_at[job] - since:.1f} s, {by}")
        keep = ("state", "result", "attempts", "lastAttempt", "request", "reason", "message")
        out.append("  status: " + json.dumps({k: status.get(k) for k in keep if k in status}))
        for cond in status.get("conditions") or []:
            out.append(f"  condition {cond.get('type')}={cond.get('status')} "
                       f"{cond.get('reason')}: {cond.get('message')}")  # fmt: skip
        said = [
            line
            for line in lines
            if (name in line.message or any(job in line.message for job in created))
            and not _KOPF_ROUTINE.match(line.message)
        ]
        for line in said[:20]:
            out.append(f"  +{line.at - since:.1f} s {line.container}: {line.message[:300]}")
    return out


# -- a whole environment for a benchmark ---------------------------------------------------


@dataclass
class Environment:
    cluster: DevCluster
    api: client.ApiClient
    release: ChartInstall
    e2e: E2E
    feeds: FeedServer

    def url_feed(self, xml: str, name: str = "feed.xml") -> dict[str, str]:
        """Publish ``xml`` on the feed server: a policy's ``feed`` by URL and sha256 (which
        either replica fetches into its own content cache on demand)."""
        data = xml.encode()
        self.feeds.put(name, data)
        return {"url": self.feeds.url(name), "sha256": hashlib.sha256(data).hexdigest()}


@contextlib.contextmanager
def environment(namespace: str, **values: str) -> Iterator[Environment]:
    """A real-node cluster with scapguard installed by Helm (``values`` as ``--set``), one
    namespace, fixture images built on demand; stopped and its work directory removed after,
    even on failure."""
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-bench-"))
    workdir.chmod(0o755)  # non-root pod processes reach their pod dirs
    cluster = DevCluster(workdir, real_node=True)
    try:
        cluster.start()
        registry = cluster.registry
        assert registry is not None
        with admin_client(cluster) as api:
            release = install_scapguard(cluster, **values)
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            )
            images = FixtureImages(registry.host, workdir / "fixture-images")
            build = workdir / "build"
            build.mkdir()
            e2e = E2E(api, cluster, namespace, registry, images, build)
            feeds = workdir / "feeds"
            feeds.mkdir()
            feeds.chmod(0o755)
            with serving_feeds(cluster, feeds) as server:
                yield Environment(cluster, api, release, e2e, server)
    finally:
        cluster.stop()
        remove_tree(workdir)
