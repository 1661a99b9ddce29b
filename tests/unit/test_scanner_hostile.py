"""Images (and content) built to subvert the scanner: rpm macros, tar parser differentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from scapguard.results.model import ErrorReason, OSFamily, OSInfo
from scapguard.scanner import oscap, osdetect
from scapguard.scanner.errors import ScanFailure

RHEL9 = {"etc/os-release": 'ID="rhel"\nVERSION_ID="9.4"\n'}
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
