"""OVAL results (``oscap oval eval --results``) -> vulnerability findings.

A finding is made for every ``vulnerability`` or ``patch`` definition whose result is ``true``,
one per CVE id named by the definition (``reference[@source='CVE']`` and Red Hat / Ubuntu
``advisory/cve``); a definition naming no CVE gives one finding under its advisory id (the
first other reference) or, failing that, its definition id. The same CVE reached through several
definitions is one finding: packages merged, the highest severity kept.

Affected packages come from the system characteristics: the items that made a true criterion's
test true (``tested_item[@result='true']``), by their ``name``; the fixed version is the value of
the test's state compared with ``less than`` (``evr``, ``version``, or the ``subexpression`` of
Canonical's OCI feeds, whose items are lines of ``./manifest``: the package is the line's first
word without ``:ARCH``), a leading ``0:`` epoch dropped. Severities follow
:mod:`scapguard.results.severity`.

Collection problems are reported, never hidden: definitions whose result is ``error`` and
collected objects flagged ``error`` are listed in :attr:`OvalResults.errors`, so the scanner can
turn a package database it could not read into an error rather than "no vulnerabilities".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lxml import etree

from scapguard.results.model import MAX_FINDINGS, AffectedPackage, Finding, Severity
from scapguard.results.severity import RANK, Vendor, highest, normalise, vendor_of
from scapguard.results.xmlsafe import (
    DEFAULT_MAX_BYTES,
    XMLContentError,
    local_name,
    parse_file,
    qname,
)

NS_RES: Final = "http://oval.mitre.org/XMLSchema/oval-results-5"
NS_DEF: Final = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
NS_SC: Final = "http://oval.mitre.org/XMLSchema/oval-system-characteristics-5"
NS_COMMON: Final = "http://oval.mitre.org/XMLSchema/oval-common-5"
ROOT: Final = qname(NS_RES, "oval_results")
DEFINITIONS_ROOT: Final = qname(NS_DEF, "oval_definitions")

_FINDING_CLASSES: Final = frozenset({"vulnerability", "patch"})
_TITLE_MAX: Final = 1024


@dataclass(frozen=True)
class ProbeError:
    """An OVAL object or definition oscap could not evaluate."""

    kind: str  # "definition" or the object element's local name, e.g. "dpkginfo_object"
    id: str
    message: str
    definition_class: str | None = None  # for a definition: "vulnerability", "patch", ...

    @property
    def finding_definition(self) -> bool:
        """A definition that would have been a finding had it evaluated."""
        return self.kind == "definition" and self.definition_class in _FINDING_CLASSES


@dataclass(frozen=True)
class OvalResults:
    findings: tuple[Finding, ...]
    truncated: bool
    errors: tuple[ProbeError, ...] = field(default_factory=tuple)


@dataclass
class _Draft:
    id: str
    severity: Severity
    title: str
    definition: str
    packages: dict[str, str | None]


def _text(el: etree._Element | None) -> str:
    if el is None or el.text is None:
        return ""
    return el.text.strip()


def _children(el: etree._Element, local: str) -> Iterable[etree._Element]:
    return (c for c in el if local_name(c.tag) == local)


def _child(el: etree._Element, local: str) -> etree._Element | None:
    return next(iter(_children(el, local)), None)


def _by_id(section: etree._Element | None) -> dict[str, etree._Element]:
    if section is None:
        return {}
    out: dict[str, etree._Element] = {}
    for el in section:
        ident = el.get("id")
        if ident:
            out[ident] = el
    return out


def _strip_epoch(version: str) -> str:
    return version[2:] if version.startswith("0:") else version


class _Index:
    """Lookups over one results document."""

    def __init__(self, root: etree._Element) -> None:
        defs = root.find(qname(NS_DEF, "oval_definitions"))
        if defs is None:
            raise ValueError("oval_results has no oval_definitions")
        self.definitions = _by_id(defs.find(qname(NS_DEF, "definitions")))
        self.tests = _by_id(defs.find(qname(NS_DEF, "tests")))
        self.states = _by_id(defs.find(qname(NS_DEF, "states")))
        self.objects = _by_id(defs.find(qname(NS_DEF, "objects")))
        system = root.find(f"{qname(NS_RES, 'results')}/{qname(NS_RES, 'system')}")
        if system is None:
            raise ValueError("oval_results has no results/system")
        self.system = system
        self.test_results: dict[str, etree._Element] = {}
        tests = system.find(qname(NS_RES, "tests"))
        if tests is not None:
            for t in tests:
                tid = t.get("test_id")
                if tid:
                    self.test_results[tid] = t
        self.items: dict[str, etree._Element] = {}
        sc = system.find(qname(NS_SC, "oval_system_characteristics"))
        self.collected: etree._Element | None = None
        if sc is not None:
            data = sc.find(qname(NS_SC, "system_data"))
            if data is not None:
                for item in data:
                    iid = item.get("id")
                    if iid:
                        self.items[iid] = item
            self.collected = sc.find(qname(NS_SC, "collected_objects"))


#: The path items of Canonical's OCI feeds carry (``path`` ``.``, ``filename`` ``manifest``).
OCI_MANIFEST: Final = "./manifest"


def _fixed_version(index: _Index, test: etree._Element) -> str | None:
    for state_ref in _children(test, "state"):
        state = index.states.get(state_ref.get("state_ref", ""))
        if state is None:
            continue
        for ent in state:
            if (
                local_name(ent.tag) in {"evr", "version", "subexpression"}
                and ent.get("operation") == "less than"
            ):
                value = _text(ent)
                if value:
                    return _strip_epoch(value)
    return None


def _true_criteria_tests(criteria: etree._Element | None) -> Iterable[str]:
    """test_refs of criteria that evaluated true (walking nested criteria that are true)."""
    if criteria is None or criteria.get("result") != "true":
        return
    for el in criteria:
        name = local_name(el.tag)
        if name == "criterion" and el.get("result") == "true" and el.get("negate") != "true":
            yield el.get("test_ref", "")
        elif name == "criteria":
            yield from _true_criteria_tests(el)


def _item_package(item: etree._Element) -> str:
    """A package item's ``name``, or the package of a line of an OCI ``./manifest``
    (``NAME[:ARCH]<TAB>VERSION``, Canonical's OCI-flavoured feeds)."""
    if local_name(item.tag) == "textfilecontent_item":
        if _text(_child(item, "filepath")) != OCI_MANIFEST:
            return ""
        words = _text(_child(item, "text")).split()
        return words[0].split(":", 1)[0] if words else ""
    return _text(_child(item, "name"))


def _affected_packages(index: _Index, result_def: etree._Element) -> dict[str, str | None]:
    packages: dict[str, str | None] = {}
    for test_ref in _true_criteria_tests(_child(result_def, "criteria")):
        test = index.tests.get(test_ref)
        test_result = index.test_results.get(test_ref)
        if test is None or test_result is None:
            continue
        fixed = _fixed_version(index, test)
        if fixed is None:
            continue  # "RHEL 9 is installed", "signed with the vendor key", ...
        for tested in _children(test_result, "tested_item"):
            if tested.get("result") != "true":
                continue
            item = index.items.get(tested.get("item_id", ""))
            name = _item_package(item) if item is not None else ""
            if name:
                packages[name] = fixed
    return packages


def _cve_severities(meta: etree._Element, vendor: Vendor) -> tuple[list[str], dict[str, Severity]]:
    ids: list[str] = []
    per_cve: dict[str, Severity] = {}
    for ref in _children(meta, "reference"):
        if ref.get("source", "").upper() == "CVE" and ref.get("ref_id"):
            ids.append(ref.get("ref_id", "").strip())
    advisory = _child(meta, "advisory")
    if advisory is not None:
        attr = {"redhat": "impact", "ubuntu": "priority"}.get(vendor)
        for cve in _children(advisory, "cve"):
            cve_id = _text(cve)
            if not cve_id:
                continue
            ids.append(cve_id)
            if attr and cve.get(attr):
                per_cve[cve_id] = normalise(vendor, cve.get(attr))
    return list(dict.fromkeys(ids)), per_cve


def _definition_severity(meta: etree._Element, vendor: Vendor) -> Severity:
    advisory = _child(meta, "advisory")
    if advisory is None:
        return "unknown"
    sev = _child(advisory, "severity")
    return normalise(vendor, _text(sev) or None)


def _fallback_id(meta: etree._Element, definition_id: str) -> str:
    for ref in _children(meta, "reference"):
        if ref.get("ref_id"):
            return ref.get("ref_id", "").strip()
    return definition_id


def _errors(index: _Index, results_defs: etree._Element | None) -> list[ProbeError]:
    errors: list[ProbeError] = []
    if results_defs is not None:
        for d in results_defs:
            if d.get("result") == "error":
                def_id = d.get("definition_id", "?")
                definition = index.definitions.get(def_id)
                cls = definition.get("class") if definition is not None else None
                errors.append(ProbeError("definition", def_id, "result error", cls))
    if index.collected is not None:
        for obj in index.collected:
            if obj.get("flag") != "error":
                continue
            oid = obj.get("id", "?")
            definition = index.objects.get(oid)
            kind = local_name(definition.tag) if definition is not None else "object"
            messages = [_text(m) for m in _children(obj, "message")]
            errors.append(ProbeError(kind, oid, "; ".join(m for m in messages if m) or "error"))
    return errors


def parse_oval_results(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> OvalResults:
    """Parse an OVAL results file into findings; raises XMLContentError for bad input."""
    root = parse_file(path, expected_roots={ROOT}, max_bytes=max_bytes)
    return oval_results_from_root(root, source=path)


def oval_results_from_root(root: etree._Element, *, source: Path | str) -> OvalResults:
    try:
        index = _Index(root)
    except ValueError as exc:
        raise XMLContentError(source, str(exc)) from exc
    results_defs = index.system.find(qname(NS_RES, "definitions"))
    drafts: dict[str, _Draft] = {}
    for result_def in results_defs if results_defs is not None else ():
        if result_def.get("result") != "true":
            continue
        def_id = result_def.get("definition_id", "")
        definition = index.definitions.get(def_id)
        if definition is None or definition.get("class") not in _FINDING_CLASSES:
            continue
        meta = _child(definition, "metadata")
        if meta is None:
            continue
        vendor = vendor_of(def_id)
        title = _text(_child(meta, "title"))[:_TITLE_MAX]
        cves, per_cve = _cve_severities(meta, vendor)
        default_sev = _definition_severity(meta, vendor)
        packages = _affected_packages(index, result_def)
        for finding_id in cves or [_fallback_id(meta, def_id)]:
            sev = per_cve.get(finding_id, default_sev)
            draft = drafts.get(finding_id)
            if draft is None:
                drafts[finding_id] = _Draft(finding_id, sev, title, def_id, dict(packages))
            else:
                draft.severity = highest(draft.severity, sev)
                for name, fixed in packages.items():
                    draft.packages.setdefault(name, fixed)
    ordered = sorted(drafts.values(), key=lambda d: (-RANK[d.severity], d.id))
    truncated = len(ordered) > MAX_FINDINGS
    findings = tuple(
        Finding(
            id=d.id,
            severity=d.severity,
            title=d.title,
            definition=d.definition,
            packages=tuple(AffectedPackage(n, v) for n, v in sorted(d.packages.items())),
        )
        for d in ordered[:MAX_FINDINGS]
    )
    return OvalResults(
        findings=findings, truncated=truncated, errors=tuple(_errors(index, results_defs))
    )
