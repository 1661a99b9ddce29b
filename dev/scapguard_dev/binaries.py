"""Build and cache the Go programs of the local environment.

``cluster_binary()``: the control plane's multi-call binary (module hack/cluster).
``tool_binary(name)``: a program the module hack/tools lists as a ``tool`` (Helm), built
from its own upstream module at the version go.mod pins (go.sum verifies it).
``node_binary(name)``: the node's runtime, sandbox and DNS (module hack/node): containerd 2
and its runc shim, CoreDNS and the pod sandbox's pause program; runc (cgo, seccomp) from
its own module, hack/runc.

A binary is rebuilt only when it is missing or older than its module's go.mod,
go.sum or any .go file. Go's module and build caches stay in their default
places, so a rebuild after a small change takes seconds. A long build prints
its progress (packages compiled) every few seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BINARY_ENV = "SCAPGUARD_CLUSTER_BINARY"
_BUILD_TIMEOUT = 3600
_PROGRESS_EVERY = 15.0
#: hack/tools' tools by the name of their binary: (package, variable stamped with the version).
TOOLS = {
    "helm": ("helm.sh/helm/v3/cmd/helm", "helm.sh/helm/v3/internal/version.version"),
}


@dataclass(frozen=True)
class NodeProgram:
    """How hack/node builds one program: its package, the variable stamped with the version of
    ``module`` (when there is one), and whether it needs cgo (runc links libseccomp).
    ``home`` is the Go module under hack/ that builds it."""

    package: str
    home: str = "node"
    module: str = ""
    version_var: str = ""
    cgo: bool = False
    tags: str = ""


NODE_PROGRAMS = {
    "containerd": NodeProgram(
        "github.com/containerd/containerd/v2/cmd/containerd",
        module="github.com/containerd/containerd/v2",
        version_var="github.com/containerd/containerd/v2/version.Version",
    ),
    "containerd-shim-runc-v2": NodeProgram(
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        module="github.com/containerd/containerd/v2",
        version_var="github.com/containerd/containerd/v2/version.Version",
    ),
    "runc": NodeProgram(
        "github.com/opencontainers/runc",
        module="github.com/opencontainers/runc",
        version_var="main.version",
        home="runc",
        cgo=True,
        tags="seccomp",
    ),
    "coredns": NodeProgram("./coredns"),
    "pause": NodeProgram("./pause"),
}


class BuildError(RuntimeError):
    """The control plane binary could not be built."""


def repo_root() -> Path:
    """The source checkout this package was imported from."""
    root = Path(__file__).resolve().parents[2]
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
    return _built(module, module / "bin" / "scapguard-cluster", _version_ldflags(module), ".")


def _module_version(module: Path, path: str) -> str:
    for line in (module / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == path and parts[1].startswith("v"):
            return parts[1]
    raise BuildError(f"{module / 'go.mod'}: no requirement on {path}")


def tool_binary(name: str) -> Path:
    """Path to an up-to-date build of the hack/tools program ``name``, building it if needed."""
    if name not in TOOLS:
        raise BuildError(f"unknown tool {name!r}; hack/tools builds {', '.join(sorted(TOOLS))}")
    package, version_var = TOOLS[name]
    module = repo_root() / "hack" / "tools"
    binary = module / "bin" / name
    owner = package.split("/cmd/")[0]
    ldflags = f"-s -w -X {version_var}={_module_version(module, owner)}"
    return _built(module, binary, ldflags, package)


def node_binary(name: str) -> Path:
    """Path to an up-to-date build of the hack/node program ``name``, building it if needed."""
    program = NODE_PROGRAMS.get(name)
    if program is None:
        known = ", ".join(NODE_PROGRAMS)
        raise BuildError(f"unknown node program {name!r}; the node's programs are {known}")
    module = repo_root() / "hack" / program.home
    binary = module / "bin" / name
    ldflags = "-s -w"
    if program.version_var:
        ldflags += f" -X {program.version_var}={_module_version(module, program.module)}"
    env = {"CGO_ENABLED": "1" if program.cgo else "0"}
    return _built(module, binary, ldflags, program.package, env=env, tags=program.tags)


def _built(
    module: Path,
    binary: Path,
    ldflags: str,
    package: str,
    *,
    env: dict[str, str] | None = None,
    tags: str = "",
) -> Path:
    """``binary``, built first when it is older than its module's sources or its ldflags changed."""
    if not is_stale(binary, module) and not _stamp_changed(binary, module, ldflags):
        return binary
    _go_build(module, binary, ldflags, package, env=env, tags=tags)
    binary.with_suffix(".ldflags").write_text(ldflags)
    return binary


def _go_build(
    module: Path,
    binary: Path,
    ldflags: str,
    package: str,
    *,
    env: dict[str, str] | None = None,
    tags: str = "",
) -> None:
    """``go build`` ``package`` in ``module`` into ``binary``, printing progress while it runs."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(f"the Go toolchain (go) is not on PATH; it builds {module}")
    log.info("building %s (the first build takes several minutes)", binary)
    binary.parent.mkdir(exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    argv = [go, "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(tmp)]
    if tags:
        argv += ["-tags", tags]
    argv.append(package)
    tail: deque[str] = deque(maxlen=60)
    compiled = [0]
    started = time.monotonic()
    with subprocess.Popen(
        argv,
        cwd=module,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    ) as proc:
        stream = proc.stderr
        if stream is None:  # pragma: no cover - stderr=PIPE always gives one
            raise BuildError("go build: no stderr pipe")

        def read() -> None:
            for line in stream:
                tail.append(line)
                compiled[0] += 1

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while True:
            try:
                proc.wait(timeout=_PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > _BUILD_TIMEOUT:
                    proc.kill()
                    raise BuildError(f"go build in {module} took over {_BUILD_TIMEOUT}s") from None
                last = tail[-1].strip() if tail else "resolving modules"
                log.info(
                    "  %s: %d packages built, %.0fs (%s)", binary.name, compiled[0], elapsed, last
                )
        reader.join(timeout=10)
    if proc.returncode != 0:
        raise BuildError(f"go build in {module} failed:\n{''.join(tail)[-4000:]}")
    tmp.replace(binary)
    log.info("built %s in %.0fs", binary, time.monotonic() - started)


def _stamp_changed(binary: Path, module: Path, ldflags: str | None = None) -> bool:
    stamp = binary.with_suffix(".ldflags")
    wanted = _version_ldflags(module) if ldflags is None else ldflags
    return not stamp.is_file() or stamp.read_text() != wanted


def main() -> None:
    """``python -m scapguard_dev.binaries``: build what is stale, print the paths."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = [
            cluster_binary(),
            *(tool_binary(name) for name in TOOLS),
            *(node_binary(name) for name in NODE_PROGRAMS),
        ]
    except BuildError as exc:
        sys.exit(f"setup: {exc}")
    sys.stdout.write("".join(f"{path}\n" for path in paths))


if __name__ == "__main__":
    main()
