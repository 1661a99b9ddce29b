"""scapguard.api: spec parsing, conditions, evaluation, naming, annotations."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from scapguard.api import constants as c
from scapguard.api.annotations import QualityInput, enforcement_patch, quality_annotation
from scapguard.api.conditions import Condition, set_condition
from scapguard.api.errors import SpecError
from scapguard.api.evaluation import evaluate
from scapguard.api.imagescan import parse_imagescan_spec, parse_rescan, rescan_value, trigger_of
from scapguard.api.naming import JobName, digest_label, job_name, parse_job_name, scan_name
from scapguard.api.policy import LabelSelector, SelectorRequirement, parse_policy_spec
from scapguard.api.summary import result_status
from tests.harness import digest, scan_result

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


def test_policy_defaults() -> None:
    spec = parse_policy_spec({})
    assert (spec.fail_on, spec.fail_on_rules, spec.action, spec.on_error) == (
        "high",
        "high",
        "Report",
        "Allow",
    )
    assert spec.tags == ("*",) and spec.keep == 3 and spec.vulnerabilities.enabled
    assert spec.fail_on_unknown is True
    assert spec.scanner.timeout_seconds == 900 and spec.scanner.retries == 2


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"failOn": "severe"}, "spec.failOn"),
        ({"failOnUnknown": "yes"}, "spec.failOnUnknown"),
        ({"schedule": "61 * * * *"}, "spec.schedule"),
        (
            {
                "exceptions": [
                    {"id": "CVE-1", "reason": "x"},
                    {"id": "CVE-2", "reason": "y", "expires": "soon"},
                ]
            },
            "spec.exceptions[1].expires",
        ),
        ({"exceptions": [{"id": "CVE-1"}]}, "spec.exceptions[0].reason"),
        (
            {"vulnerabilities": {"feed": {"url": "https://x/feed.xml"}}},
            "spec.vulnerabilities.feed.sha256",
        ),
        (
            {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "spec.selector.matchExpressions[0].operator",
        ),
        ({"scanner": {"timeoutSeconds": "long"}}, "spec.scanner.timeoutSeconds"),
        ({"retention": {"keep": -1}}, "spec.retention.keep"),
    ],
)
def test_policy_errors_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_policy_spec(spec)
    assert err.value.field == field


def test_label_selector_semantics() -> None:
    sel = LabelSelector(
        {"team": "a"},
        (
            SelectorRequirement("env", "In", ("prod", "qa")),
            SelectorRequirement("skip", "DoesNotExist"),
        ),
    )
    assert sel.matches({"team": "a", "env": "prod"})
    assert not sel.matches({"team": "a", "env": "dev"})
    assert not sel.matches({"team": "a", "env": "qa", "skip": ""})
    assert LabelSelector().matches({})


def test_hashes_separate_content_from_judgement() -> None:
    base = parse_policy_spec({"failOn": "high"})
    stricter = parse_policy_spec({"failOn": "low"})
    compliance = parse_policy_spec({"compliance": {"enabled": True}})
    assert base.content_hash() == stricter.content_hash() != compliance.content_hash()
    assert base.evaluation_hash(NOW) != stricter.evaluation_hash(NOW)
    lenient = parse_policy_spec({"failOn": "high", "failOnUnknown": False})
    assert base.content_hash() == lenient.content_hash()
    assert base.evaluation_hash(NOW) != lenient.evaluation_hash(NOW)
    expiring = parse_policy_spec(
        {"exceptions": [{"id": "CVE-1", "reason": "r", "expires": "2026-03-01"}]}
    )
    assert expiring.evaluation_hash(NOW) != expiring.evaluation_hash(NOW + dt.timedelta(days=1))


def test_imagescan_spec_needs_a_digest() -> None:
    spec = parse_imagescan_spec({"image": f"r/x@{digest(1)}", "policy": "p"})
    assert spec.digest == digest(1) and spec.trigger == "OnDemand"
    with pytest.raises(SpecError) as err:
        parse_imagescan_spec({"image": "r/x:latest", "policy": "p"})
    assert err.value.field == "spec.image"
    assert trigger_of("Scheduled:2026-01-01T00:00:00Z") == "Scheduled"
    assert trigger_of("Scheduled") == "OnDemand" and trigger_of("anything") == "OnDemand"


def test_rescan_values_name_their_trigger_and_detail() -> None:
    assert rescan_value("PolicyChange", "abc") == "PolicyChange:abc"
    assert rescan_value("ContentUpdate", "feed@0123") == "ContentUpdate:feed@0123"
    assert parse_rescan("ContentUpdate:feed@0123") == ("ContentUpdate", "feed@0123")
    assert parse_rescan("OnDemand:policy/7") == ("OnDemand", "policy/7")
    assert parse_rescan("by-hand:1") == ("OnDemand", "by-hand:1"), "a person's value"
    with pytest.raises(ValueError):
        rescan_value("Whenever", "x")


def test_set_condition_keeps_transition_time_unless_status_changes() -> None:
    conds, changed = set_condition(
        None, Condition("Ready", "True", "A", "m"), observed_generation=1, now="t1"
    )
    assert changed and conds[0]["lastTransitionTime"] == "t1"
    same, changed = set_condition(
        conds, Condition("Ready", "True", "A", "m"), observed_generation=1, now="t2"
    )
    assert not changed and same == conds
    reworded, changed = set_condition(
        conds, Condition("Ready", "True", "B", "m2"), observed_generation=2, now="t3"
    )
    assert changed and reworded[0]["lastTransitionTime"] == "t1"
    flipped, changed = set_condition(
        reworded, Condition("Ready", "False", "C", "m"), observed_generation=2, now="t4"
    )
    assert changed and flipped[0]["lastTransitionTime"] == "t4"


def test_evaluation_thresholds_and_exceptions() -> None:
    result = scan_result(
        digest(1),
        [("CVE-A", "critical"), ("CVE-B", "medium"), ("CVE-C", "unknown")],
        [("rule_x", "medium", "fail"), ("rule_y", "high", "pass")],
    )
    high = evaluate(result, parse_policy_spec({"failOn": "high"}), NOW)
    assert (high.result, high.failing_vulnerabilities) == ("Fail", ("CVE-A", "CVE-C"))
    assert high.failing_rules == () and high.reason == "VulnerabilitiesFound"
    medium = evaluate(result, parse_policy_spec({"failOn": "medium", "failOnRules": "medium"}), NOW)
    assert medium.failing_vulnerabilities == ("CVE-A", "CVE-B", "CVE-C")
    assert medium.failing_rules == ("rule_x",)
    assert evaluate(result, parse_policy_spec({"failOn": "none"}), NOW).result == "Pass"
    excepted = parse_policy_spec(
        {
            "exceptions": [
                {"id": "CVE-A", "reason": "r", "expires": "2026-03-01"},
                {"id": "CVE-C", "reason": "r"},
            ]
        }
    )
    verdict = evaluate(result, excepted, NOW)
    assert (verdict.result, verdict.excepted) == ("Pass", ("CVE-A", "CVE-C"))
    expired = evaluate(result, excepted, NOW + dt.timedelta(days=1))
    assert expired.result == "Fail", "an exception lapses after its expiry day"
    # The dict form of the hand-off works the same.
    assert evaluate(result.to_dict(), parse_policy_spec({}), NOW) == high


def test_findings_of_unknown_severity_fail_unless_the_policy_says_otherwise() -> None:
    """Debian's OVAL gives no severity: an image with fixable CVEs must not show Pass."""
    debian = scan_result(digest(1), [("CVE-D1", "unknown"), ("CVE-D2", "unknown")])
    verdict = evaluate(debian, parse_policy_spec({}), NOW)
    assert (verdict.result, verdict.reason) == ("Fail", "VulnerabilitiesFound")
    assert verdict.failing_vulnerabilities == ("CVE-D1", "CVE-D2")
    assert "2 vulnerabilities of unknown severity (failOnUnknown)" in verdict.message
    assert evaluate(debian, parse_policy_spec({"failOn": "critical"}), NOW).result == "Fail"
    lenient = parse_policy_spec({"failOnUnknown": False})
    assert evaluate(debian, lenient, NOW).result == "Pass"
    assert evaluate(debian, parse_policy_spec({"failOn": "none"}), NOW).result == "Pass"
    mixed = scan_result(digest(1), [("CVE-H", "high"), ("CVE-U", "unknown"), ("CVE-L", "low")])
    both = evaluate(mixed, parse_policy_spec({}), NOW)
    assert both.failing_vulnerabilities == ("CVE-H", "CVE-U")
    assert "at or above high or of unknown severity (1" in both.message
    assert evaluate(mixed, lenient, NOW).failing_vulnerabilities == ("CVE-H",)


def test_rules_ending_in_error_fail_unless_failonrules_none() -> None:
    result = scan_result(
        digest(1),
        [],
        [("rule_e", "low", "error"), ("rule_u", "high", "unknown"), ("rule_p", "high", "pass")],
    )
    verdict = evaluate(result, parse_policy_spec({}), NOW)
    assert (verdict.result, verdict.reason) == ("Fail", "RulesFailed")
    assert verdict.failing_rules == ("rule_e",)
    assert verdict.message == "1 selected rules ended in error"
    assert result_status(result)["compliance"]["error"] == 1
    assert evaluate(result, parse_policy_spec({"failOnRules": "none"}), NOW).result == "Pass"
    excepted = parse_policy_spec({"exceptions": [{"id": "rule_e", "reason": "known probe gap"}]})
    assert evaluate(result, excepted, NOW).excepted == ("rule_e",)
    assert evaluate(result, excepted, NOW).result == "Pass"


def test_error_result_evaluates_to_error_with_its_reason() -> None:
    verdict = evaluate(
        scan_result(digest(1), error=("UnsupportedOS", "alpine")), parse_policy_spec({}), NOW
    )
    assert (verdict.result, verdict.reason) == ("Error", "UnsupportedOS")


def test_names_are_deterministic_and_valid() -> None:
    a = scan_name(digest(1), "apps", "default")
    assert a == scan_name(digest(1), "apps", "default")
    assert a != scan_name(digest(1), "apps", "other") != scan_name(digest(1), "ops", "default")
    assert a.startswith(digest(1)[7:19]) and len(a) <= 63
    assert len(digest_label(digest(1))) == 63
    assert job_name("uid", 2, 3).endswith("-2-3") and len(job_name("u" * 36, 99, 99)) <= 63


def test_a_job_name_parses_back_into_what_made_it() -> None:
    name = job_name("uid", 2, 13)
    scan_hash = hashlib.sha256(b"uid").hexdigest()[:12]
    assert name == f"scapguard-scan-{scan_hash}-2-13"
    assert parse_job_name(name) == JobName(scan_hash, 2, 13)
    for other in ("../../etc", f"{name}-1", "scapguard-scan-xyz-1-1", "scapguard-promote-0-1"):
        assert parse_job_name(other) is None, other


def test_quality_annotation_follows_the_openshift_format() -> None:
    value = json.loads(
        quality_annotation(
            QualityInput(
                timestamp="2026-03-01T12:00:00Z",
                reference="https://x/y",
                scanner_version="0.1.0",
                compliant=False,
                vulnerabilities={"critical": 1, "high": 2},
                failed_rules=3,
                description="Fail",
            )
        )
    )
    assert set(value) == {
        "name",
        "timestamp",
        "description",
        "reference",
        "scannerVersion",
        "compliant",
        "summary",
    }
    labels = {s["label"]: (s["data"], s["severityIndex"]) for s in value["summary"]}
    assert labels["critical"] == ("1", 3) and labels["low"] == ("0", 0)
    assert labels["failed rules"] == ("3", 2)
    assert all(isinstance(s["data"], str) for s in value["summary"])


def test_enforcement_patch_never_touches_a_persons_deny() -> None:
    person = {c.OPENSHIFT_DENY_ANNOTATION: "true"}
    assert enforcement_patch(person, deny=False, denied_by=[], quality=None) == {}
    assert enforcement_patch(person, deny=True, denied_by=["a/p"], quality=None) == {}
    ours = {
        c.OPENSHIFT_DENY_ANNOTATION: "true",
        c.DENY_MARKER_ANNOTATION: "true",
        c.DENIED_BY_ANNOTATION: "a/p",
    }
    assert enforcement_patch(ours, deny=True, denied_by=["a/p"], quality=None) == {}
    assert enforcement_patch(ours, deny=False, denied_by=[], quality="q") == {
        c.OPENSHIFT_DENY_ANNOTATION: None,
        c.DENY_MARKER_ANNOTATION: None,
        c.DENIED_BY_ANNOTATION: None,
        c.QUALITY_ANNOTATION: "q",
    }
    assert enforcement_patch({}, deny=True, denied_by=["b/q", "a/p"], quality=None) == {
        c.OPENSHIFT_DENY_ANNOTATION: "true",
        c.DENY_MARKER_ANNOTATION: "true",
        c.DENIED_BY_ANNOTATION: "a/p,b/q",
    }
