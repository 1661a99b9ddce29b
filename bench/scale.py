"""Benchmark: the operator at scale (issue 13): ImageStreams x tags -> ImageScans.

On the local control plane (no node: scanner Jobs are created and never run; what is measured
is the operator), it creates ``S`` ImageStreams of 5 tags over ``D`` digests and 2 Report-only
policies selecting all of them, then starts the operator (``kopf run``, standalone, as a host
process under the admin kubeconfig) and prints:

- the seconds from the operator's start until all ``2 x D`` ImageScans exist, and until the
  operator has queued every one of them (written its status);
- the operator's RSS (current and peak) after that and after an idle window;
- the API requests the whole cluster served, by verb and resource, during the initial sync
  and during the idle window (the API server's ``apiserver_request_total``; the operator is
  the only client then);
- the operator's CPU use in the idle window, as a share of one core.

Run: .venv/bin/python bench/scale.py [--streams 2000] [--digests 1000] [--idle 600]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kubernetes import client
from kubernetes import config as k8s_config

from scapguard.api import constants as c
from scapguard.devcluster.cluster import DevCluster, free_port
from scapguard.devcluster.helminstall import CRDS
from scapguard.devcluster.imagestreams import GROUP, VERSION, ensure_image
from scapguard.devcluster.node import remove_tree
from scapguard.k8s.api import IMAGESCAN, NAMESPACE, SCANPOLICY
from scapguard.k8s.client import KubeClient

ROOT = Path(__file__).resolve().parents[1]
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


def count_scans(kube: KubeClient) -> int:
    return len(kube.list(IMAGESCAN, SPACE))


def unhandled(kube: KubeClient) -> int:
    """ImageScans the operator has not queued yet (no status.request)."""
    return sum(1 for s in kube.list(IMAGESCAN, SPACE) if not (s.get("status") or {}).get("request"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--digests", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (operator.log)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-scale-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir)
    dev.start()
    operator: subprocess.Popen[bytes] | None = None
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
        print(f"{args.streams} ImageStreams x {TAGS} tags over {args.digests} digests "
              f"({time.perf_counter() - started:.0f} s to create)")  # fmt: skip
        for name in ("p1", "p2"):
            kube.create(SCANPOLICY, {"apiVersion": f"{c.GROUP}/{c.VERSION}", "kind": "ScanPolicy",
                                     "metadata": {"name": name, "namespace": SPACE},
                                     "spec": {"action": "Report"}})  # fmt: skip
        env = {
            **os.environ,
            "KUBECONFIG": str(dev.kubeconfig),
            "SCAPGUARD_NAMESPACE": OPERATOR_NS,
            "SCAPGUARD_PEERING": "",
            "SCAPGUARD_ADMISSION_ENABLED": "false",
            "SCAPGUARD_METRICS_PORT": "0",
            "SCAPGUARD_RESULTS_BIND": "127.0.0.1",
            "SCAPGUARD_RESULTS_PORT": str(free_port()),
            "SCAPGUARD_SCANNER_USER_NAMESPACE": "off",
            "SCAPGUARD_CONTENT_CACHE_DIR": str(workdir / "content"),
        }
        wanted = 2 * min(args.digests, args.streams * TAGS)
        before = requests(dev)
        log = (workdir / "operator.log").open("wb")
        operator = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "--log-format=json", "-m", "scapguard.handlers"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT / "operator",
        )  # fmt: skip
        launched = time.perf_counter()
        while (found := count_scans(kube)) < wanted:
            if operator.poll() is not None:
                raise SystemExit(f"the operator exited ({operator.returncode}); see {log.name}")
            if time.perf_counter() - launched > 1800:
                raise SystemExit(f"only {found} of {wanted} ImageScans after 30 minutes")
            time.sleep(1)
        synced = time.perf_counter() - launched
        after_sync = requests(dev)
        cpu0, rss, peak = proc_stat(operator.pid)
        print(f"all {wanted} ImageScans exist {synced:.1f} s after the operator started; "
              f"exactly {count_scans(kube)}")  # fmt: skip
        print(f"operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")
        show("API requests during the initial sync", before, after_sync)
        while (waiting := unhandled(kube)) and operator.poll() is None:
            if time.perf_counter() - launched > 1800:
                raise SystemExit(f"{waiting} ImageScans still unhandled after 30 minutes")
            time.sleep(1)
        settled = time.perf_counter() - launched
        after_settle = requests(dev)
        cpu0, rss, peak = proc_stat(operator.pid)
        print(f"every ImageScan queued (status written) {settled:.1f} s after the start; "
              f"RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")  # fmt: skip
        show("API requests from all created to all queued", after_sync, after_settle)
        after_sync = after_settle
        time.sleep(args.idle)
        cpu1, rss, peak = proc_stat(operator.pid)
        show(f"API requests in {args.idle:.0f} s idle", after_sync, requests(dev))
        print(f"idle CPU {100 * (cpu1 - cpu0) / args.idle:.1f}% of a core; "
              f"RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")  # fmt: skip
    finally:
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
