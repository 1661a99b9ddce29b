"""Canonical's OCI-flavoured OVAL: the ``dpkg-query -W`` manifest and the feed's detection."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import pytest

from scapguard.results.model import ErrorReason
from scapguard.scanner import feedfilter, inventory, ocifeed, oscap
from scapguard.scanner.errors import ScanFailure

# Stanzas in the forms dpkg writes; the expected lines are what the host's
# ``dpkg-query --admindir=... -W`` printed for the same file.
STATUS = textwrap.dedent(
    """\
    Package: openssh-client
    Status: install ok installed
    Architecture: amd64
    Version: 1:8.9p1-3ubuntu0.4
    Description: x
     continuation: not a field

    Package: libc6
    Status: install ok installed
    Architecture: amd64
    Multi-Arch: same
    Version: 2.35-0ubuntu3.1

    Package: foo
    Status: install ok installed
    Architecture: i386
    Version: 1.0

    Package: rcpkg
    Status: deinstall ok config-files
    Architecture: amd64
    Version: 2.0

    Package: unp
    Status: install ok unpacked
    Architecture: amd64
    Version: 3.0

    Package: allpkg
    Status: install ok installed
    Architecture: all
    Version: 4.0

    Package: noinst
    Status: purge ok not-installed
    Architecture: amd64

    Package: halfconf
    Status: install ok half-configured
    Architecture: amd64
    Version: 5.0

    Package: epochs
    Status: install ok installed
    Architecture: amd64
    Version: 0:1.2-3
    """
)
EXPECTED = [
    "allpkg\t4.0",
    "epochs\t1.2-3",
    "foo:i386\t1.0",
    "halfconf\t5.0",
    "libc6:amd64\t2.35-0ubuntu3.1",
    "openssh-client\t1:8.9p1-3ubuntu0.4",
    "unp\t3.0",
]


def test_manifest_is_dpkg_query_w_without_removed_packages() -> None:
    # dpkg-query -W also prints "rcpkg\t2.0" (config-files): no files left, so not listed
    assert inventory.manifest_lines(STATUS.encode(), "amd64") == EXPECTED


def test_manifest_qualifies_by_the_native_architecture() -> None:
    lines = inventory.manifest_lines(STATUS.encode(), "i386")
    assert "foo\t1.0" in lines and "openssh-client:amd64\t1:8.9p1-3ubuntu0.4" in lines
    assert "libc6:amd64\t2.35-0ubuntu3.1" in lines and "allpkg\t4.0" in lines


def _tree(tmp_path: Path, status: bytes) -> Path:
    root = tmp_path / "rootfs"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_bytes(status)
    return root


def test_manifest_read_through_links_inside_the_tree_and_bounded(tmp_path: Path) -> None:
    root = _tree(tmp_path, STATUS.encode())
    real = root / "var/lib/dpkg/status"
    real.rename(root / "status.real")
    real.symlink_to("/status.real")  # absolute: resolved inside the tree, as in a chroot
    assert inventory.dpkg_manifest(root, "amd64") == EXPECTED
    assert inventory.dpkg_manifest(root, "amd64", max_bytes=100) is None
    outside = tmp_path / "host-status"
    outside.write_text("Package: hostpkg\nStatus: install ok installed\nVersion: 1\n")
    real.unlink()
    real.symlink_to("../../../../host-status")  # climbs no higher than the tree's root
    assert inventory.dpkg_manifest(root, "amd64") is None


def test_versions_as_dpkg_prints_them() -> None:
    assert inventory.dpkg_version("0:1.2-3") == "1.2-3"
    assert inventory.dpkg_version("01:1.2") == "1:1.2"
    assert inventory.dpkg_version("1:8.9p1-3") == "1:8.9p1-3"
    assert inventory.dpkg_version("1.2:3") == "1.2:3"  # not an epoch: left alone


def test_manifest_skips_names_and_versions_with_whitespace() -> None:
    status = b"Package: a b\nStatus: install ok installed\nVersion: 1\n\n"
    status += b"Package: ok\nStatus: install ok installed\nVersion: 1\n"
    assert inventory.manifest_lines(status, "amd64") == ["ok\t1"]


NS = "http://oval.mitre.org/XMLSchema/oval-definitions-5"


def feed(objects: str, tests: str = "", extra_test: str = "") -> str:
    return f"""<?xml version="1.0"?>
<oval_definitions xmlns="{NS}" xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"
    xmlns:l="{NS}#linux" xmlns:ind-def="{NS}#independent">
  <generator><oval:schema_version>5.11.2</oval:schema_version>
    <oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator>
  <definitions>
    <definition id="oval:t:def:1" version="1" class="vulnerability"><metadata><title>a</title>
      <description>x</description></metadata>
      <criteria><criterion test_ref="oval:t:tst:1"/></criteria></definition>
  </definitions>
  <tests>
    <ind-def:textfilecontent54_test id="oval:t:tst:1" version="1" check="at least one"
        check_existence="at_least_one_exists">
      <ind-def:object object_ref="oval:t:obj:1"/></ind-def:textfilecontent54_test>{extra_test}
  </tests>
  <objects>{objects}</objects>
</oval_definitions>
"""


CANONICAL = """
    <ind-def:textfilecontent54_object id="oval:t:obj:1" version="1">
      <ind-def:path>.</ind-def:path>
      <ind-def:filename>manifest</ind-def:filename>
      <ind-def:pattern operation="pattern match">^ssh(?::\\w+|)\\s+(.*)$</ind-def:pattern>
      <ind-def:instance operation="greater than or equal" datatype="int">1</ind-def:instance>
    </ind-def:textfilecontent54_object>"""


def index(text: str) -> feedfilter.FeedIndex:
    """The feed indexed as the scanner indexes it: streamed from a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feed.xml"
        path.write_text(text, encoding="utf-8")
        return feedfilter.index_file(path, "feed.xml")


def test_canonical_oci_feed_is_detected() -> None:
    assert ocifeed.is_manifest_feed(index(feed(CANONICAL)))
    filepath = CANONICAL.replace(
        "<ind-def:path>.</ind-def:path>\n      <ind-def:filename>manifest</ind-def:filename>",
        "<ind-def:filepath>./manifest</ind-def:filepath>",
    )
    assert "filepath" in filepath and ocifeed.is_manifest_feed(index(feed(filepath)))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<ind-def:path>.</ind-def:path>", "<ind-def:path>/</ind-def:path>"),
        ("<ind-def:filename>manifest", "<ind-def:filename>manifest.txt"),
        ("<ind-def:path>", '<ind-def:path operation="pattern match">'),
        ("<ind-def:pattern", '<ind-def:behaviors recurse_direction="up"/><ind-def:pattern'),
    ],
    ids=["absolute", "other-file", "path-pattern", "recurse-up"],
)
def test_other_textfilecontent_objects_are_not_the_manifest(old: str, new: str) -> None:
    changed = CANONICAL.replace(old, new)
    assert changed != CANONICAL
    assert not ocifeed.is_manifest_feed(index(feed(changed)))


def test_manifest_mixed_with_system_tests_is_content_invalid() -> None:
    extra_object = """
    <l:dpkginfo_object id="oval:t:obj:2" version="1"><l:name>bash</l:name></l:dpkginfo_object>"""
    extra_test = """
    <l:dpkginfo_test id="oval:t:tst:2" version="1" check="all">
      <l:object object_ref="oval:t:obj:2"/></l:dpkginfo_test>"""
    with pytest.raises(ScanFailure) as info:
        ocifeed.is_manifest_feed(index(feed(CANONICAL + extra_object, extra_test=extra_test)))
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert "feed.xml" in info.value.message and "oval:t:obj:2" in info.value.message


def test_prefilter_on_manifest_definitions() -> None:
    """Dropped only when no package the plain patterns name is installed; kept when a name
    has regex metacharacters (what it matches is then not just that package)."""
    feed_index = index(feed(CANONICAL))
    definition = feed_index.elements["oval:t:def:1"]
    assert not feedfilter.could_be_true(definition, feed_index, frozenset({"openssh-client"}))
    assert feedfilter.could_be_true(definition, feed_index, frozenset({"ssh", "bash"}))
    plus = index(feed(CANONICAL.replace("^ssh(", "^ssh+x(")))
    assert feedfilter.could_be_true(plus.elements["oval:t:def:1"], plus, frozenset())
    anchored = index(feed(CANONICAL.replace("(.*)$<", "(.*)<")))
    assert feedfilter.could_be_true(anchored.elements["oval:t:def:1"], anchored, frozenset())
    other_file = index(feed(CANONICAL.replace(">manifest<", ">manifest2<")))
    assert feedfilter.could_be_true(other_file.elements["oval:t:def:1"], other_file, frozenset())


def test_manifest_written_and_made_the_probe_root(tmp_path: Path) -> None:
    path = ocifeed.write_manifest(EXPECTED, tmp_path / "m")
    assert path.read_text(encoding="utf-8") == "".join(f"{line}\n" for line in EXPECTED)
    env = {"PATH": "/bin", "OSCAP_PROBE_ROOT": "/x", "OSCAP_PROBE_RPMDB_PATH": "/var/lib/rpm"}
    # the trailing slash is what makes oscap 1.3.7 resolve the feed's path "." to the root
    assert oscap.manifest_root(env, tmp_path / "m") == {
        "PATH": "/bin",
        "OSCAP_PROBE_ROOT": f"{tmp_path}/m/",
    }
    assert oscap.debian_arch("arm64") == "arm64" and oscap.debian_arch("386") == "i386"
    with pytest.raises(ScanFailure):
        oscap.debian_arch("mips")
