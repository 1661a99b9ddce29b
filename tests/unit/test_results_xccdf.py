"""XCCDF and ARF results -> rule results and score, on hand-written documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from scapguard.results.xccdf import parse_xccdf_results
from scapguard.results.xmlsafe import XMLContentError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xccdf"


def test_xccdf_12_results() -> None:
    parsed = parse_xccdf_results(FIXTURES / "results-1.2.xml")
    assert parsed.profile == "xccdf_org.ssgproject.content_profile_standard"  # the last TestResult
    assert parsed.score == pytest.approx(66.666664)  # the default scoring system, not flat
    rules = {r.id.removeprefix("xccdf_org.ssgproject.content_rule_"): r for r in parsed.rules}
    assert set(rules) == {"partition_for_tmp", "file_owner_etc_shadow", "banner", "no_severity"}
    assert (rules["partition_for_tmp"].result, rules["partition_for_tmp"].severity) == (
        "fail",
        "low",
    )
    assert rules["partition_for_tmp"].title == "Ensure /tmp Located On Separate Partition"
    assert rules["file_owner_etc_shadow"].result == "pass"
    assert (rules["banner"].severity, rules["banner"].result) == ("low", "notapplicable")
    assert (rules["no_severity"].severity, rules["no_severity"].result) == ("unknown", "error")


def test_arf_results() -> None:
    parsed = parse_xccdf_results(FIXTURES / "results-arf.xml")
    assert parsed.profile == "xccdf_x_profile_p"
    assert parsed.score == 50.0
    assert [(r.id, r.severity, r.title, r.result) for r in parsed.rules] == [
        ("xccdf_x_rule_a", "high", "Rule A", "fail"),
        ("xccdf_x_rule_b", "low", "Rule B", "fixed"),
    ]


def test_bad_results_are_refused(tmp_path: Path) -> None:
    ns = "http://checklists.nist.gov/xccdf/1.2"
    no_result = tmp_path / "none.xml"
    no_result.write_text(f'<Benchmark xmlns="{ns}" id="b"/>', encoding="utf-8")
    with pytest.raises(XMLContentError, match="no XCCDF TestResult"):
        parse_xccdf_results(no_result)
    odd = tmp_path / "odd.xml"
    odd.write_text(
        f'<TestResult xmlns="{ns}" id="t"><rule-result idref="r"><result>maybe</result>'
        "</rule-result></TestResult>",
        encoding="utf-8",
    )
    with pytest.raises(XMLContentError, match="unknown result 'maybe'") as info:
        parse_xccdf_results(odd)
    assert info.value.path == str(odd)
