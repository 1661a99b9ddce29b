"""The scanner's pure parts: symlink containment, OS detection, content checks, layer checks."""

from __future__ import annotations

import bz2
import hashlib
import http.server
import io
import json
import logging
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scapguard.results.model import ErrorReason, OSInfo
from scapguard.results.oval import OvalResults, ProbeError, parse_oval_results
from scapguard.scanner import cli, content, osdetect, pull, sandbox, unpack
from scapguard.scanner.contain import ContainmentError, canonical_target, contain_tree
from scapguard.scanner.contain import main as contain_main
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.oscap import write_apt_config
from scapguard.scanner.pipeline import oval_failure
from scapguard.scanner.pull import PulledImage, PullOptions, skopeo_env, split_reference
from scapguard_dev.images import MEDIA_TYPE_LAYER_GZIP, RawLayer, write_raw_oci_layout

OVAL_NS = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
COMMON_NS = "http://oval.mitre.org/XMLSchema/oval-common-5"
FEED = (
    f'<?xml version="1.0"?>\n<oval_definitions xmlns="{OVAL_NS}" xmlns:oval="{COMMON_NS}">'
    "<generator><oval:timestamp>2025-05-20T01:02:03</oval:timestamp></generator>"
    "</oval_definitions>\n"
).encode()


# -- symlink containment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link_dir", "target", "expected"),
    [
        ("etc", "/usr/share/zoneinfo/UTC", "../usr/share/zoneinfo/UTC"),
        ("usr/lib", "../../etc/os-release", "../../etc/os-release"),
        ("a", "../../../../etc/shadow", "../etc/shadow"),
        ("a/b", "s/../../../x", "../../x"),
        ("", "/", "."),
        ("", "bin", "bin"),
        ("a", "//etc/../..//passwd", "../passwd"),
    ],
)
def test_canonical_targets_never_leave_the_tree(link_dir: str, target: str, expected: str) -> None:
    assert canonical_target(link_dir, target) == expected


def test_contain_tree_rewrites_only_what_escapes(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\n", encoding="utf-8")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/passwd").symlink_to("/etc/shadow-of-the-host")
    (root / "etc/escape").symlink_to("../../../../../../tmp")
    assert contain_tree(root) == 2
    assert os.readlink(root / "etc/os-release") == "../usr/lib/os-release"
    assert os.readlink(root / "etc/passwd") == "shadow-of-the-host"  # /etc/... in the tree
    assert os.readlink(root / "etc/escape") == "../tmp"
    assert contain_tree(root) == 0


def test_a_directory_that_cannot_be_listed_stops_the_containment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rootless unpack cannot list a mode 0111 directory: its links must not go unchecked.

    The tests run as root, which lists any directory, so the refusal is simulated.
    """
    root = tmp_path / "rootfs"
    (root / "var/locked").mkdir(parents=True)
    (root / "var/locked/passwd").symlink_to("/etc/passwd")
    real_scandir = os.scandir
    locked = os.fspath(root / "var/locked")

    def scandir(path: Any) -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ContainmentError, match=r"cannot list /var/locked in the image"):
        contain_tree(root)
    assert contain_main([str(root)]) == 1
    assert "/var/locked" in capsys.readouterr().err


# -- OVAL errors ------------------------------------------------------------------------------

OVAL_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oval"


def test_a_vulnerability_definition_in_error_fails_the_scan(tmp_path: Path) -> None:
    text = (OVAL_FIXTURES / "debian-results.xml").read_text(encoding="utf-8")
    # The package database was read; only definition 101 (expat) evaluated to error.
    object_error = (
        '<object id="oval:org.debian:obj:3" version="1" flag="error">\n'
        '            <message level="error">dpkginfo_init has failed</message></object>'
    )
    assert object_error in text
    results = tmp_path / "results.xml"
    results.write_text(text.replace(object_error, ""), encoding="utf-8")
    parsed = parse_oval_results(results)
    assert [f.id for f in parsed.findings] == ["CVE-2024-0100"]
    failure = oval_failure(parsed)
    assert failure is not None and failure.reason == ErrorReason.PROBE_FAILED
    assert "oval:org.debian:def:101" in failure.message
    # A package database oscap could not read is named first, as before.
    original = oval_failure(parse_oval_results(OVAL_FIXTURES / "debian-results.xml"))
    assert original is not None and "dpkginfo_init has failed" in original.message


def test_definition_errors_are_named_a_few_at_most() -> None:
    errors = tuple(
        ProbeError("definition", f"oval:x:def:{i}", "result error", "vulnerability")
        for i in range(5)
    )
    cause = ProbeError("textfilecontent54_object", "oval:x:obj:9", "read failed")
    inventory = ProbeError("definition", "oval:x:def:99", "result error", "inventory")
    parsed = OvalResults((), False, (*errors, inventory, cause))
    failure = oval_failure(parsed)
    assert failure is not None
    assert failure.message == (
        "5 OVAL vulnerability definitions evaluated to error: oval:x:def:0, oval:x:def:1, "
        "oval:x:def:2 and 2 more (first probe error: textfilecontent54_object oval:x:obj:9: "
        "read failed)"
    )
    assert oval_failure(OvalResults((), False, (inventory,))) is None
    assert oval_failure(OvalResults((), False)) is None


# -- OS detection -----------------------------------------------------------------------------


def tree(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return root


DPKG = {"var/lib/dpkg/status": "Package: base-files\nStatus: install ok installed\n\n"}
RPMDB = {"var/lib/rpm/rpmdb.sqlite": "x"}


@pytest.mark.parametrize(
    ("files", "os_id", "version", "family", "codename"),
    [
        (
            {"usr/lib/os-release": 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n', **DPKG},
            "debian",
            "12",
            "debian",
            "bookworm",
        ),
        (
            {"etc/os-release": 'ID=ubuntu\nVERSION_ID="24.04"\n', **DPKG},
            "ubuntu",
            "24.04",
            "debian",
            "noble",
        ),
        ({"etc/os-release": 'ID="rhel"\nVERSION_ID="9.4"\n', **RPMDB}, "rhel", "9.4", "rhel", None),
        (
            {"etc/os-release": 'ID="rocky"\nVERSION_ID="8.10"\n', **RPMDB},
            "rocky",
            "8.10",
            "rhel",
            None,
        ),
        (
            {
                "etc/os-release": "ID=fedora\nVERSION_ID=40\n",
                "usr/lib/sysimage/rpm/rpmdb.sqlite": "x",
            },
            "fedora",
            "40",
            "fedora",
            None,
        ),
        ({"etc/debian_version": "11.9\n", **DPKG}, "debian", "11", "debian", "bullseye"),
        ({"etc/redhat-release": "CentOS Stream release 9\n", **RPMDB}, "centos", "9", "rhel", None),
    ],
)
def test_supported_systems_are_detected(
    tmp_path: Path,
    files: dict[str, str],
    os_id: str,
    version: str,
    family: str,
    codename: str | None,
) -> None:
    found = osdetect.detect(tree(tmp_path, files, {}))
    assert (found.info.id, found.info.version_id, found.info.family) == (os_id, version, family)
    assert found.codename == codename


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (
            {"etc/os-release": "ID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME='Alpine Linux v3.20'\n"},
            "Alpine Linux v3.20",
        ),
        ({"etc/os-release": "ID=debian\nVERSION_ID=9\n", **DPKG}, "Debian 9"),
        (
            {
                "etc/os-release": "ID=debian\nPRETTY_NAME='Debian trixie/sid'\n",
                "etc/debian_version": "trixie/sid\n",
                **DPKG,
            },
            "testing/unstable",
        ),
        ({"etc/os-release": 'ID=ubuntu\nVERSION_ID="16.04"\n', **DPKG}, "Ubuntu 16.04"),
        ({"etc/os-release": 'ID="rhel"\nVERSION_ID="7.9"\n', **RPMDB}, "rhel 7.9"),
        ({"etc/os-release": "ID=debian\nVERSION_ID=12\n"}, "distroless"),
        ({"etc/os-release": 'ID="rhel"\nVERSION_ID="9.4"\n'}, "no rpm database"),
        ({}, "without os-release"),
    ],
)
def test_unsupported_systems_are_refused(tmp_path: Path, files: dict[str, str], words: str) -> None:
    (tmp_path / "etc").mkdir(exist_ok=True)
    with pytest.raises(ScanFailure) as info:
        osdetect.detect(tree(tmp_path, files))
    assert info.value.reason == ErrorReason.UNSUPPORTED_OS
    assert words in info.value.message


def test_os_release_symlinks_resolve_inside_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("ID=debian\nVERSION_ID=12\n", encoding="utf-8")
    root = tree(tmp_path / "root", dict(DPKG), {"etc/os-release": str(outside)})
    with pytest.raises(ScanFailure, match="without os-release"):
        osdetect.detect(root)  # the absolute link points into the tree, where nothing is


# -- content ----------------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}  # noqa: RUF012 - set per test before serving

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def http_files() -> Iterator[tuple[str, dict[str, bytes]]]:
    _Files.files = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Files.files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_feed_by_url_bz2_and_sha256(
    http_files: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    base, files = http_files
    packed = bz2.compress(FEED)
    files["/feed.xml.bz2"] = packed
    sha = hashlib.sha256(packed).hexdigest()
    got = content.resolve(
        "oval",
        "oval:debian-bookworm",
        tmp_path / "a",
        override=content.ContentOverride(url=f"{base}/feed.xml.bz2", sha256=sha),
    )
    assert got.path.read_bytes() == FEED
    assert (got.info.source, got.info.sha256, got.info.version) == (
        "url",
        sha,
        "2025-05-20T01:02:03",
    )
    with pytest.raises(ScanFailure) as info:
        content.resolve(
            "oval",
            "x",
            tmp_path / "b",
            override=content.ContentOverride(url=f"{base}/feed.xml.bz2", sha256="0" * 64),
        )
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert "does not match" in info.value.message
    with pytest.raises(ScanFailure) as info:
        content.resolve(
            "oval",
            "x",
            tmp_path / "c",
            override=content.ContentOverride(url=f"{base}/missing", sha256=sha),
        )
    assert info.value.reason == ErrorReason.CONTENT_UNAVAILABLE


def test_content_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "feed.xml"
    good.write_bytes(FEED)
    got = content.resolve("oval", "n", tmp_path / "w1", override=content.ContentOverride(file=good))
    assert got.info.source == "file"
    wrong = tmp_path / "ds.xml"
    wrong.write_bytes(FEED)
    with pytest.raises(ScanFailure, match="root element") as info:
        content.resolve(
            "datastream", "n", tmp_path / "w2", override=content.ContentOverride(file=wrong)
        )
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    bomb = tmp_path / "bomb.xml.bz2"
    bomb.write_bytes(bz2.compress(b" " * (4 * 1024 * 1024)))
    with pytest.raises(ScanFailure, match="decompressed"):
        content.resolve(
            "oval",
            "n",
            tmp_path / "w3",
            override=content.ContentOverride(file=bomb),
            max_xml=1024 * 1024,
        )
    with pytest.raises(ScanFailure, match="no such file") as info:
        content.resolve(
            "oval", "n", tmp_path / "w4", override=content.ContentOverride(file=tmp_path / "nope")
        )
    assert info.value.reason == ErrorReason.CONTENT_UNAVAILABLE
    with pytest.raises(ScanFailure, match="no built-in oval content for oval:centos-9"):
        content.resolve("oval", "oval:centos-9", tmp_path / "w5", override=None)


def test_catalogue() -> None:
    def detected(os_id: str, version: str, codename: str | None) -> osdetect.DetectedOS:
        family = "debian" if os_id in {"debian", "ubuntu"} else "rhel"
        info = OSInfo(os_id, version, os_id, family)  # type: ignore[arg-type]
        return osdetect.DetectedOS(info, codename, version.split(".")[0])

    assert content.catalogue_feed_url(detected("debian", "12", "bookworm")) == (
        "https://www.debian.org/security/oval/oval-definitions-bookworm.xml.bz2"
    )
    assert content.catalogue_feed_url(detected("ubuntu", "22.04", "jammy")).endswith(  # type: ignore[union-attr]
        "com.ubuntu.jammy.cve.oval.xml.bz2"
    )
    assert content.catalogue_feed_url(detected("rhel", "9.4", None)).endswith(  # type: ignore[union-attr]
        "RHEL9/rhel-9.oval.xml.bz2"
    )
    assert content.catalogue_feed_url(detected("rocky", "9.4", None)) is None
    ds = content.datastream_file(detected("debian", "12", "bookworm"), Path("/ssg"))
    assert ds == Path("/ssg/ssg-debian12-ds.xml")


# -- layers -----------------------------------------------------------------------------------


def _layer(entries: list[tuple[str, bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _pulled(layout: Path, layers: list[RawLayer]) -> PulledImage:
    digest = write_raw_oci_layout(layers, layout, "image")
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    return PulledImage("h/r@" + digest, digest, digest, layout, manifest, {})


def test_layer_inspection_counts_and_accepts_normal_layers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _layer(
        [
            ("./etc/", tarfile.DIRTYPE, ""),
            ("etc/a", tarfile.REGTYPE, ""),
            ("etc/b", tarfile.LNKTYPE, "etc/a"),
            ("etc/.wh.old", tarfile.REGTYPE, ""),
            ("dev/null", tarfile.CHRTYPE, ""),
            ("etc/l", tarfile.SYMTYPE, "/etc/a"),
        ]
    )
    with caplog.at_level(logging.INFO, logger=unpack.__name__):
        stats = unpack.inspect_layers(
            _pulled(tmp_path / "oci", [RawLayer(data)]), unpack.UnpackLimits()
        )
    assert (stats.layers, stats.entries) == (1, 6)
    assert "image has 1 device nodes" in caplog.text


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([("../x", tarfile.REGTYPE, "")], "contains '..'"),
        ([("/x", tarfile.REGTYPE, "")], "absolute path"),
        ([("x", tarfile.LNKTYPE, "/etc/passwd")], "absolute path"),
        ([("x", tarfile.LNKTYPE, "y")], "not earlier in the layer"),
        ([("etc/.wh.x", tarfile.DIRTYPE, "")], "whiteout but not a file"),
    ],
)
def test_layer_inspection_refuses_hostile_entries(
    tmp_path: Path, entries: list[tuple[str, bytes, str]], words: str
) -> None:
    image = _pulled(tmp_path / "oci", [RawLayer(_layer(entries))])
    with pytest.raises(ScanFailure, match=words) as info:
        unpack.inspect_layers(image, unpack.UnpackLimits())
    assert info.value.reason == ErrorReason.HOSTILE_IMAGE


def test_layer_inspection_limits(tmp_path: Path) -> None:
    data = _layer([(f"f{i}", tarfile.REGTYPE, "") for i in range(50)])
    image = _pulled(tmp_path / "oci", [RawLayer(data)])
    with pytest.raises(ScanFailure, match="entries") as info:
        unpack.inspect_layers(image, unpack.UnpackLimits(max_entries=10))
    assert info.value.reason == ErrorReason.IMAGE_TOO_LARGE
    with pytest.raises(ScanFailure, match="bytes"):
        unpack.inspect_layers(image, unpack.UnpackLimits(max_unpacked_bytes=4096))
    garbage = _pulled(
        tmp_path / "oci2",
        [RawLayer(b"\x1f\x8bnot gzip", MEDIA_TYPE_LAYER_GZIP, diff_id="sha256:" + "0" * 64)],
    )
    with pytest.raises(ScanFailure, match="not a readable tar") as info:
        unpack.inspect_layers(garbage, unpack.UnpackLimits())
    assert info.value.reason == ErrorReason.UNPACK_FAILED


# -- references, id maps, apt config, policy files ---------------------------------------------


def test_references_must_name_a_registry_and_a_digest() -> None:
    digest = "sha256:" + "a" * 64
    assert split_reference(f"127.0.0.1:5000/ns/app@{digest}") == (
        "127.0.0.1:5000",
        "ns/app",
        digest,
    )
    for bad in ("quay.io/app:latest", f"app@{digest}", f"quay.io/app@sha256:{'A' * 64}"):
        with pytest.raises(ScanFailure) as info:
            split_reference(bad)
        assert info.value.reason == ErrorReason.PULL_FAILED


def test_subordinate_ranges_are_read_by_name_or_uid(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:100000:65536\n65532:1000000:65536\nbroken\n", encoding="utf-8")
    assert sandbox._subordinate(subuid, "scapguard-scan", 65532) == (1_000_000, 65536)
    assert sandbox._subordinate(subuid, "other", 1) == (100000, 65536)
    assert sandbox._subordinate(subuid, "nobody", 9) is None
    assert sandbox._subordinate(tmp_path / "missing", "x", 1) is None


def test_isolated_apt_config(tmp_path: Path) -> None:
    conf = write_apt_config(tmp_path, "arm64").read_text(encoding="utf-8")
    assert 'APT::Architecture "arm64";' in conf
    assert f'Dir::Etc::parts "{tmp_path / "apt.conf.d"}";' in conf
    assert "sources.list" in conf and "/etc/apt" not in conf
    with pytest.raises(ScanFailure) as info:
        write_apt_config(tmp_path, "mips")
    assert info.value.reason == ErrorReason.UNSUPPORTED_OS


def test_policy_file_object_or_spec(tmp_path: Path) -> None:
    whole = tmp_path / "whole.yaml"
    whole.write_text("kind: ScanPolicy\nspec:\n  failOn: critical\n", encoding="utf-8")
    assert cli.load_policy(whole).fail_on == "critical"
    spec = tmp_path / "spec.yaml"
    spec.write_text("failOn: low\ncompliance: {enabled: true}\n", encoding="utf-8")
    assert cli.load_policy(spec).fail_on == "low"
    assert cli.load_policy(None).vulnerabilities.enabled is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec:\n  failOnRules: sometimes\n", encoding="utf-8")
    with pytest.raises(cli.UsageError, match=r"spec\.failOnRules"):
        cli.load_policy(bad)
    other = tmp_path / "other.yaml"
    other.write_text("kind: ImageScan\nspec: {}\n", encoding="utf-8")
    with pytest.raises(cli.UsageError, match="not ScanPolicy"):
        cli.load_policy(other)


def test_a_configured_user_namespace_that_fails_is_a_named_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = ("unshare", "--map-root-user", "--")
    monkeypatch.setattr(os, "geteuid", lambda: 65532)
    monkeypatch.setattr(sandbox, "userns_prefix", lambda: prefix)
    failed = subprocess.CompletedProcess(
        [], 1, b"", b"newuidmap: Target process is owned by a different user\n"
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    box = sandbox.select("auto")
    assert box.mode == "rootless" and not box.owners_preserved
    assert box.fallback is not None and "Target process is owned" in box.fallback
    with pytest.raises(ScanFailure, match="Target process is owned"):
        sandbox.select("userns")
    # No subordinate ids configured at all: rootless as asked for, nothing expected, no fallback.
    monkeypatch.setattr(sandbox, "userns_prefix", lambda: None)
    assert sandbox.select("auto") == sandbox.Sandbox("rootless")


def test_no_new_privs_skips_the_user_namespace_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a pod with allowPrivilegeEscalation: false the probe would hang until its timeout
    (unshare waits for a newuidmap that cannot gain privileges): it is not even run."""
    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nNoNewPrivs:\t1\nSeccomp:\t2\n", encoding="utf-8")
    assert sandbox.no_new_privs(status)
    status.write_text("Name:\tpython3\nNoNewPrivs:\t0\n", encoding="utf-8")
    assert not sandbox.no_new_privs(status)
    assert not sandbox.no_new_privs(tmp_path / "absent")

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the probe ran")

    monkeypatch.setattr(os, "geteuid", lambda: 65532)
    monkeypatch.setattr(sandbox, "userns_prefix", lambda: ("unshare", "--"))
    monkeypatch.setattr(sandbox, "no_new_privs", lambda: True)
    monkeypatch.setattr(subprocess, "run", never)
    box = sandbox.select("auto")
    assert box.mode == "rootless"
    assert box.fallback is not None and "no_new_privs" in box.fallback


def test_skopeo_always_gets_an_auth_file_and_a_runtime_dir_of_the_scans_own(
    tmp_path: Path,
) -> None:
    home = tmp_path / "skopeo-home"
    args = pull._auth_args("--authfile", PullOptions(), home)
    assert args == ["--authfile", str(home / "auth.json")]
    assert json.loads((home / "auth.json").read_text(encoding="utf-8")) == {"auths": {}}
    mounted = tmp_path / "dockerconfig.json"
    assert pull._auth_args("--src-authfile", PullOptions(authfile=mounted), home) == [
        "--src-authfile",
        str(mounted),
    ]
    env = skopeo_env(home)
    assert env["HOME"] == env["XDG_RUNTIME_DIR"] == str(home)
    assert "REGISTRY_AUTH_FILE" not in env
