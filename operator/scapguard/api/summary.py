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
    findings = _list(vulns.get("findings"))
    rules = _list(comp.get("rules"))

    counts = dict.fromkeys(VULN_SEVERITIES, 0)
    for finding in findings:
        sev = str(finding.get("severity"))
        counts[sev if sev in counts else "unknown"] += 1
    rule_counts = dict.fromkeys(RULE_COUNTS, 0)
    for rule in rules:
        res = str(rule.get("result"))
        if res in rule_counts:
            rule_counts[res] += 1

    def sort_key(item: Mapping[str, Any]) -> tuple[int, str]:
        return (-SEVERITY_RANK.get(str(item.get("severity")), 0), str(item.get("id")))

    ordered = sorted(findings, key=sort_key)
    failed = sorted((r for r in rules if r.get("result") == "fail"), key=sort_key)
    truncated = (
        bool(vulns.get("truncated"))
        or len(ordered) > MAX_FINDINGS
        or len(failed) > MAX_FAILED_RULES
    )
    os_info = _map(doc.get("os"))
    scanner = _map(doc.get("scanner"))
    status: dict[str, Any] = {
        "os": {k: str(os_info[k]) for k in ("id", "versionId", "prettyName") if k in os_info}
        or None,
        "vulnerabilities": counts if vulns else None,
        "compliance": (
            {**rule_counts, "score": comp.get("score"), "profile": comp.get("profile")}
            if comp
            else None
        ),
        "failedRulesCount": rule_counts["fail"],
        "findings": [
            {
                "id": str(item.get("id")),
                "severity": str(item.get("severity", "unknown")),
                "title": _title(item.get("title")),
                "packages": [
                    {k: str(p[k]) for k in ("name", "fixedVersion") if p.get(k) is not None}
                    for p in _list(item.get("packages"))[:5]
                ],
            }
            for item in ordered[:MAX_FINDINGS]
        ],
        "failedRules": [
            {
                "id": str(item.get("id")),
                "severity": str(item.get("severity", "unknown")),
                "title": _title(item.get("title")),
            }
            for item in failed[:MAX_FAILED_RULES]
        ],
        "truncated": truncated,
        "content": [
            c
            for c in (_content("vulnerabilities", vulns), _content("compliance", comp))
            if c is not None
        ],
        "scanner": {
            k: str(scanner[k])
            for k in ("version", "oscapVersion", "idMapping", "idMappingFallback")
            if scanner.get(k) is not None
        },
        "startedAt": doc.get("startedAt"),
        "finishedAt": doc.get("finishedAt"),
    }
    return status
