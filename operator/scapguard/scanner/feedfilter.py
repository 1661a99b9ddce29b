"""An OVAL feed cut down to what can be true on one image, before oscap reads it.

A vendor feed has thousands of definitions; an image has a few hundred packages. oscap parses
and evaluates every definition (the openSUSE Leap 15.3 feed: 9,138 definitions, 62 MB, ~10 s and
1.4 GB of memory on a near-empty tree). :func:`prefilter` writes a copy of the feed that keeps
every definition whose result could be anything but ``false`` on the image, and drops the
others, with every test, object, state and variable no kept definition references.

A definition is dropped only when its criteria are *provably* false, evaluated three-valued
(true / false / unknown) with OVAL's operators (AND, OR, ONE, XOR, ``negate``):

* a criterion is false when its test is an ``rpminfo_test`` or ``dpkginfo_test`` with
  ``check_existence`` ``at_least_one_exists`` (the default) or ``only_one_exists``, on an object
  naming packages by ``name`` only (operation ``equals``, no set or filter): one literal, or a
  ``constant_variable``'s values with ``var_check="at least one"`` (Ubuntu), and none of them
  is installed: the object collects nothing, so the existence check fails and OVAL makes the
  test false whatever its states say;
* likewise a ``textfilecontent54_test`` on Canonical's OCI ``./manifest``
  (:func:`is_manifest_object`) whose patterns are all ``^NAME(?::\\w+|)\\s+(.*)$`` with a
  NAME free of regex metacharacters, so that it matches a manifest line only when NAME is that
  line's package (the manifest lists a subset of the ``Package:`` stanzas, see
  :mod:`scapguard.scanner.inventory`), and none of those NAMEs is installed;
* everything else is unknown: other test types (other textfilecontent54, uname,
  rpmverifyfile, family...), patterns, variables, ``extend_definition``, operators or
  attributes this module does not know. An unknown criterion never lets a definition be
  dropped.

So the true definitions (the findings) are exactly oscap's on the full feed; the tests check
this definition for definition on real vendor feeds. The installed names come from the same
probe oscap uses (rpm: ``rpminfo`` with a pattern, in the canary run) or, for dpkg, from
``/var/lib/dpkg/status`` (every ``Package:`` stanza, whatever its status: a superset is safe).

Before anything is filtered, :func:`index_file` checks the feed's references: a ``test_ref``,
``object_ref``, ``state_ref``, ``var_ref`` or ``definition_ref`` to an id the feed does not
define, or a test/object/state outside an OVAL component namespace, makes oscap 1.3.7 abort
(SIGABRT) or refuse the file. Such a feed is ``ContentInvalid``, named, before oscap runs.

Parsing is :mod:`scapguard.results.xmlsafe`'s (no entities, no DTD, no network), streamed
(:func:`index_file`): a real feed is far bigger as a tree than as a file (libxml2 nodes: ~10x),
so the index keeps only what the reasoning needs (each definition's criteria, the tests,
objects and variables; no metadata), and :func:`prefilter` reads the file again to copy the
kept definitions whole. The index is kept by sha256 (:func:`remember`, :func:`cached`; one
entry) so the content step and the pre-filter build it once per scan process.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

from lxml import etree

from scapguard.results.model import ErrorReason
from scapguard.results.oval import DEFINITIONS_ROOT, NS_COMMON, NS_DEF
from scapguard.results.xmlsafe import (
    DEFAULT_MAX_BYTES,
    XMLContentError,
    iterparse_file,
    local_name,
    qname,
)
from scapguard.scanner.errors import ScanFailure

log = logging.getLogger(__name__)

_NS_LINUX: Final = NS_DEF + "#linux"
_NS_IND: Final = NS_DEF + "#independent"
_MANIFEST_OBJECT: Final = f"{{{_NS_IND}}}textfilecontent54_object"
#: Canonical's manifest pattern for one package whose name has no regex metacharacter.
_MANIFEST_LINE: Final = re.compile(r"\^([a-z0-9][a-z0-9-]*)\(\?::\\w\+\|\)\\s\+\(\.\*\)\$")
_COMPONENT_PREFIX: Final = NS_DEF + "#"
_SECTIONS: Final = ("definitions", "tests", "objects", "states", "variables")
_COMPONENT_SECTIONS: Final = frozenset({"tests", "objects", "states"})
#: package test -> the object type it must point at
_PACKAGE_TESTS: Final = {
    f"{{{_NS_LINUX}}}rpminfo_test": f"{{{_NS_LINUX}}}rpminfo_object",
    f"{{{_NS_LINUX}}}dpkginfo_test": f"{{{_NS_LINUX}}}dpkginfo_object",
    f"{{{_NS_IND}}}textfilecontent54_test": _MANIFEST_OBJECT,  # only on ./manifest
}
_FAILS_WHEN_ABSENT: Final = frozenset({"at_least_one_exists", "only_one_exists"})
_REF_TEXT_ELEMENTS: Final = frozenset({"object_reference", "filter"})
_CACHE_SIZE: Final = 1
_GENERATOR: Final = qname(NS_DEF, "generator")
_TIMESTAMP: Final = qname(NS_COMMON, "timestamp")
#: The feed file read again by the pre-filter was checked against the caller's bound already.
MAX_FILTERED_SOURCE: Final = 4 * 1024 * 1024 * 1024
_NAMED_PROBLEMS: Final = 3

Value = Literal["true", "false", "unknown"]


@dataclass(frozen=True)
class FeedIndex:
    """What the pre-filter needs of a feed; built once per feed digest."""

    source: str
    #: every id the feed defines (definitions, tests, objects, states, variables) -> element;
    #: a definition keeps only its criteria and a state only its tag and id
    elements: dict[str, etree._Element]
    #: id -> ids referenced from that element (``*_ref`` attributes, set/filter texts)
    references: dict[str, tuple[str, ...]]
    #: test id -> the packages whose absence (all of them) makes the test false
    package_tests: dict[str, frozenset[str]]
    #: the feed file, read again by :func:`prefilter`
    path: Path
    #: id -> the section it is in (definitions, tests, objects, states, variables)
    sections: dict[str, str] = field(default_factory=dict)
    root_tag: str = DEFINITIONS_ROOT
    root_attrib: dict[str, str] = field(default_factory=dict)
    nsmap: dict[str, str] = field(default_factory=dict)
    #: the generator's timestamp (the feed's version)
    timestamp: str | None = None

    @property
    def definition_ids(self) -> list[str]:
        return [i for i, el in self.elements.items() if local_name(el.tag) == "definition"]


@dataclass(frozen=True)
class Filtered:
    path: Path
    definitions: int  # in the feed
    kept: int  # in the file written (what oscap evaluates)


_CACHE: OrderedDict[str, FeedIndex] = OrderedDict()


def remember(digest: str, index: FeedIndex) -> None:
    _CACHE[digest] = index
    _CACHE.move_to_end(digest)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def cached(digest: str) -> FeedIndex | None:
    return _CACHE.get(digest)


def load(path: Path, digest: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FeedIndex:
    """The index of the checked feed at ``path`` (sha256 of its raw file ``digest``)."""
    found = cached(digest)
    if found is not None:
        return found
    index = index_file(path, str(path), max_bytes=max_bytes)
    remember(digest, index)
    return index


def _refs_of(el: etree._Element) -> tuple[str, ...]:
    refs: list[str] = []
    for node in el.iter():
        if not isinstance(node.tag, str):
            continue
        for name, value in node.attrib.items():
            if str(name).endswith("_ref"):
                refs.append(str(value).strip())
        if local_name(node.tag) in _REF_TEXT_ELEMENTS and node.text:
            refs.append(node.text.strip())
    return tuple(refs)


def _invalid(source: str, what: str, problems: list[str]) -> ScanFailure:
    shown = "; ".join(problems[:_NAMED_PROBLEMS])
    more = f" and {len(problems) - _NAMED_PROBLEMS} more" if len(problems) > _NAMED_PROBLEMS else ""
    return ScanFailure(
        ErrorReason.CONTENT_INVALID,
        f"{source}: {len(problems)} {what} ({shown}{more}); oscap would abort or refuse it",
    )


class _Collector:
    """Builds a :class:`FeedIndex` from a feed's items, section by section."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.elements: dict[str, etree._Element] = {}
        self.references: dict[str, tuple[str, ...]] = {}
        self.sections: dict[str, str] = {}
        self.misplaced: list[str] = []

    def add(self, section: str, el: etree._Element) -> None:
        ident = el.get("id")
        namespace = etree.QName(el).namespace or ""
        if section in _COMPONENT_SECTIONS and not namespace.startswith(_COMPONENT_PREFIX):
            self.misplaced.append(f"<{local_name(el.tag)} id={ident!r}> in namespace {namespace!r}")
        if not ident:
            return
        self.references[ident] = _refs_of(el)
        self.sections[ident] = section
        self.elements[ident] = _compacted(section, el)

    def index(
        self,
        *,
        root_tag: str,
        root_attrib: dict[str, str],
        nsmap: dict[str, str],
        timestamp: str | None,
        path: Path,
    ) -> FeedIndex:
        if self.misplaced:
            raise _invalid(
                self.source, "tests/objects/states outside a component namespace", self.misplaced
            )
        elements = self.elements
        dangling = [
            f"{ident} -> {ref}"
            for ident, refs in self.references.items()
            for ref in refs
            if ref not in elements
        ]
        if dangling:
            raise _invalid(self.source, "references to ids the feed does not define", dangling)
        package_tests: dict[str, frozenset[str]] = {}
        for ident, el in elements.items():
            names = _packages_of(el, elements)
            if names is not None:
                package_tests[ident] = names
        return FeedIndex(
            self.source,
            elements,
            self.references,
            package_tests,
            path,
            sections=self.sections,
            root_tag=root_tag,
            root_attrib=root_attrib,
            nsmap=nsmap,
            timestamp=timestamp,
        )


def _compacted(section: str, el: etree._Element) -> etree._Element:
    """``el`` cut, in place, to what the reasoning reads: a definition's criteria, a state's
    tag and id (its metadata and values are read again from the file by the pre-filter).
    Kept in the parsed document itself: a copy would cost a document of its own per item."""
    if section in ("definitions", "states"):
        for child in list(el):
            if section == "states" or local_name(child.tag) != "criteria":
                el.remove(child)
    el.text = el.tail = None
    return el


def index_file(
    path: Path,
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_element: Callable[[etree._Element], None] | None = None,
) -> FeedIndex:
    """Index the feed at ``path`` streamed, keeping no metadata; ``on_element`` sees every
    element (complete, at its end) before it is dropped. ContentInvalid for a file that is not
    a safe, well-formed oval_definitions document or whose references are broken."""
    collector = _Collector(source)
    root_tag, root_attrib, nsmap, timestamp = DEFINITIONS_ROOT, {}, {}, None
    depth = 0
    section = ""
    try:
        for event, el in iterparse_file(path, expected_roots={DEFINITIONS_ROOT},
                                        max_bytes=max_bytes):  # fmt: skip
            if event == "start":
                depth += 1
                if depth == 1:
                    root_tag, root_attrib, nsmap = str(el.tag), _attrib(el), _nsmap(el)
                elif depth == 2:
                    section = local_name(el.tag)
                continue
            if on_element is not None:
                on_element(el)
            if depth == 3 and section in _SECTIONS and isinstance(el.tag, str):
                collector.add(section, el)
            if depth == 2 and el.tag == _GENERATOR:
                timestamp = _timestamp(el)
            if depth == 2 and section not in _SECTIONS:
                _drop(el)  # the generator, a signature: sections keep their compacted items
            depth -= 1
    except XMLContentError as exc:
        raise ScanFailure(ErrorReason.CONTENT_INVALID, str(exc)) from exc
    return collector.index(
        root_tag=root_tag, root_attrib=root_attrib, nsmap=nsmap, timestamp=timestamp, path=path
    )


def _drop(el: etree._Element) -> None:
    """Free a finished element and the siblings before it (iterparse keeps the whole tree)."""
    el.clear()
    parent = el.getparent()
    if parent is not None:
        while el.getprevious() is not None:
            del parent[0]


def _timestamp(generator: etree._Element | None) -> str | None:
    if generator is None:
        return None
    stamp = generator.find(_TIMESTAMP)
    text = (stamp.text or "").strip() if stamp is not None else ""
    return text or None


def _nsmap(el: etree._Element) -> dict[str, str]:
    # lxml takes the default namespace under the key None; its stubs only know str keys
    return cast("dict[str, str]", dict(el.nsmap))


def _literal(value: str | None) -> str | None:
    return value if value and value == value.strip() else None


def _entity_values(entity: etree._Element, elements: dict[str, etree._Element]) -> list[str] | None:
    """An entity's literal value, or a ``constant_variable``'s values under
    ``var_check="at least one"`` (Ubuntu: the binary packages of a source package)."""
    var_ref = entity.get("var_ref")
    if var_ref is None:
        text = _literal(entity.text)
        return [text] if text is not None else None
    variable = elements.get(var_ref)
    if variable is None or local_name(variable.tag) != "constant_variable":
        return None
    if entity.get("var_check", "all") != "at least one":
        return None
    values = [_literal(v.text) for v in variable if local_name(v.tag) == "value"]
    if not values or any(v is None for v in values):
        return None
    return [v for v in values if v is not None]


def _plain_entity(entity: etree._Element | None, operation: str = "equals") -> bool:
    if entity is None or len(entity) or entity.get("operation", "equals") != operation:
        return False
    return entity.get("datatype", "string") == "string"


def is_manifest_object(obj: etree._Element) -> bool:
    """A textfilecontent54_object reading ``./manifest`` and nothing else (path ``.`` +
    filename ``manifest``, or filepath ``./manifest``; no recursion): Canonical's OCI feeds,
    see :mod:`scapguard.scanner.ocifeed`."""
    if obj.tag != _MANIFEST_OBJECT:
        return False
    children = {local_name(c.tag): c for c in obj if isinstance(c.tag, str)}
    behaviors = children.get("behaviors")
    if behaviors is not None and behaviors.get("recurse_direction", "none") != "none":
        return False

    def value(name: str) -> str | None:
        entity = children.get(name)
        if not _plain_entity(entity) or entity is None or entity.get("var_ref") is not None:
            return None
        return (entity.text or "").strip()

    if "filepath" in children:
        return value("filepath") == "./manifest"
    return (value("path"), value("filename")) == (".", "manifest")


def _manifest_packages_of(
    obj: etree._Element, elements: dict[str, etree._Element]
) -> frozenset[str] | None:
    """The packages of a manifest object whose every pattern is Canonical's plain
    ``^NAME(?::\\w+|)\\s+(.*)$`` (a NAME without regex metacharacters): it matches a manifest
    line only if NAME is that line's package."""
    if not is_manifest_object(obj):
        return None
    patterns = [c for c in obj if isinstance(c.tag, str) and local_name(c.tag) == "pattern"]
    if len(patterns) != 1 or not _plain_entity(patterns[0], "pattern match"):
        return None
    values = _entity_values(patterns[0], elements)
    if values is None:
        return None
    names = [_MANIFEST_LINE.fullmatch(v) for v in values]
    if any(m is None for m in names):
        return None
    return frozenset(m.group(1) for m in names if m is not None)


def _packages_of(
    test: etree._Element, elements: dict[str, etree._Element]
) -> frozenset[str] | None:
    """The packages a test is about, when none installed provably makes the test false."""
    object_tag = _PACKAGE_TESTS.get(str(test.tag))
    if object_tag is None:
        return None
    if test.get("check_existence", "at_least_one_exists") not in _FAILS_WHEN_ABSENT:
        return None
    refs = [c for c in test if local_name(c.tag) == "object"]
    if len(refs) != 1:
        return None
    obj = elements.get(refs[0].get("object_ref", ""))
    if obj is None or obj.tag != object_tag:
        return None
    if object_tag == _MANIFEST_OBJECT:
        return _manifest_packages_of(obj, elements)
    entities = [c for c in obj if isinstance(c.tag, str) and local_name(c.tag) != "behaviors"]
    if len(entities) != 1 or local_name(entities[0].tag) != "name":
        return None  # a set, a filter, or entities this module does not know
    name = entities[0]
    if not _plain_entity(name):
        return None
    values = _entity_values(name, elements)
    return frozenset(values) if values is not None else None


def _negate(value: Value, el: etree._Element) -> Value:
    if el.get("negate", "false") not in {"true", "1"} or value == "unknown":
        return value
    return "false" if value == "true" else "true"


def _combine(operator: str, values: list[Value]) -> Value:
    trues = values.count("true")
    falses = values.count("false")
    unknown = len(values) - trues - falses
    if not values:
        return "unknown"
    if operator == "AND":
        return "false" if falses else ("true" if not unknown else "unknown")
    if operator == "OR":
        return "true" if trues else ("false" if not unknown else "unknown")
    if operator == "ONE":
        if trues >= 2:
            return "false"
        if not unknown:
            return "true" if trues == 1 else "false"
        return "unknown"
    if operator == "XOR":
        return "unknown" if unknown else ("true" if trues % 2 else "false")
    return "unknown"


def _criteria_value(el: etree._Element, index: FeedIndex, installed: frozenset[str]) -> Value:
    values: list[Value] = []
    for child in el:
        kind = local_name(child.tag)
        if kind == "criterion":
            packages = index.package_tests.get(child.get("test_ref", ""))
            absent = packages is not None and not (packages & installed)
            value: Value = "false" if absent else "unknown"
            values.append(_negate(value, child))
        elif kind == "criteria":
            values.append(_criteria_value(child, index, installed))
        elif kind:  # extend_definition or anything else: not reasoned about
            values.append("unknown")
    return _negate(_combine(el.get("operator", "AND"), values), el)


def could_be_true(definition: etree._Element, index: FeedIndex, installed: frozenset[str]) -> bool:
    criteria = [c for c in definition if local_name(c.tag) == "criteria"]
    if len(criteria) != 1:
        return True
    return _criteria_value(criteria[0], index, installed) != "false"


def _closure(start: Iterable[str], index: FeedIndex) -> set[str]:
    keep: set[str] = set()
    todo = list(start)
    while todo:
        ident = todo.pop()
        if ident in keep:
            continue
        keep.add(ident)
        todo.extend(index.references.get(ident, ()))
    return keep


def _attrib(el: etree._Element) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items()}


def prefilter(index: FeedIndex, installed: frozenset[str], dest: Path) -> Filtered:
    """Write to ``dest`` the feed without its provably false definitions (module docstring).

    The kept items are copied whole from the feed file, streamed: the generator, then each
    section that keeps anything. ``ds:Signature`` and anything else is not carried over (a
    signature would not match).
    """
    definitions = index.definition_ids
    kept = [
        i for i in definitions if could_be_true(index.elements[i], index, installed)
    ] or definitions[:1]  # keep one: a feed without definitions is not an OVAL document
    keep = _closure(kept, index)
    source = index.path
    sections = {index.sections[i] for i in keep}
    with contextlib.ExitStack() as stack:
        xf = stack.enter_context(etree.xmlfile(str(dest), encoding="UTF-8"))
        xf.write_declaration()
        stack.enter_context(xf.element(index.root_tag, attrib=index.root_attrib, nsmap=index.nsmap))
        section: contextlib.ExitStack | None = None
        parent = ""
        depth = 0
        for event, el in iterparse_file(
            source, expected_roots={index.root_tag}, max_bytes=MAX_FILTERED_SOURCE
        ):
            if event == "start":
                depth += 1
                if depth == 2:
                    parent = local_name(el.tag)
                    if parent in sections:
                        section = contextlib.ExitStack()
                        section.enter_context(xf.element(el.tag, attrib=_attrib(el)))
                continue
            if depth == 2:
                if el.tag == _GENERATOR:
                    _write(xf, el)
                if section is not None:
                    section.close()
                    section = None
                _drop(el)
            elif depth == 3 and parent in _SECTIONS:
                if section is not None and el.get("id") in keep:
                    _write(xf, el)
                _drop(el)
            depth -= 1
    log.info(
        "feed %s: %d of %d definitions can be true on this image (%d packages installed)",
        index.source,
        len(kept),
        len(definitions),
        len(installed),
    )
    return Filtered(dest, len(definitions), len(kept))


def _write(xf: Any, el: etree._Element) -> None:
    """``xf``: lxml's incremental writer (``etree.xmlfile``), which its stubs leave untyped."""
    el.tail = "\n"
    xf.write(el)
