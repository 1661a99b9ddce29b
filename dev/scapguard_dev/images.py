"""Build OCI images from directories or raw layer tarballs and push them to a registry.

Two ways in:

* :func:`build_and_push` turns a root filesystem directory into a one-layer image. The layer is
  written with :mod:`tarfile` so numeric owners, modes (setuid/setgid/sticky), symlinks,
  hardlinks and device nodes survive (``umoci unpack --rootless`` + ``repack`` would lose the
  owners); it is added with ``umoci raw add-layer``, configured with ``umoci config`` and pushed
  with ``skopeo copy``. Entries are sorted and mtimes fixed, so the same tree gives the same
  manifest digest.
* :func:`push_raw_layers` pushes layers exactly as given (hostile tarballs for the scanner's
  tests: ``../`` paths, absolute symlinks, device nodes, whiteouts, decompression bombs). The OCI
  layout is written here, not by umoci, so nothing inspects or rewrites the layers.

The dev registry (:mod:`scapguard_dev.registry`) speaks plain HTTP on loopback, so every
skopeo call here passes ``--dest-tls-verify=false`` / ``--src-tls-verify=false``.

Building and unpacking keep owners only when run as root (the tests and CI run as root).
Extended attributes (file capabilities, SELinux labels) are not copied into layers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from scapguard_dev.registry import BasicAuth

log = logging.getLogger(__name__)

#: mtime of every entry of a layer built from a directory (2024-01-01T00:00:00Z).
FIXED_MTIME: Final = 1_704_067_200
#: ``created`` of every image config written here.
FIXED_CREATED: Final = "2024-01-01T00:00:00Z"

MEDIA_TYPE_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"

DEFAULT_ENV: Final = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)

_TOOL_TIMEOUT: Final = 600.0
_CHUNK: Final = 1 << 20


class ImageBuildError(RuntimeError):
    """A build, push or pull step failed; the message names the command or file."""


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (``umoci config --config.*``)."""

    cmd: tuple[str, ...] = ("/bin/sh",)
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = DEFAULT_ENV
    user: str = ""
    workdir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"


@dataclass(frozen=True)
class PushedImage:
    """An image in a registry, addressed by tag and by manifest digest."""

    registry: str
    repository: str
    tag: str
    digest: str

    @property
    def by_digest(self) -> str:
        """``HOST/repo@sha256:...`` (what the operator and scanner use)."""
        return f"{self.registry}/{self.repository}@{self.digest}"

    @property
    def by_tag(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    def at(self, registry: str) -> PushedImage:
        """The same image named through another address of its registry (e.g. as pods reach
        the local cluster's registry: ``Registry.cluster_host``)."""
        return PushedImage(registry, self.repository, self.tag, self.digest)


@dataclass(frozen=True)
class RawLayer:
    """One layer pushed byte for byte.

    ``diff_id`` goes into the config's ``rootfs.diff_ids``. When omitted it is the digest of
    the data (uncompressed media type) or of its gunzipped stream (gzip, read in full: pass
    it explicitly for a decompression bomb); zstd layers need it explicitly. A wrong value is
    allowed on purpose (another hostile case).
    """

    data: bytes | Path
    media_type: str = MEDIA_TYPE_LAYER_TAR
    diff_id: str | None = None


# -- helpers ----------------------------------------------------------------------------------


def run_tool(
    cmd: Sequence[str], *, timeout: float = _TOOL_TIMEOUT, env: Mapping[str, str] | None = None
) -> bytes:
    """Run a tool, return its stdout; raise ImageBuildError naming the command on failure."""
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            timeout=timeout,
            check=False,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(
            f"{cmd[0]} not found (see hack/apt-packages.txt): {' '.join(cmd)}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(cmd)} failed with {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return bytes(proc.stdout)


def _creds_args(flag: str, creds: BasicAuth | None) -> list[str]:
    return [] if creds is None else [flag, creds.skopeo_creds()]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _sha256_stream(read: Callable[[int], bytes]) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: read(_CHUNK), b""):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


# -- layers from directories ------------------------------------------------------------------


def _walk_sorted(root: Path) -> Iterator[tuple[str, str]]:
    """(path, arcname) pairs, parents before children, siblings sorted by name bytes."""

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, str]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            arcname = f"{prefix}{entry.name}"
            yield entry.path, arcname
            if entry.is_dir(follow_symlinks=False):
                yield from walk(entry.path, f"{arcname}/")

    yield from walk(str(root), "")


def write_layer_tar(rootfs: Path, dest: Path, *, mtime: int = FIXED_MTIME) -> Path:
    """Write ``rootfs`` as an uncompressed layer tar at ``dest`` and return ``dest``.

    Numeric uid/gid (owner names dropped), permission bits including setuid/setgid/sticky,
    symlinks, hardlinks (second and later names become hardlink entries) and device nodes and
    fifos are kept; sockets are skipped; every mtime is ``mtime``. Entries are sorted, so the
    same tree always gives the same bytes.
    """
    if not rootfs.is_dir():
        raise ImageBuildError(f"rootfs {rootfs} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in _walk_sorted(rootfs):
            info = tar.gettarinfo(path, arcname=arcname)
            if info is None:  # sockets and other types tar cannot hold
                log.debug("skipping %s: no tar representation", path)
                continue
            info.mtime = mtime
            info.uname = ""
            info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            count += 1
    log.info("wrote layer %s from %s (%s entries)", dest, rootfs, count)
    return dest


# -- OCI layouts ------------------------------------------------------------------------------


def build_oci_layout(
    layer_tar: Path,
    layout: Path,
    tag: str,
    *,
    config: ImageConfig | None = None,
    created: str = FIXED_CREATED,
) -> None:
    """Create (or extend) the OCI layout ``layout`` with image ``tag`` made of one layer.

    Uses ``umoci init`` (when the layout is new), ``umoci new``, ``umoci raw add-layer``
    (gzip-compresses the uncompressed ``layer_tar``) and ``umoci config``, all without history
    entries and with a fixed ``created`` so the result is reproducible.
    """
    cfg = config or ImageConfig()
    image = f"{layout}:{tag}"
    if not (layout / "index.json").exists():
        run_tool(["umoci", "init", "--layout", str(layout)])
    run_tool(["umoci", "new", "--image", image])
    run_tool(["umoci", "raw", "add-layer", "--no-history", "--image", image, str(layer_tar)])
    args = [
        "umoci", "config", "--no-history", "--image", image,
        "--created", created,
        "--architecture", cfg.architecture,
        "--os", cfg.os,
    ]  # fmt: skip
    for arg in cfg.cmd:
        args += ["--config.cmd", arg]
    for arg in cfg.entrypoint:
        args += ["--config.entrypoint", arg]
    for env in cfg.env:
        args += ["--config.env", env]
    for key, value in sorted(cfg.labels.items()):
        args += ["--config.label", f"{key}={value}"]
    if cfg.user:
        args += ["--config.user", cfg.user]
    if cfg.workdir:
        args += ["--config.workingdir", cfg.workdir]
    run_tool(args)


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    blob.write_bytes(data)
    return digest, len(data)


def _layer_diff_id(layer: RawLayer, blob: Path, digest: str) -> str:
    if layer.diff_id is not None:
        return layer.diff_id
    if layer.media_type == MEDIA_TYPE_LAYER_TAR:
        return digest
    if layer.media_type == MEDIA_TYPE_LAYER_GZIP:
        try:
            with gzip.open(blob, "rb") as stream:
                return _sha256_stream(stream.read)
        except (OSError, EOFError) as exc:
            raise ImageBuildError(
                f"cannot gunzip layer {blob} to compute its diff_id; pass RawLayer.diff_id"
            ) from exc
    raise ImageBuildError(f"layer media type {layer.media_type}: pass RawLayer.diff_id")


def write_raw_oci_layout(
    layers: Sequence[RawLayer],
    layout: Path,
    tag: str,
    *,
    config: ImageConfig | None = None,
    created: str = FIXED_CREATED,
) -> str:
    """Write an OCI layout holding one image of ``layers`` verbatim; return the manifest digest."""
    cfg = config or ImageConfig()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}', encoding="utf-8")
    descriptors: list[dict[str, object]] = []
    diff_ids: list[str] = []
    for layer in layers:
        if isinstance(layer.data, Path):
            digest = _sha256_file(layer.data)
            blob = blobs / digest.removeprefix("sha256:")
            shutil.copyfile(layer.data, blob)
            size = blob.stat().st_size
        else:
            digest, size = _write_blob(layout, layer.data)
            blob = blobs / digest.removeprefix("sha256:")
        descriptors.append({"mediaType": layer.media_type, "digest": digest, "size": size})
        diff_ids.append(_layer_diff_id(layer, blob, digest))
    runtime: dict[str, object] = {"Env": list(cfg.env)}
    if cfg.cmd:
        runtime["Cmd"] = list(cfg.cmd)
    if cfg.entrypoint:
        runtime["Entrypoint"] = list(cfg.entrypoint)
    if cfg.user:
        runtime["User"] = cfg.user
    if cfg.workdir:
        runtime["WorkingDir"] = cfg.workdir
    if cfg.labels:
        runtime["Labels"] = dict(sorted(cfg.labels.items()))
    image_config = {
        "created": created,
        "architecture": cfg.architecture,
        "os": cfg.os,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = _write_blob(layout, _canonical_json(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }
    manifest_digest, manifest_size = _write_blob(layout, _canonical_json(manifest))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_bytes(_canonical_json(index))
    return manifest_digest


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# -- registry ---------------------------------------------------------------------------------


def push_oci_layout(
    layout: Path,
    tag: str,
    registry: str,
    repository: str,
    dest_tag: str,
    *,
    creds: BasicAuth | None = None,
) -> PushedImage:
    """``skopeo copy --preserve-digests oci:LAYOUT:TAG docker://REGISTRY/REPO:DEST_TAG``.

    Plain HTTP (``--dest-tls-verify=false``). ``--preserve-digests`` makes skopeo fail rather
    than recompress or rewrite anything, so the pushed manifest is the one in the layout.
    Returns the pushed image with the manifest digest skopeo reports (``--digestfile``).
    """
    with tempfile.TemporaryDirectory(prefix="scapguard-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        run_tool(
            [
                "skopeo", "copy", "--quiet", "--preserve-digests",
                "--dest-tls-verify=false", *_creds_args("--dest-creds", creds),
                "--digestfile", str(digestfile),
                f"oci:{layout}:{tag}", f"docker://{registry}/{repository}:{dest_tag}",
            ]
        )  # fmt: skip
        digest = digestfile.read_text(encoding="utf-8").strip()
    if not digest.startswith("sha256:"):
        raise ImageBuildError(f"skopeo wrote no sha256 digest for {registry}/{repository}")
    image = PushedImage(registry=registry, repository=repository, tag=dest_tag, digest=digest)
    log.info("pushed %s", image.by_digest)
    return image


def build_and_push(
    rootfs: Path,
    registry: str,
    repository: str,
    tag: str,
    *,
    workdir: Path,
    config: ImageConfig | None = None,
    creds: BasicAuth | None = None,
) -> PushedImage:
    """Turn ``rootfs`` into a one-layer image and push it as ``REGISTRY/REPOSITORY:TAG``.

    ``workdir`` receives the layer tar and the OCI layout (under a fresh subdirectory).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="image-", dir=workdir))
    layer = write_layer_tar(rootfs, build / "layer.tar")
    return push_layer_tar(layer, registry, repository, tag, workdir=build, config=config,
                          creds=creds)  # fmt: skip


def push_layer_tar(
    layer_tar: Path,
    registry: str,
    repository: str,
    tag: str,
    *,
    workdir: Path,
    config: ImageConfig | None = None,
    creds: BasicAuth | None = None,
) -> PushedImage:
    """Make a one-layer image from an uncompressed layer tar (via umoci) and push it."""
    layout = workdir / "oci"
    build_oci_layout(layer_tar, layout, "build", config=config)
    return push_oci_layout(layout, "build", registry, repository, tag, creds=creds)


def push_raw_layers(
    layers: Sequence[RawLayer],
    registry: str,
    repository: str,
    tag: str,
    *,
    workdir: Path,
    config: ImageConfig | None = None,
    creds: BasicAuth | None = None,
) -> PushedImage:
    """Push an image made of ``layers`` byte for byte (nothing parses or recompresses them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    layout = Path(tempfile.mkdtemp(prefix="raw-image-", dir=workdir)) / "oci"
    write_raw_oci_layout(layers, layout, "build", config=config)
    return push_oci_layout(layout, "build", registry, repository, tag, creds=creds)


def pull_oci_layout(
    reference: str, layout: Path, tag: str = "pulled", *, creds: BasicAuth | None = None
) -> None:
    """``skopeo copy docker://REFERENCE oci:LAYOUT:TAG`` (plain HTTP, ``--src-tls-verify=false``).

    ``reference`` is ``HOST/repo@sha256:...`` or ``HOST/repo:tag``. skopeo gzips uncompressed
    layers on the way into the layout, so the local manifest digest can differ from the
    registry's (it is the same for images built by :func:`build_and_push`, whose layer is gzip).
    """
    run_tool(
        [
            "skopeo", "copy", "--quiet", "--src-tls-verify=false",
            *_creds_args("--src-creds", creds),
            f"docker://{reference}", f"oci:{layout}:{tag}",
        ]
    )  # fmt: skip


def unpack_oci_layout(layout: Path, tag: str, bundle: Path) -> Path:
    """``umoci unpack --image LAYOUT:TAG BUNDLE`` (not rootless: run as root to keep owners).

    Returns ``BUNDLE/rootfs``.
    """
    run_tool(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    return bundle / "rootfs"


def fetch_rootfs(image: PushedImage, dest: Path, *, creds: BasicAuth | None = None) -> Path:
    """Pull ``image`` by digest into ``dest/oci`` and unpack it into ``dest/bundle``.

    Returns the unpacked root filesystem directory.
    """
    dest.mkdir(parents=True, exist_ok=True)
    layout = dest / "oci"
    pull_oci_layout(image.by_digest, layout, creds=creds)
    return unpack_oci_layout(layout, "pulled", dest / "bundle")


def inspect_raw_manifest(reference: str, *, creds: BasicAuth | None = None) -> bytes:
    """``skopeo inspect --raw docker://REFERENCE`` (plain HTTP)."""
    return run_tool(
        [
            "skopeo", "inspect", "--raw", "--tls-verify=false",
            *_creds_args("--creds", creds), f"docker://{reference}",
        ]
    )  # fmt: skip


def manifest_digest(reference: str, *, creds: BasicAuth | None = None) -> str:
    """sha256 of the raw manifest the registry serves for ``reference``."""
    return f"sha256:{hashlib.sha256(inspect_raw_manifest(reference, creds=creds)).hexdigest()}"
