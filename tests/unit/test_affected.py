"""``scapguard affected``: matching findings, rows, formats, and the CLI over the in-memory API
(scans written by the real ingest and reconcile, so status and stored result have their real
shape)."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from scapguard import cli
from scapguard.api import constants as c
from scapguard.api.affected import (
    FindingRef,
    affected_image,
    findings_cut,
    match,
    ordered,
    parse_query,
)
from scapguard.api.summary import MAX_FINDINGS
from scapguard.k8s.api import CONFIGMAP, IMAGESCAN, SCANPOLICY, Obj, namespace_of
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.fakekube import FakeKube
from tests.harness import (
    Harness,
    add_image,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
)

SLEDGEHAMMER = "CVE-2099-0042"
VULN = digest(1)
OTHER = digest(2)


def scan_object(
    findings: list[dict[str, Any]],
    *,
    name: str = "s1",
    namespace: str = "apps",
    tags: list[dict[str, str]] | None = None,
    **status: Any,
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": f"registry.local:5000/apps/app@{VULN}",
            "policy": "default",
            "tags": tags if tags is not None else [],
        },
        "status": {"result": "Fail", "denied": True, "findings": findings, **status},
    }


def finding(ident: str, severity: str = "high", title: str = "") -> dict[str, Any]:
    return {
        "id": ident,
        "severity": severity,
        "title": title or f"{ident} in openssl",
        "packages": [{"name": "openssl", "fixedVersion": "3.1"}],
    }


# ------------------------------------------------------------------------------ pure logic
@pytest.mark.parametrize("text", ["CVE-2024-3094", " cve-2024-3094 ", "RHSA-2024:1234", "DSA-1-1"])
def test_queries_that_are_ids_are_accepted(text: str) -> None:
    assert parse_query(text) == text.strip()


@pytest.mark.parametrize("text", ["", "   ", "CVE 2024", "-x", "a/b", "x" * 200])
def test_queries_that_cannot_be_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a CVE"):
        parse_query(text)


def test_the_id_matches_in_any_letter_case() -> None:
    findings = [FindingRef("CVE-2024-1", "low", "x"), FindingRef("CVE-2024-3094", "high", "y")]
    assert match(findings, "cve-2024-3094") == (findings[1], "id")
    assert match(findings, "CVE-2024-309") is None


def test_a_title_names_the_cve_only_for_findings_that_are_not_a_cve_themselves() -> None:
    advisory = FindingRef("DSA-5678-1", "unknown", "DSA-5678-1 xz-utils: CVE-2024-3094 backdoor")
    other_cve = FindingRef("CVE-2024-1111", "high", "RHSA-1: fixes CVE-2024-3094, CVE-2024-1111")
    assert match([other_cve, advisory], "cve-2024-3094") == (advisory, "title")
    # A whole id, not a prefix of a longer one.
    assert match([advisory], "CVE-2024-309") is None
    # The finding that is the CVE wins over a title that names it.
    exact = FindingRef("CVE-2024-3094", "critical", "xz")
    assert match([advisory, exact], "CVE-2024-3094") == (exact, "id")


def test_a_row_carries_image_digest_tags_policy_and_the_finding() -> None:
    scan = scan_object(
        [finding("CVE-2024-1", "critical"), finding(SLEDGEHAMMER, "medium")],
        tags=[
            {"namespace": "apps", "imageStream": "app", "tag": "latest"},
            {"namespace": "web", "imageStream": "front", "tag": "v2"},
        ],
    )
    row = affected_image(scan, SLEDGEHAMMER.lower())
    assert row is not None
    assert row.to_dict() == {
        "namespace": "apps",
        "imageScan": "s1",
        "policy": "default",
        "image": f"registry.local:5000/apps/app@{VULN}",
        "digest": VULN,
        "tags": [
            {"namespace": "apps", "imageStream": "app", "tag": "latest"},
            {"namespace": "web", "imageStream": "front", "tag": "v2"},
        ],
        "finding": SLEDGEHAMMER,
        "severity": "medium",
        "title": f"{SLEDGEHAMMER} in openssl",
        "packages": [{"name": "openssl", "fixedVersion": "3.1"}],
        "matchedBy": "id",
        "result": "Fail",
        "denied": True,
        "source": "status",
    }
    assert row.tag_names() == ["app:latest", "web/front:v2"]
    assert affected_image(scan, "CVE-2024-2") is None


def test_scans_without_findings_are_not_affected() -> None:
    queued = {"metadata": {"name": "q", "namespace": "apps"}, "spec": {}, "status": {}}
    assert affected_image(queued, SLEDGEHAMMER) is None
    assert affected_image({}, SLEDGEHAMMER) is None


@pytest.mark.parametrize(
    ("status", "cut"),
    [
        ({"truncated": False}, False),
        ({}, False),
        # Cut findings: more counted than listed (or no counts to tell).
        ({"truncated": True, "vulnerabilities": {"high": 250}}, True),
        ({"truncated": True}, True),
        # Only the failed rules were cut: every finding is listed.
        ({"truncated": True, "vulnerabilities": {"high": 1, "low": 0}}, False),
    ],
)
def test_findings_cut_reads_status_truncated(status: dict[str, Any], cut: bool) -> None:
    assert findings_cut(scan_object([finding("CVE-2024-1")], **status)) is cut


def test_rows_are_ordered_by_namespace_then_image() -> None:
    def row(ns: str, stream: str) -> Any:
        tags = [{"namespace": ns, "imageStream": stream, "tag": "t"}]
        return affected_image(
            scan_object([finding(SLEDGEHAMMER)], name=stream, namespace=ns, tags=tags),
            SLEDGEHAMMER,
        )

    rows = [row("b", "x"), row("a", "z"), row("a", "y")]
    assert [(r.namespace, r.scan) for r in ordered(rows)] == [("a", "y"), ("a", "z"), ("b", "x")]


def test_table_is_kubectl_like_with_namespace_column_only_for_all_namespaces() -> None:
    tags = [{"namespace": "apps", "imageStream": "app", "tag": "latest"}]
    row = affected_image(scan_object([finding(SLEDGEHAMMER)], tags=tags), SLEDGEHAMMER)
    assert row is not None
    lines = cli.format_table([row], all_namespaces=False, wide=False).splitlines()
    assert lines[0].split() == [
        "IMAGESCAN", "TAGS", "IMAGE", "DIGEST", "POLICY", "SEVERITY", "RESULT",
    ]  # fmt: skip
    assert lines[1].split() == [
        "s1", "app:latest", "registry.local:5000/apps/app", VULN[:19], "default", "high", "Fail",
    ]  # fmt: skip
    # Columns line up: each cell starts where its header does.
    assert lines[1].index("app:latest") == lines[0].index("TAGS")
    assert lines[1].index("default") == lines[0].index("POLICY")
    every = cli.format_table([row], all_namespaces=True, wide=True).splitlines()
    assert every[0].split()[0] == "NAMESPACE" and every[1].split()[0] == "apps"
    assert every[0].split()[-3:] == ["DENIED", "FINDING", "PACKAGES"]
    assert VULN in every[1].split()  # the whole digest
    assert every[1].split()[-3:] == ["true", SLEDGEHAMMER, "openssl<3.1"]


def test_json_and_yaml_are_lists_of_the_rows_and_empty_lists_when_none() -> None:
    row = affected_image(scan_object([finding(SLEDGEHAMMER)]), SLEDGEHAMMER)
    assert row is not None
    assert json.loads(cli.format_rows([row], "json", all_namespaces=False)) == [row.to_dict()]
    assert yaml.safe_load(cli.format_rows([row], "yaml", all_namespaces=False)) == [row.to_dict()]
    assert json.loads(cli.format_rows([], "json", all_namespaces=False)) == []
    assert yaml.safe_load(cli.format_rows([], "yaml", all_namespaces=False)) == []
    assert cli.format_rows([], "table", all_namespaces=False) == ""


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "command", [["report", "x"], ["result", "x"], ["rescan", "x"], ["affected", "CVE-1"]]
)
def test_every_subcommand_takes_the_kubectl_flags_before_or_after_it(command: list[str]) -> None:
    parser = cli.build_parser()
    flags = ["--kubeconfig", "/k", "--context", "c", "-n", "ns", "-A"]
    for argv in ([*command, *flags], [*flags, *command]):
        args = parser.parse_args(argv)
        assert (args.kubeconfig, args.context, args.namespace, args.all_namespaces) == (
            "/k", "c", "ns", True,
        ), argv  # fmt: skip


def test_affected_output_formats_are_checked() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["affected", "CVE-1"]).output == "table"
    assert parser.parse_args(["affected", "CVE-1", "-o", "yaml"]).output == "yaml"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["affected", "CVE-1", "-o", "xml"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------ the CLI
@dataclass
class World:
    h: Harness
    config: dict[str, Any]  # what the CLI passed to load_client


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    """Two scanned images in ``apps`` (one with 251 findings, Sledgehammer past the 200 the
    status keeps) and one in ``web``; the CLI talks to the same in-memory API."""
    h = harness()
    world = World(h, {})

    def load_client(**config: Any) -> FakeKube:
        world.config.update(config)
        return h.kube

    monkeypatch.setattr(cli, "load_client", load_client)
    monkeypatch.setattr(cli, "current_namespace", lambda **_: "apps")
    many = [(f"CVE-2024-{n:04d}", "high") for n in range(250)] + [(SLEDGEHAMMER, "low")]
    scanned = {
        ("apps", "app"): (VULN, many),
        ("apps", "tools"): (OTHER, [("CVE-2024-0001", "critical")]),
        ("web", "front"): (OTHER, [(SLEDGEHAMMER, "critical")]),
    }
    add_image(h, VULN)
    add_image(h, OTHER)
    for (namespace, stream), (image, _) in scanned.items():
        add_stream(h, stream, namespace, {"latest": [image]})
    for namespace in ("apps", "web"):
        add_policy(h, "default", namespace, action="Report", failOn="high")
        reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", namespace))
    for scan in h.kube.list(IMAGESCAN):
        reconcile_imagescan(h.ctx, scan)
    for job in jobs(h):
        notes = job["metadata"]["annotations"]
        scan = h.kube.get(
            IMAGESCAN, notes[c.SCAN_NAME_ANNOTATION], notes[c.SCAN_NAMESPACE_ANNOTATION]
        )
        image, findings = scanned[
            (namespace_of(scan) or "", scan["spec"]["tags"][0]["imageStream"])
        ]
        assert post(h, job["metadata"]["name"], scan_result(image, findings)).status == 200
    for scan in h.kube.list(IMAGESCAN):
        reconcile_imagescan(h.ctx, scan)
    return world


def scan_named(world: World, namespace: str, stream: str) -> Obj:
    (scan,) = (
        s
        for s in world.h.kube.list(IMAGESCAN, namespace)
        if s["spec"]["tags"][0]["imageStream"] == stream
    )
    return scan


def test_affected_finds_a_cve_the_status_cut_in_the_stored_result(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    app = scan_named(world, "apps", "app")
    listed = {f["id"] for f in app["status"]["findings"]}
    assert len(listed) == MAX_FINDINGS and SLEDGEHAMMER not in listed
    assert app["status"]["truncated"] is True

    assert cli.main(["affected", SLEDGEHAMMER.lower(), "-o", "json"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [(r["namespace"], r["imageScan"], r["source"]) for r in rows] == [
        ("apps", app["metadata"]["name"], "storedResult")
    ]
    assert rows[0]["tags"] == [{"namespace": "apps", "imageStream": "app", "tag": "latest"}]
    assert rows[0]["severity"] == "low" and rows[0]["digest"] == VULN
    assert out.err == ""


def test_all_namespaces_and_the_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["affected", SLEDGEHAMMER, "-A"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAMESPACE")
    assert [line.split()[0] for line in lines[1:]] == ["apps", "web"]
    assert "front:latest" in lines[2] and "critical" in lines[2]


def test_no_match_exits_0_and_says_so_on_stderr(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["affected", "CVE-1999-0001"]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "No images affected by CVE-1999-0001 in namespace apps" in out.err
    assert cli.main(["affected", "CVE-1999-0001", "-A", "-o", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == [] and "in any namespace" in out.err


def test_a_bad_cve_id_is_a_usage_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["affected", "not an id"]) == 2
    assert "not a CVE" in capsys.readouterr().err


def test_a_tampered_stored_result_is_not_trusted(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    app = scan_named(world, "apps", "app")
    config_map = app["status"]["report"]["configMap"]
    forged = scan_result(VULN, [], reference="registry.local:5000/apps/app")
    packed = base64.b64encode(gzip.compress(forged.to_json().encode())).decode()
    world.h.kube.patch(CONFIGMAP, config_map, "apps", {"binaryData": {"result.json.gz": packed}})

    assert cli.main(["affected", SLEDGEHAMMER, "-o", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == []
    assert "only the findings in its status were searched" in out.err
    assert "sha256" in out.err
    # `scapguard result` refuses it too.
    assert cli.main(["result", app["metadata"]["name"]]) == 2


def test_a_cve_the_status_lists_needs_no_stored_result(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(world.h.kube.reads)
    assert cli.main(["affected", "CVE-2024-0001", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["source"] for r in rows} == {"status"} and len(rows) == 2
    assert not [r for r in world.h.kube.reads[before:] if r[1] == "configmaps"]


def test_kubeconfig_and_context_reach_the_client(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["affected", SLEDGEHAMMER, "--kubeconfig", "/k", "--context", "c"]) == 0
    assert world.config == {"kubeconfig": "/k", "context": "c"}


def test_a_name_with_all_namespaces_is_found_wherever_it_is(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    web = scan_named(world, "web", "front")
    assert cli.main(["rescan", web["metadata"]["name"], "-A"]) == 0
    notes = world.h.kube.get(IMAGESCAN, web["metadata"]["name"], "web")["metadata"]["annotations"]
    assert "scapguard.io/rescan" in notes
    # The policy "default" is in both namespaces: -A cannot choose.
    assert cli.main(["rescan", "--policy", "default", "-A"]) == 2
    assert "apps, web" in capsys.readouterr().err
    assert cli.main(["report", "nothing-by-that-name", "-A"]) == 2
