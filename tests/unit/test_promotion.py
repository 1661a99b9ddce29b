"""The promotion gate: passing digests are copied (a skopeo Job), others are recorded as not
promoted with the reason; one copy per request, its outcome on the ImageScan."""

from __future__ import annotations

import base64
import json
from typing import Any

from scapguard.api import constants as c
from scapguard.api.naming import parse_job_name
from scapguard.k8s.api import EVENT, IMAGESCAN, JOB, POD, SCANPOLICY, SECRET, Obj
from scapguard.reconcile.imagescan import in_progress, reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.harness import (
    OPERATOR_NS,
    Harness,
    add_policy,
    add_stream,
    digest,
    finish_job,
    harness,
    post,
    scan_result,
)

REGISTRY = "registry.local:5000"
TARGET = f"{REGISTRY}/released/app"


def scans(h: Harness) -> dict[str, Obj]:
    return {s["spec"]["image"].rsplit("@", 1)[1]: s for s in h.kube.list(IMAGESCAN, "apps")}


def scan_jobs(h: Harness) -> list[Obj]:
    return [
        j
        for j in h.kube.list(JOB, OPERATOR_NS)
        if parse_job_name(j["metadata"]["name"]) is not None
    ]


def copy_jobs(h: Harness) -> list[Obj]:
    return [j for j in h.kube.list(JOB, OPERATOR_NS)
            if j["metadata"]["labels"][c.COMPONENT_LABEL] == c.PROMOTER_COMPONENT]  # fmt: skip


def settle(h: Harness, findings: dict[str, list[tuple[str, str]]]) -> None:
    """Scan everything, answer the scan Jobs (``findings`` by digest), reconcile again."""
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)
    for job in scan_jobs(h):
        image = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        d = image.split("@")[1]
        assert post(h, job["metadata"]["name"], scan_result(d, findings.get(d, []))).status == 200
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)


def promotion_of(h: Harness, d: str) -> dict[str, Any]:
    return dict(scans(h)[d]["status"]["promotion"])


def test_a_passing_digest_is_copied_and_a_failing_one_is_not() -> None:
    h = harness()
    scanner = {"insecureRegistries": [REGISTRY], "imagePullSecrets": [{"name": "pull"}]}
    add_policy(h, failOn="high", promotion={"repository": TARGET}, scanner=scanner)
    auth = json.dumps({"auths": {REGISTRY: {"username": "u", "password": "p"}}}).encode()
    pull = {
        "metadata": {"name": "pull", "namespace": "apps"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(auth).decode()},
    }
    h.kube.create(SECRET, pull)
    add_stream(h, "app", "apps", {"stable": [digest(1)], "edge": [digest(2)]})
    settle(h, {digest(2): [("CVE-2099-1", "critical")]})

    failing = promotion_of(h, digest(2))
    assert failing["state"] == "NotPromoted" and failing["target"] == f"{TARGET}:edge"
    assert failing["message"].startswith("Fail: ")
    (job,) = copy_jobs(h)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "skopeo", "copy", "--all", "--preserve-digests", "--retry-times", "3",
        "--src-tls-verify=false", "--dest-tls-verify=false",
        "--authfile", "/var/run/scapguard/auth.json",
        f"docker://{REGISTRY}/apps/app@{digest(1)}", f"docker://{TARGET}:stable",
    ]  # fmt: skip
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    secret = h.kube.get(SECRET, job["metadata"]["name"], OPERATOR_NS)
    assert json.loads(base64.b64decode(secret["data"]["auth.json"]))["auths"][REGISTRY]
    assert secret["metadata"]["ownerReferences"][0]["name"] == job["metadata"]["name"]
    pending = promotion_of(h, digest(1))
    assert pending["state"] == "Pending" and pending["job"] == job["metadata"]["name"]
    scan = scans(h)[digest(1)]
    assert in_progress(scan)  # the policy timer looks at it until the copy ends

    reconcile_imagescan(h.ctx, scans(h)[digest(1)])  # still running: nothing changes
    assert len(copy_jobs(h)) == 1
    finish_job(h, job["metadata"]["name"], condition="Complete")
    reconcile_imagescan(h.ctx, scans(h)[digest(1)])
    done = promotion_of(h, digest(1))
    assert done["state"] == "Promoted" and done["target"] == f"{TARGET}:stable"
    assert copy_jobs(h) == []  # cleaned up
    assert not in_progress(scans(h)[digest(1)])
    reconcile_imagescan(h.ctx, scans(h)[digest(1)])
    assert copy_jobs(h) == []  # once per request
    reasons = [e["reason"] for e in h.kube.list(EVENT, "apps")]
    assert "Promoted" in reasons and "NotPromoted" in reasons


def test_a_failed_copy_says_what_skopeo_said() -> None:
    h = harness()
    add_policy(h, promotion={"repository": TARGET, "tag": "released"})
    add_stream(h, "app", "apps", {"stable": [digest(1)]})
    settle(h, {})
    (job,) = copy_jobs(h)
    name = job["metadata"]["name"]
    skopeo = 'time=x level=fatal msg="writing manifest: unauthorized: authentication required"'
    terminated = {"exitCode": 1, "message": skopeo}
    h.kube.create(
        POD,
        {
            "metadata": {"name": f"{name}-x", "namespace": OPERATOR_NS,
                         "labels": {"job-name": name}},
            "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
        },
    )  # fmt: skip
    finish_job(h, name, condition="Failed", reason="BackoffLimitExceeded")
    reconcile_imagescan(h.ctx, scans(h)[digest(1)])
    failed = promotion_of(h, digest(1))
    assert failed["state"] == "Failed" and failed["target"] == f"{TARGET}:released"
    assert "unauthorized: authentication required" in failed["message"]


def test_no_promotion_without_the_setting_and_a_tagless_digest_gets_a_digest_tag() -> None:
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"stable": [digest(1)]})
    settle(h, {})
    assert copy_jobs(h) == [] and "promotion" not in scans(h)[digest(1)]["status"]

    h2 = harness()
    add_policy(h2, promotion={"repository": TARGET})
    by_hand = {"image": f"{REGISTRY}/x@{digest(3)}", "policy": "default"}
    h2.kube.create(
        IMAGESCAN, {"metadata": {"name": "by-hand", "namespace": "apps"}, "spec": by_hand}
    )
    settle(h2, {})
    assert promotion_of(h2, digest(3))["target"] == f"{TARGET}:sha256-{digest(3)[7:]}"
