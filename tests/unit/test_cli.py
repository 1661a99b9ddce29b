"""The scapguard CLI against the in-memory API (argument handling, messages, exit codes)."""

from __future__ import annotations

import base64
import gzip

import pytest

from scapguard import cli
from scapguard.api import constants as c
from scapguard.k8s.api import CONFIGMAP, IMAGESCAN
from tests.fakekube import FakeKube


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fake = FakeKube()
    monkeypatch.setattr(cli, "load_client", lambda **_: fake)
    monkeypatch.setattr(cli, "current_namespace", lambda **_: "ctx-ns")
    return fake


def _scan(kube: FakeKube, namespace: str, status: dict[str, object]) -> None:
    kube.create(
        IMAGESCAN,
        {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": "ImageScan",
            "metadata": {"name": "s1", "namespace": namespace},
            "spec": {},
        },
    )
    kube.patch_status(IMAGESCAN, "s1", namespace, {"status": status})


@pytest.mark.parametrize(
    ("argv", "namespace"),
    [
        (["rescan", "s1", "-n", "apps"], "apps"),
        (["-n", "apps", "rescan", "s1"], "apps"),
        (["rescan", "s1"], "ctx-ns"),
    ],
)
def test_rescan_annotates_in_the_chosen_namespace(
    kube: FakeKube, argv: list[str], namespace: str
) -> None:
    _scan(kube, namespace, {})
    assert cli.main(argv) == 0
    annotations = kube.get(IMAGESCAN, "s1", namespace)["metadata"]["annotations"]
    assert annotations[c.RESCAN_ANNOTATION]


def test_report_without_a_stored_result_exits_1_and_says_why(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    _scan(kube, "apps", {"state": "Queued"})
    assert cli.main(["report", "s1", "-n", "apps"]) == 1
    assert "apps/s1" in capsys.readouterr().err


def test_report_prints_the_stored_html(
    kube: FakeKube, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    _scan(kube, "apps", {"report": {"configMap": "s1-result", "reportKey": "report.html.gz"}})
    html = b"<html><body>report</body></html>"
    kube.create(
        CONFIGMAP,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "s1-result", "namespace": "apps"},
            "binaryData": {"report.html.gz": base64.b64encode(gzip.compress(html)).decode()},
        },
    )
    assert cli.main(["report", "s1", "-n", "apps"]) == 0
    assert capsysbinary.readouterr().out == html
