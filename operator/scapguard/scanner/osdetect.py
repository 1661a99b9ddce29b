"""Which OS an unpacked image is: os-release, /etc/debian_version, /etc/redhat-release.

Supported (anything else is ``UnsupportedOS``, never a pass):

=========================================  ==============  ========
ID (os-release)                            versions        family
=========================================  ==============  ========
debian                                     10 - 13         debian
ubuntu                                     18.04 - 24.04   debian
rhel, centos (Stream), rocky, almalinux    8, 9            rhel
fedora                                     any             fedora
=========================================  ==============  ========

An image of a supported distribution without its package database (distroless:
``/var/lib/dpkg/status`` or an rpm database missing) is unsupported too: without packages there
is nothing to judge, and "no vulnerabilities" would be a false pass. Values read from the image
lose their control characters and are cut to what the result schema allows (``id`` and
``versionId`` 64 characters, ``prettyName`` 256): a NUL in ``PRETTY_NAME`` cannot make the scan
crash instead of reporting. Files are read through
:func:`resolve_in_root`, which follows symlinks inside the tree only (chroot semantics). The rpm
database is looked for only at ``/usr/lib/sysimage/rpm`` and ``/var/lib/rpm``, and a symlink
from one to anywhere but the other is no database: the path goes into rpm macros.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scapguard.results.model import ErrorReason, OSFamily, OSInfo
from scapguard.scanner.errors import ScanFailure

_MAX_FILE: Final = 64 * 1024
#: The result schema's maxLength of os.id / os.versionId and os.prettyName.
MAX_ID: Final = 64
MAX_PRETTY: Final = 256
_MAX_HOPS: Final = 40
_RHEL_LIKE: Final = frozenset({"rhel", "centos", "rocky", "almalinux"})
_DEBIAN_CODENAMES: Final = {"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie"}
_UBUNTU_CODENAMES: Final = {
    "18.04": "bionic",
    "20.04": "focal",
    "22.04": "jammy",
    "24.04": "noble",
}
_RELEASE_FILE: Final = re.compile(
    r"^(?P<name>Red Hat Enterprise Linux|CentOS Stream|CentOS Linux|Rocky Linux|AlmaLinux|Fedora)"
    r"[^0-9]*release (?P<version>[0-9]+(\.[0-9]+)*)"
)
_RELEASE_IDS: Final = {
    "Red Hat Enterprise Linux": "rhel",
    "CentOS Stream": "centos",
    "CentOS Linux": "centos",
    "Rocky Linux": "rocky",
    "AlmaLinux": "almalinux",
    "Fedora": "fedora",
}
#: The only rpm database directories used, as literal in-image paths: an image never chooses the
#: path (it ends up in rpm macros, which expand ``%(...)`` as shell commands).
RPMDB_PATHS: Final = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
_RPMDB_FILES: Final = ("rpmdb.sqlite", "Packages", "Packages.db")


@dataclass(frozen=True)
class DetectedOS:
    info: OSInfo
    codename: str | None
    major: str
    rpmdb_path: str | None = None  # in-image path of the rpm database directory


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` inside ``root`` with symlinks resolved as in a chroot; None if missing/looping."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink():
            hops += 1
            if hops > _MAX_HOPS:
                return None
            target = str(candidate.readlink())
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not candidate.exists():
            return None
        current.append(part)
    return root.joinpath(*current)


def _read(root: Path, path: str) -> str | None:
    resolved = resolve_in_root(root, path)
    if resolved is None or not resolved.is_file():
        return None
    try:
        with resolved.open("rb") as f:
            return f.read(_MAX_FILE).decode("utf-8", errors="replace")
    except OSError as exc:
        raise ScanFailure(
            ErrorReason.UNPACK_FAILED, f"cannot read /{path} of the image: {exc.strerror}"
        ) from exc


def printable(text: str, limit: int) -> str:
    """``text`` without control characters (NUL, newlines, escapes), at most ``limit`` long."""
    kept = "".join(c for c in text if unicodedata.category(c) != "Cc")
    return kept.strip()[:limit]


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[key.strip()] = " ".join(words)
    return out


def _unsupported(message: str) -> ScanFailure:
    return ScanFailure(ErrorReason.UNSUPPORTED_OS, message)


def detect(root: Path) -> DetectedOS:
    text = _read(root, "etc/os-release") or _read(root, "usr/lib/os-release")
    fields = parse_os_release(text) if text else {}
    os_id = fields.get("ID", "").lower()
    version = fields.get("VERSION_ID", "")
    pretty = fields.get("PRETTY_NAME", "")
    if not os_id:
        os_id, version, pretty = _from_release_files(root)
    os_id, version = printable(os_id, MAX_ID), printable(version, MAX_ID)
    pretty = printable(pretty, MAX_PRETTY)
    if os_id == "debian" and not version:
        deb = (_read(root, "etc/debian_version") or "").strip()
        version = printable(deb.split(".")[0], MAX_ID) if deb[:1].isdigit() else ""
    family: OSFamily
    major = version.split(".")[0]
    codename = printable(fields.get("VERSION_CODENAME", ""), MAX_ID) or None
    if os_id == "debian":
        if major not in _DEBIAN_CODENAMES:
            raise _unsupported(
                f"Debian {version or '(no version: testing/unstable)'} is not supported (10-13)"
            )
        family, codename = "debian", _DEBIAN_CODENAMES[major]
    elif os_id == "ubuntu":
        if version not in _UBUNTU_CODENAMES:
            raise _unsupported(f"Ubuntu {version} is not supported (18.04-24.04 LTS)")
        family, codename = "debian", _UBUNTU_CODENAMES[version]
        major = version
    elif os_id in _RHEL_LIKE:
        if major not in {"8", "9"}:
            raise _unsupported(f"{os_id} {version} is not supported (8, 9)")
        family = "rhel"
    elif os_id == "fedora":
        if not (major.isascii() and major.isdigit()):
            raise _unsupported(f"Fedora version {version!r} is not understood")
        family = "fedora"
    else:
        name = pretty or os_id or "an image without os-release"
        raise _unsupported(
            f"{name} is not a supported OS (Debian, Ubuntu, RHEL-compatible, Fedora)"
        )
    rpmdb: str | None = None
    if family == "debian":
        status = resolve_in_root(root, "var/lib/dpkg/status")
        if status is None or not status.is_file() or status.stat().st_size == 0:
            raise _unsupported(
                f"{pretty or os_id} image has no dpkg database "
                "(/var/lib/dpkg/status): distroless images are not supported"
            )
    else:
        rpmdb = _find_rpmdb(root)
        if rpmdb is None:
            raise _unsupported(f"{pretty or os_id} image has no rpm database")
    info = OSInfo(
        id=os_id,
        version_id=version,
        pretty_name=pretty or printable(f"{os_id} {version}", MAX_PRETTY),
        family=family,
    )
    return DetectedOS(info=info, codename=codename, major=major, rpmdb_path=rpmdb)


def _find_rpmdb(root: Path) -> str | None:
    """The literal path of the image's rpm database directory, or None.

    A candidate counts only if it resolves (inside the tree) to one of :data:`RPMDB_PATHS`
    itself: ``/var/lib/rpm -> ../../usr/lib/sysimage/rpm`` (RHEL 9, Fedora) gives
    ``/usr/lib/sysimage/rpm``; a link anywhere else gives no database.
    """
    for directory in RPMDB_PATHS:
        resolved = resolve_in_root(root, directory)
        if resolved is None or not resolved.is_dir():
            continue
        canonical = "/" + resolved.relative_to(root).as_posix()
        if canonical not in RPMDB_PATHS:
            continue
        if any((resolved / name).is_file() for name in _RPMDB_FILES):
            return canonical
    return None


def _from_release_files(root: Path) -> tuple[str, str, str]:
    text = (_read(root, "etc/redhat-release") or "").strip()
    match = _RELEASE_FILE.match(text)
    if match:
        return _RELEASE_IDS[match["name"]], match["version"], text
    deb = (_read(root, "etc/debian_version") or "").strip()
    if deb:
        return "debian", deb.split(".")[0] if deb[:1].isdigit() else "", f"Debian {deb}"
    return "", "", ""
