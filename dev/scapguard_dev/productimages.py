"""Build scapguard's own container images with buildah, offline, cached by their inputs.

Two images, each from its Containerfile in the repository:

``scanner``  (``scanner-image/Containerfile``)   scapguard-scan, OpenSCAP, SSG, skopeo, umoci
``operator`` (``operator-image/Containerfile``)  kopf running ``scapguard.handlers``

Both start from a Debian trixie base made here, not pulled: the cached ``debootstrap
--variant=minbase`` layer (``fixtureimages.debootstrap_layer``) with the same dpkg path
excludes as Debian's ``-slim`` images, committed into buildah's local storage as
``localhost/scapguard/debian:trixie``. Debian packages come from this machine's own mirror,
given to the build as a read-only mounted apt source (the image keeps no mirror name); Python
packages are wheels downloaded beforehand for the base's CPython into ``_output/wheels`` (the
pins of pyproject.toml plus scapguard's own wheel), installed with ``--no-index``.

An image is tagged ``localhost/scapguard/NAME:<hash>``, the hash of every input (Containerfile,
package list, pyproject.toml, README.md, the package's sources, the base layer); an image with
that tag already in storage is not built again. ``push(name, registry)`` copies it to a
registry and returns the pushed digest.

    python -m scapguard_dev.productimages [--push 127.0.0.1:5000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scapguard_dev.binaries import repo_root
from scapguard_dev.fixtureimages import archive_mirror, debootstrap_layer
from scapguard_dev.images import ImageBuildError, PushedImage, run_tool

log = logging.getLogger(__name__)

SUITE: Final = "trixie"
#: trixie's CPython: the wheels are downloaded for it.
PYTHON_VERSION: Final = "3.13"
WHEEL_PLATFORMS: Final = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
BASE_REPOSITORY: Final = "localhost/scapguard/debian"
REPOSITORY_PREFIX: Final = "scapguard"
#: What Debian's -slim images leave out (their dpkg.cfg.d/docker excludes), copyrights kept.
DPKG_EXCLUDES: Final = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
_BUILD_TIMEOUT: Final = 3600.0
_PUSH_TIMEOUT: Final = 1200.0


@dataclass(frozen=True)
class ProductImage:
    name: str
    directory: str  # the Containerfile's folder, relative to the repository

    @property
    def containerfile(self) -> Path:
        return repo_root() / self.directory / "Containerfile"

    @property
    def packages(self) -> Path:
        return repo_root() / self.directory / "packages.txt"


IMAGES: Final = {
    "scanner": ProductImage("scanner", "scanner-image"),
    "operator": ProductImage("operator", "operator-image"),
}


@dataclass(frozen=True)
class BuiltImage:
    name: str
    reference: str  # localhost/scapguard/NAME:HASH in buildah's storage
    seconds: float  # 0 when it was cached
    size_bytes: int


def _buildah(*args: str, timeout: float = _BUILD_TIMEOUT) -> str:
    if shutil.which("buildah") is None:
        raise ImageBuildError("buildah is not installed (hack/apt-packages.txt)")
    return run_tool(["buildah", *args], timeout=timeout).decode(errors="replace")


def _exists(reference: str) -> bool:
    try:
        _buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", reference)
    except ImageBuildError:
        return False
    return True


def inspect(reference: str) -> dict[str, Any]:
    """``buildah inspect`` of an image in local storage."""
    doc = json.loads(_buildah("inspect", "--type", "image", reference))
    if not isinstance(doc, dict):
        raise ImageBuildError(f"buildah inspect {reference}: not an object")
    return doc


def _image_size(reference: str) -> int:
    """The image's layers, uncompressed, as its manifest in local storage gives them."""
    manifest = json.loads(inspect(reference)["Manifest"])
    return sum(int(layer["size"]) for layer in manifest.get("layers", []))


def _hash_files(h: hashlib._Hash, root: Path, files: Iterable[Path]) -> None:
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def _package_sources(root: Path) -> list[Path]:
    package = root / "operator" / "scapguard"
    return [
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def base_image() -> str:
    """``localhost/scapguard/debian:trixie-<layer hash>``, committed once from debootstrap."""
    layer = debootstrap_layer(suite=SUITE)
    digest = hashlib.sha256(layer.read_bytes() + DPKG_EXCLUDES.encode()).hexdigest()[:12]
    reference = f"{BASE_REPOSITORY}:{SUITE}-{digest}"
    if _exists(reference):
        return reference
    log.info("committing the %s base image %s from %s", SUITE, reference, layer)
    ctr = _buildah("from", "--quiet", "scratch").strip()
    try:
        _buildah("add", "--quiet", ctr, str(layer), "/")
        mount = Path(_buildah("mount", ctr).strip())
        try:
            excludes = mount / "etc" / "dpkg" / "dpkg.cfg.d" / "scapguard-slim"
            excludes.write_text(DPKG_EXCLUDES, encoding="utf-8")
        finally:
            _buildah("umount", ctr)
        _buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            "/bin/bash",
            "--label",
            f"org.opencontainers.image.description=Debian {SUITE} minbase (debootstrap)",
            ctr,
        )
        _buildah("commit", "--quiet", ctr, reference)
    finally:
        _buildah("rm", ctr)
    return reference


def _pins(root: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [str(dep) for dep in project["dependencies"]]
    loose = [dep for dep in pins if "==" not in dep]
    if loose:
        raise ImageBuildError(f"pyproject.toml: dependencies must be pinned with ==: {loose}")
    return pins


def wheels(root: Path, dest: Path) -> Path:
    """scapguard's wheel and its pinned dependencies' wheels for CPython PYTHON_VERSION."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    run_tool(
        [*pip, "download", "--quiet", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
         "--implementation", "cp", "--abi", abi, *platforms, "--dest", str(dest), *_pins(root)],
        timeout=_BUILD_TIMEOUT,
    )  # fmt: skip
    product_wheel(root, dest)
    return dest


def product_wheel(root: Path, dest: Path) -> Path:
    """scapguard's own wheel, built into ``dest`` from the tree's files only.

    pip builds in the tree, and setuptools packs its ``build/lib`` whole: a module deleted or
    moved since an earlier build (the old ``scapguard/devcluster``) would still ship. The
    build directory (ignored by git, only ever a build's output) is removed first.
    """
    shutil.rmtree(root / "build", ignore_errors=True)
    run_tool(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest),
         str(root)],
        timeout=_BUILD_TIMEOUT,
    )  # fmt: skip
    (built,) = dest.glob("scapguard-*.whl")
    return built


def input_hash(image: ProductImage, base: str) -> str:
    root = repo_root()
    h = hashlib.sha256(base.encode() + b"\0")
    folder = root / image.directory
    files = [p for p in folder.rglob("*") if p.is_file()]
    files += [root / "pyproject.toml", root / "README.md", root / ".containerignore"]
    _hash_files(h, root, [*files, *_package_sources(root)])
    return h.hexdigest()[:16]


def _apt_source(workdir: Path) -> Path:
    source = workdir / "scapguard-build.sources"
    source.write_text(
        f"Types: deb\nURIs: {archive_mirror(SUITE)}\nSuites: {SUITE}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        encoding="utf-8",
    )
    return source


def build(name: str) -> BuiltImage:
    """Build (or find cached) the image ``name`` ("scanner" or "operator")."""
    if name not in IMAGES:
        raise ImageBuildError(f"unknown image {name!r}; one of {', '.join(IMAGES)}")
    if os.geteuid() != 0:
        raise ImageBuildError("building images needs root (buildah, debootstrap)")
    image = IMAGES[name]
    root = repo_root()
    base = base_image()
    reference = f"localhost/{REPOSITORY_PREFIX}/{name}:{input_hash(image, base)}"
    if _exists(reference):
        log.info("image %s is up to date", reference)
        return BuiltImage(name, reference, 0.0, _image_size(reference))
    started = time.monotonic()
    output = root / "_output"
    log.info("building %s (a first build takes a few minutes)", reference)
    wheels(root, output / "wheels")
    source = _apt_source(output)
    _buildah(
        "bud", "--quiet", "--isolation", "chroot", "--pull-never", "--layers=false",
        "--volume", f"{source}:/etc/apt/sources.list.d/scapguard-build.sources:ro",
        "--build-arg", f"BASE={base}",
        "--file", str(image.containerfile), "--tag", reference, str(root),
    )  # fmt: skip
    seconds = time.monotonic() - started
    size = _image_size(reference)
    log.info("built %s in %.0fs (%.0f MB)", reference, seconds, size / 1e6)
    return BuiltImage(name, reference, seconds, size)


def push(built: BuiltImage, registry: str, *, tag: str = "dev") -> PushedImage:
    """Copy ``built`` to ``registry`` (plain HTTP, loopback) as scapguard/NAME:tag."""
    repository = f"{REPOSITORY_PREFIX}/{built.name}"
    digest_file = repo_root() / "_output" / f"{built.name}.digest"
    # _output/ is made by a build; an image found in the cache was built by another checkout.
    digest_file.parent.mkdir(exist_ok=True)
    run_tool(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file),
         f"containers-storage:{built.reference}", f"docker://{registry}/{repository}:{tag}"],
        timeout=_PUSH_TIMEOUT,
    )  # fmt: skip
    digest = digest_file.read_text(encoding="ascii").strip()
    return PushedImage(registry, repository, tag, digest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="scanner, operator (both)")
    parser.add_argument("--push", metavar="REGISTRY", help="also copy them to this registry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in args.images or list(IMAGES):
            built = build(name)
            line = f"{built.reference} {built.size_bytes / 1e6:.0f}MB {built.seconds:.0f}s"
            if args.push:
                line += f" {push(built, args.push).by_digest}"
            sys.stdout.write(line + "\n")
    except ImageBuildError as exc:
        sys.stderr.write(f"images: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
