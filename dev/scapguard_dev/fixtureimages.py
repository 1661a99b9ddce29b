"""Fixture images with known package versions, for the scanner's and the operator's tests.

Synthetic images (no binaries, only what OpenSCAP's probes read):

* ``debian12`` and ``ubuntu2204``: ``/var/lib/dpkg/status`` with full stanzas,
  ``/var/lib/dpkg/info/*.list``, os-release, ``/etc/debian_version`` and the host's
  ``/usr/share/dpkg/{cputable,tupletable,ostable}`` (OpenSCAP 1.3.7's dpkginfo probe needs them);
* ``rhel9``: a real rpm database (sqlite, as RHEL 9 uses) at ``/var/lib/rpm``, made with
  ``rpm --root --initdb`` and ``rpm -i --justdb`` of file-less packages built with ``rpmbuild``,
  os-release with ``PLATFORM_ID="platform:el9"`` and ``/etc/redhat-release``.

Each comes as ``vulnerable`` and ``patched``; :data:`FIXTURE_PACKAGES` is the single source of
the package versions (tests derive their OVAL from it). A real Debian 12 ``minbase`` made by
``debootstrap`` is cached as a layer tarball under ``~/.cache/scapguard`` (``$XDG_CACHE_HOME``
is honoured); the mirror comes from the machine's own apt sources at run time.

Debian's rpm keeps its database under ``~/.rpmdb`` (``%_dbpath``), so reading the rhel9 tree
with Debian's tools needs ``--dbpath /var/lib/rpm`` (or ``--define '_dbpath /var/lib/rpm'``).

Building needs root (owners in the layers, debootstrap).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from scapguard_dev import fakesig
from scapguard_dev.images import (
    ImageBuildError,
    ImageConfig,
    PushedImage,
    build_and_push,
    push_layer_tar,
    run_tool,
    write_layer_tar,
)
from scapguard_dev.node import RUNNABLE, add_busybox
from scapguard_dev.registry import BasicAuth, Registry

log = logging.getLogger(__name__)

Distro = Literal["debian12", "ubuntu2204", "rhel9"]
Variant = Literal["vulnerable", "patched"]
DISTROS: Final[tuple[Distro, ...]] = get_args(Distro)
VARIANTS: Final[tuple[Variant, ...]] = get_args(Variant)

#: Installed packages of each synthetic image: binary package name -> full version as the
#: package manager writes it (dpkg: ``[epoch:]upstream-revision``; rpm:
#: ``[epoch:]version-release``, the epoch only where the package has one). Every dpkg package is
#: ``Architecture: amd64``, every rpm ``x86_64`` (:data:`DPKG_ARCH`, :data:`RPM_ARCH`).
FIXTURE_PACKAGES: Final[Mapping[tuple[Distro, Variant], Mapping[str, str]]] = {
    ("debian12", "vulnerable"): {
        "base-files": "12.4+deb12u5",
        "libc6": "2.36-9+deb12u3",
        "libexpat1": "2.5.0-1",
        "libssl3": "3.0.11-1~deb12u1",
        "openssl": "3.0.11-1~deb12u1",
        "zlib1g": "1:1.2.13.dfsg-1",
    },
    ("debian12", "patched"): {
        "base-files": "12.4+deb12u5",
        "libc6": "2.36-9+deb12u9",
        "libexpat1": "2.5.0-1+deb12u1",
        "libssl3": "3.0.15-1~deb12u1",
        "openssl": "3.0.15-1~deb12u1",
        "zlib1g": "1:1.2.13.dfsg-1",
    },
    ("ubuntu2204", "vulnerable"): {
        "base-files": "12ubuntu4.6",
        "libc6": "2.35-0ubuntu3.1",
        "libexpat1": "2.4.7-1ubuntu0.2",
        "libssl3": "3.0.2-0ubuntu1.10",
        "openssl": "3.0.2-0ubuntu1.10",
        "zlib1g": "1:1.2.11.dfsg-2ubuntu9.2",
    },
    ("ubuntu2204", "patched"): {
        "base-files": "12ubuntu4.6",
        "libc6": "2.35-0ubuntu3.8",
        "libexpat1": "2.4.7-1ubuntu0.5",
        "libssl3": "3.0.2-0ubuntu1.18",
        "openssl": "3.0.2-0ubuntu1.18",
        "zlib1g": "1:1.2.11.dfsg-2ubuntu9.2",
    },
    ("rhel9", "vulnerable"): {
        "expat": "2.5.0-2.el9",
        "glibc": "2.34-100.el9",
        "openssl": "1:3.0.7-27.el9",
        "openssl-libs": "1:3.0.7-27.el9",
        "redhat-release": "9.4-0.5.el9",
        "zlib": "1.2.11-40.el9",
    },
    ("rhel9", "patched"): {
        "expat": "2.5.0-2.el9_4.1",
        "glibc": "2.34-100.el9_4.4",
        "openssl": "1:3.0.7-28.el9_4",
        "openssl-libs": "1:3.0.7-28.el9_4",
        "redhat-release": "9.4-0.5.el9",
        "zlib": "1.2.11-40.el9",
    },
}

DPKG_ARCH: Final = "amd64"
RPM_ARCH: Final = "x86_64"
PACKAGE_FORMAT: Final[Mapping[Distro, Literal["dpkg", "rpm"]]] = {
    "debian12": "dpkg",
    "ubuntu2204": "dpkg",
    "rhel9": "rpm",
}

#: /usr/lib/os-release of each synthetic distro (what the scanner's OS detection reads).
FIXTURE_OS_RELEASE: Final[Mapping[Distro, Mapping[str, str]]] = {
    "debian12": {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "NAME": "Debian GNU/Linux",
        "VERSION_ID": "12",
        "VERSION": "12 (bookworm)",
        "VERSION_CODENAME": "bookworm",
        "ID": "debian",
    },
    "ubuntu2204": {
        "PRETTY_NAME": "Ubuntu 22.04.4 LTS",
        "NAME": "Ubuntu",
        "VERSION_ID": "22.04",
        "VERSION": "22.04.4 LTS (Jammy Jellyfish)",
        "VERSION_CODENAME": "jammy",
        "ID": "ubuntu",
        "ID_LIKE": "debian",
        "UBUNTU_CODENAME": "jammy",
    },
    "rhel9": {
        "NAME": "Red Hat Enterprise Linux",
        "VERSION": "9.4 (Plow)",
        "ID": "rhel",
        "ID_LIKE": "fedora",
        "VERSION_ID": "9.4",
        "PLATFORM_ID": "platform:el9",
        "PRETTY_NAME": "Red Hat Enterprise Linux 9.4 (Plow)",
        "ANSI_COLOR": "0;31",
        "LOGO": "fedora-logo-icon",
        "CPE_NAME": "cpe:/o:redhat:enterprise_linux:9::baseos",
    },
}

_DEBIAN_VERSION: Final[Mapping[Distro, str]] = {
    "debian12": "12.5\n",
    "ubuntu2204": "bookworm/sid\n",
}
_REDHAT_RELEASE: Final = "Red Hat Enterprise Linux release 9.4 (Plow)\n"

#: binary package -> (source package, section, priority, installed size, multi-arch same?)
_DPKG_META: Final[Mapping[str, tuple[str | None, str, str, int, bool]]] = {
    "base-files": (None, "admin", "required", 391, False),
    "libc6": ("glibc", "libs", "optional", 12986, True),
    "libexpat1": ("expat", "libs", "optional", 403, True),
    "libssh-4": ("libssh", "libs", "optional", 478, True),
    "libssl3": ("openssl", "libs", "optional", 6254, True),
    "openssl": (None, "utils", "optional", 2302, False),
    "zlib1g": ("zlib", "libs", "optional", 168, True),
}
#: Metadata of packages :data:`_DPKG_META` does not know (trees made from a feed's packages).
_DPKG_DEFAULT_META: Final[tuple[str | None, str, str, int, bool]] = (
    None,
    "misc",
    "optional",
    100,
    False,
)
_MAINTAINER: Final = "scapguard fixtures <fixtures@scapguard.invalid>"

_DPKG_TABLES: Final = ("cputable", "tupletable", "ostable")
_HOST_DPKG_DIR: Final = Path("/usr/share/dpkg")

#: mtime/SOURCE_DATE_EPOCH for rpm build and install times, so the rpm database is reproducible.
_RPM_EPOCH_TIME: Final = "1704067200"
_RPM_DBPATH: Final = "/var/lib/rpm"
_TOOL_TIMEOUT: Final = 300.0

_ETC_USERS: Final = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "bin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
    "sys:x:3:3:sys:/dev:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_ETC_GROUPS: Final = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\ntty:x:5:\nnogroup:x:65534:\n"


def _run(
    cmd: list[str], *, timeout: float = _TOOL_TIMEOUT, env: dict[str, str] | None = None
) -> str:
    return run_tool(cmd, timeout=timeout, env=env).decode()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _os_release_text(fields: Mapping[str, str]) -> str:
    return "".join(f'{key}="{value}"\n' for key, value in fields.items())


def _base_tree(root: Path, os_release: Mapping[str, str]) -> None:
    """Directories, users and os-release shared by all synthetic images."""
    for d in ("etc", "usr/bin", "usr/lib", "usr/share/doc", "var/lib", "var/log", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(0o1777)
    (root / "root").chmod(0o700)
    _write(root / "etc/passwd", _ETC_USERS)
    _write(root / "etc/group", _ETC_GROUPS)
    _write(root / "usr/lib/os-release", _os_release_text(os_release))
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")


# -- dpkg images ------------------------------------------------------------------------------


def _dpkg_stanza(name: str, version: str) -> str:
    source, section, priority, size, multiarch = _DPKG_META.get(name, _DPKG_DEFAULT_META)
    lines = [
        f"Package: {name}",
        "Status: install ok installed",
        f"Priority: {priority}",
        f"Section: {section}",
        f"Installed-Size: {size}",
        f"Maintainer: {_MAINTAINER}",
        f"Architecture: {DPKG_ARCH}",
    ]
    if multiarch:
        lines.append("Multi-Arch: same")
    if source is not None:
        lines.append(f"Source: {source}")
    lines += [
        f"Version: {version}",
        f"Description: {name} (scapguard fixture)",
        " Synthetic package record for scanner tests; no files are installed.",
    ]
    return "\n".join(lines) + "\n"


def make_dpkg_rootfs(root: Path, distro: Distro, variant: Variant) -> Path:
    """Fill ``root`` with a synthetic dpkg-based tree (``debian12`` or ``ubuntu2204``)."""
    if PACKAGE_FORMAT[distro] != "dpkg":
        raise ValueError(f"{distro} is not a dpkg distro")
    lsb = None
    if distro == "ubuntu2204":
        fields = FIXTURE_OS_RELEASE[distro]
        lsb = (
            "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n"
            f'DISTRIB_DESCRIPTION="{fields["PRETTY_NAME"]}"\n'
        )
    return write_dpkg_tree(
        root,
        FIXTURE_PACKAGES[(distro, variant)],
        os_release=FIXTURE_OS_RELEASE[distro],
        debian_version=_DEBIAN_VERSION[distro],
        lsb_release=lsb,
    )


def write_dpkg_tree(
    root: Path,
    packages: Mapping[str, str],
    *,
    os_release: Mapping[str, str],
    debian_version: str,
    lsb_release: str | None = None,
) -> Path:
    """Fill ``root`` with a dpkg-based tree listing ``packages`` (name -> version) as installed.

    ``os_release`` gives /usr/lib/os-release, ``debian_version`` /etc/debian_version and
    ``lsb_release`` (if any) /etc/lsb-release; packages :data:`_DPKG_META` does not know get
    neutral metadata (``Section: misc``, not multi-arch).
    """
    _base_tree(root, os_release)
    _write(root / "etc/debian_version", debian_version)
    if lsb_release is not None:
        _write(root / "etc/lsb-release", lsb_release)
    for table in _DPKG_TABLES:
        src = _HOST_DPKG_DIR / table
        if not src.is_file():
            raise ImageBuildError(f"{src} missing on this host (package dpkg)")
        dest = root / "usr/share/dpkg" / table
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        dest.chmod(0o644)
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    (admin / "updates").mkdir(exist_ok=True)
    stanzas = [_dpkg_stanza(name, packages[name]) for name in sorted(packages)]
    _write(admin / "status", "\n".join(stanzas))
    _write(admin / "available", "")
    for name in sorted(packages):
        doc = root / "usr/share/doc" / name
        doc.mkdir(parents=True, exist_ok=True)
        _write(doc / "copyright", f"{name}: synthetic scapguard fixture\n")
        listname = f"{name}:{DPKG_ARCH}" if _DPKG_META.get(name, _DPKG_DEFAULT_META)[4] else name
        _write(
            admin / "info" / f"{listname}.list",
            f"/.\n/usr\n/usr/share\n/usr/share/doc\n/usr/share/doc/{name}\n"
            f"/usr/share/doc/{name}/copyright\n",
        )
    return root


def dpkg_query_manifest(root: Path) -> str:
    """What Canonical's OCI instructions put in ``manifest`` (``dpkg-query -W`` in the image),
    for the tree at ``root``: the host's ``dpkg-query --admindir=ROOT/var/lib/dpkg -W``."""
    return _run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W"])


# -- rpm images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Evr:
    epoch: str | None
    version: str
    release: str


def _split_evr(evr: str) -> _Evr:
    match = re.fullmatch(r"(?:(\d+):)?([^:-]+)-([^:-]+)", evr)
    if match is None:
        raise ValueError(f"not an rpm [epoch:]version-release: {evr!r}")
    return _Evr(match.group(1), match.group(2), match.group(3))


def _rpm_spec(name: str, evr: _Evr, files: Mapping[str, str]) -> str:
    lines = [f"Name: {name}"]
    if evr.epoch is not None:
        lines.append(f"Epoch: {evr.epoch}")
    lines += [
        f"Version: {evr.version}",
        f"Release: {evr.release}",
        f"Summary: {name} (scapguard fixture)",
        "License: Apache-2.0",
        "Vendor: scapguard fixtures",
        f"BuildArch: {RPM_ARCH}",
        "%global debug_package %{nil}",
        "%description",
        "Synthetic package record for scanner tests; no files are installed.",
    ]
    if files:
        lines.append("%install")
        for path, text in sorted(files.items()):
            target = "%{buildroot}" + shlex.quote(path)
            lines.append(f"mkdir -p $(dirname {target})")
            lines.append(f"printf '%s' {shlex.quote(text)} > {target}")
    lines.append("%files")
    lines += sorted(files)
    lines.append("")
    return "\n".join(lines)


def build_rpm(
    name: str,
    evr: str,
    topdir: Path,
    *,
    files: Mapping[str, str] | None = None,
    signing_keyid: str | None = None,
) -> Path:
    """Build an ``x86_64`` rpm with ``rpmbuild``; return the package path.

    ``files`` (absolute path -> content) are the package's files, none by default.
    ``signing_keyid`` (16 hex digits) adds a header signature whose issuer is that key id
    (:mod:`scapguard_dev.fakesig`; ``--rpmv3`` so there is a ``SIGPGP`` too, the tag
    OpenSCAP 1.3.7 reads): what an OVAL ``signature_keyid`` state compares,
    so vendor feeds that require their signing key can be true on a fixture tree.
    """
    parsed = _split_evr(evr)
    topdir.mkdir(parents=True, exist_ok=True)
    spec = topdir / f"{name}.spec"
    spec.write_text(_rpm_spec(name, parsed, files or {}), encoding="utf-8")
    env = dict(os.environ, SOURCE_DATE_EPOCH=_RPM_EPOCH_TIME)
    _run(
        [
            "rpmbuild", "-bb",
            "--define", f"_topdir {topdir}",
            "--define", "_buildhost scapguard-fixtures",
            "--define", "use_source_date_epoch_as_buildtime 1",
            "--define", "_build_id_links none",
            str(spec),
        ],
        env=env,
    )  # fmt: skip
    rpm = topdir / "RPMS" / RPM_ARCH / f"{name}-{parsed.version}-{parsed.release}.{RPM_ARCH}.rpm"
    if not rpm.is_file():
        raise ImageBuildError(f"rpmbuild of {spec} did not produce {rpm}")
    if signing_keyid is not None:
        _run(
            [
                "rpmsign", "--addsign", "--rpmv3",
                "--define", "_gpg_name scapguard-fixtures",
                "--define", f"__gpg_sign_cmd {fakesig.sign_command(signing_keyid)}",
                str(rpm),
            ],
            env=env,
        )  # fmt: skip
    return rpm


def make_rpm_rootfs(root: Path, variant: Variant, *, workdir: Path) -> Path:
    """Fill ``root`` with a synthetic RHEL 9 tree whose rpm database lists the fixture packages.

    The database is sqlite (``rpmdb.sqlite``, as on RHEL 9) at ``/var/lib/rpm``. rpm keeps the
    sqlite ``-shm`` file next to it; its content (a cache with random salts) is zeroed so the
    tree is reproducible (sqlite rebuilds it on first open).
    """
    _write(root / "etc/redhat-release", _REDHAT_RELEASE)
    (root / "etc/system-release").symlink_to("redhat-release")
    _write(root / "etc/system-release-cpe", "cpe:/o:redhat:enterprise_linux:9::baseos\n")
    return write_rpm_tree(
        root,
        FIXTURE_PACKAGES[("rhel9", variant)],
        workdir=workdir,
        os_release=FIXTURE_OS_RELEASE["rhel9"],
    )


def write_rpm_tree(
    root: Path,
    packages: Mapping[str, str],
    *,
    workdir: Path,
    os_release: Mapping[str, str],
    files: Mapping[str, Mapping[str, str]] | None = None,
    signing_keyid: str | None = None,
) -> Path:
    """Fill ``root`` with a tree whose rpm database (sqlite, ``/var/lib/rpm``) lists ``packages``.

    ``packages``: name -> ``[epoch:]version-release``; ``files``: package -> {path: content}
    owned by that package in the database and also written into the tree (``--justdb``
    installs none), e.g. ``/etc/redhat-release`` owned by ``redhat-release`` as Red Hat's
    feeds check; ``signing_keyid``: every package signed "by" that key id (see
    :func:`build_rpm`).
    """
    owned = files or {}
    _base_tree(root, os_release)
    for package_files in owned.values():
        for path, text in package_files.items():
            _write(root / path.lstrip("/"), text)
    rpms = [
        build_rpm(
            name,
            packages[name],
            workdir / "rpmbuild",
            files=owned.get(name),
            signing_keyid=signing_keyid,
        )
        for name in sorted(packages)
    ]
    dbpath = ["--root", str(root), "--dbpath", _RPM_DBPATH]
    env = dict(os.environ, SOURCE_DATE_EPOCH=_RPM_EPOCH_TIME)
    _run(["rpm", *dbpath, "--initdb"], env=env)
    _run(
        [
            "rpm", *dbpath, "-i", "--justdb", "--nodeps", "--noscripts", "--notriggers",
            "--ignorearch", "--ignoreos", *map(str, rpms),
        ],
        env=env,
    )  # fmt: skip
    dbdir = root / _RPM_DBPATH.lstrip("/")
    if not (dbdir / "rpmdb.sqlite").is_file():
        raise ImageBuildError(f"rpm did not create {dbdir / 'rpmdb.sqlite'}")
    shm = dbdir / "rpmdb.sqlite-shm"
    if shm.exists():
        shm.write_bytes(bytes(shm.stat().st_size))
    lock = dbdir / ".rpm.lock"
    if lock.exists():
        lock.unlink()
    return root


def make_fixture_rootfs(root: Path, distro: Distro, variant: Variant, *, workdir: Path) -> Path:
    """Create the synthetic ``distro``/``variant`` tree at ``root`` (must not exist yet)."""
    root.mkdir(parents=True)
    root.chmod(0o755)
    if PACKAGE_FORMAT[distro] == "dpkg":
        return make_dpkg_rootfs(root, distro, variant)
    return make_rpm_rootfs(root, variant, workdir=workdir)


# -- debootstrap ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/scapguard`` or ``~/.cache/scapguard``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scapguard"


def _deb822_mirrors(text: str, suite: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip() or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()


def _one_line_mirrors(text: str, suite: str) -> Iterator[str]:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            yield words[1]


def debian_mirror(suite: str = "bookworm", apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror URI this machine's apt sources use for ``suite``.

    Reads ``sources.list.d/*.sources`` (deb822), then ``sources.list`` and
    ``sources.list.d/*.list``; only http(s) and file URIs qualify.
    """
    candidates: list[str] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        candidates += _deb822_mirrors(path.read_text(encoding="utf-8"), suite)
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            candidates += _one_line_mirrors(path.read_text(encoding="utf-8"), suite)
    for uri in candidates:
        if uri.startswith(("http://", "https://", "file:/")):
            return uri
    raise ImageBuildError(f"no deb source for suite {suite} with an http(s)/file URI in {apt_dir}")


def archive_mirror(suite: str) -> str:
    """The mirror for ``suite``: the one the machine's sources name for it, else its own
    release's (one Debian archive serves every suite; a bookworm host has no trixie line)."""
    try:
        return debian_mirror(suite)
    except ImageBuildError:
        return debian_mirror()


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _discard(work: Path) -> None:
    """Remove a debootstrap work dir, unless something is still mounted under it."""
    mounted = _mounts_under(work)
    if mounted:
        raise ImageBuildError(f"not removing {work}: still mounted under it: {mounted}")
    shutil.rmtree(work)


def _strip_and_write_layer(target: Path, dest: Path) -> Path:
    """Drop downloaded .debs, apt lists and the mirror name, then write the layer tar."""
    mounted = _mounts_under(target)
    if mounted:
        raise ImageBuildError(f"debootstrap left mounts under {target}: {mounted}")
    for junk_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (target / junk_dir).glob("*"):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
    for junk in ("etc/apt/sources.list", "var/cache/apt/pkgcache.bin",
                 "var/cache/apt/srcpkgcache.bin"):  # fmt: skip
        (target / junk).unlink(missing_ok=True)
    return write_layer_tar(target, dest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def debootstrap_layer(
    *, suite: str = "bookworm", cache: Path | None = None, timeout: float = 1200.0
) -> Path:
    """A cached uncompressed layer tar of a ``debootstrap --variant=minbase`` tree.

    First call: debootstrap from this machine's configured mirror (~25 s), drop the downloaded
    .debs, apt lists and ``/etc/apt/sources.list`` (the image carries no mirror name), write the
    layer, rename it into the cache. Later calls return the cached file. Needs root.
    """
    directory = cache or cache_dir()
    layer = directory / f"debian-{suite}-minbase-{DPKG_ARCH}.tar"
    with _locked(directory / f".debian-{suite}-minbase.lock"):
        if layer.is_file():
            log.info("using cached debootstrap layer %s", layer)
            return layer
        if os.geteuid() != 0:
            raise ImageBuildError("debootstrap needs root; run the image tests as root")
        mirror = archive_mirror(suite)
        work = Path(tempfile.mkdtemp(prefix=f"debootstrap-{suite}-", dir=directory))
        target = work / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--arch={DPKG_ARCH}"]
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        if keyring.is_file():
            cmd.append(f"--keyring={keyring}")
        log.info("debootstrap %s minbase into %s (first run, ~30 s)", suite, target)
        try:
            _run([*cmd, suite, str(target), mirror], timeout=timeout)
            _strip_and_write_layer(target, work / "layer.tar").rename(layer)
        except ImageBuildError as exc:
            detail = _tail(target / "debootstrap/debootstrap.log")
            _discard(work)
            raise ImageBuildError(f"{exc}; debootstrap.log ends with: {detail}") from exc
        _discard(work)
    return layer


# -- cached builder ---------------------------------------------------------------------------


class FixtureImages:
    """Builds fixture images on first use and pushes each once to ``registry``.

    Repositories: ``fixtures/<distro>:<variant>`` and ``fixtures/debian12-minbase:latest``.
    """

    def __init__(
        self,
        registry: str,
        workdir: Path,
        *,
        creds: BasicAuth | None = None,
        cache: Path | None = None,
        config: ImageConfig | None = None,
    ) -> None:
        self.registry = registry
        self.workdir = workdir
        self.creds = creds
        self.cache = cache
        self.config = config
        self._pushed: dict[tuple[str, str], PushedImage] = {}

    def get(self, distro: Distro, variant: Variant) -> PushedImage:
        key = (distro, variant)
        if key not in self._pushed:
            build = self.workdir / f"{distro}-{variant}"
            root = make_fixture_rootfs(build / "rootfs", distro, variant, workdir=build)
            self._pushed[key] = build_and_push(
                root,
                self.registry,
                f"fixtures/{distro}",
                variant,
                workdir=build,
                config=self.config,
                creds=self.creds,
            )
        return self._pushed[key]

    def debian12_minbase(self) -> PushedImage:
        key = ("debian12-minbase", "latest")
        if key not in self._pushed:
            layer = debootstrap_layer(suite="bookworm", cache=self.cache)
            build = self.workdir / "debian12-minbase"
            build.mkdir(parents=True, exist_ok=True)
            config = self.config or ImageConfig(cmd=("bash",))
            self._pushed[key] = push_layer_tar(
                layer,
                self.registry,
                "fixtures/debian12-minbase",
                "latest",
                workdir=build,
                config=config,
                creds=self.creds,
            )
        return self._pushed[key]


def webapp_images(workdir: Path, registry: Registry) -> dict[str, PushedImage]:
    """Ubuntu 22.04 fixture trees (vulnerable, patched) made runnable with busybox."""
    pushed = {}
    for variant in ("vulnerable", "patched"):
        build = workdir / f"webapp-{variant}"
        root = make_fixture_rootfs(build / "rootfs", "ubuntu2204", variant, workdir=build)
        add_busybox(root)
        image = build_and_push(root, registry.host, "webapp", variant, workdir=build,
                               config=RUNNABLE)  # fmt: skip
        pushed[variant] = image.at(registry.cluster_host)
    return pushed
