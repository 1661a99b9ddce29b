"""The scan result hand-off: round trips, the schema file, and errors that name the field."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import gzip
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import pytest

from scapguard.results import model as m

DIGEST = "sha256:" + "ab" * 32
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=12.5)


def make_result(**changes: Any) -> m.ScanResult:
    base = m.ScanResult(
        image=m.ImageRef(f"registry.example:5000/app@{DIGEST}", DIGEST),
        os=m.OSInfo("debian", "12", "Debian GNU/Linux 12 (bookworm)", "debian"),
        outcome="Completed",
        error=None,
        vulnerabilities=m.Vulnerabilities(
            content=m.ContentInfo("oval:debian-12", "catalogue", "cd" * 32, "2026-01-01T00:00:00"),
            findings=(
                m.Finding(
                    "CVE-2024-1234",
                    "high",
                    "openssl: something",
                    "oval:org.debian:def:1",
                    (m.AffectedPackage("openssl", "3.0.15-1~deb12u1"),),
                ),
                m.Finding("CVE-2024-9999", "unknown", "zlib", "oval:org.debian:def:2", ()),
            ),
            truncated=False,
        ),
        compliance=m.Compliance(
            content=m.ContentInfo("ssg-debian12-ds.xml", "file", "ef" * 32, "0.1.76"),
            profile="xccdf_org.ssgproject.content_profile_standard",
            score=87.5,
            rules=(
                m.RuleResult("xccdf_org.ssgproject.content_rule_a", "high", "A", "fail"),
                m.RuleResult("xccdf_org.ssgproject.content_rule_b", "low", "B", "pass"),
                m.RuleResult("xccdf_org.ssgproject.content_rule_c", "unknown", "C", "notchecked"),
            ),
            not_checked_reason=None,
        ),
        scanner=m.ScannerInfo("0.1.0", "1.3.7"),
        started_at=T0,
        finished_at=T1,
        timings={"pull": 1.25, "unpack": 0.5, "oscap": 3.0, "parse": 0.25},
    )
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    fields.update(changes)
    return m.ScanResult(**fields)


def test_round_trip_through_json() -> None:
    result = make_result()
    text = result.to_json()
    assert m.ScanResult.from_json(text) == result
    doc = json.loads(text)
    assert doc["schemaVersion"] == m.SCHEMA_VERSION
    assert doc["startedAt"] == "2026-01-02T03:04:05Z"
    assert doc["vulnerabilities"]["findings"][0]["packages"] == [
        {"name": "openssl", "fixedVersion": "3.0.15-1~deb12u1"}
    ]
    assert doc["compliance"]["notCheckedReason"] is None


def test_the_id_mapping_round_trips_and_older_results_without_it_still_load() -> None:
    result = make_result(scanner=m.ScannerInfo("0.1.0", "1.3.7", "rootless", "probe failed"))
    doc = result.to_dict()
    assert doc["scanner"]["idMapping"] == "rootless"
    assert m.ScanResult.from_dict(doc) == result
    del doc["scanner"]["idMapping"], doc["scanner"]["idMappingFallback"]
    assert m.ScanResult.from_dict(doc).scanner.id_mapping is None
    doc["scanner"]["idMapping"] = "root"
    with pytest.raises(m.ScanResultError, match="idMapping"):
        m.ScanResult.from_dict(doc)


def test_error_result_round_trips_without_os_or_sections() -> None:
    result = make_result(
        os=None,
        outcome="Error",
        error=m.ScanError(m.ErrorReason.UNSUPPORTED_OS, "alpine 3.20 is not supported"),
        vulnerabilities=None,
        compliance=None,
        scanner=m.ScannerInfo("0.1.0", None),
    )
    assert m.ScanResult.from_dict(result.to_dict()) == result


def test_counts_cover_every_severity_and_result() -> None:
    result = make_result()
    assert result.vulnerabilities is not None
    assert result.vulnerabilities.counts() == {
        "critical": 0,
        "high": 1,
        "medium": 0,
        "low": 0,
        "unknown": 1,
    }
    assert result.compliance is not None
    counts = result.compliance.counts()
    assert (counts["fail"], counts["pass"], counts["notchecked"], counts["error"]) == (1, 1, 1, 0)
    assert [r.id for r in result.compliance.failed()] == ["xccdf_org.ssgproject.content_rule_a"]


def test_schema_file_is_shipped_valid_and_matches_the_version() -> None:
    text = resources.files("scapguard.results").joinpath("scan-result.schema.json").read_text()
    loaded = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    assert loaded["properties"]["schemaVersion"]["const"] == m.SCHEMA_VERSION
    jsonschema.Draft202012Validator(loaded).validate(make_result().to_dict())


Mutation = Callable[[dict[str, Any]], None]

BAD_DOCUMENTS: list[tuple[str, Mutation, str]] = [
    (
        "bad-severity",
        lambda d: d["vulnerabilities"]["findings"][1].update(severity="urgent"),
        "vulnerabilities.findings[1].severity",
    ),
    (
        "bad-rule-result",
        lambda d: d["compliance"]["rules"][2].update(result="maybe"),
        "compliance.rules[2].result",
    ),
    ("bad-digest", lambda d: d["image"].update(digest="sha256:nothex"), "image.digest"),
    ("bad-family", lambda d: d["os"].update(family="alpine"), "os.family"),
    ("unknown-field", lambda d: d.update(passed=True), "$"),
    ("missing-field", lambda d: d.pop("timings"), "$"),
    (
        "wrong-version",
        lambda d: d.update(schemaVersion="scapguard.io/scan-result/v0"),
        "schemaVersion",
    ),
    ("negative-timing", lambda d: d["timings"].update(pull=-1), "timings.pull"),
    ("bad-time", lambda d: d.update(startedAt="yesterday"), "startedAt"),
    (
        "fixed-version-type",
        lambda d: d["vulnerabilities"]["findings"][0]["packages"][0].update(fixedVersion=3),
        "vulnerabilities.findings[0].packages[0].fixedVersion",
    ),
    (
        "content-sha",
        lambda d: d["compliance"]["content"].update(sha256="x"),
        "compliance.content.sha256",
    ),
    ("error-without-reason", lambda d: d.update(outcome="Error", error={"message": "x"}), "error"),
    ("error-outcome-without-error", lambda d: d.update(outcome="Error"), "error"),
    (
        "completed-with-error",
        lambda d: d.update(error={"reason": "Timeout", "message": "x"}),
        "error",
    ),
    ("completed-without-os", lambda d: d.update(os=None), "os"),
    (
        "completed-without-sections",
        lambda d: d.update(vulnerabilities=None, compliance=None),
        "vulnerabilities",
    ),
    (
        "reference-digest-mismatch",
        lambda d: d["image"].update(reference="x/y@sha256:" + "0" * 64),
        "image.reference",
    ),
    (
        "duplicate-finding",
        lambda d: d["vulnerabilities"]["findings"][1].update(id="CVE-2024-1234"),
        "vulnerabilities.findings[1].id",
    ),
    (
        "duplicate-rule",
        lambda d: d["compliance"]["rules"][1].update(id="xccdf_org.ssgproject.content_rule_a"),
        "compliance.rules[1].id",
    ),
    ("time-order", lambda d: d.update(finishedAt="2025-01-01T00:00:00Z"), "finishedAt"),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [(b[1], b[2]) for b in BAD_DOCUMENTS], ids=[b[0] for b in BAD_DOCUMENTS]
)
def test_invalid_documents_are_refused_naming_the_field(mutate: Mutation, field: str) -> None:
    doc = copy.deepcopy(make_result().to_dict())
    mutate(doc)
    with pytest.raises(m.ScanResultError) as info:
        m.ScanResult.from_dict(doc)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_non_object_and_non_json_are_refused() -> None:
    with pytest.raises(m.ScanResultError) as info:
        m.ScanResult.from_dict([1, 2])
    assert info.value.field == "$"
    with pytest.raises(m.ScanResultError) as info:
        m.ScanResult.from_json("{not json")
    assert info.value.field == "$"


def test_to_dict_refuses_an_invalid_result() -> None:
    bad = make_result(outcome="Error")  # no error object
    with pytest.raises(m.ScanResultError) as info:
        bad.to_dict()
    assert info.value.field == "error"
    naive = make_result(started_at=dt.datetime(2026, 1, 1))  # naive on purpose
    with pytest.raises(m.ScanResultError) as info:
        naive.to_dict()
    assert info.value.field == "startedAt"


def test_handoff_envelope_round_trip() -> None:
    html = b"<html><body>" + b"x" * 100_000 + b"</body></html>"
    body = m.encode_handoff(make_result(), html)
    assert set(body) == {"result", "reportGzipBase64"}
    result, report = m.decode_handoff(json.loads(json.dumps(body)))
    assert result == make_result()
    assert report == html
    assert m.decode_handoff(m.encode_handoff(make_result(), None)) == (make_result(), None)


def test_handoff_refuses_bad_bodies_naming_the_field() -> None:
    good = m.encode_handoff(make_result(), b"<html/>")
    cases: list[tuple[object, str]] = [
        ([], "$"),
        ({"reportGzipBase64": None}, "result"),
        ({**good, "token": "x"}, "token"),
        ({**good, "reportGzipBase64": "!!!"}, "reportGzipBase64"),
        ({**good, "reportGzipBase64": base64.b64encode(b"not gzip").decode()}, "reportGzipBase64"),
        ({**good, "result": {**good["result"], "outcome": "Passed"}}, "result.outcome"),
    ]
    for body, field in cases:
        with pytest.raises(m.ScanResultError) as info:
            m.decode_handoff(body)
        assert info.value.field == field, body


def test_handoff_refuses_a_gzip_bomb() -> None:
    bomb = gzip.compress(b"\0" * (m.MAX_REPORT_HTML_BYTES + 1), mtime=0)
    assert len(bomb) < 1024 * 1024
    body = {
        "result": make_result().to_dict(),
        "reportGzipBase64": base64.b64encode(bomb).decode(),
    }
    with pytest.raises(m.ScanResultError, match="larger than the limit") as info:
        m.decode_handoff(body)
    assert info.value.field == "reportGzipBase64"
