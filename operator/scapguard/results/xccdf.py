"""XCCDF results (``oscap xccdf eval --results``) or ARF (``--results-arf``) -> rule results.

The last ``TestResult`` in the document is read (XCCDF 1.2 or 1.1): every ``rule-result``
except ``notselected`` ones (a profile selects a few dozen of a benchmark's hundreds of rules; the
rest would only bloat the hand-off), with the rule's severity (see
:mod:`scapguard.results.severity`: ``info`` -> ``low``) and its title from the benchmark's
``Rule`` element. The score is the ``urn:xccdf:scoring:default`` one when present, else the
first ``score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lxml import etree

from scapguard.results.model import RULE_OUTCOMES, RuleOutcome, RuleResult
from scapguard.results.severity import normalise_rule
from scapguard.results.xmlsafe import (
    DEFAULT_MAX_BYTES,
    XMLContentError,
    local_name,
    parse_file,
    qname,
)

NS_XCCDF_12: Final = "http://checklists.nist.gov/xccdf/1.2"
NS_XCCDF_11: Final = "http://checklists.nist.gov/xccdf/1.1"
NS_ARF: Final = "http://scap.nist.gov/schema/asset-reporting-format/1.1"
ROOTS: Final = frozenset(
    {
        qname(NS_XCCDF_12, "Benchmark"),
        qname(NS_XCCDF_11, "Benchmark"),
        qname(NS_XCCDF_12, "TestResult"),
        qname(NS_XCCDF_11, "TestResult"),
        qname(NS_ARF, "asset-report-collection"),
    }
)
_XCCDF_NAMESPACES: Final = (NS_XCCDF_12, NS_XCCDF_11)
_TITLE_MAX: Final = 1024
DEFAULT_SCORING: Final = "urn:xccdf:scoring:default"


@dataclass(frozen=True)
class XccdfResults:
    profile: str | None
    score: float | None
    rules: tuple[RuleResult, ...]


def _is_xccdf(el: etree._Element, local: str) -> bool:
    tag = el.tag
    return isinstance(tag, str) and any(tag == qname(ns, local) for ns in _XCCDF_NAMESPACES)


def _iter_xccdf(root: etree._Element, local: str) -> list[etree._Element]:
    return [el for ns in _XCCDF_NAMESPACES for el in root.iter(qname(ns, local))]


def _all_text(el: etree._Element) -> str:
    return "".join(t if isinstance(t, str) else t.decode() for t in el.itertext()).strip()


def _first_text(el: etree._Element, local: str) -> str:
    for child in el:
        if local_name(child.tag) == local:
            return _all_text(child)
    return ""


def parse_xccdf_results(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> XccdfResults:
    root = parse_file(path, expected_roots=ROOTS, max_bytes=max_bytes)
    return xccdf_results_from_root(root, source=path)


def xccdf_results_from_root(root: etree._Element, *, source: Path | str) -> XccdfResults:
    test_results = _iter_xccdf(root, "TestResult")
    if not test_results:
        raise XMLContentError(source, "holds no XCCDF TestResult")
    test_result = test_results[-1]
    titles: dict[str, str] = {}
    for rule in _iter_xccdf(root, "Rule"):
        rid = rule.get("id")
        if rid:
            titles[rid] = _first_text(rule, "title")[:_TITLE_MAX]
    rules: dict[str, RuleResult] = {}
    for rr in test_result:
        if not _is_xccdf(rr, "rule-result"):
            continue
        rid = rr.get("idref", "")
        outcome = _first_text(rr, "result")
        if not rid:
            raise XMLContentError(source, "rule-result without idref")
        if outcome not in RULE_OUTCOMES:
            raise XMLContentError(source, f"rule-result {rid} has unknown result {outcome!r}")
        if outcome == "notselected":
            continue
        result: RuleOutcome = outcome
        rules[rid] = RuleResult(
            id=rid,
            severity=normalise_rule(rr.get("severity")),
            title=titles.get(rid, ""),
            result=result,
        )
    profile_el = next((c for c in test_result if _is_xccdf(c, "profile")), None)
    scores = [c for c in test_result if _is_xccdf(c, "score")]
    chosen = next((s for s in scores if s.get("system") == DEFAULT_SCORING), None)
    if chosen is None and scores:
        chosen = scores[0]
    score: float | None = None
    if chosen is not None:
        try:
            score = float(_all_text(chosen))
        except ValueError as exc:
            raise XMLContentError(source, f"score is not a number: {exc}") from exc
    return XccdfResults(
        profile=profile_el.get("idref") if profile_el is not None else None,
        score=score,
        rules=tuple(rules.values()),
    )
