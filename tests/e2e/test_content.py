"""Content from the operator's cache, on the real cluster: a feed mirrored into the registry as
an OCI artifact (larger than any ConfigMap or Secret could carry), and a catalogue feed from a
feed server; each fetched by the operator, served to the scanner pods, and when it changes
upstream, every image scanned with the old one is rescanned (ContentUpdate)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import pytest

from scapguard.results.model import Severity
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import CATALOGUE_FILE, E2E, FeedServer, JobRecord
from tests.ociartifacts import push_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PRIORITIES: list[tuple[str, Severity]] = [
    ("high", "high"),
    ("medium", "medium"),
    ("low", "low"),
    ("medium", "medium"),
]
ALL_LOW: list[tuple[str, Severity]] = [("low", "low")]
# Past a ConfigMap's 1 MiB (and the per-scan Secret that used to carry content).
PADDING = 3 * 1024 * 1024


def padded(xml: str) -> bytes:
    """The feed with a 3 MiB comment of random text: as big as a real vendor feed excerpt."""
    head, sep, rest = xml.partition("?>")
    filler = secrets.token_hex(PADDING // 2)
    return f"{head}{sep}\n<!-- {filler} -->{rest}".encode()


def vulnerability_content(scan: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [c for c in scan["status"]["content"] if c["kind"] == "vulnerabilities"]
    return dict(entry)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_feed_mirrored_as_an_oci_artifact_is_served_and_its_new_version_rescans(
    e2e: E2E, jobs: JobRecord
) -> None:
    repository = f"{e2e.namespace}/oval"
    v1 = padded(ubuntu_oval(PRIORITIES)[0])
    assert len(v1) > PADDING
    push_artifact(e2e.registry.host, repository, "jammy", {"com.ubuntu.jammy.cve.oval.xml": v1})
    reference = f"{e2e.registry.cluster_host}/{repository}:jammy"
    e2e.policy(vulnerabilities={"enabled": True, "feed": {"oci": {"reference": reference}}})
    bad = e2e.tag("app", "latest", e2e.images.get("ubuntu2204", "vulnerable"))

    scan = e2e.wait_result(bad)
    status = scan["status"]
    assert status["result"] == "Fail", status
    assert status["vulnerabilities"]["high"] == 1 and status["vulnerabilities"]["medium"] == 2
    content = vulnerability_content(scan)
    assert content["source"] == "oci" and content["sha256"] == sha(v1), content
    assert content["origin"].startswith(f"{e2e.registry.cluster_host}/{repository}@sha256:")

    # The mirror gets a new feed under the same tag: the operator notices (it checks the tag
    # every 5 s here) and rescans the image with it.
    v2 = padded(ubuntu_oval(ALL_LOW)[0])
    push_artifact(e2e.registry.host, repository, "jammy", {"com.ubuntu.jammy.cve.oval.xml": v2})
    again = e2e.wait_result(bad, request=2, timeout=240)
    request = again["status"]["request"]
    assert request["trigger"] == "ContentUpdate", request
    assert again["status"]["result"] == "Pass", again["status"]
    assert vulnerability_content(again)["sha256"] == sha(v2)
    assert "images.openshift.io/deny-execution" not in (
        e2e.image_object(bad)["metadata"].get("annotations") or {}
    )
    e2e.wait_events("ScanPolicy", "policy", "ContentUpdated")
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2


def test_a_catalogue_feed_is_fetched_by_the_operator_and_its_update_rescans(
    e2e: E2E, jobs: JobRecord, feed_server: FeedServer
) -> None:
    v1 = ubuntu_oval(PRIORITIES)[0].encode()
    feed_server.put(CATALOGUE_FILE, v1)
    e2e.policy(vulnerabilities={"enabled": True})  # no feed: the catalogue's for the OS
    bad = e2e.tag("app", "latest", e2e.images.get("ubuntu2204", "vulnerable"))
    scan = e2e.wait_result(bad)
    assert scan["status"]["result"] == "Fail", scan["status"]
    content = vulnerability_content(scan)
    assert content == {
        "kind": "vulnerabilities",
        "name": "oval:ubuntu-jammy",
        "source": "catalogue",
        "sha256": sha(v1),
        "origin": feed_server.url(CATALOGUE_FILE),
        **({"version": content["version"]} if "version" in content else {}),
    }

    v2 = ubuntu_oval(ALL_LOW)[0].encode()
    feed_server.put(CATALOGUE_FILE, v2)
    again = e2e.wait_result(bad, request=2, timeout=240)
    assert again["status"]["request"]["trigger"] == "ContentUpdate"
    assert again["status"]["result"] == "Pass", again["status"]
    assert vulnerability_content(again)["sha256"] == sha(v2)
    assert len(jobs.for_policy(f"{e2e.namespace}/policy")) == 2
