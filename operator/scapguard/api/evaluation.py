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
    failing_rules: tuple[str, ...] = ()  # failed rules and, among them, errored_rules
    excepted: tuple[str, ...] = ()
    error_reason: str | None = None
    unknown_vulnerabilities: tuple[str, ...] = ()  # the failing ones of unknown severity
    errored_rules: tuple[str, ...] = ()

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
        raw_error = doc.get("error")
        error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
        reason = str(error.get("reason") or Reason.SCAN_FAILED)
        return Verdict(
            result=ERROR,
            reason=reason,
            message=str(error.get("message") or "the scan did not complete"),
            error_reason=reason,
        )
    active = {e.id for e in policy_spec.active_exceptions(now)}
    excepted: set[str] = set()

    vuln_limit = _threshold(policy_spec.fail_on)
    unknown_fails = policy_spec.fail_on_unknown and policy_spec.fail_on != "none"
    failing_vulns: list[str] = []
    unknown_vulns: list[str] = []
    vulns = doc.get("vulnerabilities")
    for finding in _seq(vulns.get("findings") if isinstance(vulns, Mapping) else None):
        ident = str(finding.get("id", ""))
        severity = str(finding.get("severity"))
        unknown = severity not in SEVERITY_RANK or severity == UNKNOWN
        if unknown and not unknown_fails:
            continue
        if not unknown and SEVERITY_RANK[severity] < vuln_limit:
            continue
        if ident in active:
            excepted.add(ident)
            continue
        failing_vulns.append(ident)
        if unknown:
            unknown_vulns.append(ident)

    rule_limit = _threshold(policy_spec.fail_on_rules)
    errors_fail = policy_spec.fail_on_rules != "none"
    failing_rules: list[str] = []
    errored_rules: list[str] = []
    comp = doc.get("compliance")
    for rule in _seq(comp.get("rules") if isinstance(comp, Mapping) else None):
        outcome = rule.get("result")
        errored = outcome in ERRORED_RULE_RESULTS
        if not errored and outcome not in FAILED_RULE_RESULTS:
            continue
        ident = str(rule.get("id", ""))
        if errored and not errors_fail:
            continue
        if not errored and SEVERITY_RANK.get(str(rule.get("severity")), 0) < rule_limit:
            continue
        if ident in active:
            excepted.add(ident)
            continue
        failing_rules.append(ident)
        if errored:
            errored_rules.append(ident)

    vulns_out = tuple(sorted(set(failing_vulns)))
    rules_out = tuple(sorted(set(failing_rules)))
    unknown_out = tuple(sorted(set(unknown_vulns)))
    errored_out = tuple(sorted(set(errored_rules)))
    if vulns_out and rules_out:
        reason = Reason.VULNERABILITIES_AND_RULES
    elif vulns_out:
        reason = Reason.VULNERABILITIES_FOUND
    elif rules_out:
        reason = Reason.RULES_FAILED
    else:
        reason = Reason.NO_FAILING_FINDINGS
    return Verdict(
        result=FAIL if vulns_out or rules_out else PASS,
        reason=reason,
        message=_message(
            vulns_out, rules_out, policy_spec, len(excepted), len(unknown_out), len(errored_out)
        ),
        failing_vulnerabilities=vulns_out,
        failing_rules=rules_out,
        excepted=tuple(sorted(excepted)),
        unknown_vulnerabilities=unknown_out,
        errored_rules=errored_out,
    )


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
