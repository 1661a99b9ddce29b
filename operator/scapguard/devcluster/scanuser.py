"""The non-root user scans run as on the local node, with a subordinate id range.

The scanner image's USER is 65532. On this machine the node agent runs scanner
pods as that uid; the scanner then maps the image's owners into an unprivileged
user namespace (``newuidmap``), which needs the uid's ranges in /etc/subuid and
/etc/subgid. Creating the user needs root, like the rest of the local node.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCAN_USER = "scapguard-scan"
SCAN_UID = 65532
SUBORDINATE_START = 1_000_000
SUBORDINATE_COUNT = 65536


class ScanUserError(RuntimeError):
    """The scanning user could not be set up."""


@dataclass(frozen=True)
class ScanUser:
    name: str
    uid: int
    gid: int


def _ensure_line(path: Path, key: str, line: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if any(existing.split(":", 1)[0] == key for existing in lines):
        return
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def ensure_scan_user() -> ScanUser:
    """Create (once) the scanning user and its subordinate id ranges."""
    try:
        pw = pwd.getpwnam(SCAN_USER)
    except KeyError:
        if os.geteuid() != 0:
            raise ScanUserError(f"user {SCAN_USER} is missing and only root can add it") from None
        subprocess.run(
            ["useradd", "--system", "--uid", str(SCAN_UID), "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SCAN_USER],
            check=True, timeout=60, capture_output=True,
        )  # fmt: skip
        pw = pwd.getpwnam(SCAN_USER)
    entry = f"{pw.pw_uid}:{SUBORDINATE_START}:{SUBORDINATE_COUNT}"
    if os.geteuid() == 0:
        _ensure_line(Path("/etc/subuid"), str(pw.pw_uid), entry)
        _ensure_line(Path("/etc/subgid"), str(pw.pw_uid), entry)
    return ScanUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
