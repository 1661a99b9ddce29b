"""Benchmark: the operator at scale (issue 13): ImageStreams x tags -> ImageScans -> Jobs.

On the local control plane (no node: nothing runs the scanner Jobs; what is measured is the
operator), it creates ``S`` ImageStreams of 5 tags over ``D`` digests and 2 Report-only
policies selecting all of them, then starts the operator (``kopf run``, standalone, as a host
process under the admin kubeconfig, ``--limit`` concurrent scans). A stand-in for the scanner
pods watches the scanner Jobs and posts a passing result for each at once, with the Job's own
token, to the operator's results endpoint: scans complete as fast as the operator lets them.
It prints:

- the seconds from the operator's start until all ``2 x D`` ImageScans exist, until every
  one is queued (status written) and until every one has its result;
- the operator's RSS (current and peak) and CPU over an idle window (``--idle``) after that,
  as a share of one core;
- the API requests the whole cluster served, by verb and resource, during the initial sync
  and during the idle window (the API server's ``apiserver_request_total``; the operator and
  the stand-in are the only clients);
- latency from a tag moving to a new digest to its scanner Job existing, p50/p99/max, for
  bursts of 1, 100 and 1,000 tags moved at once (2 scans per digest: 2 policies).

Run: .venv/bin/python bench/scale.py [--streams 2000] [--digests 1000] [--idle 600]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as k8s_config

from scapguard.api import constants as c
from scapguard.api.naming import scan_name
from scapguard.k8s.api import IMAGESCAN, JOB, NAMESPACE, SCANPOLICY, SECRET
from scapguard.k8s.client import KubeClient
from scapguard.k8s.informer import Informer
from scapguard.results import model as m
from scapguard_dev.cluster import DevCluster, free_port
from scapguard_dev.helminstall import CRDS
from scapguard_dev.imagestreams import GROUP, VERSION, ensure_image
from scapguard_dev.node import remove_tree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import scan_result  # noqa: E402

SPACE = "scale"
OPERATOR_NS = "scapguard"
TAGS = 5
REGISTRY = "registry.local:5000"
_REQUEST = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def populate(api: client.ApiClient, streams: int, digests: int) -> None:
    custom = client.CustomObjectsApi(api)
    for n in range(digests):
        ensure_image(api, digest(n), f"{REGISTRY}/{SPACE}/app@{digest(n)}")
    for s in range(streams):
        name = f"app{s:05}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageStream",
                "metadata": {"name": name, "namespace": SPACE}}  # fmt: skip
        custom.create_namespaced_custom_object(GROUP, VERSION, SPACE, "imagestreams", body)
        tags = []
        for t in range(TAGS):
            d = digest((s * TAGS + t) % digests)
            ref = f"{REGISTRY}/{SPACE}/{name}@{d}"
            tags.append({"tag": f"v{t}", "items": [{"created": "2026-12-01T00:00:00Z",
                         "dockerImageReference": ref, "image": d, "generation": 1}]})  # fmt: skip
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, SPACE, "imagestreams", name, {"status": {"tags": tags}}
        )


def requests(dev: DevCluster) -> Counter[tuple[str, str]]:
    """``apiserver_request_total`` summed by (verb, resource); non-resource URLs (this
    scrape of /metrics) have no resource."""
    text = dev.kubectl("get", "--raw", "/metrics").stdout
    totals: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        match = _REQUEST.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            totals[(labels.get("verb", ""), labels.get("resource", ""))] += int(
                float(match.group(2))
            )
    return totals


def proc_stat(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MiB, peak RSS MiB) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def show(title: str, before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> None:
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    print(f"{title}: {sum(delta.values())} requests")
    for (verb, resource), count in sorted(delta.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {verb:<8} {resource or '-':<22} {count}")


class ScannerStandIn:
    """Plays the scanner pods the control plane cannot run: every scanner Job it sees gets a
    passing result, posted with the token of the Job's own Secret; records when each Job was
    first seen (``seen``: Job name -> (perf_counter, ImageScan name))."""

    def __init__(self, api: client.ApiClient, kube: KubeClient) -> None:
        self.kube = kube
        self.results_url = ""
        self.seen: dict[str, tuple[float, str]] = {}
        self.posted = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4)
        self._informer = Informer(
            api,
            JOB,
            namespace=OPERATOR_NS,
            on_replace=self._listed,
            on_event=self._job,
            on_failure=lambda reason: self.failed.append(reason),
        )

    def start(self, results_url: str) -> None:
        self.results_url = results_url
        self._informer.start()

    def stop(self) -> None:
        self._informer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _listed(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            self._job("ADDED", job)

    def _job(self, kind: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            if kind == "DELETED" or name in self.seen:
                return
            scan = (job["metadata"].get("annotations") or {}).get(c.SCAN_NAME_ANNOTATION, "")
            self.seen[name] = (time.perf_counter(), scan)
        self._pool.submit(self._post, job)

    def _post(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        try:
            image = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
            secret = self.kube.get(SECRET, name, OPERATOR_NS)
            token = base64.b64decode(secret["data"][c.TOKEN_KEY]).decode()
            # Content from a policy file: the operator checks no upstream feed for it.
            content = m.ContentInfo("bench.xml", "file", "ab" * 32, None)
            repository, image_digest = image.split("@")
            result = scan_result(image_digest, reference=repository, content=content)
            body = json.dumps(m.encode_handoff(result, None)).encode()
            request = urllib.request.Request(  # noqa: S310 -- http://127.0.0.1
                f"{self.results_url}/v1/results/{name}",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 -- local
                answer.read()
            with self._lock:
                self.posted += 1
        except Exception as exc:
            with self._lock:
                self.failed.append(f"{name}: {exc}")


def count_scans(kube: KubeClient) -> int:
    return len(kube.list(IMAGESCAN, SPACE))


def unhandled(kube: KubeClient) -> int:
    """ImageScans the operator has not queued yet (no status.request)."""
    return sum(1 for s in kube.list(IMAGESCAN, SPACE) if not (s.get("status") or {}).get("request"))


def unfinished(kube: KubeClient) -> int:
    """ImageScans without their result yet."""
    return sum(1 for s in kube.list(IMAGESCAN, SPACE) if not (s.get("status") or {}).get("result"))


def wait(what: str, done: Any, operator: subprocess.Popen[bytes], limit: float = 1800) -> float:
    """Poll ``done()`` once a second; the seconds it took."""
    start = time.perf_counter()
    while not done():
        if operator.poll() is not None:
            raise SystemExit(f"the operator exited ({operator.returncode}) waiting for {what}")
        if time.perf_counter() - start > limit:
            raise SystemExit(f"{what}: not after {limit:.0f} s")
        time.sleep(0.5)
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def burst(
    api: client.ApiClient, kube: KubeClient, stand_in: ScannerStandIn, first: int, n: int, at: int
) -> list[float]:
    """Move tag v0 of ``n`` streams (from ``first``) to new digests (from ``at``) at once;
    return, per new scan, the seconds from its stream's update to its Job being seen."""
    custom = client.CustomObjectsApi(api)
    moved: dict[str, float] = {}  # expected ImageScan name -> when its stream was updated
    for i in range(n):
        ensure_image(api, digest(at + i), f"{REGISTRY}/{SPACE}/app@{digest(at + i)}")
    for i in range(n):
        name = f"app{first + i:05}"
        stream: Any = custom.get_namespaced_custom_object(
            GROUP, VERSION, SPACE, "imagestreams", name
        )
        tags = stream["status"]["tags"]
        ref = f"{REGISTRY}/{SPACE}/{name}@{digest(at + i)}"
        tags[0]["items"].insert(0, {"created": "2026-12-02T00:00:00Z", "dockerImageReference": ref,
                                    "image": digest(at + i), "generation": 2})  # fmt: skip
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, SPACE, "imagestreams", name, {"status": {"tags": tags}}
        )
        updated = time.perf_counter()
        for policy in ("p1", "p2"):
            moved[scan_name(digest(at + i), SPACE, policy)] = updated
    deadline = time.perf_counter() + 1800
    while True:
        with stand_in._lock:
            seen = {scan: t for t, scan in stand_in.seen.values() if scan in moved}
        if len(seen) == len(moved):
            return [seen[scan] - moved[scan] for scan in moved]
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {len(seen)} of {len(moved)} Jobs after 30 minutes")
        time.sleep(0.2)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--digests", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--limit", type=int, default=50, help="concurrent scans (per policy too)")
    parser.add_argument("--bursts", default="1,100,1000", help="tags moved at once, in turn")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (operator.log)")
    args = parser.parse_args()
    bursts = [int(b) for b in args.bursts.split(",") if b]
    if sum(bursts) > args.streams:
        raise SystemExit("--bursts move more streams than --streams")
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-scale-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir)
    dev.start()
    operator: subprocess.Popen[bytes] | None = None
    stand_in: ScannerStandIn | None = None
    try:
        done = dev.kubectl("apply", "-f", str(ROOT / "deploy" / "crds"))
        if done.returncode:
            raise SystemExit(done.stderr)
        dev.wait_crds_established(CRDS)
        api = k8s_config.new_client_from_config(config_file=str(dev.kubeconfig))
        kube = KubeClient(api)
        for name in (SPACE, OPERATOR_NS):
            kube.create(NAMESPACE, {"metadata": {"name": name}})
        started = time.perf_counter()
        populate(api, args.streams, args.digests)
        took = time.perf_counter() - started
        print(f"{args.streams} ImageStreams x {TAGS} tags over {args.digests} digests "
              f"({took:.0f} s to create); limit {args.limit} scans")  # fmt: skip
        for name in ("p1", "p2"):
            kube.create(SCANPOLICY, {"apiVersion": f"{c.GROUP}/{c.VERSION}", "kind": "ScanPolicy",
                                     "metadata": {"name": name, "namespace": SPACE},
                                     "spec": {"action": "Report"}})  # fmt: skip
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(dev.kubeconfig),
            "SCAPGUARD_NAMESPACE": OPERATOR_NS,
            "SCAPGUARD_PEERING": "",
            "SCAPGUARD_ADMISSION_ENABLED": "false",
            "SCAPGUARD_METRICS_PORT": "0",
            "SCAPGUARD_RESULTS_BIND": "127.0.0.1",
            "SCAPGUARD_RESULTS_PORT": str(port),
            "SCAPGUARD_RESULTS_URL": f"http://127.0.0.1:{port}",
            "SCAPGUARD_SCANNER_USER_NAMESPACE": "off",
            "SCAPGUARD_CONTENT_CACHE_DIR": str(workdir / "content"),
            "SCAPGUARD_MAX_CONCURRENT_SCANS": str(args.limit),
            "SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY": str(args.limit),
        }
        stand_in = ScannerStandIn(api, kube)
        stand_in.start(f"http://127.0.0.1:{port}")
        wanted = 2 * min(args.digests, args.streams * TAGS)
        before = requests(dev)
        log = (workdir / "operator.log").open("wb")
        sys.stdout.flush()
        operator = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "--log-format=json", "-m", "scapguard.handlers"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT / "operator",
        )  # fmt: skip
        created = wait("all ImageScans", lambda: count_scans(kube) >= wanted, operator)
        queued = created + wait("every ImageScan queued", lambda: not unhandled(kube), operator)
        finished = queued + wait("every result", lambda: not unfinished(kube), operator)
        after_sync = requests(dev)
        print(f"{count_scans(kube)} ImageScans (wanted {wanted}): all created {created:.1f} s "
              f"after the operator started, all queued at {queued:.1f} s, all with their "
              f"result at {finished:.1f} s; {len(stand_in.seen)} Jobs")  # fmt: skip
        cpu0, rss, peak = proc_stat(operator.pid)
        print(f"operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")
        show("API requests from the start until every result", before, after_sync)
        time.sleep(args.idle)
        cpu1, rss, peak = proc_stat(operator.pid)
        after_idle = requests(dev)
        show(f"API requests in {args.idle:.0f} s idle", after_sync, after_idle)
        print(f"idle CPU {100 * (cpu1 - cpu0) / args.idle:.2f}% of a core; "
              f"RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")  # fmt: skip
        first, at = 0, args.digests
        for n in bursts:
            latencies = burst(api, kube, stand_in, first, n, at)
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(f"{n} tags moved at once -> {len(latencies)} Jobs: tag to Job "
                  f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(latencies):.2f} s")  # fmt: skip
            wait("the burst's results", lambda: not unfinished(kube), operator)
            first, at = first + n, at + n
        show("API requests of the bursts", after_idle, requests(dev))
        _, rss, peak = proc_stat(operator.pid)
        failed = stand_in.failed
        print(f"operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB); results posted "
              f"{stand_in.posted}, failed {len(failed)} {failed[:3]}")  # fmt: skip
    finally:
        if stand_in is not None:
            stand_in.stop()
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
        dev.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            remove_tree(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
