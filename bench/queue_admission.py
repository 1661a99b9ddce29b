"""Benchmark: what queue admission reads, with and without the queued-label index.

Every pump of the queue (any scan reconcile, any policy timer) lists the ImageScans that wait.
It used to list every ImageScan with its status, findings included (capped at 200 per scan);
it now lists only those labelled ``scapguard.io/queued=true``. On a real API server, with N
ImageScans carrying 200 findings each and Q of them queued, this prints the median time and
the bytes of both lists. Run: .venv/bin/python bench/queue_admission.py [N] [Q]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config

from scapguard.api import constants as c
from scapguard.api.summary import MAX_FINDINGS
from scapguard.devcluster.cluster import DevCluster
from scapguard.devcluster.helminstall import CRDS
from scapguard.devcluster.node import remove_tree
from scapguard.k8s.api import IMAGESCAN, NAMESPACE
from scapguard.k8s.client import KubeClient

ROOT = Path(__file__).resolve().parents[1]
SPACE = "bench"
ROUNDS = 5


def findings() -> list[dict[str, Any]]:
    return [
        {
            "id": f"CVE-2099-{i:05}",
            "severity": ("critical", "high", "medium", "low")[i % 4],
            "title": f"CVE-2099-{i:05} on Ubuntu 22.04 LTS (jammy) - a typical advisory title.",
            "packages": [{"name": f"libexample{i % 37}", "fixedVersion": f"1.{i}.0-0ubuntu0.1"}],
        }
        for i in range(MAX_FINDINGS)
    ]


def populate(kube: KubeClient, total: int, queued: int) -> None:
    kube.create(NAMESPACE, {"metadata": {"name": SPACE}})
    status = {"result": "Fail", "state": "Completed", "findings": findings()}
    for i in range(total):
        labels = {c.QUEUED_LABEL: "true"} if i < queued else {}
        scan = {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": "ImageScan",
            "metadata": {"name": f"scan-{i:05}", "namespace": SPACE, "labels": labels},
            "spec": {"image": f"registry.local/app@sha256:{i:064x}", "policy": "policy"},
        }
        kube.create(IMAGESCAN, scan)
        kube.patch_status(IMAGESCAN, f"scan-{i:05}", SPACE, {"status": status})


def measure(kube: KubeClient, selector: str | None) -> tuple[float, int, int]:
    """Median seconds of ROUNDS lists, the JSON size and the item count of one."""
    times = []
    items: list[Any] = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        items = kube.list(IMAGESCAN, SPACE, label_selector=selector)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(json.dumps(items)), len(items)


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    queued = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-bench-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir)
    dev.start()
    try:
        done = dev.kubectl("apply", "-f", str(ROOT / "deploy" / "crds"))
        if done.returncode:
            raise SystemExit(done.stderr)
        dev.wait_crds_established(CRDS)
        kube = KubeClient(k8s_config.new_client_from_config(config_file=str(dev.kubeconfig)))
        started = time.perf_counter()
        populate(kube, total, queued)
        took = time.perf_counter() - started
        print(
            f"{total} ImageScans with {MAX_FINDINGS} findings each, {queued} queued ({took:.0f}s)"
        )
        every = measure(kube, None)
        index = measure(kube, f"{c.QUEUED_LABEL}=true")
        for name, (secs, size, count) in (("every ImageScan", every), ("queued label", index)):
            print(
                f"  list {name:<16} {count:5d} items {size / 2**20:8.2f} MiB {secs * 1000:8.1f} ms"
            )
        print(
            f"  ratio: {every[0] / index[0]:.0f}x less time, {every[1] / index[1]:.0f}x fewer bytes"
        )
    finally:
        dev.stop()
        remove_tree(workdir)


if __name__ == "__main__":
    main()
