"""The one error type of the scan pipeline and the subprocess runner every step uses."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from scapguard.results.model import ErrorReason

log = logging.getLogger(__name__)

_STDERR_TAIL = 2000


class ScanFailure(Exception):
    """A scan step failed; ``reason`` is one of :class:`ErrorReason` (the result's error.reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    reason: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` (an argument list); failures become ScanFailure(reason) naming the command.

    A timeout is always ScanFailure(Timeout); with ``check=False`` the caller judges the exit
    code itself.
    """
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(  # noqa: S603 - argument list built by the caller
            list(cmd),
            capture_output=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise ScanFailure(reason, f"{cmd[0]} not found: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ScanFailure(
            ErrorReason.TIMEOUT, f"{os.path.basename(cmd[0])} timed out after {timeout:.0f}s"
        ) from exc
    if check and proc.returncode != 0:
        raise ScanFailure(
            reason,
            f"{' '.join(cmd[:3])} ... failed with exit code {proc.returncode}: "
            f"{stderr_tail(proc.stderr)}",
        )
    return proc


def stderr_tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-_STDERR_TAIL:]
