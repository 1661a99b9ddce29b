"""Installed package names read from an unpacked tree, for the feed pre-filter.

dpkg only (oscap 1.3.7's dpkginfo cannot list packages by pattern; rpm names come from the
rpminfo canary, see :mod:`scapguard.scanner.oscap`). Every ``Package:`` line of
``/var/lib/dpkg/status`` counts, whatever the stanza's status: listing a package that dpkginfo
would not report only keeps more definitions, never fewer. The file is read through
:func:`~scapguard.scanner.osdetect.resolve_in_root` (symlinks stay inside the tree) and bounded;
anything unreadable gives ``None``, which turns the pre-filter off rather than guessing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from scapguard.scanner.osdetect import resolve_in_root

log = logging.getLogger(__name__)

DPKG_STATUS: Final = "/var/lib/dpkg/status"
MAX_STATUS_BYTES: Final = 256 * 1024 * 1024


def dpkg_packages(rootfs: Path, *, max_bytes: int = MAX_STATUS_BYTES) -> frozenset[str] | None:
    path = resolve_in_root(rootfs, DPKG_STATUS)
    if path is None or not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        log.warning("cannot read %s of the image (%s): no feed pre-filter", DPKG_STATUS, exc)
        return None
    if len(data) > max_bytes:
        log.warning("%s is larger than %d bytes: no feed pre-filter", DPKG_STATUS, max_bytes)
        return None
    names = set()
    for line in data.split(b"\n"):
        if line[:8].lower() == b"package:":
            name = line[8:].strip().decode("utf-8", errors="replace")
            if name:
                names.add(name)
    return frozenset(names)
