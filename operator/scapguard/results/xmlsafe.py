"""Parsing untrusted SCAP XML with lxml: bounded, no entities, no DTDs, no network.

Every document scapguard reads (feeds, datastreams, oscap's own results written from a hostile
image's data) goes through :func:`parse_file`:

* the file is size-checked before parsing and read at most ``max_bytes`` (+1 to detect more);
* the parser resolves no entities, loads no DTD, never touches the network and keeps libxml2's
  default limits (``huge_tree=False``: depth, single text node size);
* a document carrying a DOCTYPE (entity declarations, external subsets: billion laughs, XXE,
  DTD fetches) is refused outright: no SCAP format uses one;
* the root element must be one of the expected qualified names.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Final, TypedDict

from lxml import etree

#: Default bound for one XML document (oscap results of a full vendor feed are large).
DEFAULT_MAX_BYTES: Final = 1024 * 1024 * 1024


class XMLContentError(ValueError):
    """An XML document that is unreadable, too large, hostile or of the wrong kind.

    ``path`` names the file; the message says what is wrong with it.
    """

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.message = message


class _SafeOptions(TypedDict):
    resolve_entities: bool
    no_network: bool
    huge_tree: bool
    load_dtd: bool
    dtd_validation: bool
    attribute_defaults: bool
    collect_ids: bool
    remove_pis: bool


#: libxml2's options for every SCAP document, tree or streamed: no entities, no DTD, no
#: network, default limits.
_SAFE: Final[_SafeOptions] = {
    "resolve_entities": False,
    "no_network": True,
    "huge_tree": False,
    "load_dtd": False,
    "dtd_validation": False,
    "attribute_defaults": False,
    "collect_ids": False,
    "remove_pis": True,
}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**_SAFE)


def qname(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def local_name(tag: object) -> str:
    """The local part of an element tag ('' for comments and processing instructions)."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


_BOMS: Final = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")


def check_prolog(data: bytes, source: Path | str) -> None:
    """Refuse a DOCTYPE (or a non-UTF-8 encoding) before libxml2 sees the document.

    libxml2 reads a document's internal subset even when entities are not substituted: an
    external parameter entity would be loaded from disk and entity amplification computed.
    The prolog (XML declaration, comments, processing instructions, white space) is walked
    here and the first markup that is not one of those must be the root element.
    """
    if data.startswith(_BOMS):
        raise XMLContentError(source, "is not UTF-8 (only UTF-8 SCAP documents are read)")
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    end = len(data)
    while pos < end:
        while pos < end and data[pos : pos + 1] in b" \t\r\n":
            pos += 1
        if data.startswith(b"<?", pos):
            close = data.find(b"?>", pos + 2)
            pos = end if close < 0 else close + 2
        elif data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 4)
            pos = end if close < 0 else close + 3
        elif data.startswith(b"<!", pos):
            raise XMLContentError(source, "has a DOCTYPE (entity or DTD declarations are refused)")
        else:
            return


def parse_bytes(
    data: bytes, *, source: Path | str, expected_roots: Collection[str] | None = None
) -> etree._Element:
    """Parse ``data`` (already bounded by the caller) and return the checked root element."""
    check_prolog(data, source)
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise XMLContentError(source, f"not well-formed XML: {exc}") from exc
    tree = root.getroottree()
    info = tree.docinfo
    if info.internalDTD is not None or info.system_url or info.public_id:
        raise XMLContentError(source, "has a DOCTYPE (entity or DTD declarations are refused)")
    if expected_roots is not None and root.tag not in expected_roots:
        want = ", ".join(sorted(expected_roots))
        raise XMLContentError(source, f"root element is {root.tag}, expected one of: {want}")
    return root


_PROLOG_HEAD: Final = 1024 * 1024


def iterparse_file(
    path: Path,
    *,
    expected_roots: Collection[str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    events: tuple[str, ...] = ("start", "end"),
) -> Iterator[tuple[str, etree._Element]]:
    """:func:`parse_file`'s checks, streamed: (event, element) pairs from lxml's iterparse.

    For documents too big to hold as one tree (a 256 MiB feed is ~2.5 GiB of libxml2 nodes):
    the caller keeps what it needs and clears elements as it goes. The root is checked at its
    start event, the prolog (no DOCTYPE) before libxml2 reads anything.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_PROLOG_HEAD)
    except OSError as exc:
        raise XMLContentError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise XMLContentError(path, f"is {size} bytes, more than the limit {max_bytes}")
    check_prolog(head, path)
    with path.open("rb") as source:  # closed when the caller stops early or an error is raised
        context = etree.iterparse(
            source, events=events if "start" in events else ("start", *events), **_SAFE
        )
        first = True
        try:
            for event, element in context:
                if first:
                    first = False
                    _check_streamed_root(path, element, expected_roots)
                if event in events:
                    yield event, element
        except etree.XMLSyntaxError as exc:
            raise XMLContentError(path, f"not well-formed XML: {exc}") from exc


def _check_streamed_root(path: Path, root: etree._Element, expected: Collection[str]) -> None:
    info = root.getroottree().docinfo
    if info.internalDTD is not None or info.system_url or info.public_id:
        raise XMLContentError(path, "has a DOCTYPE (entity or DTD declarations are refused)")
    if root.tag not in expected:
        want = ", ".join(sorted(expected))
        raise XMLContentError(path, f"root element is {root.tag}, expected one of: {want}")


def parse_file(
    path: Path,
    *,
    expected_roots: Collection[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> etree._Element:
    """Read and parse ``path`` within the bounds described in the module docstring."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise XMLContentError(path, f"is {size} bytes, more than the limit {max_bytes}")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise XMLContentError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise XMLContentError(path, f"is more than the limit of {max_bytes} bytes")
    return parse_bytes(data, source=path, expected_roots=expected_roots)
