"""Benchmark: what a policy's content check reads, full ConfigMap against metadata only.

Every policy timer (30 s) checks the ConfigMaps the policy names for new content. It used to
read each one whole (a feed ConfigMap holds up to ~1 MiB); while the ConfigMap's resourceVersion
equals the one recorded in the policy status it now reads only the metadata. On a real API
server, with one ConfigMap of SIZE KiB, this prints the median time and the bytes of both reads
and what P policies cost per second at one check each per 30 s.
Run: .venv/bin/python bench/content_check.py [SIZE_KIB] [POLICIES]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import config as k8s_config

from scapguard.k8s.api import CONFIGMAP, NAMESPACE, Obj
from scapguard.k8s.client import KubeClient
from scapguard_dev.cluster import DevCluster
from scapguard_dev.node import remove_tree

SPACE = "bench"
ROUNDS = 21
TIMER_SECONDS = 30


def measure(read: Callable[[], Obj]) -> tuple[float, int]:
    """Median seconds of ROUNDS reads and the JSON size of one."""
    times = []
    obj: Obj = {}
    for _ in range(ROUNDS):
        started = time.perf_counter()
        obj = read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(json.dumps(obj))


def main() -> None:
    size_kib = int(sys.argv[1]) if len(sys.argv) > 1 else 900
    policies = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-bench-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir)
    dev.start()
    try:
        kube = KubeClient(k8s_config.new_client_from_config(config_file=str(dev.kubeconfig)))
        kube.create(NAMESPACE, {"metadata": {"name": SPACE}})
        feed = "<oval_definitions>" + "x" * (size_kib * 1024 - 40) + "</oval_definitions>"
        body = {"metadata": {"name": "feed", "namespace": SPACE}, "data": {"f": feed}}
        kube.create(CONFIGMAP, body)
        full = measure(lambda: kube.get(CONFIGMAP, "feed", SPACE))
        meta = measure(lambda: kube.get_metadata(CONFIGMAP, "feed", SPACE))
        print(f"one feed ConfigMap of {size_kib} KiB, {ROUNDS} reads each, medians")
        for name, (secs, size) in (("whole ConfigMap", full), ("metadata only", meta)):
            rate = size * policies / TIMER_SECONDS
            print(
                f"  {name:<16} {size / 1024:9.1f} KiB {secs * 1000:7.2f} ms"
                f"   {policies} policies: {rate / 1024:9.1f} KiB/s"
            )
        times, sizes = full[0] / meta[0], full[1] / meta[1]
        print(f"  whole/metadata: {times:.2f}x the time, {sizes:.0f}x the bytes")
    finally:
        dev.stop()
        remove_tree(workdir)


if __name__ == "__main__":
    main()
