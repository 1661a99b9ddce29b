"""Vendor severities -> scapguard's five levels (critical, high, medium, low, unknown).

Which vendor wrote a definition is read from its id namespace (``oval:com.redhat.*``,
``oval:com.ubuntu.*``, ``oval:org.debian.*``); anything else uses the generic column.

==========================  ==================================  ===========
vendor (where in the OVAL)  vendor value                        scapguard
==========================  ==================================  ===========
Red Hat                     Critical                            critical
``advisory/cve/@impact``    Important                           high
per CVE, else               Moderate                            medium
``advisory/severity``       Low                                 low
                            (absent, None)                      unknown
Ubuntu                      Critical                            critical
``advisory/cve/@priority``  High                                high
per CVE, else               Medium                              medium
``advisory/severity``       Low, Negligible                     low
                            Untriaged, (absent)                 unknown
Debian                      (Debian's OVAL carries no severity: unknown
                            the DSA/DLA/CVE definitions have only
                            title, description, references and
                            a ``debian/moreinfo`` block)
generic / other feeds       critical; high, important;          as named
``advisory/severity``       medium, moderate; low, negligible;
                            anything else                       unknown
XCCDF rules (``@severity``) high, medium, low                   as named
                            info                                low
                            unknown, (absent)                   unknown
==========================  ==================================  ===========

``unknown`` is kept apart on purpose: it is never silently counted as ``low``, and a finding
of unknown severity fails the image unless the policy says ``failOnUnknown: false`` or
``failOn: none`` (see ``scapguard.api.evaluation``), so a Debian image with fixable CVEs is not
a Pass just because its feed ranks nothing.
"""

from __future__ import annotations

from typing import Final, Literal

from scapguard.results.model import RuleSeverity, Severity

Vendor = Literal["redhat", "ubuntu", "debian", "generic"]

RANK: Final[dict[Severity, int]] = {"unknown": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}

_REDHAT: Final[dict[str, Severity]] = {
    "critical": "critical",
    "important": "high",
    "moderate": "medium",
    "low": "low",
}
_UBUNTU: Final[dict[str, Severity]] = {
    "critical": "critical",
    "high": "high",
    "medium": "medium",
    "low": "low",
    "negligible": "low",
    "untriaged": "unknown",
}
_GENERIC: Final[dict[str, Severity]] = {
    "critical": "critical",
    "high": "high",
    "important": "high",
    "medium": "medium",
    "moderate": "medium",
    "low": "low",
    "negligible": "low",
}
_RULE: Final[dict[str, RuleSeverity]] = {
    "high": "high",
    "medium": "medium",
    "low": "low",
    "info": "low",
}


def vendor_of(definition_id: str) -> Vendor:
    namespace = definition_id.split(":")[1] if definition_id.count(":") >= 3 else ""
    if namespace.startswith("com.redhat"):
        return "redhat"
    if namespace.startswith("com.ubuntu"):
        return "ubuntu"
    if namespace.startswith("org.debian"):
        return "debian"
    return "generic"


def normalise(vendor: Vendor, value: str | None) -> Severity:
    """Map one vendor severity string (case-insensitive) to scapguard's scale."""
    if vendor == "debian" or value is None:
        return "unknown"
    key = value.strip().lower()
    table = {"redhat": _REDHAT, "ubuntu": _UBUNTU}.get(vendor, _GENERIC)
    return table.get(key, "unknown")


def normalise_rule(value: str | None) -> RuleSeverity:
    if value is None:
        return "unknown"
    return _RULE.get(value.strip().lower(), "unknown")


def highest(a: Severity, b: Severity) -> Severity:
    return a if RANK[a] >= RANK[b] else b
