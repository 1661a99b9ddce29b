"""Images (and content) built to subvert the scanner: rpm macros, tar parser differentials."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from scapguard.results.model import (
    ErrorReason,
    ImageRef,
    OSFamily,
    OSInfo,
    ScanError,
    ScannerInfo,
    ScanResult,
    validate_document,
)
from scapguard.scanner import content, oscap, osdetect, pipeline, sandbox, unpack
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.pull import PulledImage
from scapguard_dev.images import MEDIA_TYPE_LAYER_GZIP, RawLayer, write_raw_oci_layout

RHEL9 = {"etc/os-release": 'ID="rhel"\nVERSION_ID="9.4"\n'}
RPMDB = {"var/lib/rpm/rpmdb.sqlite": "x"}
SHELL_DIR = "%(echo pwned>PWNED)"


def tree(root: Path, files: dict[str, str], links: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return root


# -- rpm database path: never chosen by the image ---------------------------------------------


@pytest.mark.parametrize(
    ("links", "db_dir"),
    [
        ({"var/lib/rpm": f"/{SHELL_DIR}"}, SHELL_DIR),
        ({"var/lib/rpm": f"../../{SHELL_DIR}"}, SHELL_DIR),
        ({"usr/lib/sysimage/rpm": "/opt/db"}, "opt/db"),
        ({"var/lib/rpm": "/usr/lib/sysimage/rpm/../../../opt/db"}, "opt/db"),
    ],
)
def test_an_rpm_database_elsewhere_through_a_symlink_is_no_database(
    tmp_path: Path, links: dict[str, str], db_dir: str
) -> None:
    root = tree(tmp_path, {**RHEL9, f"{db_dir}/rpmdb.sqlite": "x"}, links)
    with pytest.raises(ScanFailure, match="no rpm database") as info:
        osdetect.detect(root)
    assert info.value.reason == ErrorReason.UNSUPPORTED_OS


@pytest.mark.parametrize(
    ("db_dir", "links", "expected"),
    [
        (
            "usr/lib/sysimage/rpm",
            {"var/lib/rpm": "../../usr/lib/sysimage/rpm"},
            "/usr/lib/sysimage/rpm",
        ),
        ("var/lib/rpm", {"usr/lib/sysimage/rpm": "/var/lib/rpm"}, "/var/lib/rpm"),
        ("var/lib/rpm", {}, "/var/lib/rpm"),
    ],
)
def test_rpm_database_links_between_the_two_known_paths_are_followed(
    tmp_path: Path, db_dir: str, links: dict[str, str], expected: str
) -> None:
    root = tree(tmp_path, {**RHEL9, f"{db_dir}/Packages": "x"}, links)
    assert osdetect.detect(root).rpmdb_path == expected


def _detected(rpmdb_path: str | None, family: OSFamily = "rhel") -> osdetect.DetectedOS:
    info = OSInfo(id="x", version_id="1", pretty_name="x 1", family=family)
    return osdetect.DetectedOS(info=info, codename=None, major="1", rpmdb_path=rpmdb_path)


def test_rpm_macros_are_always_written_and_only_with_plain_paths(tmp_path: Path) -> None:
    env = oscap.environment(tmp_path / "root", tmp_path / "w1", _detected(None, "debian"), "amd64")
    assert "OSCAP_PROBE_RPMDB_PATH" not in env
    macros = (Path(env["HOME"]) / ".rpmmacros").read_text(encoding="utf-8")
    assert macros == "%_dbpath /nonexistent-scapguard/rpm\n"  # never the host's %(bash ...)
    env = oscap.environment(tmp_path / "root", tmp_path / "w2", _detected("/var/lib/rpm"), "amd64")
    assert env["OSCAP_PROBE_RPMDB_PATH"] == "/var/lib/rpm"
    assert (Path(env["HOME"]) / ".rpmmacros").read_text(encoding="utf-8") == (
        "%_dbpath /var/lib/rpm\n"
    )
    for bad in (f"/{SHELL_DIR}", "/a b", "relative", "/x\n%_dbpath /y", "/%{lua:x}"):
        with pytest.raises(ScanFailure, match="rpm database path") as info:
            oscap.environment(tmp_path / "root", tmp_path / "w3", _detected(bad), "amd64")
        assert info.value.reason == ErrorReason.HOSTILE_IMAGE


# -- tar headers that Python's tarfile and Go's archive/tar (umoci) would read differently -----

FIELDS = {
    "size": (124, 136),
    "magic": (257, 265),
    "devmajor": (329, 337),
    "devminor": (337, 345),
    "prefix": (345, 500),
}
END = bytes(1024)


def _block(name: str, kind: bytes = tarfile.REGTYPE, length: int = 0, **raw: bytes) -> bytes:
    """One ustar header block; ``raw`` overwrites fields by name (then the checksum is fixed)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = length
    info.mode = 0o644
    info.mtime = 1_704_067_200
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    for field, value in raw.items():
        start, end = FIELDS[field]
        buf[start:end] = value.ljust(end - start, b"\x00")
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\x00 " % sum(buf)
    return bytes(buf)


def _file(name: str, content: bytes = b"x", **raw: bytes) -> bytes:
    padding = -len(content) % 512
    return _block(name, length=len(content), **raw) + content + bytes(padding)


def _pulled(layout: Path, data: bytes) -> PulledImage:
    layer = RawLayer(
        gzip.compress(data, mtime=0),
        MEDIA_TYPE_LAYER_GZIP,
        diff_id="sha256:" + hashlib.sha256(data).hexdigest(),
    )
    digest = write_raw_oci_layout([layer], layout, "image")
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    return PulledImage("h/r@" + digest, digest, digest, layout, manifest, {})


def _inspect(tmp_path: Path, data: bytes) -> tuple[PulledImage, unpack.LayerStats]:
    image = _pulled(tmp_path / "oci", data)
    limits = unpack.UnpackLimits(max_unpacked_bytes=64 * 1024 * 1024)
    return image, unpack.inspect_layers(image, limits)


def _refused(tmp_path: Path, data: bytes, words: str) -> ScanFailure:
    with pytest.raises(ScanFailure) as info:
        _inspect(tmp_path, data)
    assert info.value.reason == ErrorReason.HOSTILE_IMAGE, info.value.message
    assert words in info.value.message
    assert "layer sha256:" in info.value.message
    return info.value


def test_well_formed_gnu_ustar_and_pax_layers_pass(tmp_path: Path) -> None:
    for n, fmt in enumerate((tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            long = "etc/" + "long-" * 30 if fmt != tarfile.USTAR_FORMAT else "etc/short"
            for name in ("etc", long, "dev/null"):
                info = tarfile.TarInfo(name)
                info.type = tarfile.CHRTYPE if name == "dev/null" else tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(b""))
        _, stats = _inspect(tmp_path / str(n), buf.getvalue())
        assert stats.entries == 3
    _, stats = _inspect(tmp_path / "blank-dev", _file("f", devmajor=b"", devminor=b"") + END)
    assert stats.entries == 1  # GNU tar leaves devmajor/devminor all NUL


@pytest.mark.parametrize(
    ("size_field", "words"),
    [
        (b"\x00" + b"%011o" % 512, "size field that is not plain octal"),
        (b" \x00" + b"%010o" % 512, "size field that is not plain octal"),
        (b"0000000001x", "size field that is not plain octal"),
    ],
)
def test_numbers_the_parsers_read_differently_are_refused(
    tmp_path: Path, size_field: bytes, words: str
) -> None:
    """Python reads a size of '\\0...1000' as 0 and the next (zero) block as the end; Go reads
    512 bytes of content and goes on to entries the inspection never saw (here ../escape)."""
    data = _block("innocent", size=size_field) + bytes(512) + _file("../escape") + END
    _refused(tmp_path, data, words)


def test_data_after_the_end_of_archive_is_refused(tmp_path: Path) -> None:
    data = _file("a") + bytes(512) + _file("../hidden") + END
    message = _refused(tmp_path, data, "data after the end-of-archive marker").message
    assert "offset 1536" in message  # the header after the first zero block


def test_data_after_the_end_counts_against_the_size_limit(tmp_path: Path) -> None:
    image = _pulled(tmp_path / "oci", _file("a") + bytes(8 * 1024 * 1024))
    with pytest.raises(ScanFailure, match="more than") as info:
        unpack.inspect_layers(image, unpack.UnpackLimits(max_unpacked_bytes=1024 * 1024))
    assert info.value.reason == ErrorReason.IMAGE_TOO_LARGE


def test_an_invalid_header_is_refused_not_taken_for_the_end(tmp_path: Path) -> None:
    bad = bytearray(_file("hidden"))
    bad[148:156] = b"0000000\x00"  # wrong checksum: tarfile would stop without a word
    _refused(tmp_path, _file("a") + bytes(bad) + END, "has an invalid header")


def test_a_gnu_tar_sparse_file_passes(tmp_path: Path) -> None:
    """GNU tar's old sparse headers (type S, GNU magic) keep the sparse map past byte 386,
    where a prefix would be; neither parser reads it as one."""
    src = tmp_path / "src"
    src.mkdir()
    with (src / "sparse").open("wb") as f:
        f.seek(5 * 1024 * 1024)
        f.write(b"data")
    layer = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--format=gnu", "--sparse", "-C", str(src), "-cf", str(layer), "sparse"],
        check=True,
    )
    data = layer.read_bytes()
    assert data[156:157] == tarfile.GNUTYPE_SPARSE and data[386] != 0  # what is tested
    _, stats = _inspect(tmp_path / "oci", data)
    assert stats.entries == 1


@pytest.mark.parametrize(
    ("magic", "words"),
    [(b"ustar  \x00", "name prefix outside a ustar header"), (b"", "name prefix outside")],
)
def test_a_prefix_go_does_not_read_is_refused(tmp_path: Path, magic: bytes, words: str) -> None:
    """GNU (atime there) and v7 headers have no prefix for Go; tarfile joins it to the name."""
    _refused(tmp_path, _file("passwd", prefix=b"etc", magic=magic) + END, words)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_extended_headers_are_bounded_before_they_are_read(tmp_path: Path, fmt: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.addfile(tarfile.TarInfo("d/" * 40_000 + "f"), io.BytesIO(b""))
    _refused(tmp_path, buf.getvalue(), "is an extended header of")


def test_a_huge_pax_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    """The size alone decides: the 1 GiB of the header is not even there."""
    pax = _block("././@PaxHeader", tarfile.XHDTYPE, length=1 << 30)
    _refused(tmp_path, pax + bytes(4096), "extended header of 1073741824 bytes")


@pytest.mark.parametrize("name", ["a/.wh..", "a/.wh...", ".wh...", "./.wh.."])
def test_whiteouts_of_dot_and_dotdot_are_refused(tmp_path: Path, name: str) -> None:
    """umoci would remove the directory holding the whiteout or its parent (at the top of the
    tree: the bundle around it)."""
    _refused(tmp_path, _file(name, b"") + END, "whites out '.' or '..'")


# -- os-release values: never a crash ----------------------------------------------------------


def test_os_release_values_lose_control_characters_and_fit_the_schema(tmp_path: Path) -> None:
    text = (
        'ID="rhel\x01"\nVERSION_ID="9.4\x00\x1b[2J"\n'
        f'PRETTY_NAME="Red\x00Hat\x7f{"x" * 400}"\nVERSION_CODENAME="{"c" * 100}"\n'
    )
    root = tree(tmp_path, {**RPMDB, "etc/os-release": text}, {})
    found = osdetect.detect(root)
    assert found.info.version_id == "9.4[2J"
    assert found.info.pretty_name == ("RedHat" + "x" * 400)[:256]
    assert found.codename == "c" * 64
    result = ScanResult(
        image=ImageRef("h/r@sha256:" + "0" * 64, "sha256:" + "0" * 64),
        os=found.info,
        outcome="Error",
        error=ScanError(ErrorReason.PROBE_FAILED, "x"),
        vulnerabilities=None,
        compliance=None,
        scanner=ScannerInfo("0.1.0", None),
        started_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        finished_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        timings={},
    )
    validate_document(result.to_dict())
    env = oscap.environment(root, tmp_path / "work", found, "amd64")
    assert "\x00" not in env["OSCAP_PROBE_OS_NAME"] + env["OSCAP_PROBE_OS_VERSION"]


def test_a_long_redhat_release_fits_the_schema(tmp_path: Path) -> None:
    text = "Red Hat Enterprise Linux release 9.4 (Plow)\x00" + "y" * 1000 + "\n"
    found = osdetect.detect(tree(tmp_path, {**RPMDB, "etc/redhat-release": text}, {}))
    assert (found.info.id, found.info.version_id, len(found.info.pretty_name)) == (
        "rhel",
        "9.4",
        256,
    )


def test_an_unexpected_exception_is_an_error_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(requested: str) -> sandbox.Sandbox:
        raise ValueError("embedded null byte")

    monkeypatch.setattr(sandbox, "select", broken)
    output = pipeline.scan(
        pipeline.ScanRequest(reference="h.io/r@sha256:" + "a" * 64, workdir=tmp_path)
    )
    error = output.result.error
    assert output.result.outcome == "Error" and error is not None
    assert error.reason == ErrorReason.SCANNER_ERROR
    assert "ValueError" in error.message and "embedded null byte" in error.message
    validate_document(output.result.to_dict())


# -- content that would make oscap run scripts ------------------------------------------------

XCCDF12 = "http://checklists.nist.gov/xccdf/1.2"
DS = f"""<?xml version="1.0"?>
<ds:data-stream-collection xmlns:ds="http://scap.nist.gov/schema/scap/source/1.2"
    xmlns:x="{XCCDF12}" id="scap_x_collection_c" schematron-version="1.3">
  <ds:component id="scap_x_comp_xccdf" timestamp="2024-01-01T00:00:00">
    <x:Benchmark id="xccdf_x_benchmark_b"><x:version>1</x:version>
      <x:Rule id="xccdf_x_rule_r"><x:check system="{{system}}">
        <x:check-content-ref href="run.sh"/></x:check></x:Rule>
    </x:Benchmark>
  </ds:component>
</ds:data-stream-collection>
"""
TAILORING = f"""<?xml version="1.0"?>
<x:Tailoring xmlns:x="{XCCDF12}" id="xccdf_x_tailoring_t"><x:version time="2024-01-01T00:00:00">1
  </x:version><x:Rule id="xccdf_x_rule_s"><x:check system=" {{system}} "/></x:Rule></x:Tailoring>
"""


@pytest.mark.parametrize(("kind", "doc"), [("datastream", DS), ("tailoring", TAILORING)])
def test_content_using_the_script_check_engine_is_refused(
    tmp_path: Path, kind: content.Kind, doc: str
) -> None:
    good = tmp_path / "good.xml"
    good.write_text(
        doc.format(system="http://oval.mitre.org/XMLSchema/oval-definitions-5"), encoding="utf-8"
    )
    content.resolve(kind, "n", tmp_path / "w1", override=content.ContentOverride(file=good))
    bad = tmp_path / "sce.xml"
    bad.write_text(doc.format(system="http://open-scap.org/page/sce"), encoding="utf-8")
    with pytest.raises(ScanFailure, match="Script Check Engine") as info:
        content.resolve(kind, "n", tmp_path / "w2", override=content.ContentOverride(file=bad))
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert str(bad) in info.value.message


def test_a_feed_denser_than_any_real_one_is_refused(tmp_path: Path) -> None:
    """20 MiB of one repeated element: bz2 makes a few hundred bytes of it, lxml gigabytes."""
    dense = tmp_path / "dense.xml.bz2"
    dense.write_bytes(bz2.compress(b"<oval_definitions>" + b"<a/>" * (5 * 1024 * 1024)))
    with pytest.raises(ScanFailure, match="more than 200 times its compressed size") as info:
        content.resolve("oval", "n", tmp_path / "w", override=content.ContentOverride(file=dense))
    assert info.value.reason == ErrorReason.CONTENT_INVALID
    assert str(dense) in info.value.message
