"""Benchmark: local control plane start time and memory per component.

Prints, for N cold starts (fresh etcd, fresh PKI each time): seconds from
launch to usable (APIService available, default ServiceAccount present), and
each component's resident memory after start. Run: .venv/bin/python bench/controlplane.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from scapguard.devcluster.cluster import DevCluster


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    times: list[float] = []
    rss: dict[str, list[int]] = {}
    ready: dict[str, list[float]] = {}
    for _ in range(runs):
        workdir = Path(tempfile.mkdtemp(prefix="scapguard-bench-"))
        workdir.chmod(0o755)
        dev = DevCluster(workdir)
        dev.start()
        try:
            times.append(dev.started_seconds)
            for name, took in dev.ready_seconds.items():
                ready.setdefault(name, []).append(took)
            for name, kib in dev.component_rss_kib().items():
                rss.setdefault(name, []).append(kib)
        finally:
            dev.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    out = sys.stdout
    out.write(f"cold start to ready over {runs} runs: ")
    out.write(
        f"median {statistics.median(times):.1f}s, min {min(times):.1f}s, max {max(times):.1f}s\n"
    )
    for name, tooks in sorted(ready.items()):
        out.write(f"  ready {name:<22} {statistics.median(tooks):5.1f}s after its launch\n")
    for name, values in sorted(rss.items()):
        out.write(f"  RSS {name:<24} {statistics.median(values) / 1024:7.1f} MiB\n")


if __name__ == "__main__":
    main()
