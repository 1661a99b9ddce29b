"""The non-root user host-side scans (tests/scanner, bench) run as, with subordinate ids.

The scanner image's USER is 65532; run by hand as that uid, the scanner maps
the image's owners into an unprivileged user namespace (``newuidmap``), which
needs the uid's ranges in /etc/subuid and /etc/subgid. Creating the user needs
root.
"""

from __future__ import annotations

import grp
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


def _run(*argv: str) -> None:
    try:
        subprocess.run(argv, check=True, timeout=60, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise ScanUserError(f"{' '.join(argv)}: {exc.stderr.strip()}") from exc


def _ensure_group() -> None:
    """The group ``SCAN_USER`` with gid ``SCAN_UID`` (pods run with gid 65532 too)."""
    try:
        gr = grp.getgrgid(SCAN_UID)
    except KeyError:
        pass
    else:
        if gr.gr_name != SCAN_USER:
            raise ScanUserError(f"gid {SCAN_UID} belongs to group {gr.gr_name}, not {SCAN_USER}")
        return
    try:
        grp.getgrnam(SCAN_USER)
    except KeyError:
        _run("groupadd", "--gid", str(SCAN_UID), SCAN_USER)
    else:  # made by an older version with a system gid: give it the scanner's gid
        _run("groupmod", "--gid", str(SCAN_UID), SCAN_USER)


def ensure_scan_user() -> ScanUser:
    """Create (once) the scanning user, uid = gid = 65532, and its subordinate id ranges.

    The gid matters: newuidmap refuses to map for a process whose gid is not the user's
    primary group ("Target process is owned by a different user"), and the pods run with
    gid 65532; a system gid would silently turn every scan rootless.
    """
    try:
        pw: pwd.struct_passwd | None = pwd.getpwnam(SCAN_USER)
    except KeyError:
        pw = None
    if pw is None or pw.pw_gid != SCAN_UID:
        if os.geteuid() != 0:
            raise ScanUserError(
                f"user {SCAN_USER} (uid = gid = {SCAN_UID}) is missing and only root can add it"
            )
        _ensure_group()
        if pw is None:
            _run("useradd", "--system", "--uid", str(SCAN_UID), "--gid", str(SCAN_UID),
                 "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                 "/usr/sbin/nologin", SCAN_USER)  # fmt: skip
        else:
            _run("usermod", "--gid", str(SCAN_UID), SCAN_USER)
        pw = pwd.getpwnam(SCAN_USER)
    if (pw.pw_uid, pw.pw_gid) != (SCAN_UID, SCAN_UID):
        raise ScanUserError(
            f"user {SCAN_USER} has uid {pw.pw_uid} gid {pw.pw_gid}; the scanner needs "
            f"{SCAN_UID}:{SCAN_UID}"
        )
    entry = f"{pw.pw_uid}:{SUBORDINATE_START}:{SUBORDINATE_COUNT}"
    if os.geteuid() == 0:
        _ensure_line(Path("/etc/subuid"), str(pw.pw_uid), entry)
        _ensure_line(Path("/etc/subgid"), str(pw.pw_uid), entry)
    return ScanUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
