"""Build and cache the local control plane's Go binary (hack/cluster).

The binary is rebuilt only when it is missing or older than the Go module's
go.mod, go.sum or any .go file. Go's module and build caches stay in their
default places, so a rebuild after a small change takes seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

BINARY_ENV = "SCAPGUARD_CLUSTER_BINARY"
_BUILD_TIMEOUT = 3600


class BuildError(RuntimeError):
    """The control plane binary could not be built."""


def repo_root() -> Path:
    """The source checkout this package was imported from."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "hack" / "cluster" / "go.mod").is_file():
        raise BuildError(
            f"{root} is not a scapguard checkout (no hack/cluster/go.mod); "
            f"set {BINARY_ENV} to a built scapguard-cluster binary"
        )
    return root


def _sources(module: Path) -> list[Path]:
    files = [module / "go.mod", module / "go.sum"]
    files += [p for p in module.rglob("*.go") if "bin" not in p.relative_to(module).parts]
    return files


def is_stale(binary: Path, module: Path) -> bool:
    """True when the binary is missing or older than any of its sources."""
    if not binary.is_file():
        return True
    built = binary.stat().st_mtime
    return any(src.stat().st_mtime > built for src in _sources(module))


def _version_ldflags(module: Path) -> str:
    """Stamp the Kubernetes version (from go.mod) into the binary, as upstream builds do."""
    version = ""
    for line in (module / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            version = parts[1]
    if not version.startswith("v1."):
        raise BuildError(f"{module / 'go.mod'}: no k8s.io/kubernetes v1.x requirement")
    major, minor = version[1:].split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def cluster_binary() -> Path:
    """Path to an up-to-date scapguard-cluster binary, building it if needed."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise BuildError(f"{BINARY_ENV}={override}: no such file")
        return path
    module = repo_root() / "hack" / "cluster"
    binary = module / "bin" / "scapguard-cluster"
    if not is_stale(binary, module) and not _stamp_changed(binary, module):
        return binary
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain (go) is not on PATH; it builds hack/cluster")
    log.info("building %s (the first build takes several minutes)", binary)
    binary.parent.mkdir(exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    proc = subprocess.run(
        [go, "build", "-trimpath", "-ldflags", _version_ldflags(module), "-o", str(tmp), "."],
        cwd=module,
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"go build in {module} failed:\n{proc.stderr[-4000:]}")
    tmp.replace(binary)
    binary.with_suffix(".ldflags").write_text(_version_ldflags(module))
    return binary


def _stamp_changed(binary: Path, module: Path) -> bool:
    stamp = binary.with_suffix(".ldflags")
    return not stamp.is_file() or stamp.read_text() != _version_ldflags(module)


def main() -> None:
    """``python -m scapguard.devcluster.binaries``: build if stale, print the path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = cluster_binary()
    sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()
