"""Pass/Fail from a scan result and a policy: failOn, failOnUnknown, failOnRules, exceptions.

A finding of ``unknown`` severity (the feed gives none: every Debian finding) fails unless the
policy says ``failOnUnknown: false`` or ``failOn: none``. A selected XCCDF rule that ended in
``error`` fails unless ``failOnRules: none``: a rule oscap could not judge is not a pass.

``result`` is a ``scapguard.results.model.ScanResult`` or its ``to_dict()`` form (the JSON
hand-off in docs/api-contracts.md); only the documented fields are read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from scapguard.api.conditions import Reason
from scapguard.api.policy import ScanPolicySpec

PASS: Final = "Pass"  # noqa: S105 -- a scan result, not a password
FAIL: Final = "Fail"
ERROR: Final = "Error"

# Higher is worse. "unknown" ranks lowest for sorting; whether it fails is failOnUnknown's call.
SEVERITY_RANK: Final = {"none": 0, "unknown": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
UNKNOWN: Final = "unknown"
FAILED_RULE_RESULTS: Final = frozenset({"fail"})
ERRORED_RULE_RESULTS: Final = frozenset({"error"})


@runtime_checkable
class HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


ResultLike = Mapping[str, Any] | HasToDict


@dataclass(frozen=True)
class Verdict:
    result: str  # Pass | Fail | Error
    reason: str
    message: str
    failing_vulnerabilities: tuple[str, ...] = ()
    failing_rules: tuple[str, ...] = ()  # failed rules and those that ended in error
    excepted: tuple[str, ...] = ()

    @property
    def compliant(self) -> bool:
        return self.result == PASS


def as_document(result: ResultLike) -> Mapping[str, Any]:
    if isinstance(result, HasToDict):
        return result.to_dict()
    return result


def _seq(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _threshold(level: str) -> int:
    return SEVERITY_RANK.get(level, 0) if level != "none" else 10**6


def evaluate(result: ResultLike, policy_spec: ScanPolicySpec, now: dt.datetime) -> Verdict:
    doc = as_document(result)
    if doc.get("outcome") != "Completed":
        return _error_verdict(doc)
    active = {e.id for e in policy_spec.active_exceptions(now)}
    vulns = _failing_vulnerabilities(doc, policy_spec, active)
    rules = _failing_rules(doc, policy_spec, active)
    excepted = vulns.excepted | rules.excepted
    return Verdict(
        result=FAIL if vulns.ids or rules.ids else PASS,
        reason=_reason(vulns.ids, rules.ids),
        message=_message(
            vulns.ids,
            rules.ids,
            policy_spec,
            len(excepted),
            len(vulns.flagged),
            len(rules.flagged),
        ),
        failing_vulnerabilities=vulns.ids,
        failing_rules=rules.ids,
        excepted=tuple(sorted(excepted)),
    )


def _error_verdict(doc: Mapping[str, Any]) -> Verdict:
    """A scan that did not complete: Error with the scanner's reason."""
    raw_error = doc.get("error")
    error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
    reason = str(error.get("reason") or Reason.SCAN_FAILED)
    return Verdict(
        result=ERROR,
        reason=reason,
        message=str(error.get("message") or "the scan did not complete"),
    )


@dataclass(frozen=True)
class _Failing:
    """The findings of one kind that fail the policy (sorted, unique), those among them that
    fail only by a rule of their own (unknown severity, errored rule), and the ones an active
    exception accepted instead."""

    ids: tuple[str, ...]
    flagged: tuple[str, ...]
    excepted: frozenset[str]

    @classmethod
    def of(cls, failing: list[str], flagged: list[str], excepted: set[str]) -> _Failing:
        return cls(tuple(sorted(set(failing))), tuple(sorted(set(flagged))), frozenset(excepted))


def _failing_vulnerabilities(
    doc: Mapping[str, Any], spec: ScanPolicySpec, active: set[str]
) -> _Failing:
    """Findings at or above failOn, and of unknown severity unless failOnUnknown is off."""
    limit = _threshold(spec.fail_on)
    unknown_fails = spec.fail_on_unknown and spec.fail_on != "none"
    failing: list[str] = []
    unknown_ids: list[str] = []
    excepted: set[str] = set()
    vulns = doc.get("vulnerabilities")
    for finding in _seq(vulns.get("findings") if isinstance(vulns, Mapping) else None):
        ident = str(finding.get("id", ""))
        severity = str(finding.get("severity"))
        unknown = severity not in SEVERITY_RANK or severity == UNKNOWN
        if unknown and not unknown_fails:
            continue
        if not unknown and SEVERITY_RANK[severity] < limit:
            continue
        if ident in active:
            excepted.add(ident)
            continue
        failing.append(ident)
        if unknown:
            unknown_ids.append(ident)
    return _Failing.of(failing, unknown_ids, excepted)


def _failing_rules(doc: Mapping[str, Any], spec: ScanPolicySpec, active: set[str]) -> _Failing:
    """Failed rules at or above failOnRules, and errored ones unless failOnRules is none."""
    limit = _threshold(spec.fail_on_rules)
    errors_fail = spec.fail_on_rules != "none"
    failing: list[str] = []
    errored_ids: list[str] = []
    excepted: set[str] = set()
    comp = doc.get("compliance")
    for rule in _seq(comp.get("rules") if isinstance(comp, Mapping) else None):
        outcome = rule.get("result")
        errored = outcome in ERRORED_RULE_RESULTS
        if not errored and outcome not in FAILED_RULE_RESULTS:
            continue
        ident = str(rule.get("id", ""))
        if errored and not errors_fail:
            continue
        if not errored and SEVERITY_RANK.get(str(rule.get("severity")), 0) < limit:
            continue
        if ident in active:
            excepted.add(ident)
            continue
        failing.append(ident)
        if errored:
            errored_ids.append(ident)
    return _Failing.of(failing, errored_ids, excepted)


def _reason(vulns: tuple[str, ...], rules: tuple[str, ...]) -> str:
    if vulns and rules:
        return Reason.VULNERABILITIES_AND_RULES
    if vulns:
        return Reason.VULNERABILITIES_FOUND
    if rules:
        return Reason.RULES_FAILED
    return Reason.NO_FAILING_FINDINGS


def _message(
    vulns: tuple[str, ...],
    rules: tuple[str, ...],
    spec: ScanPolicySpec,
    excepted: int,
    unknown: int,
    errored: int,
) -> str:
    parts: list[str] = []
    if vulns:
        shown = ", ".join(vulns[:5]) + (", ..." if len(vulns) > 5 else "")
        where = f"at or above {spec.fail_on}"
        if unknown == len(vulns):
            where = "of unknown severity (failOnUnknown)"
        elif unknown:
            where += f" or of unknown severity ({unknown}, failOnUnknown)"
        parts.append(f"{len(vulns)} vulnerabilities {where} ({shown})")
    failed = len(rules) - errored
    if failed:
        parts.append(f"{failed} failed rules at or above {spec.fail_on_rules}")
    if errored:
        parts.append(f"{errored} selected rules ended in error")
    text = "; ".join(parts) if parts else "no finding fails the policy"
    if excepted:
        text += f"; {excepted} accepted by exceptions"
    return text
