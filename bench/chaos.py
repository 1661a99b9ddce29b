"""Benchmark: the operator SIGKILLed at random points of a run of scans (issue 13, "Chaos").

On the local real-node cluster, scapguard installed with Helm with one replica, standalone
(``replicas: 1``, ``peering: ""``: no peering record to wait out after a kill; bench/ha.py
covers two replicas), an Enforce policy (fail on high) and ``--scans`` distinct Ubuntu
fixture images, ``--vulnerable`` of them with a high finding (their scans fail and deny their
Image), the rest patched (they pass). All are tagged at once; ``--concurrency`` scans run at a
time. ``--kills`` SIGKILLs of the operator's processes come at random points (``--seed``): each
when a drawn number of scans has completed, after a drawn delay of up to 5 s, so some land
while the operator is still starting after the previous one. The kubelet restarts the
container; once it holds it in crash-loop back-off (10 s doubling to 5 min) the pod is deleted
and the Deployment's replacement runs instead (both are printed). At the end it prints:

- scans completed; scans stuck (not Completed once nothing has moved for ``--stall`` s);
- Jobs per scan (exactly once is all 1), with the story of any scan that had more;
- denies expected (vulnerable images) vs set on Image objects now, missing and unexpected;
- per Image, how many times its deny was set (a watch sees it go from absent to "true") and
  lifted, and how many updates changed scapguard's annotations on it;
- results by kind, the kills, total time.

Run: .venv/bin/python bench/chaos.py [--scans 200] [--kills 20] [--seed 1] [--vulnerable N]
[--concurrency 3] [--feed url|configmap] [--logs DIR]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import JobRecord, recording_jobs  # noqa: E402
from tests.e2e.crashes import (  # noqa: E402
    DenyRecord,
    Kill,
    LogBook,
    completed,
    environment,
    explain,
    jobs_per_scan,
    kill_pod,
    operator_pods,
    recording_denies,
)

from scapguard.results.model import Severity  # noqa: E402
from scapguard_dev.cluster import ClusterError, wait_for  # noqa: E402
from scapguard_dev.ovalgen import ubuntu_oval  # noqa: E402

NAMESPACE = "chaos"
POLICY = "policy"
TAGS_PER_STREAM = 10
# One high finding (fails ``failOn: high``) on the vulnerable Ubuntu fixture, as test_flow.
PRIORITIES: list[tuple[str, Severity]] = [
    ("high", "high"),
    ("medium", "medium"),
    ("low", "low"),
    ("medium", "medium"),
]


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def running_pod(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        states = pod["status"].get("containerStatuses") or [{}]
        if all("running" in (s.get("state") or {}) for s in states):
            return str(pod["metadata"]["name"])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vulnerable", type=int, help="how many fail (default: half)")
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--feed", choices=("url", "configmap"), default="url")
    parser.add_argument(
        "--stall", type=float, default=300.0, help="seconds without progress: the rest are stuck"
    )
    parser.add_argument("--logs", type=Path, help="write every operator container's log here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    total: int = args.scans
    vulnerable: int = total // 2 if args.vulnerable is None else args.vulnerable
    rng = random.Random(args.seed)  # noqa: S311 (a reproducible schedule, not a secret)
    # Kill points: after how many completions, and how long after that.
    points = sorted(rng.sample(range(total), min(args.kills, total)))
    delays = [rng.uniform(0.0, 5.0) for _ in points]
    values = {
        "replicas": "1",
        "peering": "",
        "maxConcurrentScans": str(args.concurrency),
        "maxConcurrentScansPerPolicy": str(args.concurrency),
        "retryBackoffSeconds": "1",
        "retryBackoffMaxSeconds": "5",
    }
    began = time.time()
    with environment(NAMESPACE, **values) as env:
        print(f"cluster and chart (1 replica, standalone) up in {time.time() - began:.0f} s")
        e2e = env.e2e
        xml, _ = ubuntu_oval(PRIORITIES)
        if args.feed == "configmap":
            e2e.feed(xml)
            feed: dict[str, object] = {"configMapRef": {"name": "feed", "key": "oval.xml"}}
        else:
            feed = dict(env.url_feed(xml))
        built = time.time()
        bad = e2e.distinct_images(vulnerable, variant="vulnerable")
        good = e2e.distinct_images(total - vulnerable, variant="patched")
        print(f"{len(bad)} vulnerable + {len(good)} patched distinct images built and pushed "
              f"in {time.time() - built:.0f} s")  # fmt: skip
        e2e.policy(POLICY, action="Enforce", vulnerabilities={"enabled": True, "feed": feed})
        images = bad + good
        rng.shuffle(images)
        expected = {i.digest for i in bad}
        book = LogBook(env.release)
        kills: list[Kill] = []
        with recording_jobs(env.api) as jobs, recording_denies(env.api) as denies:
            started = time.time()
            for index, image in enumerate(images):
                e2e.tag(f"app{index // TAGS_PER_STREAM}", f"t{index}", image)
            print(f"{total} tags set in {time.time() - started:.0f} s; kills after "
                  f"{points} completions")  # fmt: skip
            progress = {"done": 0, "at": time.time()}

            def done_now() -> int:
                n = sum(1 for s in e2e.scans() if completed(s))
                if n != progress["done"]:
                    progress["done"], progress["at"] = n, time.time()
                return n

            def reached(point: int) -> bool:
                return done_now() >= point

            for n, (point, delay) in enumerate(zip(points, delays, strict=True)):
                try:
                    wait_for(f"{point} completed scans", partial(reached, point), args.stall, 0.5)
                except ClusterError as exc:
                    print(f"kill {n + 1} not reached: {exc}")
                    break
                time.sleep(delay)
                pod = None
                deadline = time.time() + 300
                while pod is None and time.time() < deadline:
                    pod = running_pod(operator_pods(env.release))
                    if pod is None:
                        time.sleep(0.2)
                if pod is None:
                    print(f"kill {n + 1}: no running operator container for 300 s")
                    break
                book.collect()
                kill = kill_pod(env.release, pod, book)
                kills.append(kill)
                book.collect()
                print(
                    f"kill {n + 1} at +{kill.at - started:.1f} s ({progress['done']} done, "
                    f"{len(jobs.created)} Jobs): {kill.outcome} in {kill.back_in:.1f} s"
                )
            while done_now() < total and time.time() - progress["at"] < args.stall:
                time.sleep(1.0)
            finished = time.time() - started
            scans = e2e.scans()
            failing = {
                s["spec"]["image"].rsplit("@", 1)[-1]
                for s in scans
                if (s.get("status") or {}).get("result") == "Fail"
            }
            # The deny follows the Fail status: give the last ones a moment.
            try:
                wait_for("every failing image denied",
                         lambda: all(denies.denied.get(d) for d in failing), 60, 0.5)  # fmt: skip
            except ClusterError as exc:
                print(exc)
            book.collect()
            report(total, scans, expected, denies, jobs, book, kills, started, finished)
            if args.logs:
                book.dump(args.logs)
                print(f"operator logs in {args.logs}")
            by_digest = jobs_per_scan(NAMESPACE, POLICY, [i.digest for i in images], jobs)
            print(f"Jobs per tagged digest (Jobs -> digests): {dict(sorted(by_digest.items()))}")
    return 0


def report(
    total: int,
    scans: list[dict[str, Any]],
    expected: set[str],
    denies: DenyRecord,
    jobs: JobRecord,
    book: LogBook,
    kills: list[Kill],
    started: float,
    finished: float,
) -> None:
    done = [s for s in scans if completed(s)]
    stuck = [s for s in scans if not completed(s)]
    print(f"scans completed: {len(done)}/{total} (ImageScans: {len(scans)})")
    print(f"scans stuck: {len(stuck)}")
    for scan in stuck[:10]:
        status = scan.get("status") or {}
        print(f"  {scan['metadata']['name']}: state={status.get('state')} "
              f"attempts={status.get('attempts')} reason={status.get('reason')}")  # fmt: skip
    results = Counter(str((s.get("status") or {}).get("result")) for s in scans)
    print(f"results: {dict(sorted(results.items()))}")
    histogram = Counter(len(jobs.for_scan(NAMESPACE, s["metadata"]["name"])) for s in scans)
    print("Jobs per scan: " + ", ".join(f"{k} Job(s): {v} scans"
                                        for k, v in sorted(histogram.items())))  # fmt: skip
    for line in explain(scans, jobs, book, started):
        print(line)
    denied_now = {d for d, on in denies.denied.items() if on}
    missing, unexpected = expected - denied_now, denied_now - expected
    print(f"denies expected: {len(expected)}; set now: {len(denied_now)}; "
          f"missing: {len(missing)}; unexpected: {len(unexpected)}")  # fmt: skip
    concerned = expected | denied_now
    sets = Counter(denies.sets[d] for d in concerned)
    print(f"deny set per denied/expected Image (times -> Images): {dict(sorted(sets.items()))}")
    print(f"deny lifts: {sum(denies.lifts.values())}")
    writes = Counter(denies.writes[d] for d in concerned)
    print(f"updates of scapguard's Image annotations per denied Image (updates -> Images): "
          f"{dict(sorted(writes.items()))}")  # fmt: skip
    passing = Counter(denies.writes[d] for d in denies.denied if d not in concerned)
    print(f"the same per other Image (its quality annotation, no deny): "
          f"{dict(sorted(passing.items()))}")  # fmt: skip
    outcomes = Counter(k.outcome for k in kills)
    back = [k.back_in for k in kills]
    print(f"kills: {len(kills)} ({dict(outcomes)}); back after "
          f"{min(back, default=0):.1f}..{max(back, default=0):.1f} s")  # fmt: skip
    print(f"Tracebacks in operator logs: {book.tracebacks()}")
    print(f"handler/timer runs that failed on a 409 (changed concurrently): "
          f"{book.count('changed concurrently')}; Image annotation patches logged: "
          f"{book.count('annotated Image')}")  # fmt: skip
    print(f"total: {finished:.0f} s from tagging to the last completion")


if __name__ == "__main__":
    raise SystemExit(main())
