"""Annotations on the cluster-scoped OpenShift Image: the quality summary and the deny.

The quality annotation follows OpenShift's documented image-metadata format
(``quality.images.openshift.io/<qualityType>.<providerId>``): name, timestamp, description,
reference, scannerVersion, compliant and summary[{label, data, severityIndex, reference}]
where severityIndex runs 0..3 with 3 the most severe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from scapguard.api.constants import (
    DENIED_BY_ANNOTATION,
    DENY_MARKER_ANNOTATION,
    OPENSHIFT_DENY_ANNOTATION,
    QUALITY_ANNOTATION,
)

PROVIDER_NAME: Final = "scapguard (OpenSCAP)"
_SUMMARY: Final = (("critical", 3), ("high", 2), ("medium", 1), ("low", 0))


@dataclass(frozen=True)
class QualityInput:
    timestamp: str
    reference: str
    scanner_version: str | None
    compliant: bool | None
    vulnerabilities: Mapping[str, int] | None
    failed_rules: int | None
    description: str


def quality_annotation(data: QualityInput) -> str:
    summary: list[dict[str, Any]] = []
    for label, index in _SUMMARY:
        if data.vulnerabilities is not None:
            summary.append(
                {
                    "label": label,
                    "data": str(int(data.vulnerabilities.get(label, 0))),
                    "severityIndex": index,
                    "reference": data.reference,
                }
            )
    if data.failed_rules is not None:
        summary.append(
            {
                "label": "failed rules",
                "data": str(data.failed_rules),
                "severityIndex": 2 if data.failed_rules else 0,
                "reference": data.reference,
            }
        )
    value: dict[str, Any] = {
        "name": PROVIDER_NAME,
        "timestamp": data.timestamp,
        "description": data.description,
        "reference": data.reference,
        "scannerVersion": data.scanner_version or "unknown",
        "compliant": data.compliant,
        "summary": summary,
    }
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def person_deny_value(annotations: Mapping[str, str]) -> str | None:
    """The deny-execution value a person set (any value, without scapguard's marker), or None.

    scapguard never changes it: not a ``"true"`` (a person's deny), and not a ``"false"`` or any
    other spelling either (a person's decision, which scapguard's marker must not adopt).
    """
    if annotations.get(DENY_MARKER_ANNOTATION) == "true":
        return None
    return annotations.get(OPENSHIFT_DENY_ANNOTATION)


def deny_set_by_person(annotations: Mapping[str, str]) -> bool:
    return person_deny_value(annotations) == "true"


def enforcement_patch(
    annotations: Mapping[str, str],
    *,
    deny: bool,
    denied_by: Sequence[str],
    quality: str | None,
) -> dict[str, str | None]:
    """The annotation changes (None deletes) that bring an Image to the wanted state.

    scapguard only ever lifts a deny that carries its marker; a deny-execution annotation a
    person set (no marker, any value) is left exactly as it is, and never gains the marker.
    """
    wanted: dict[str, str | None] = {}
    if quality is not None:
        wanted[QUALITY_ANNOTATION] = quality
    ours = annotations.get(DENY_MARKER_ANNOTATION) == "true"
    if deny:
        if person_deny_value(annotations) is None:
            wanted[OPENSHIFT_DENY_ANNOTATION] = "true"
            wanted[DENY_MARKER_ANNOTATION] = "true"
            wanted[DENIED_BY_ANNOTATION] = ",".join(sorted(denied_by))
    elif ours:
        wanted[OPENSHIFT_DENY_ANNOTATION] = None
        wanted[DENY_MARKER_ANNOTATION] = None
        wanted[DENIED_BY_ANNOTATION] = None
    return {k: v for k, v in wanted.items() if annotations.get(k) != v}
