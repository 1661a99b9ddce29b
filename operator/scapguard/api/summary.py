"""The compact ImageScan status built from a scan result: counts, capped findings, identity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from scapguard.api.evaluation import SEVERITY_RANK, ResultLike, as_document

MAX_FINDINGS: Final = 200
MAX_FAILED_RULES: Final = 200
MAX_TITLE: Final = 200
VULN_SEVERITIES: Final = ("critical", "high", "medium", "low", "unknown")
RULE_COUNTS: Final = ("pass", "fail", "notapplicable", "error")


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _title(value: object) -> str:
    text = str(value or "")
    return text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 3] + "..."


def _content(kind: str, section: Mapping[str, Any]) -> dict[str, Any] | None:
    content = _map(section.get("content"))
    if not content:
        return None
    out = {"kind": kind}
    for key in ("name", "source", "sha256", "version", "origin"):
        if content.get(key) is not None:
            out[key] = str(content[key])
    return out


def result_status(result: ResultLike) -> dict[str, Any]:
    """Status fields describing what was found (not the verdict, which depends on policy)."""
    doc = as_document(result)
    vulns = _map(doc.get("vulnerabilities"))
    comp = _map(doc.get("compliance"))
    findings = sorted(_list(vulns.get("findings")), key=_worst_first)
    rules = _list(comp.get("rules"))
    failed = sorted((r for r in rules if r.get("result") == "fail"), key=_worst_first)
    rule_counts = _rule_counts(rules)
    os_info = _map(doc.get("os"))
    return {
        "os": {k: str(os_info[k]) for k in ("id", "versionId", "prettyName") if k in os_info}
        or None,
        "vulnerabilities": _severity_counts(findings) if vulns else None,
        "compliance": (
            {**rule_counts, "score": comp.get("score"), "profile": comp.get("profile")}
            if comp
            else None
        ),
        "failedRulesCount": rule_counts["fail"],
        "findings": [_finding(item) for item in findings[:MAX_FINDINGS]],
        "failedRules": [_failed_rule(item) for item in failed[:MAX_FAILED_RULES]],
        "truncated": bool(vulns.get("truncated"))
        or len(findings) > MAX_FINDINGS
        or len(failed) > MAX_FAILED_RULES,
        "content": [
            c
            for c in (_content("vulnerabilities", vulns), _content("compliance", comp))
            if c is not None
        ],
        "scanner": _scanner(_map(doc.get("scanner"))),
        "startedAt": doc.get("startedAt"),
        "finishedAt": doc.get("finishedAt"),
    }


def _worst_first(item: Mapping[str, Any]) -> tuple[int, str]:
    return (-SEVERITY_RANK.get(str(item.get("severity")), 0), str(item.get("id")))


def _severity_counts(findings: list[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(VULN_SEVERITIES, 0)
    for finding in findings:
        sev = str(finding.get("severity"))
        counts[sev if sev in counts else "unknown"] += 1
    return counts


def _rule_counts(rules: list[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(RULE_COUNTS, 0)
    for rule in rules:
        res = str(rule.get("result"))
        if res in counts:
            counts[res] += 1
    return counts


def _finding(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(item.get("id")),
        "severity": str(item.get("severity", "unknown")),
        "title": _title(item.get("title")),
        "packages": [
            {k: str(p[k]) for k in ("name", "fixedVersion") if p.get(k) is not None}
            for p in _list(item.get("packages"))[:5]
        ],
    }


def _failed_rule(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(item.get("id")),
        "severity": str(item.get("severity", "unknown")),
        "title": _title(item.get("title")),
    }


def _scanner(scanner: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: str(scanner[k])
        for k in ("version", "oscapVersion", "idMapping", "idMappingFallback")
        if scanner.get(k) is not None
    }
