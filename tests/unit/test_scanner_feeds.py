"""Feed formats (bz2/gzip/xz by magic, bounded), oscap failures on broken feeds, pre-filter."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest

from scapguard.results.model import ErrorReason
from scapguard.scanner import content, feedfilter, oscap
from scapguard.scanner.errors import ScanFailure

NS = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
FEED = f"""<?xml version="1.0"?>
<oval_definitions xmlns="{NS}" xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"
    xmlns:l="{NS}#linux" xmlns:i="{NS}#independent">
  <generator><oval:schema_version>5.11.2</oval:schema_version>
    <oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator>
  <definitions>
    <definition id="oval:t:def:1" version="1" class="vulnerability"><metadata><title>a</title>
      <description>x</description></metadata>
      <criteria><criterion test_ref="oval:t:tst:1"/></criteria></definition>
    <definition id="oval:t:def:2" version="1" class="vulnerability"><metadata><title>b</title>
      <description>x</description></metadata>
      <criteria operator="OR"><criterion test_ref="oval:t:tst:2"/>
        <criterion test_ref="oval:t:tst:3"/></criteria></definition>
    <definition id="oval:t:def:3" version="1" class="vulnerability"><metadata><title>c</title>
      <description>x</description></metadata>
      <criteria><criterion test_ref="oval:t:tst:2" negate="true"/></criteria></definition>
  </definitions>
  <tests>
    <l:rpminfo_test id="oval:t:tst:1" version="1" check="all"><l:object object_ref="oval:t:obj:1"/>
    </l:rpminfo_test>
    <l:rpminfo_test id="oval:t:tst:2" version="1" check="all"><l:object object_ref="oval:t:obj:2"/>
    </l:rpminfo_test>
    <i:textfilecontent54_test id="oval:t:tst:3" version="1" check="all">
      <i:object object_ref="oval:t:obj:3"/></i:textfilecontent54_test>
  </tests>
  <objects>
    <l:rpminfo_object id="oval:t:obj:1" version="1"><l:name>installed</l:name></l:rpminfo_object>
    <l:rpminfo_object id="oval:t:obj:2" version="1"><l:name>absent</l:name></l:rpminfo_object>
    <i:textfilecontent54_object id="oval:t:obj:3" version="1"><i:filepath>/etc/x</i:filepath>
      <i:pattern operation="pattern match">.*</i:pattern>
      <i:instance datatype="int">1</i:instance></i:textfilecontent54_object>
  </objects>
</oval_definitions>
"""


@pytest.mark.parametrize(
    "compress", [bz2.compress, gzip.compress, lzma.compress], ids=["bz2", "gz", "xz"]
)
def test_compressed_feeds_are_read_by_magic(
    compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    src = tmp_path / "feed.xml.txt"  # the name says nothing about the format
    src.write_bytes(compress(FEED.encode()) + compress(b"<!-- second stream -->"))
    out = content.decompress(src, tmp_path / "out.xml", max_bytes=1 << 20, name="the-feed")
    assert out.read_bytes() == FEED.encode() + b"<!-- second stream -->"


@pytest.mark.parametrize("compress", [bz2.compress, gzip.compress, lzma.compress])
def test_decompression_is_capped_and_names_the_file(
    compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    src = tmp_path / "bomb"
    src.write_bytes(compress(b"\0" * (4 << 20)))
    with pytest.raises(ScanFailure) as info:
        content.decompress(src, tmp_path / "out", max_bytes=1 << 20, name="/feeds/bomb.xml")
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert "/feeds/bomb.xml" in info.value.message and str(1 << 20) in info.value.message


@pytest.mark.parametrize("compress", [bz2.compress, gzip.compress, lzma.compress])
def test_truncated_stream_is_content_invalid(
    compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    src = tmp_path / "cut"
    data = compress(FEED.encode() * 50)
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanFailure) as info:
        content.decompress(src, tmp_path / "out", max_bytes=1 << 20, name="cut-feed")
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert "cut-feed" in info.value.message


def test_plain_xml_is_left_alone(tmp_path: Path) -> None:
    src = tmp_path / "feed.xml"
    src.write_text(FEED, encoding="utf-8")
    assert content.decompress(src, tmp_path / "out", max_bytes=10, name="x") == src


@pytest.mark.parametrize(
    ("rc", "stderr", "reason"),
    [
        (134, "oscap: oval_object_get_id: Assertion `(object) != NULL' failed.", "ContentInvalid"),
        (1, "OpenSCAP Error: Invalid OVAL Definition (5.11) content in f.xml", "ContentInvalid"),
        (139, "", "ContentInvalid"),
        (134, "", "ProbeFailed"),  # no word about the content: the chroot abort
        (1, "something else", "OscapFailed"),
    ],
)
def test_oscap_failures_on_the_feed(rc: int, stderr: str, reason: str) -> None:
    with pytest.raises(ScanFailure) as info:
        oscap._judge(rc, stderr, "oscap oval eval", frozenset({0}), "oval:x (sha256 ab)")
    assert info.value.reason == reason
    if reason == "ContentInvalid":
        assert "oval:x (sha256 ab)" in info.value.message


def test_prefilter_drops_only_provably_false_definitions(tmp_path: Path) -> None:
    (tmp_path / "t.xml").write_text(FEED, encoding="utf-8")
    index = feedfilter.index_file(tmp_path / "t.xml", "t")
    out = feedfilter.prefilter(index, frozenset({"installed"}), tmp_path / "f.xml")
    assert (out.definitions, out.kept) == (3, 3)
    kept = feedfilter.index_file(out.path, "f")
    # def 1: package installed (unknown); def 2: absent OR textfile (unknown) -> kept;
    # def 3: NOT(absent package) is true -> kept. Nothing is provably false here...
    assert set(kept.definition_ids) == {"oval:t:def:1", "oval:t:def:2", "oval:t:def:3"}
    # ...until "installed" is gone: def 1 is then false and dropped with its test and object.
    out = feedfilter.prefilter(index, frozenset(), tmp_path / "g.xml")
    kept = feedfilter.index_file(out.path, "g")
    assert set(kept.definition_ids) == {"oval:t:def:2", "oval:t:def:3"}
    assert "oval:t:obj:1" not in kept.elements and "oval:t:obj:2" in kept.elements


def test_dangling_reference_is_content_invalid(tmp_path: Path) -> None:
    broken = FEED.replace('object_ref="oval:t:obj:3"', 'object_ref="oval:t:obj:9"')
    (tmp_path / "b.xml").write_text(broken, encoding="utf-8")
    with pytest.raises(ScanFailure) as info:
        feedfilter.index_file(tmp_path / "b.xml", "/feeds/b.xml")
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert "/feeds/b.xml" in info.value.message and "oval:t:obj:9" in info.value.message
