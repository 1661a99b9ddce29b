"""OVAL results -> findings, on hand-written results in each vendor's style."""

from __future__ import annotations

from pathlib import Path

import pytest

from scapguard.results.model import MAX_FINDINGS, Finding
from scapguard.results.oval import parse_oval_results
from scapguard.results.severity import normalise, normalise_rule, vendor_of
from scapguard.results.xmlsafe import XMLContentError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oval"


def by_id(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


def packages(finding: Finding) -> dict[str, str | None]:
    return {p.name: p.fixed_version for p in finding.packages}


def test_redhat_one_finding_per_cve_with_its_own_impact() -> None:
    parsed = parse_oval_results(FIXTURES / "redhat-results.xml")
    found = by_id(parsed.findings)
    assert set(found) == {"CVE-2099-0001", "CVE-2099-0002", "CVE-2099-0003", "RHBA-2099:0004"}
    openssl = {"openssl": "1:3.0.7-28.el9_4", "openssl-libs": "1:3.0.7-28.el9_4"}
    assert found["CVE-2099-0001"].severity == "low"  # impact="low" beats advisory Important
    assert packages(found["CVE-2099-0001"]) == openssl
    assert found["CVE-2099-0003"].severity == "high"  # no impact: advisory Important
    assert found["CVE-2099-0001"].definition == "oval:com.redhat.rhsa:def:20990001"
    assert found["CVE-2099-0001"].title == "RHSA-2099:0001: openssl security update (Important)"
    # CVE-2099-0002 is in two advisories: merged, highest severity, packages of both.
    assert found["CVE-2099-0002"].severity == "critical"
    assert packages(found["CVE-2099-0002"]) == {**openssl, "zlib": "1.2.11-41.el9"}
    # A definition without CVE is reported under its advisory id.
    assert found["RHBA-2099:0004"].severity == "medium"
    assert packages(found["RHBA-2099:0004"]) == {"zlib": "1.2.11-41.el9"}
    assert parsed.errors == ()
    assert parsed.truncated is False
    # Ordered by severity, then id.
    assert [f.id for f in parsed.findings][:2] == ["CVE-2099-0002", "CVE-2099-0003"]


def test_ubuntu_priorities_and_binaries_from_the_collected_items() -> None:
    found = by_id(parse_oval_results(FIXTURES / "ubuntu-results.xml").findings)
    assert found["CVE-2024-1234"].severity == "medium"
    # Only the binaries whose item made the test true (libssl-dev was false).
    assert packages(found["CVE-2024-1234"]) == {
        "libssl3": "3.0.2-0ubuntu1.18",
        "openssl": "3.0.2-0ubuntu1.18",
    }
    assert found["CVE-2024-5555"].severity == "low"  # negligible
    assert found["CVE-2024-6666"].severity == "unknown"  # untriaged
    assert packages(found["CVE-2024-6666"]) == {"zlib1g": "1:1.2.11.dfsg-2ubuntu9.3"}


def test_debian_has_no_severity_and_errors_are_reported() -> None:
    parsed = parse_oval_results(FIXTURES / "debian-results.xml")
    found = by_id(parsed.findings)
    assert set(found) == {"CVE-2024-0100"}  # the error and the negated definition are not
    assert found["CVE-2024-0100"].severity == "unknown"
    assert packages(found["CVE-2024-0100"]) == {"libssl3": "3.0.15-1~deb12u1"}
    kinds = {(e.kind, e.id) for e in parsed.errors}
    assert kinds == {
        ("definition", "oval:org.debian:def:101"),
        ("dpkginfo_object", "oval:org.debian:obj:3"),
    }
    assert any("dpkginfo_init" in e.message for e in parsed.errors)


def test_findings_are_capped_and_flagged(tmp_path: Path) -> None:
    text = (FIXTURES / "debian-results.xml").read_text(encoding="utf-8")
    head, _, tail = text.partition(
        '      <definition class="vulnerability" id="oval:org.debian:def:101"'
    )
    many = "".join(
        f'<definition class="vulnerability" id="oval:org.debian:def:{9000 + i}" version="1">'
        f'<metadata><title>t</title><reference ref_id="CVE-2098-{10000 + i}" source="CVE"/>'
        "<description>x</description></metadata>"
        '<criteria><criterion test_ref="oval:org.debian:tst:2"/></criteria></definition>'
        for i in range(MAX_FINDINGS + 5)
    )
    results = "".join(
        f'<definition definition_id="oval:org.debian:def:{9000 + i}" result="true" version="1">'
        '<criteria operator="AND" result="true"><criterion test_ref="oval:org.debian:tst:2" '
        'version="1" result="true"/></criteria></definition>'
        for i in range(MAX_FINDINGS + 5)
    )
    doc = (
        head + many + '      <definition class="vulnerability" id="oval:org.debian:def:101"' + tail
    )
    doc = doc.replace("<results>\n    <system>\n      <definitions>",
                      "<results>\n    <system>\n      <definitions>" + results)  # fmt: skip
    path = tmp_path / "many.xml"
    path.write_text(doc, encoding="utf-8")
    parsed = parse_oval_results(path)
    assert parsed.truncated is True
    assert len(parsed.findings) == MAX_FINDINGS


def test_wrong_documents_are_refused_naming_the_file(tmp_path: Path) -> None:
    xccdf = Path(__file__).resolve().parent.parent / "fixtures" / "xccdf" / "results-1.2.xml"
    with pytest.raises(XMLContentError, match="root element") as info:
        parse_oval_results(xccdf)
    assert info.value.path == str(xccdf)
    empty = tmp_path / "empty.xml"
    empty.write_text(
        '<oval_results xmlns="http://oval.mitre.org/XMLSchema/oval-results-5"/>', encoding="utf-8"
    )
    with pytest.raises(XMLContentError, match="no oval_definitions"):
        parse_oval_results(empty)


@pytest.mark.parametrize(
    ("definition_id", "value", "expected"),
    [
        ("oval:com.redhat.rhsa:def:1", "Critical", "critical"),
        ("oval:com.redhat.rhsa:def:1", "Important", "high"),
        ("oval:com.redhat.rhsa:def:1", "Moderate", "medium"),
        ("oval:com.redhat.rhsa:def:1", "low", "low"),
        ("oval:com.redhat.rhsa:def:1", "None", "unknown"),
        ("oval:com.ubuntu.noble:def:1", "High", "high"),
        ("oval:com.ubuntu.noble:def:1", "Negligible", "low"),
        ("oval:com.ubuntu.noble:def:1", "Untriaged", "unknown"),
        ("oval:org.debian:def:1", "High", "unknown"),
        ("oval:org.almalinux.alsa:def:1", "Important", "high"),
        ("oval:org.almalinux.alsa:def:1", "whatever", "unknown"),
    ],
)
def test_severity_mapping(definition_id: str, value: str, expected: str) -> None:
    assert normalise(vendor_of(definition_id), value) == expected


def test_rule_severity_mapping() -> None:
    assert [normalise_rule(v) for v in ("high", "Medium", "low", "info", "unknown", None)] == [
        "high", "medium", "low", "low", "unknown", "unknown",
    ]  # fmt: skip
