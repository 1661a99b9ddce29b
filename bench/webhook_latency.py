"""Benchmark: the admission decision's latency against a large index (issue 13).

Builds the webhook's :class:`~scapguard.reconcile.imageindex.ImageIndex` the way its watches do
(one listing of 10,000 Images, a tenth of them denied by scapguard with a quality annotation,
and 2,000 ImageStreams of 5 tags), then reviews 1,000 Pods in-process, each with three
containers: one by digest (half of them denied), one by ImageStream tag, one external tag. It
prints p50/p99/max of the decision (the code the kopf handler runs, without kopf's HTTP and
JSON handling), the index build time and the process's peak RSS.

Run: .venv/bin/python bench/webhook_latency.py [images] [reviews]
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from scapguard.api import constants as c  # noqa: E402
from scapguard.reconcile.admission import review_pod  # noqa: E402
from scapguard.reconcile.imageindex import ImageIndex  # noqa: E402

REGISTRY = "image-registry.openshift-image-registry.svc:5000"


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def image(n: int, denied: bool) -> dict[str, object]:
    annotations: dict[str, str] = {}
    if denied:
        quality = {"name": "scapguard", "description": "Fail", "summary": [
            {"label": "critical", "data": "1", "severityIndex": 3},
            {"label": "high", "data": "2", "severityIndex": 2}]}  # fmt: skip
        annotations = {
            c.OPENSHIFT_DENY_ANNOTATION: "true",
            c.DENY_MARKER_ANNOTATION: "true",
            c.DENIED_BY_ANNOTATION: "apps/strict",
            c.QUALITY_ANNOTATION: json.dumps(quality),
        }
    return {"metadata": {"name": digest(n), "annotations": annotations}}


def stream(n: int, images: int) -> dict[str, object]:
    namespace, name = f"ns{n % 50}", f"app{n}"
    tags = [{"tag": f"v{t}", "items": [{"image": digest((n * 5 + t) % images)}]} for t in range(5)]
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"lookupPolicy": {"local": False}},
        "status": {"dockerImageRepository": f"{REGISTRY}/{namespace}/{name}", "tags": tags},
    }


def main() -> int:
    images = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    reviews = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    rng = random.Random(13)  # noqa: S311 -- a reproducible workload, not a secret
    started = time.perf_counter()
    index = ImageIndex()
    index.replace_images([image(n, n % 10 == 0) for n in range(images)])
    index.replace_streams([stream(n, images) for n in range(images // 5)])
    built = time.perf_counter() - started
    latencies = []
    refused = 0
    for i in range(reviews):
        n = rng.randrange(images // 5)
        by_digest = 10 * rng.randrange(images // 10) + (0 if i % 2 else 1)  # half denied
        pod = {
            "metadata": {"name": f"web-{i}", "namespace": f"ns{n % 50}"},
            "spec": {"containers": [
                {"name": "a", "image": f"quay.io/acme/app@{digest(by_digest)}"},
                {"name": "b", "image": f"{REGISTRY}/ns{n % 50}/app{n}:v{i % 5}"},
                {"name": "c", "image": f"docker.io/library/nginx:1.{i % 30}"},
            ]},
        }  # fmt: skip
        t = time.perf_counter()
        review = review_pod(pod, None, namespace=f"ns{n % 50}", index=index, fail_closed=True)
        latencies.append(time.perf_counter() - t)
        refused += not review.allowed
    latencies.sort()
    us = [x * 1e6 for x in latencies]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"index: {images} Images ({images // 10} denied), {images // 5} ImageStreams x 5 tags, "
          f"built in {built:.2f} s")  # fmt: skip
    print(f"{reviews} Pod reviews (3 containers each), {refused} refused: "
          f"p50 {statistics.median(us):.0f} us, p99 {us[int(len(us) * 0.99) - 1]:.0f} us, "
          f"max {us[-1]:.0f} us")  # fmt: skip
    print(f"peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
