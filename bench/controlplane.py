"""Benchmark: local cluster start time, pod start latency and memory per component.

Prints, for N cold starts (fresh etcd, fresh PKI, fresh node each time): seconds from launch
to usable (APIService available, default ServiceAccount present, Node Ready), each component's
readiness after its own launch, and each component's resident memory after start. With
``--real-node`` (the kubelet, containerd + runc, kube-proxy, CoreDNS in the cluster's network
namespace) it also starts P pods one after another from a cached image and prints the time
from create to Ready. Run: .venv/bin/python bench/controlplane.py [N] [--real-node] [--pods P]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.node import busybox_image, remove_tree

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_start_seconds(dev: DevCluster, pods: int) -> list[float]:
    """Create ``pods`` pods one after another; seconds from create to Ready for each."""
    registry = dev.registry
    if registry is None:
        raise SystemExit("a real-node cluster has a registry; this one has none")
    image = busybox_image(registry.host, dev.workdir / "images")
    reference = image.at(registry.cluster_host).by_digest
    took: list[float] = []
    for i in range(pods + 1):
        name = f"bench-{i}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": reference, "command": ["sleep", "600"],
                                "securityContext": RESTRICTED}],
            },
        }  # fmt: skip
        begin = time.monotonic()
        dev.api_request("POST", "/api/v1/namespaces/default/pods", pod)

        def ready(pod_name: str = name) -> bool:
            got = dev.api_request("GET", f"/api/v1/namespaces/default/pods/{pod_name}")
            conditions = (got.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_for(f"pod {name} Ready", ready, 120, interval=0.02)
        if i:  # the first one pulls the image; the rest start from the cache
            took.append(time.monotonic() - begin)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="?", type=int, default=3)
    parser.add_argument("--real-node", action="store_true", help="kubelet + containerd node")
    parser.add_argument("--pods", type=int, default=10, help="pods to start per run (real node)")
    args = parser.parse_args()
    times: list[float] = []
    rss: dict[str, list[int]] = {}
    ready: dict[str, list[float]] = {}
    pod_times: list[float] = []
    for _ in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="scapguard-bench-"))
        workdir.chmod(0o755)
        dev = DevCluster(workdir, real_node=args.real_node)
        dev.start()
        try:
            times.append(dev.started_seconds)
            for name, took in dev.ready_seconds.items():
                ready.setdefault(name, []).append(took)
            for name, kib in dev.component_rss_kib().items():
                rss.setdefault(name, []).append(kib)
            if args.real_node and args.pods:
                pod_times += pod_start_seconds(dev, args.pods)
        finally:
            dev.stop()
            remove_tree(workdir)
    out = sys.stdout
    kind = "real node (kubelet, containerd)" if args.real_node else "control plane only"
    out.write(f"cold start to ready over {args.runs} runs, {kind}: ")
    out.write(
        f"median {statistics.median(times):.1f}s, min {min(times):.1f}s, max {max(times):.1f}s\n"
    )
    for name, tooks in sorted(ready.items()):
        out.write(f"  ready {name:<22} {statistics.median(tooks):5.1f}s after its launch\n")
    for name, values in sorted(rss.items()):
        if not name.endswith("forward") and not name.endswith("forward-in"):
            out.write(f"  RSS {name:<24} {statistics.median(values) / 1024:7.1f} MiB\n")
    if pod_times:
        pod_times.sort()
        out.write(
            f"pod create -> Ready, cached image, {len(pod_times)} pods: "
            f"median {statistics.median(pod_times):.2f}s, "
            f"p90 {pod_times[int(len(pod_times) * 0.9) - 1]:.2f}s, max {pod_times[-1]:.2f}s\n"
        )


if __name__ == "__main__":
    main()
