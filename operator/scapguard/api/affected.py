"""Which images a vulnerability affects: ImageScan findings matched against one CVE id.

Pure functions over ImageScan objects (and, for scans whose status cut its findings, the full
stored :class:`~scapguard.results.model.ScanResult`); ``scapguard affected`` fetches them.

A finding is one CVE (its ``id``), or, when its OVAL definition names no CVE, an advisory id
whose ``title`` may still name CVEs. So a finding matches a query when its id is the query
(case-insensitive), or when its id is not itself a CVE id and its title names the query as a
whole word. A scan gives at most one row: its id match if it has one, else its first (most
severe) title match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from scapguard.api.imagescan import IMAGE_BY_DIGEST, TagRef
from scapguard.api.summary import VULN_SEVERITIES
from scapguard.results.model import ScanResult

CVE_ID: Final = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
# CVE ids and the advisory ids findings fall back to (RHSA-2024:1234, DSA-5678-1, USN-1-1).
_QUERY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

MatchedBy = Literal["id", "title"]
Source = Literal["status", "storedResult"]


@dataclass(frozen=True)
class FindingRef:
    """A finding as the ImageScan status or the stored result carries it."""

    id: str
    severity: str
    title: str
    packages: tuple[tuple[str, str | None], ...] = ()  # (name, fixed version)


@dataclass(frozen=True)
class AffectedImage:
    """One row of ``scapguard affected``: a scan whose image has the finding."""

    namespace: str
    scan: str
    policy: str
    image: str  # pull spec by digest
    digest: str
    tags: tuple[TagRef, ...]
    finding: FindingRef
    matched_by: MatchedBy
    result: str | None  # the scan's Pass | Fail | Error
    denied: bool
    source: Source

    @property
    def repository(self) -> str:
        return self.image.split("@", 1)[0]

    def tag_names(self) -> list[str]:
        """``stream:tag``, prefixed with the stream's namespace when it is not the scan's."""
        return [
            t.display() if t.namespace == self.namespace else f"{t.namespace}/{t.display()}"
            for t in self.tags
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "imageScan": self.scan,
            "policy": self.policy,
            "image": self.image,
            "digest": self.digest,
            "tags": [t.to_dict() for t in self.tags],
            "finding": self.finding.id,
            "severity": self.finding.severity,
            "title": self.finding.title,
            "packages": [
                {"name": name, "fixedVersion": fixed} for name, fixed in self.finding.packages
            ],
            "matchedBy": self.matched_by,
            "result": self.result,
            "denied": self.denied,
            "source": self.source,
        }


def parse_query(text: str) -> str:
    """The CVE (or advisory) id to look for; ValueError when it cannot be one."""
    query = text.strip()
    if not _QUERY.fullmatch(query):
        raise ValueError(f"not a CVE or advisory id: {text!r}")
    return query


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def status_findings(scan: Mapping[str, Any]) -> list[FindingRef]:
    """The (at most 200) findings in the scan's status, most severe first."""
    return [
        FindingRef(
            id=_str(item.get("id")),
            severity=_str(item.get("severity")) or "unknown",
            title=_str(item.get("title")),
            packages=tuple(
                (_str(p.get("name")), _str(p.get("fixedVersion")) or None)
                for p in _list(item.get("packages"))
            ),
        )
        for item in _list(_map(scan.get("status")).get("findings"))
    ]


def result_findings(result: ScanResult) -> list[FindingRef]:
    """Every finding of a full result (the scanner's own cap aside), most severe first."""
    if result.vulnerabilities is None:
        return []
    return [
        FindingRef(
            id=f.id,
            severity=f.severity,
            title=f.title,
            packages=tuple((p.name, p.fixed_version) for p in f.packages),
        )
        for f in result.vulnerabilities.findings
    ]


def findings_cut(scan: Mapping[str, Any]) -> bool:
    """Whether the status holds only some of the scan's findings (``status.truncated``).

    ``truncated`` also says failed rules were cut; when the severity counts add up to the
    findings listed, the findings themselves are all there.
    """
    status = _map(scan.get("status"))
    if status.get("truncated") is not True:
        return False
    counts = _map(status.get("vulnerabilities"))
    if not counts:
        return True
    total = sum(v for k, v in counts.items() if k in VULN_SEVERITIES and isinstance(v, int))
    return total > len(_list(status.get("findings")))


def _names(title: str, query: str) -> bool:
    pattern = rf"(?<![A-Za-z0-9]){re.escape(query)}(?![A-Za-z0-9])"
    return re.search(pattern, title, re.IGNORECASE) is not None


def match(findings: Iterable[FindingRef], query: str) -> tuple[FindingRef, MatchedBy] | None:
    """The finding that makes an image affected by ``query``: by id, else by title."""
    wanted = query.casefold()
    by_title: FindingRef | None = None
    for finding in findings:
        if finding.id.casefold() == wanted:
            return finding, "id"
        if by_title is None and not CVE_ID.fullmatch(finding.id) and _names(finding.title, query):
            by_title = finding
    return (by_title, "title") if by_title is not None else None


def _tags(spec: Mapping[str, Any]) -> tuple[TagRef, ...]:
    return tuple(
        TagRef(_str(t.get("namespace")), _str(t.get("imageStream")), _str(t.get("tag")))
        for t in _list(spec.get("tags"))
    )


def affected_image(
    scan: Mapping[str, Any], query: str, result: ScanResult | None = None
) -> AffectedImage | None:
    """The row for ``scan`` if its image has ``query``; from ``result`` when one is given
    (the full stored result), else from the findings in the scan's status."""
    findings = result_findings(result) if result is not None else status_findings(scan)
    found = match(findings, query)
    if found is None:
        return None
    meta, spec, status = (_map(scan.get(k)) for k in ("metadata", "spec", "status"))
    image = _str(spec.get("image"))
    digest = IMAGE_BY_DIGEST.fullmatch(image)
    return AffectedImage(
        namespace=_str(meta.get("namespace")),
        scan=_str(meta.get("name")),
        policy=_str(spec.get("policy")),
        image=image,
        digest=digest.group(1) if digest else "",
        tags=_tags(spec),
        finding=found[0],
        matched_by=found[1],
        result=_str(status.get("result")) or None,
        denied=status.get("denied") is True,
        source="storedResult" if result is not None else "status",
    )


def ordered(rows: Sequence[AffectedImage]) -> list[AffectedImage]:
    """Rows by namespace, then image (first tag, else repository), policy and scan."""

    def key(row: AffectedImage) -> tuple[str, str, str, str]:
        first = row.tag_names()[0] if row.tags else row.repository
        return (row.namespace, first, row.policy, row.scan)

    return sorted(rows, key=key)
