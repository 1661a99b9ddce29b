"""Installed packages read from an unpacked tree: names for the feed pre-filter, and the
``dpkg-query -W`` manifest Canonical's OCI OVAL feeds read.

dpkg only (oscap 1.3.7's dpkginfo cannot list packages by pattern; rpm names come from the
rpminfo canary, see :mod:`scapguard.scanner.oscap`). For the pre-filter every ``Package:`` line
of ``/var/lib/dpkg/status`` counts, whatever the stanza's status: listing a package that
dpkginfo would not report only keeps more definitions, never fewer. The file is read through
:func:`~scapguard.scanner.osdetect.resolve_in_root` (symlinks stay inside the tree) and bounded;
anything unreadable gives ``None``, which turns the pre-filter off rather than guessing.

:func:`dpkg_manifest` writes what ``dpkg-query -W`` prints (``${binary:Package}\\t${Version}``,
sorted): the name carries ``:ARCH`` when the package is ``Multi-Arch: same`` or of a foreign
architecture (neither the image's native one nor ``all``), as dpkg's ``pkg_name(...,
pnaw_nonambig)`` does; versions as dpkg prints them (a 0 epoch dropped, ``0:1.2-3`` is
``1.2-3``). Unlike ``dpkg-query -W``, stanzas whose state is ``config-files``
(removed, not purged: no files left) are not listed, nor are ``not-installed`` ones (dpkg-query
skips those too): the manifest lists what dpkginfo would report as installed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from scapguard.scanner.osdetect import resolve_in_root

log = logging.getLogger(__name__)

DPKG_STATUS: Final = "/var/lib/dpkg/status"
MAX_STATUS_BYTES: Final = 256 * 1024 * 1024
#: dpkg states with no files of the package left on disk.
_NOT_INSTALLED: Final = frozenset({"not-installed", "config-files"})


def read_dpkg_status(rootfs: Path, *, max_bytes: int = MAX_STATUS_BYTES) -> bytes | None:
    """The image's ``/var/lib/dpkg/status``, or None when missing, unreadable or too large."""
    path = resolve_in_root(rootfs, DPKG_STATUS)
    if path is None or not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        log.warning("cannot read %s of the image (%s)", DPKG_STATUS, exc)
        return None
    if len(data) > max_bytes:
        log.warning("%s of the image is larger than %d bytes", DPKG_STATUS, max_bytes)
        return None
    return data


def dpkg_packages(rootfs: Path, *, max_bytes: int = MAX_STATUS_BYTES) -> frozenset[str] | None:
    data = read_dpkg_status(rootfs, max_bytes=max_bytes)
    if data is None:
        log.warning("no dpkg inventory: no feed pre-filter")
        return None
    names = set()
    for line in data.split(b"\n"):
        if line[:8].lower() == b"package:":
            name = line[8:].strip().decode("utf-8", errors="replace")
            if name:
                names.add(name)
    return frozenset(names)


def stanzas(data: bytes) -> Iterator[dict[str, str]]:
    """The fields of each stanza of a dpkg status file (names lowercased; continuation lines
    of multi-line fields are skipped, none of the fields used here has any)."""
    fields: dict[str, str] = {}
    for raw in data.decode("utf-8", errors="replace").split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif line[0] in " \t":
            continue
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    if fields:
        yield fields


def _manifest_name(fields: dict[str, str], native_arch: str) -> str:
    name = fields["package"]
    arch = fields.get("architecture", "")
    if not arch:
        return name
    if fields.get("multi-arch", "").lower() == "same" or arch not in {native_arch, "all"}:
        return f"{name}:{arch}"
    return name


def dpkg_version(version: str) -> str:
    """``version`` as dpkg prints it: the epoch as a number, and none when it is 0."""
    epoch, sep, rest = version.partition(":")
    if not sep or not epoch.isascii() or not epoch.isdigit():
        return version
    return rest if int(epoch) == 0 else f"{int(epoch)}:{rest}"


def manifest_lines(data: bytes, native_arch: str) -> list[str]:
    """``NAME[:ARCH]\\tVERSION`` of every installed stanza (module docstring), sorted as
    dpkg-query sorts them (by name, then architecture)."""
    rows: list[tuple[str, str, str]] = []
    for fields in stanzas(data):
        name, version = fields.get("package", ""), fields.get("version", "")
        state = fields.get("status", "").split()
        if not name or not version or len(state) != 3 or state[2] in _NOT_INSTALLED:
            continue
        if any(c.isspace() for c in name + version):
            continue  # not a dpkg name or version; a line of it would read differently
        line = f"{_manifest_name(fields, native_arch)}\t{dpkg_version(version)}"
        rows.append((name, fields.get("architecture", ""), line))
    return [line for _, _, line in sorted(rows)]


def dpkg_manifest(
    rootfs: Path, native_arch: str, *, max_bytes: int = MAX_STATUS_BYTES
) -> list[str] | None:
    """The image's ``dpkg-query -W`` lines, or None without a readable dpkg database."""
    data = read_dpkg_status(rootfs, max_bytes=max_bytes)
    return None if data is None else manifest_lines(data, native_arch)
