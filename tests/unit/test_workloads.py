"""Scan what runs (``spec.workloads``): the digests selected Pods run get one ImageScan each."""

from __future__ import annotations

from typing import Any

import pytest

from scapguard.api import constants as c
from scapguard.k8s.api import IMAGESCAN, POD, SCANPOLICY, Obj
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.reconcile.workloads import image_of
from tests.harness import (
    Harness,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
)

REGISTRY = "registry.local:5000"


def pod(
    name: str,
    namespace: str = "apps",
    labels: dict[str, str] | None = None,
    images: tuple[str, ...] = (),
    phase: str = "Running",
    init: tuple[str, ...] = (),
) -> Obj:
    def statuses(ids: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"name": f"c{i}", "imageID": image_id} for i, image_id in enumerate(ids)]

    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "web"}},
        "spec": {},
        "status": {
            "phase": phase,
            "containerStatuses": statuses(images),
            "initContainerStatuses": statuses(init),
        },
    }


def scans(h: Harness) -> dict[str, Obj]:
    return {s["spec"]["image"]: s for s in h.kube.list(IMAGESCAN, "apps")}


def policy(h: Harness) -> Obj:
    return h.kube.get(SCANPOLICY, "default", "apps")


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        (f"{REGISTRY}/apps/web@{digest(1)}", (f"{REGISTRY}/apps/web@{digest(1)}", digest(1))),
        (f"docker-pullable://nginx@{digest(2)}", (f"nginx@{digest(2)}", digest(2))),
        (digest(3), None),  # a local image id: nothing a scanner could pull
        ("", None),
    ],
)
def test_image_of_a_container_status(image_id: str, expected: tuple[str, str] | None) -> None:
    assert image_of({"imageID": image_id}) == expected


def test_selected_pods_images_are_scanned_once_per_digest() -> None:
    h = harness()
    not_test = {"key": "tier", "operator": "NotIn", "values": ["test"]}
    selector = {"matchLabels": {"app": "web"}, "matchExpressions": [not_test]}
    add_policy(h, workloads={"podSelector": selector})
    web = f"{REGISTRY}/apps/web@{digest(1)}"
    sidecar = f"{REGISTRY}/apps/proxy@{digest(2)}"
    h.kube.create(
        POD, pod("web-1", images=(web, sidecar), init=(f"{REGISTRY}/apps/init@{digest(3)}",))
    )
    h.kube.create(POD, pod("web-2", images=(web,)))
    h.kube.create(POD, pod("other", labels={"app": "db"}, images=(f"{REGISTRY}/db@{digest(4)}",)))
    h.kube.create(POD, pod("web-test", labels={"app": "web", "tier": "test"},
                           images=(f"{REGISTRY}/t@{digest(5)}",)))  # fmt: skip
    h.kube.create(POD, pod("done", images=(f"{REGISTRY}/job@{digest(6)}",), phase="Succeeded"))
    h.kube.create(POD, pod("elsewhere", namespace="ops", images=(f"{REGISTRY}/x@{digest(7)}",)))
    h.kube.reads.clear()
    reconcile_scanpolicy(h.ctx, policy(h))
    # matchLabels filtered by the API server, one list per reconcile
    assert [r for r in h.kube.reads if r[1] == "pods"] == [("list", "pods", "apps", "app=web")]
    made = scans(h)
    assert sorted(made) == sorted([web, sidecar, f"{REGISTRY}/apps/init@{digest(3)}"])
    for scan in made.values():
        assert scan["metadata"]["labels"][c.ORIGIN_LABEL] == c.ORIGIN_WORKLOAD
        assert scan["spec"]["trigger"] == "NewImage" and scan["spec"]["tags"] == []
    assert policy(h)["status"]["imagesSelected"] == 3


def test_a_tagged_and_running_digest_has_one_scan() -> None:
    h = harness()
    add_policy(h, workloads={"podSelector": {}})
    add_stream(h, "web", "apps", {"latest": [digest(1)]})
    h.kube.create(POD, pod("web-1", images=(f"{REGISTRY}/apps/web@{digest(1)}",)))
    reconcile_scanpolicy(h.ctx, policy(h))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    assert scan["metadata"]["labels"][c.ORIGIN_LABEL] == c.ORIGIN_IMAGESTREAM
    assert [t["tag"] for t in scan["spec"]["tags"]] == ["latest"]


def test_a_digest_nothing_runs_any_more_is_collected_after_the_grace_period() -> None:
    h = harness(SCAPGUARD_CLEANUP_GRACE_SECONDS="600")
    add_policy(h, workloads={"podSelector": {}})
    h.kube.create(POD, pod("web-1", images=(f"{REGISTRY}/apps/web@{digest(1)}",)))
    reconcile_scanpolicy(h.ctx, policy(h))
    assert len(h.kube.list(IMAGESCAN, "apps")) == 1
    h.kube.delete(POD, "web-1", "apps")
    reconcile_scanpolicy(h.ctx, policy(h))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    assert c.UNTAGGED_SINCE_ANNOTATION in scan["metadata"]["annotations"]
    h.clock.advance(601)
    reconcile_scanpolicy(h.ctx, policy(h))
    assert h.kube.list(IMAGESCAN, "apps") == []


def test_without_the_image_api_only_workloads_are_selected() -> None:
    h = harness()
    h.ctx.image_api = False
    add_policy(h, workloads={"podSelector": {}})
    add_stream(h, "web", "apps", {"latest": [digest(9)]})  # not listed: no image API
    h.kube.create(POD, pod("web-1", images=(f"{REGISTRY}/apps/web@{digest(1)}",)))
    reconcile_scanpolicy(h.ctx, policy(h))
    assert list(scans(h)) == [f"{REGISTRY}/apps/web@{digest(1)}"]


def test_no_workloads_no_pod_listing() -> None:
    h = harness()
    add_policy(h)
    h.kube.reads.clear()
    reconcile_scanpolicy(h.ctx, policy(h))
    assert not [r for r in h.kube.reads if r[1] == "pods"]


def test_without_the_image_api_a_failing_digest_is_enforced_by_admission() -> None:
    h = harness()
    h.ctx.image_api = False
    add_policy(h, action="Enforce", failOn="high", workloads={"podSelector": {}})
    h.kube.create(POD, pod("web-1", images=(f"{REGISTRY}/apps/web@{digest(1)}",)))
    reconcile_scanpolicy(h.ctx, policy(h))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    failing = scan_result(digest(1), [("CVE-1", "critical")])
    assert post(h, job["metadata"]["name"], failing).status == 200
    reconcile_imagescan(h.ctx, h.kube.list(IMAGESCAN, "apps")[0])
    status = h.kube.list(IMAGESCAN, "apps")[0]["status"]
    assert status["result"] == "Fail" and status["denied"] is True
    enforced = {x["type"]: x for x in status["conditions"]}["Enforced"]
    assert (enforced["status"], enforced["reason"]) == ("True", "Denied")
    assert "admission webhook refuses Pods that run this digest" in enforced["message"]
    touched = [a for a in [*h.kube.actions, *h.kube.reads] if a[1] == "images"]
    assert touched == []  # no Image read or patched
