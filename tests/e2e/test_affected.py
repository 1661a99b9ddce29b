"""``scapguard affected CVE-ID`` end to end: a vulnerable image scanned by the installed
operator from an ImageStream tag, then found by one of its CVEs with the CLI as an admin runs it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from scapguard.results.model import Severity
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PRIORITIES: list[tuple[str, Severity]] = [("high", "high"), ("medium", "medium")]


def test_affected_lists_the_image_that_has_the_cve(e2e: E2E) -> None:
    xml, expected = ubuntu_oval(PRIORITIES)
    e2e.feed(xml)
    e2e.policy(action="Report")
    image = e2e.images.get("ubuntu2204", "vulnerable")
    digest = e2e.tag("app", "latest", image)
    scan = e2e.wait_result(digest)
    assert scan["status"]["result"] == "Fail", scan["status"]
    name = scan["metadata"]["name"]
    cve = expected[0]

    # The table (any letter case), as kubectl would print it.
    table = e2e.scapguard("affected", cve.cve.lower()).decode().splitlines()
    assert table[0].split()[:3] == ["IMAGESCAN", "TAGS", "IMAGE"], table
    assert len(table) == 2, table
    assert table[1].split()[:2] == [name, "app:latest"], table
    assert cve.severity in table[1].split(), table

    # JSON, with the kubeconfig given as a flag rather than $KUBECONFIG.
    kubeconfig = str(e2e.cluster.kubeconfig)
    rows: list[dict[str, Any]] = json.loads(
        e2e.scapguard("affected", cve.cve, "-o", "json", "--kubeconfig", kubeconfig)
    )
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["namespace"], row["imageScan"], row["policy"]) == (e2e.namespace, name, "policy")
    assert row["image"] == scan["spec"]["image"] and row["image"].endswith(f"@{digest}")
    assert row["digest"] == digest
    assert row["tags"] == [{"namespace": e2e.namespace, "imageStream": "app", "tag": "latest"}]
    assert (row["finding"], row["severity"], row["result"]) == (cve.cve, cve.severity, "Fail")
    assert {"name": cve.package, "fixedVersion": cve.fixed} in row["packages"]

    # Every namespace: this image among them, with its namespace.
    everywhere = yaml.safe_load(e2e.scapguard("affected", cve.cve, "-A", "-o", "yaml"))
    assert (e2e.namespace, name) in {(r["namespace"], r["imageScan"]) for r in everywhere}

    # A CVE the image does not have: no rows (and exit 0).
    absent = "CVE-2099-9999"
    assert absent not in {x.cve for x in expected}
    assert json.loads(e2e.scapguard("affected", absent, "-o", "json")) == []
    assert e2e.scapguard("affected", absent) == b""
