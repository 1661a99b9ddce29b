"""Scan on push and the promotion gate, on the real cluster.

A second Debian docker-registry in the node's network namespace is configured with
``notifications.endpoints`` pointing at the operator's plain-HTTP registry-events listener
(through its Service, as a registry outside the cluster would reach it): pushing an image
there is what makes scapguard scan it. The policy's promotion gate then copies the passing
digest (skopeo, in a Job) to a release repository, and records why a failing one was not.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from scapguard.api import constants as c
from scapguard.devcluster.cluster import wait_for
from scapguard.devcluster.helminstall import NAMESPACE, ChartInstall
from scapguard.devcluster.ovalgen import ubuntu_oval
from scapguard.devcluster.registry import NotificationEndpoint, Registry
from scapguard.results.model import Severity
from tests.e2e.conftest import E2E, REGISTRY_EVENTS_PORT, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PRIORITIES: list[tuple[str, Severity]] = [("high", "high"), ("medium", "medium")]
TOKEN_SECRET = "scapguard-registry-events"  # noqa: S105 -- the Secret's name


def registry_digest(registry: Registry, reference: str) -> str | None:
    """The digest ``repository:tag`` has in ``registry`` (skopeo inspect), or None."""
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
         f"docker://{registry.host}/{reference}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def test_a_pushed_image_is_scanned_and_only_a_passing_one_is_promoted(
    e2e: E2E, jobs: JobRecord, operator: ChartInstall, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    made = e2e.cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", TOKEN_SECRET,
                               f"--from-literal=token={token}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    service = json.loads(e2e.cluster.kubectl(
        "-n", NAMESPACE, "get", "service", "scapguard-results", "-o", "json").stdout)  # fmt: skip
    endpoint = NotificationEndpoint(
        name="scapguard",
        url=f"http://{service['spec']['clusterIP']}:{REGISTRY_EVENTS_PORT}/v1/registry-events",
        headers={"Authorization": [f"Bearer {token}"]},
    )
    xml, _ = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    try:
        with Registry(tmp_path / "pushed", netns=e2e.cluster.netns,
                      notifications=[endpoint]) as pushed:  # fmt: skip
            host = pushed.cluster_host
            release = f"{host}/{e2e.namespace}/released"
            e2e.policy(
                registryPushes={"registry": host, "repositories": [f"{e2e.namespace}/*"]},
                promotion={"repository": release, "tag": "stable"},
                scanner={"insecureRegistries": [host], "retries": 1},
            )
            # Pushed, not tagged anywhere: the registry's notification is the only trigger.
            bad = e2e.images.get("ubuntu2204", "vulnerable")
            good = e2e.images.get("ubuntu2204", "patched")
            for image in (bad, good):
                copied = subprocess.run(
                    ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                     f"docker://{image.by_digest}",
                     f"docker://{pushed.host}/{e2e.namespace}/app:{image.tag}"],
                    capture_output=True, text=True, timeout=300, check=False,
                )  # fmt: skip
                assert copied.returncode == 0, copied.stderr

            failing = e2e.wait_result(bad.digest, timeout=240)
            assert failing["metadata"]["labels"][c.ORIGIN_LABEL] == c.ORIGIN_REGISTRY_PUSH
            assert failing["spec"]["image"] == f"{host}/{e2e.namespace}/app@{bad.digest}"
            assert failing["status"]["result"] == "Fail", failing["status"]
            passing = e2e.wait_result(good.digest, timeout=240)
            assert passing["status"]["result"] == "Pass", passing["status"]

            def promoted() -> bool:
                state = (e2e.scan_for(good.digest)["status"].get("promotion") or {}).get("state")
                return state in ("Promoted", "Failed")

            wait_for("the passing digest's promotion", promoted, 180, 1)
            promotion = e2e.scan_for(good.digest)["status"]["promotion"]
            assert promotion["state"] == "Promoted", promotion
            assert promotion["target"] == f"{release}:stable"
            # The release tag holds exactly the digest that was scanned.
            assert registry_digest(pushed, f"{e2e.namespace}/released:stable") == good.digest
            refused = e2e.scan_for(bad.digest)["status"]["promotion"]
            assert refused["state"] == "NotPromoted" and refused["reason"], refused
            assert refused["message"].startswith("Fail: ")
            e2e.wait_events("ImageScan", passing["metadata"]["name"], "Promoted")
            # One scan each: the registry's retries and the index/blob events created nothing more.
            assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2
    finally:
        e2e.cluster.kubectl("-n", NAMESPACE, "delete", "secret", TOKEN_SECRET)
