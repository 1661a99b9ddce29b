"""Benchmark: two operator replicas with kopf peering, the active one SIGKILLed mid-queue
(issue 13, "HA").

On the local real-node cluster, scapguard installed with Helm as it ships (``replicas: 2``,
``peering: scapguard``: the chart's ClusterKopfPeering), a Report policy and ``--scans``
distinct patched Ubuntu fixture images tagged at once (``--concurrency`` scans at a time;
about three start at each takeover, so 45 scans keep the queue busy for 10 kills). Then
``--kills`` times: find the active replica (the highest priority in the peering record), wait
until it has started a Job, SIGKILL its processes from the host, and wait for the takeover (a
new scanner Job). The kubelet restarts a killed container; once it holds one in crash-loop
back-off (10 s doubling to 5 min) the pod is deleted and replaced instead. Prints:

- per kill: the pod killed, how it came back, seconds until the peering record names a live
  active process again, until the first new scanner Job, and until the new active replica's
  first handler or Job log line; which pod took over (the other, or the killed one restarted);
- whether two replicas were ever active at once: the containers that started Jobs between
  two kills, and the seconds in which two containers both logged handler activity;
- Jobs per scan (exactly once is all 1), scans completed, total time.

Run: .venv/bin/python bench/ha.py [--scans 45] [--kills 10] [--concurrency 3]
[--feed url|configmap] [--logs DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import JobRecord, recording_jobs  # noqa: E402
from tests.e2e.crashes import (  # noqa: E402
    Environment,
    Kill,
    LogBook,
    LogLine,
    Peer,
    active_peer,
    completed,
    environment,
    explain,
    jobs_per_scan,
    jobs_since,
    kill_pod,
    operator_pods,
    peers,
    ready_pods,
)

from scapguard_dev.cluster import ClusterError, wait_for  # noqa: E402
from scapguard_dev.ovalgen import ubuntu_oval  # noqa: E402

NAMESPACE = "ha"
POLICY = "policy"
#: Activity lines of one container closer than this belong to one span of activity (the
#: ImageScan progress timer fires every 30 s while scans run).
SPAN_GAP = 35.0


@dataclass
class Round:
    kill: Kill
    killed: Peer
    handover: float | None = None  # seconds until the peering names a live active process
    new_active: Peer | None = None
    first_job: float | None = None  # seconds until the first scanner Job after the kill
    survivors: frozenset[str] = frozenset()  # the other pods at the kill

    def taken_over_by(self) -> str:
        """ "other" (a replica that was running), "restarted" (the killed pod's container
        restarted by the kubelet), "replacement" (the pod that replaced it), or "-"."""
        if self.new_active is None:
            return "-"
        if self.new_active.pod in self.survivors:
            return "other"
        return "restarted" if self.new_active.pod == self.kill.pod else "replacement"


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_active(env: Environment, timeout: float) -> Peer:
    found: list[Peer] = []

    def one() -> bool:
        top = active_peer(peers(env.api))
        if top is None or top.pod not in ready_pods(env.release):
            return False
        found[:] = [top]
        return True

    wait_for("an active replica in the peering record", one, timeout, 0.25)
    return found[0]


def one_round(
    env: Environment, jobs: JobRecord, book: LogBook, key: str, total: int, timeout: float
) -> Round:
    active = wait_active(env, timeout)
    book.collect()
    survivors = frozenset(p["metadata"]["name"] for p in operator_pods(env.release)) - {active.pod}
    kill = kill_pod(env.release, active.pod, book)
    result = Round(kill, active, survivors=survivors)
    deadline = time.time() + timeout
    while time.time() < deadline and (result.handover is None or result.first_job is None):
        if result.handover is None:
            top = active_peer(peers(env.api))
            if top is not None and top.identity != active.identity:
                result.handover, result.new_active = time.time() - kill.at, top
        if result.first_job is None:
            with jobs.lock:
                after = [(t, n) for n, t in jobs.seen_at.items() if t > kill.at]
            if after:
                result.first_job = min(after)[0] - kill.at
        if result.handover is not None and len(jobs.for_policy(key)) >= total:
            break  # every scan has its Job: no new one will come
        time.sleep(0.25)
    return result


def spans(lines: list[LogLine]) -> dict[str, list[tuple[float, float]]]:
    """Per container, its activity merged into spans (gaps under SPAN_GAP)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in lines:
        runs = out.setdefault(line.container, [])
        if runs and line.at - runs[-1][1] < SPAN_GAP:
            runs[-1] = (runs[-1][0], line.at)
        else:
            runs.append((line.at, line.at))
    return out


def concurrent_seconds(lines: list[LogLine]) -> list[tuple[int, list[str]]]:
    """Whole seconds in which two containers both logged an acting line."""
    by_second: dict[int, set[str]] = {}
    for line in lines:
        by_second.setdefault(int(line.at), set()).add(line.container)
    return [(s, sorted(cs)) for s, cs in sorted(by_second.items()) if len(cs) > 1]


def stamp(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scans", type=int, default=45)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="per wait, seconds")
    parser.add_argument(
        "--feed",
        choices=("url", "configmap"),
        default="url",
        help="the policy's OVAL feed: by URL (each replica fetches it), or from a ConfigMap "
        "(recorded by the active replica only: a scanner's request that reaches the other "
        "replica gets 409 and the attempt fails)",
    )
    parser.add_argument("--logs", type=Path, help="write every operator container's log here")
    args = parser.parse_args()
    total_scans: int = args.scans
    signal.signal(signal.SIGTERM, _interrupted)
    values = {
        "replicas": "2",
        "peering": "scapguard",
        "maxConcurrentScans": str(args.concurrency),
        "maxConcurrentScansPerPolicy": str(args.concurrency),
        "retryBackoffSeconds": "1",
        "retryBackoffMaxSeconds": "5",
    }
    began = time.time()
    with environment(NAMESPACE, **values) as env:
        print(f"cluster and chart (2 replicas, peering) up in {time.time() - began:.0f} s")
        e2e = env.e2e
        xml, _ = ubuntu_oval()
        if args.feed == "configmap":
            e2e.feed(xml)
            feed: dict[str, object] = {"configMapRef": {"name": "feed", "key": "oval.xml"}}
        else:
            feed = dict(env.url_feed(xml))
        built = time.time()
        images = e2e.distinct_images(args.scans)
        print(f"{args.scans} distinct images built and pushed in {time.time() - built:.0f} s")
        e2e.policy(POLICY, action="Report", vulnerabilities={"enabled": True, "feed": feed})
        key = f"{NAMESPACE}/{POLICY}"
        book = LogBook(env.release)
        with recording_jobs(env.api) as jobs:
            first = wait_active(env, args.timeout)
            print(f"peering: {len(peers(env.api))} peers; active {first.pod} "
                  f"(priority {first.priority})")  # fmt: skip
            started = time.time()
            for index, image in enumerate(images):
                e2e.tag("app", f"t{index}", image)
            rounds: list[Round] = []
            for n in range(args.kills):
                since = rounds[-1].kill.at if rounds else started
                try:
                    wait_for("a scanner Job started by the active replica",
                             partial(jobs_since, jobs, since), args.timeout, 0.1)  # fmt: skip
                except ClusterError:
                    print(f"no new Job to wait for before kill {n + 1}: queue drained?")
                    break
                if len(jobs.for_policy(key)) >= args.scans:
                    print(f"queue drained (every scan has its Job) before kill {n + 1}")
                    break
                one = one_round(env, jobs, book, key, args.scans, args.timeout)
                rounds.append(one)
                book.collect()
                new = one.new_active
                took = one.taken_over_by() + ("" if new is None else f" {new.pod}")
                print(
                    f"kill {n + 1} at +{one.kill.at - started:.1f} s: {one.kill.pod} "
                    f"({one.kill.outcome} in "
                    f"{one.kill.back_in:.1f} s); peering handover "
                    f"{_s(one.handover)}, first new Job {_s(one.first_job)}; "
                    f"active now: {took}"
                )
            print("waiting for every scan to complete")

            def all_done() -> bool:
                return sum(1 for s in e2e.scans() if completed(s)) >= total_scans

            try:
                wait_for("every scan to complete", all_done, max(args.timeout, 600), 1.0)
            except ClusterError as exc:
                print(exc)
            total = time.time() - started
            book.collect()
            scans = e2e.scans()
            histogram = jobs_per_scan(NAMESPACE, POLICY, [i.digest for i in images], jobs)
            report(book, rounds, jobs)
            done = sum(1 for s in scans if completed(s))
            print(f"scans completed: {done}/{args.scans}; ImageScans: {len(scans)}")
            print("Jobs per scan: " + ", ".join(f"{k} Job(s): {v} scans"
                                                for k, v in sorted(histogram.items())))  # fmt: skip
            attempts = sorted({(s.get("status") or {}).get("attempts") for s in scans},
                              key=str)  # fmt: skip
            print(f"attempts recorded on the scans: {attempts}")
            print(f"peak running Jobs: {jobs.max_active_total} (limit {args.concurrency})")
            print(
                f"operator pods now: {[p['metadata']['name'] for p in operator_pods(env.release)]}"
            )
            print(f"Tracebacks in operator logs: {book.tracebacks()}; handler/timer runs that "
                  f"failed on a 409: {book.count('changed concurrently')}")  # fmt: skip
            for line in explain(scans, jobs, book, started):
                print(line)
            if args.logs:
                book.dump(args.logs)
                print(f"operator logs in {args.logs}")
            print(f"total: {total:.0f} s from tagging to the last completion "
                  f"({len(rounds)} kills)")  # fmt: skip
    return 0


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def report(book: LogBook, rounds: list[Round], jobs: JobRecord) -> None:
    acting = book.acting()
    starts = book.job_starts()
    creators: dict[str, str] = {name: line.container for line, name in starts}
    print("per kill, the first acting log line of another process after the kill:")
    for n, one in enumerate(rounds):
        end = rounds[n + 1].kill.at if n + 1 < len(rounds) else float("inf")
        # The killed process logs nothing after the kill: these are the others'.
        after = [line for line in acting if one.kill.at < line.at < end]
        first = f"{after[0].at - one.kill.at:.1f} s ({after[0].container})" if after else "none"
        with jobs.lock:
            window = sorted({creators.get(name, "?") for name, t in jobs.seen_at.items()
                             if one.kill.at < t < end})  # fmt: skip
        print(f"  kill {n + 1} at {stamp(one.kill.at)} of {one.killed.identity}: "
              f"first acting line {first}; Jobs in the window started by {window}")  # fmt: skip
    took = [r.first_job for r in rounds if r.first_job is not None]
    if took:
        print(f"takeover (first new Job after the kill): min {min(took):.1f} s, median "
              f"{statistics.median(took):.1f} s, max {max(took):.1f} s; never: "
              f"{len(rounds) - len(took)}")  # fmt: skip
    by = Counter(r.taken_over_by() for r in rounds)
    print(
        f"taken over by: {dict(sorted(by.items()))} (other: the replica that was running; "
        "restarted/replacement: the killed pod's next process, when its priority is the highest)"
    )
    overlaps = concurrent_seconds(acting)
    print(f"seconds in which two operator processes both logged acting lines: {len(overlaps)}")
    for second, containers in overlaps[:10]:
        print(f"  {stamp(second)}: {' and '.join(containers)}")
    two = []
    by_container = spans(acting)
    names = sorted(by_container)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for s1, e1 in by_container[a]:
                for s2, e2 in by_container[b]:
                    both = min(e1, e2) - max(s1, s2)
                    if both > 0:
                        two.append((a, b, max(s1, s2), both))
    print(f"activity spans (gaps under {SPAN_GAP:.0f} s merged) that overlap: {len(two)}")
    for a, b, at, both in two[:10]:
        print(f"  {a} and {b} from {stamp(at)} for {both:.1f} s")
    print(f"Jobs started per process (from their logs): "
          f"{dict(sorted(Counter(creators.values()).items()))}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
