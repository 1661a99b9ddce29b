"""Where unpack and oscap run: keeping the image's file owners without being root.

A rootless unpack makes every file the scanning user's, so ownership and permission rules give
false results (SSG ``standard`` on a Debian 12 minbase tree: 13 failed rules rootless against 5
with true owners). The scanner therefore picks one of these modes (``--id-mapping``):

``userns`` (preferred, default when possible)
    The scanning user (not root) has a subordinate id range of at least 65536 ids in
    ``/etc/subuid`` and ``/etc/subgid`` and ``newuidmap``/``newgidmap`` work. unpack, symlink
    containment, oscap and cleanup each run under ``unshare --map-root-user
    --map-users=SUB,1,65535 --map-groups=SUB,1,65535``: inside, the user is uid 0 of a
    namespace it owns, so umoci keeps every owner (stored as subordinate ids on disk) and oscap
    sees the image's true owners and can read every file, exactly as a root scan would. Outside
    the namespace nothing runs as root; the chroot() some probes do happens in the namespace.
``inherited``
    The scanner already runs as uid 0 of a non-initial user namespace mapping at least 65536
    ids (a Kubernetes pod with ``hostUsers: false``; OpenShift 4.18+ with an SCC that allows it,
    e.g. ``restricted-v3``/``nested-container``): same effect, no wrapper needed.
``rootless``
    Neither is available (e.g. a pod under ``restricted-v2`` without user namespaces: no
    setuid ``newuidmap`` under ``allowPrivilegeEscalation: false``). umoci unpacks with
    ``--rootless`` and the compliance rules whose result depends on owners or permissions
    are reported ``notchecked`` with ``notCheckedReason``; vulnerability scanning is unaffected.

Running as real root (uid 0 of the initial user namespace) is refused: a hostile tree is never
unpacked or chroot()ed into by host root.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from scapguard.results.model import ErrorReason
from scapguard.scanner.errors import ScanFailure, run

log = logging.getLogger(__name__)

Mode = Literal["userns", "inherited", "rootless"]
Requested = Literal["auto", "userns", "inherited", "rootless"]

#: ids mapped beside the user's own (which becomes 0): 1..65535, the range images use.
MAPPED_IDS: Final = 65535
# ``unshare --map-users`` hangs (rather than failing) when newuidmap cannot map: a probe that
# works takes milliseconds.
_PROBE_TIMEOUT: Final = 10.0
_CLEANUP_TIMEOUT: Final = 600.0


@dataclass(frozen=True)
class Sandbox:
    mode: Mode
    prefix: tuple[str, ...] = ()
    #: Why a configured user namespace could not be used (owners were expected, and lost).
    fallback: str | None = None

    @property
    def owners_preserved(self) -> bool:
        return self.mode != "rootless"

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return [*self.prefix, *cmd]

    def remove_tree(self, path: Path) -> None:
        """Delete ``path`` (owned by mapped ids in userns mode); raise ScanFailure on failure."""
        if not path.exists():
            return
        if self.mode == "userns":
            run(
                self.wrap(["rm", "-rf", "--one-file-system", "--", os.fspath(path)]),
                timeout=_CLEANUP_TIMEOUT,
                reason=ErrorReason.UNPACK_FAILED,
            )
            return
        # rootless trees may hold directories without write/exec permission for their owner.
        run(
            ["chmod", "-R", "u+rwX", "--", os.fspath(path)],
            timeout=_CLEANUP_TIMEOUT,
            reason=ErrorReason.UNPACK_FAILED,
            check=False,
        )
        shutil.rmtree(path)


def _read_map(path: str) -> list[tuple[int, int, int]]:
    with open(path, encoding="ascii") as f:
        rows = [line.split() for line in f if line.strip()]
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def in_initial_userns() -> bool:
    return _read_map("/proc/self/uid_map") == [(0, 0, 4294967295)]


def no_new_privs(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process may not gain privileges (``allowPrivilegeEscalation: false``):
    then setuid ``newuidmap`` cannot map subordinate ids."""
    try:
        lines = status.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.split() == ["NoNewPrivs:", "1"] for line in lines)


def _subordinate(path: Path, user: str, uid: int) -> tuple[int, int] | None:
    """First (start, count) range of ``path`` for the user, by name or uid, if any."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in {user, str(uid)}:
            continue
        try:
            return int(parts[1]), int(parts[2])
        except ValueError:
            continue
    return None


def userns_prefix(
    subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")
) -> tuple[str, ...] | None:
    """The ``unshare`` prefix for the current user, or None when its ranges are missing."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    uids = _subordinate(subuid, user, uid)
    gids = _subordinate(subgid, user, uid)
    if uids is None or gids is None or uids[1] < MAPPED_IDS or gids[1] < MAPPED_IDS:
        return None
    if shutil.which("unshare") is None or shutil.which("newuidmap") is None:
        return None
    return (
        "unshare",
        "--map-root-user",
        f"--map-users={uids[0]},1,{MAPPED_IDS}",
        f"--map-groups={gids[0]},1,{MAPPED_IDS}",
        "--",
    )


def select(requested: Requested = "auto") -> Sandbox:
    """Pick the id-mapping mode (see the module docstring); ScanFailure when it is impossible."""
    if os.geteuid() == 0 and in_initial_userns():
        raise ScanFailure(
            ErrorReason.INSECURE_ENVIRONMENT,
            "refusing to scan as root: run scapguard-scan as a non-root user "
            "(with a subordinate id range for --id-mapping=userns)",
        )
    fallback: str | None = None
    if requested in {"auto", "inherited"} and os.geteuid() == 0:
        mapped = sum(count for _, _, count in _read_map("/proc/self/uid_map"))
        if mapped > MAPPED_IDS:
            return Sandbox("inherited")
        fallback = f"the pod's user namespace maps only {mapped} ids, need {MAPPED_IDS + 1}"
        if requested == "inherited":
            raise ScanFailure(ErrorReason.UNPACK_FAILED, fallback)
    if requested in {"auto", "userns"} and os.geteuid() != 0:
        prefix = userns_prefix()
        if prefix is not None:
            problem = (
                "no_new_privs is set (allowPrivilegeEscalation: false), so setuid newuidmap "
                "cannot map the subordinate ids"
                if no_new_privs()
                else _probe(prefix)
            )
            if problem is None:
                return Sandbox("userns", prefix)
            fallback = f"uid {os.getuid()} has subordinate ids, but {problem}"
        if requested == "userns":
            raise ScanFailure(
                ErrorReason.UNPACK_FAILED,
                fallback
                or "no usable user namespace: needs /etc/subuid and /etc/subgid ranges of "
                f"{MAPPED_IDS + 1} ids for uid {os.getuid()} and newuidmap/newgidmap",
            )
    if requested in {"auto", "rootless"}:
        if fallback is not None:
            log.warning("unpacking rootless, file owners are lost: %s", fallback)
        else:
            log.info("no user namespace configured: unpacking rootless, owners are not kept")
        return Sandbox("rootless", fallback=fallback)
    raise ScanFailure(ErrorReason.UNPACK_FAILED, f"id mapping {requested!r} is not available")


def _probe(prefix: tuple[str, ...]) -> str | None:
    """None when the user namespace works, else what went wrong (for the scan's status)."""
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argument list
            [*prefix, "true"], capture_output=True, timeout=_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the user namespace probe failed: {exc}"[:1000]
    if proc.returncode != 0:
        stderr = " ".join(proc.stderr.decode(errors="replace").split())
        return f"the user namespace probe failed: {stderr or f'exit {proc.returncode}'}"[:1000]
    return None
