"""Fixture images carry the package versions FIXTURE_PACKAGES claims, read back from the image."""

from __future__ import annotations

import filecmp
import hashlib
import stat
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from scapguard_dev.fixtureimages import (
    DISTROS,
    FIXTURE_OS_RELEASE,
    FIXTURE_PACKAGES,
    PACKAGE_FORMAT,
    RPM_ARCH,
    VARIANTS,
    Distro,
    FixtureImages,
    Variant,
    debian_mirror,
    make_fixture_rootfs,
)
from scapguard_dev.images import fetch_rootfs, write_layer_tar

ALL_FIXTURES = sorted(FIXTURE_PACKAGES)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, f"{cmd} failed: {proc.stderr}"
    return proc.stdout


def _dpkg_packages(tree: Path) -> dict[str, str]:
    out = _run(
        [
            "dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
            "-f=${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
        ]
    )  # fmt: skip
    result = {}
    for line in out.splitlines():
        name, version, arch, status = line.split("\t")
        assert status.strip() == "ii", line
        assert arch in {"amd64", "all"}, line
        result[name] = version
    return result


def _rpm_packages(tree: Path) -> dict[str, str]:
    out = _run(
        [
            "rpm", "--root", str(tree), "--dbpath", "/var/lib/rpm", "-qa",
            "--qf", "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\n",
        ]
    )  # fmt: skip
    result = {}
    for line in out.splitlines():
        name, evr, arch = line.split("\t")
        assert arch == RPM_ARCH, line
        result[name] = evr
    return result


def _os_release(tree: Path) -> dict[str, str]:
    fields = {}
    for line in (tree / "etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value.strip('"')
    return fields


@pytest.mark.parametrize(("distro", "variant"), ALL_FIXTURES)
def test_fixture_image_has_the_packages_it_claims(
    fixture_images: FixtureImages, tmp_path: Path, distro: Distro, variant: Variant
) -> None:
    image = fixture_images.get(distro, variant)
    assert image.digest.startswith("sha256:")
    tree = fetch_rootfs(image, tmp_path)

    assert _os_release(tree) == FIXTURE_OS_RELEASE[distro]
    assert (tree / "etc/os-release").is_symlink()
    assert stat.S_IMODE((tree / "tmp").lstat().st_mode) == 0o1777
    assert (tree / "etc/passwd").read_text().startswith("root:x:0:0:")
    if PACKAGE_FORMAT[distro] == "dpkg":
        assert _dpkg_packages(tree) == FIXTURE_PACKAGES[(distro, variant)]
        for table in ("cputable", "tupletable"):
            assert filecmp.cmp(tree / "usr/share/dpkg" / table, Path("/usr/share/dpkg") / table)
        expected_debian_version = "12." if distro == "debian12" else "bookworm/sid"
        assert (tree / "etc/debian_version").read_text().startswith(expected_debian_version)
    else:
        db = tree / "var/lib/rpm/rpmdb.sqlite"
        assert db.read_bytes()[:16] == b"SQLite format 3\x00"
        assert _rpm_packages(tree) == FIXTURE_PACKAGES[(distro, variant)]
        assert (
            (tree / "etc/redhat-release")
            .read_text()
            .startswith("Red Hat Enterprise Linux release 9.4")
        )


def test_variants_differ_and_list_the_same_packages() -> None:
    assert set(FIXTURE_PACKAGES) == {(d, v) for d in DISTROS for v in VARIANTS}
    for distro in DISTROS:
        vulnerable = FIXTURE_PACKAGES[(distro, "vulnerable")]
        patched = FIXTURE_PACKAGES[(distro, "patched")]
        assert vulnerable.keys() == patched.keys()
        changed = [name for name in vulnerable if vulnerable[name] != patched[name]]
        assert len(changed) >= 3, distro


@pytest.mark.parametrize("distro", DISTROS)
def test_fixture_trees_are_reproducible(tmp_path: Path, distro: Distro) -> None:
    digests = set()
    for attempt in ("a", "b"):
        work = tmp_path / attempt
        root = make_fixture_rootfs(work / "rootfs", distro, "vulnerable", workdir=work)
        layer = write_layer_tar(root, work / "layer.tar")
        digests.add(hashlib.sha256(layer.read_bytes()).hexdigest())
    assert len(digests) == 1


def _oval(distro: Distro, variant: Variant) -> str:
    """OVAL with one definition per FIXTURE_PACKAGES entry: installed EVR equals the claim."""
    dpkg = PACKAGE_FORMAT[distro] == "dpkg"
    kind = "dpkginfo" if dpkg else "rpminfo"
    definitions, tests, objects, states = [], [], [], []
    for n, (name, version) in enumerate(sorted(FIXTURE_PACKAGES[(distro, variant)].items()), 1):
        evr = version if ":" in version else f"0:{version}"
        definitions.append(
            f'<definition class="inventory" id="oval:t:def:{n}" version="1"><metadata>'
            f"<title>{escape(name)}</title><description>d</description></metadata>"
            f'<criteria><criterion test_ref="oval:t:tst:{n}"/></criteria></definition>'
        )
        tests.append(
            f'<l:{kind}_test check="all" id="oval:t:tst:{n}" version="1" comment="c">'
            f'<l:object object_ref="oval:t:obj:{n}"/><l:state state_ref="oval:t:ste:{n}"/>'
            f"</l:{kind}_test>"
        )
        objects.append(
            f'<l:{kind}_object id="oval:t:obj:{n}" version="1">'
            f"<l:name>{escape(name)}</l:name></l:{kind}_object>"
        )
        states.append(
            f'<l:{kind}_state id="oval:t:ste:{n}" version="1">'
            f'<l:evr datatype="evr_string" operation="equals">{escape(evr)}</l:evr>'
            f"</l:{kind}_state>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5"'
        ' xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"'
        ' xmlns:l="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux">'
        "<generator><oval:schema_version>5.11</oval:schema_version>"
        "<oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator>"
        f"<definitions>{''.join(definitions)}</definitions><tests>{''.join(tests)}</tests>"
        f"<objects>{''.join(objects)}</objects><states>{''.join(states)}</states>"
        "</oval_definitions>"
    )


@pytest.mark.parametrize(("distro", "variant"), [("debian12", "vulnerable"), ("rhel9", "patched")])
def test_oscap_probes_read_the_fixture_versions(
    fixture_images: FixtureImages, tmp_path: Path, distro: Distro, variant: Variant
) -> None:
    """OpenSCAP 1.3.7 (Debian's) sees the claimed versions through OSCAP_PROBE_ROOT.

    Two host-side settings are needed and belong in the scanner too: APT_CONFIG naming a file
    that turns off /etc/apt/apt.conf.d (Debian container images ship docker-clean there, whose
    empty Dir::Cache::pkgcache breaks the dpkginfo probe once RootDir is set), and a
    ~/.rpmmacros with ``%_dbpath /var/lib/rpm`` (Debian's rpm defaults to ~/.rpmdb through a
    shell expansion the rpminfo probe cannot run).
    """
    tree = fetch_rootfs(fixture_images.get(distro, variant), tmp_path / "image")
    oval = tmp_path / "oval.xml"
    oval.write_text(_oval(distro, variant))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    apt_config = tmp_path / "apt.conf"
    apt_config.write_text(f'Dir::Etc::Parts "{tmp_path / "no-apt-parts"}";\n')
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "APT_CONFIG": str(apt_config),
        "OSCAP_PROBE_ROOT": str(tree),
    }
    out = _run(["oscap", "oval", "eval", str(oval)], env=env)
    results = [line for line in out.splitlines() if line.startswith("Definition ")]
    assert len(results) == len(FIXTURE_PACKAGES[(distro, variant)])
    assert all(line.endswith(": true") for line in results), out


@pytest.mark.slow
def test_debootstrap_debian12_minbase_image(fixture_images: FixtureImages, tmp_path: Path) -> None:
    image = fixture_images.debian12_minbase()
    tree = fetch_rootfs(image, tmp_path)
    packages = _dpkg_packages(tree)
    assert "base-files" in packages
    assert "dpkg" in packages
    assert (tree / "etc/debian_version").read_text().startswith("12")
    assert _os_release(tree)["VERSION_ID"] == "12"
    assert (tree / "usr/share/dpkg/cputable").is_file()
    assert (tree / "usr/share/dpkg/tupletable").is_file()
    assert (tree / "bin/sh").exists()


def test_debian_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/a.sources").write_text(
        "Types: deb\nURIs: file:/srv/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: file:/srv/src\nSuites: bookworm\n\n"
        "Enabled: no\nTypes: deb\nURIs: file:/srv/disabled\nSuites: bookworm\n\n"
        "Types: deb\nURIs: file:/srv/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror("bookworm", apt) == "file:/srv/debian"
    (apt / "sources.list.d/a.sources").unlink()
    (apt / "sources.list").write_text(
        "# deb file:/srv/commented bookworm main\n"
        "deb [signed-by=/k.gpg] file:/srv/one-line bookworm main\n"
    )
    assert debian_mirror("bookworm", apt) == "file:/srv/one-line"
    with pytest.raises(Exception, match="no deb source for suite trixie"):
        debian_mirror("trixie", apt)
