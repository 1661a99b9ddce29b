"""Standard conditions: types, CamelCase reasons and one helper that sets them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# Condition types.
SCANNED: Final = "Scanned"
COMPLIANT: Final = "Compliant"
ENFORCED: Final = "Enforced"
READY: Final = "Ready"

TRUE: Final = "True"
FALSE: Final = "False"
UNKNOWN: Final = "Unknown"


class Reason:
    """CamelCase reasons for conditions and Events."""

    # Scanning.
    QUEUED: Final = "Queued"
    RUNNING: Final = "Running"
    RETRYING: Final = "Retrying"
    SCAN_COMPLETED: Final = "ScanCompleted"
    OWNERS_NOT_PRESERVED: Final = "OwnersNotPreserved"
    SCAN_FAILED: Final = "ScanFailed"
    TIMEOUT: Final = "Timeout"
    SCANNER_FAILED: Final = "ScannerFailed"
    JOB_LOST: Final = "JobLost"
    POLICY_NOT_FOUND: Final = "PolicyNotFound"
    INVALID_POLICY: Final = "InvalidPolicy"
    INVALID_SPEC: Final = "InvalidSpec"
    # Evaluation.
    NO_FAILING_FINDINGS: Final = "NoFailingFindings"
    VULNERABILITIES_FOUND: Final = "VulnerabilitiesFound"
    RULES_FAILED: Final = "RulesFailed"
    VULNERABILITIES_AND_RULES: Final = "VulnerabilitiesAndRulesFailed"
    NOT_EVALUATED: Final = "NotEvaluated"
    REEVALUATED: Final = "Reevaluated"
    # Enforcement.
    DENIED: Final = "Denied"
    DENY_LIFTED: Final = "DenyLifted"
    NOT_DENIED: Final = "NotDenied"
    REPORT_ONLY: Final = "ReportOnly"
    DENIED_BY_PERSON: Final = "DeniedByPerson"
    ALLOWED_BY_PERSON: Final = "AllowedByPerson"
    IMAGE_NOT_FOUND: Final = "ImageNotFound"
    STORED_RESULT_TAMPERED: Final = "StoredResultTampered"
    # Policies.
    RECONCILED: Final = "Reconciled"
    RESCAN_REQUESTED: Final = "RescanRequested"
    PROMOTED: Final = "Promoted"
    NOT_PROMOTED: Final = "NotPromoted"
    PROMOTION_FAILED: Final = "PromotionFailed"
    CONTENT_UPDATED: Final = "ContentUpdated"
    SCAN_DELETED: Final = "ScanDeleted"


@dataclass(frozen=True)
class Condition:
    """One standard condition as scapguard judges it; ``set_conditions`` adds the
    observedGeneration and lastTransitionTime."""

    type: str
    status: str  # TRUE | FALSE | UNKNOWN
    reason: str  # a Reason
    message: str

    @property
    def true(self) -> bool:
        return self.status == TRUE


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition: Condition,
    *,
    observed_generation: int | None,
    now: str,
) -> tuple[list[dict[str, Any]], bool]:
    """Return the conditions with ``condition`` set, and whether anything changed.

    lastTransitionTime moves only when the status changes (cert-manager's rule), so
    repeating the same judgement is not a change and needs no patch.
    """
    out: list[dict[str, Any]] = []
    changed = True
    found = False
    for old in conditions or ():
        if old.get("type") != condition.type:
            out.append(dict(old))
            continue
        found = True
        kept = old.get("lastTransitionTime") if old.get("status") == condition.status else None
        new = _rendered(condition, observed_generation, kept or now)
        changed = new != dict(old)
        out.append(new)
    if not found:
        out.append(_rendered(condition, observed_generation, now))
    return out, changed


def set_conditions(
    conditions: Sequence[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    *,
    observed_generation: int | None,
    now: str,
) -> tuple[list[dict[str, Any]], bool]:
    """``set_condition`` for each of ``updates`` in turn; changed if any of them changed."""
    out = [dict(old) for old in conditions or ()]
    changed = False
    for condition in updates:
        out, did = set_condition(out, condition, observed_generation=observed_generation, now=now)
        changed = changed or did
    return out, changed


def status_patch(
    status: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
    updates: Sequence[Condition],
    *,
    observed_generation: int | None,
    now: str,
) -> dict[str, Any]:
    """The ``status`` of a merge patch: ``fields``; with ``updates``, the conditions when one
    changes (``set_conditions``' rule) and observedGeneration. For every resource scapguard
    writes conditions on (ImageScans, ScanPolicies)."""
    patch = dict(fields)
    if updates:
        conditions, changed = set_conditions(
            (status or {}).get("conditions"),
            updates,
            observed_generation=observed_generation,
            now=now,
        )
        if changed:
            patch["conditions"] = conditions
        patch["observedGeneration"] = observed_generation
    return patch


def _rendered(condition: Condition, observed_generation: int | None, since: str) -> dict[str, Any]:
    return {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message,
        "observedGeneration": observed_generation,
        "lastTransitionTime": since,
    }
