"""Hostile XML is refused before anything reads it: entities, DTDs, network, size, wrong root."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scapguard.results.oval import ROOT as OVAL_ROOT
from scapguard.results.oval import parse_oval_results
from scapguard.results.xmlsafe import XMLContentError, parse_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hostile"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("billion-laughs.xml", "DOCTYPE"),
        ("external-entity.xml", "DOCTYPE"),
        ("parameter-entity.xml", "DOCTYPE"),
        ("wrong-root.xml", "root element"),
        ("malformed.xml", "not well-formed"),
    ],
)
def test_hostile_documents_are_refused(name: str, words: str) -> None:
    started = time.monotonic()
    with pytest.raises(XMLContentError, match=words) as info:
        parse_oval_results(FIXTURES / name)
    assert info.value.path.endswith(name)
    assert "root:x:0:0" not in str(info.value)
    assert time.monotonic() - started < 30  # no expansion happened (a bound, not a benchmark)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on 127.0.0.1 recording whatever connects (it must stay silent)."""
    seen: list[bytes] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                seen.append(conn.recv(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_dtd_and_entities_from_the_network_are_never_fetched(
    listener: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, seen = listener
    ns = "http://oval.mitre.org/XMLSchema/oval-results-5"
    docs = {
        "external-dtd.xml": f'<!DOCTYPE oval_results SYSTEM "http://127.0.0.1:{port}/x.dtd">'
        f'<oval_results xmlns="{ns}"/>',
        "network-entity.xml": f"<!DOCTYPE oval_results [<!ENTITY e SYSTEM "
        f'"http://127.0.0.1:{port}/e">]><oval_results xmlns="{ns}">&e;</oval_results>',
        "network-param.xml": f"<!DOCTYPE oval_results [<!ENTITY % p SYSTEM "
        f'"http://127.0.0.1:{port}/p"> %p;]><oval_results xmlns="{ns}"/>',
    }
    for name, text in docs.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(XMLContentError):
            parse_file(path, expected_roots={OVAL_ROOT})
    time.sleep(0.5)
    assert seen == []


def test_size_limit_is_checked_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    ns = "http://oval.mitre.org/XMLSchema/oval-results-5"
    path.write_text(f'<oval_results xmlns="{ns}">' + "x" * 5000 + "</oval_results>",
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(XMLContentError, match="limit"):
        parse_file(path, max_bytes=1000)
    assert parse_file(path, max_bytes=10_000).tag == OVAL_ROOT


def test_deep_nesting_hits_libxml2s_default_limit(tmp_path: Path) -> None:
    path = tmp_path / "deep.xml"
    depth = 20_000
    path.write_text("<a>" * depth + "</a>" * depth, encoding="utf-8")
    with pytest.raises(XMLContentError, match="not well-formed"):
        parse_file(path)
