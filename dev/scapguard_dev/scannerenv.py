"""``scapguard-scan`` on the host, for the scanner tests and benchmarks that run it by hand.

The scanner runs as a non-root user, so its Python and the installed
``scapguard`` must be readable by any user: the dev virtualenv (often under
root's 0700 home) is not. This builds a second virtualenv at a world-readable
path from the system interpreter and installs this checkout into it
non-editable, like the scanner image does.

Rebuilt only when the package's sources or pyproject.toml change.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from scapguard_dev.binaries import repo_root

log = logging.getLogger(__name__)

VENV_ENV = "SCAPGUARD_SCANNER_VENV"
# One virtualenv per source hash: a session rebuilding for its sources never pulls the
# runtime from under another session's running pods. Stale ones are pruned after a day.
VENV_ROOT = Path("/var/lib/scapguard-dev")
_PRUNE_AFTER = 86400.0
# Debian's interpreter lives in /usr, readable by every user.
SYSTEM_PYTHON = Path("/usr/bin/python3")


class ScannerEnvError(RuntimeError):
    """The scanner runtime could not be built."""


def _source_hash(root: Path) -> str:
    h = hashlib.sha256()
    files = sorted(
        p
        for p in (root / "operator" / "scapguard").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    for path in [root / "pyproject.toml", *files]:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise ScannerEnvError(f"{what} failed ({' '.join(argv)}):\n{proc.stderr[-3000:]}")


def ensure_scanner_venv(venv: Path | None = None) -> Path:
    """A world-readable virtualenv with this checkout's scapguard installed; returns its bin/.

    Safe when several test sessions call it at once: a lock file serialises them.
    """
    if venv is None and os.environ.get(VENV_ENV):
        venv = Path(os.environ[VENV_ENV])
    if venv is None:
        VENV_ROOT.mkdir(parents=True, exist_ok=True)
        _prune(VENV_ROOT)
        venv = VENV_ROOT / f"scanner-venv-{_source_hash(repo_root())[:12]}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_locked(venv)


def _prune(root: Path) -> None:
    """Remove per-hash runtimes nobody has built or used for a day."""
    now = time.time()
    for old in root.glob("scanner-venv-*"):
        stamp = old / ".scapguard-source"
        used = stamp.stat().st_mtime if stamp.exists() else old.stat().st_mtime
        if now - used > _PRUNE_AFTER:
            shutil.rmtree(old, ignore_errors=True)


def _ensure_locked(venv: Path) -> Path:
    root = repo_root()
    wanted = _source_hash(root)
    stamp = venv / ".scapguard-source"
    if (
        stamp.is_file()
        and stamp.read_text() == wanted
        and (venv / "bin" / "scapguard-scan").exists()
    ):
        stamp.touch()  # in use: keep it from being pruned
        return venv / "bin"
    if not SYSTEM_PYTHON.exists():
        raise ScannerEnvError(f"{SYSTEM_PYTHON} is missing (Debian's python3 and python3-venv)")
    log.info("building the scanner runtime in %s", venv)
    if venv.exists():
        shutil.rmtree(venv)
    _run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], "creating the scanner virtualenv")
    _run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir", str(root)],
        "installing scapguard into the scanner virtualenv",
    )
    for path in [venv, *venv.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink():
            path.chmod(mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0))
    venv.parent.chmod(0o755)
    stamp.write_text(wanted)
    return venv / "bin"
