"""Inspect an image's layers, then unpack them with umoci into a throw-away bundle.

Pre-inspection streams every layer once (never extracting) and refuses, with the layer and
entry named (``HostileImage``):

* entry names that are absolute or contain ``..`` (``../`` escapes);
* hardlinks whose target is absolute, contains ``..`` or was not seen earlier in the layer;
* whiteout entries that are not plain files, and ``.wh..wh.`` names other than the opaque marker;
* entries beyond the count limit, and more unpacked bytes than the limit (``ImageTooLarge``;
  the decompressed stream is counted as it is read, so a decompression bomb stops at the limit);
* media types other than (gzip) tar.

What remains is contained rather than refused: symlinks (absolute or escaping) are rewritten to
stay inside the tree (:mod:`scapguard.scanner.contain`); device nodes become empty files (umoci
cannot mknod without privilege, in a user namespace or rootless); umoci itself writes through
``securejoin``. The whole work directory is removed afterwards, also on failure, through the
sandbox (the files belong to mapped ids).
"""

from __future__ import annotations

import gzip
import logging
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final, cast

from scapguard.results.model import ErrorReason
from scapguard.scanner.errors import ScanFailure, run
from scapguard.scanner.pull import LAYOUT_TAG, PulledImage
from scapguard.scanner.sandbox import Sandbox

log = logging.getLogger(__name__)

DEFAULT_MAX_UNPACKED: Final = 16 * 1024 * 1024 * 1024
DEFAULT_MAX_ENTRIES: Final = 2_000_000
_GZIP_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
_TAR_TYPES: Final = frozenset(
    {"application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"}
)
_WHITEOUT: Final = ".wh."
_OPAQUE: Final = ".wh..wh..opq"
_TAR_BLOCK: Final = 512


@dataclass(frozen=True)
class UnpackLimits:
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class LayerStats:
    layers: int
    entries: int
    unpacked_bytes: int
    device_nodes: int


class _Counting:
    """A read-only stream that counts (decompressed) bytes and stops past a limit."""

    def __init__(self, raw: IO[bytes], limit: int, what: str) -> None:
        self.raw = raw
        self.limit = limit
        self.what = what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise ScanFailure(
                ErrorReason.IMAGE_TOO_LARGE,
                f"{self.what}: more than {self.limit} bytes once decompressed",
            )
        return data


def _hostile(layer: str, entry: str, why: str) -> ScanFailure:
    return ScanFailure(ErrorReason.HOSTILE_IMAGE, f"layer {layer}: entry {entry!r} {why}")


def _clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _check_path(layer: str, raw_name: str, what: str = "") -> PurePosixPath:
    name = _clean_name(raw_name)
    path = PurePosixPath(name)
    if raw_name.startswith("/") or path.is_absolute():
        raise _hostile(layer, raw_name, f"{what}is an absolute path")
    if ".." in path.parts:
        raise _hostile(layer, raw_name, f"{what}contains '..'")
    if "\x00" in raw_name:
        raise _hostile(layer, raw_name, f"{what}contains a NUL byte")
    return path


def inspect_layers(image: PulledImage, limits: UnpackLimits) -> LayerStats:
    """Stream every layer of ``image`` once and apply the checks in the module docstring."""
    total = 0
    entries = 0
    devices = 0
    layers = image.manifest.get("layers", [])
    for layer in layers:
        digest = str(layer.get("digest", ""))
        media = str(layer.get("mediaType", ""))
        if media not in _GZIP_TYPES | _TAR_TYPES:
            raise ScanFailure(
                ErrorReason.UNPACK_FAILED, f"layer {digest}: unsupported media type {media!r}"
            )
        blob = image.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        with blob.open("rb") as raw_file:
            stream = cast(
                IO[bytes], gzip.GzipFile(fileobj=raw_file) if media in _GZIP_TYPES else raw_file
            )
            counted = _Counting(stream, limits.max_unpacked_bytes - total, f"layer {digest}")
            seen: set[str] = set()
            try:
                with tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        entries += 1
                        if entries > limits.max_entries:
                            raise ScanFailure(
                                ErrorReason.IMAGE_TOO_LARGE,
                                f"more than {limits.max_entries} entries",
                            )
                        path = _check_path(digest, member.name)
                        base = path.name
                        if base.startswith(_WHITEOUT):
                            if not member.isfile():
                                raise _hostile(digest, member.name, "is a whiteout but not a file")
                            if base.startswith(".wh..wh.") and base != _OPAQUE:
                                raise _hostile(digest, member.name, "is an unknown whiteout")
                            if base == _WHITEOUT:
                                raise _hostile(digest, member.name, "whites out nothing")
                        if member.islnk():
                            target = _check_path(digest, member.linkname, "hardlink target ")
                            if str(target) not in seen:
                                raise _hostile(
                                    digest,
                                    member.name,
                                    f"hardlinks to {member.linkname!r}, not earlier in the layer",
                                )
                        if member.ischr() or member.isblk():
                            devices += 1
                        seen.add(str(path))
                        total += _TAR_BLOCK + member.size
                        if total > limits.max_unpacked_bytes:
                            raise ScanFailure(
                                ErrorReason.IMAGE_TOO_LARGE,
                                f"more than {limits.max_unpacked_bytes} bytes unpacked",
                            )
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                raise ScanFailure(
                    ErrorReason.UNPACK_FAILED, f"layer {digest} is not a readable tar: {exc}"
                ) from exc
    if devices:
        log.info("image has %s device nodes; they are unpacked as empty files", devices)
    return LayerStats(
        layers=len(layers), entries=entries, unpacked_bytes=total, device_nodes=devices
    )


def unpack(image: PulledImage, bundle: Path, sandbox: Sandbox, *, timeout: float) -> Path:
    """``umoci unpack`` the pulled image into ``bundle``; returns the contained rootfs."""
    cmd = ["umoci", "unpack"]
    if sandbox.mode == "rootless":
        cmd.append("--rootless")
    cmd += ["--image", f"{image.layout}:{LAYOUT_TAG}", str(bundle)]
    run(sandbox.wrap(cmd), timeout=timeout, reason=ErrorReason.UNPACK_FAILED)
    rootfs = bundle / "rootfs"
    if not rootfs.is_dir():
        raise ScanFailure(ErrorReason.UNPACK_FAILED, f"umoci left no {rootfs}")
    run(
        sandbox.wrap([sys.executable, "-m", "scapguard.scanner.contain", str(rootfs)]),
        timeout=timeout,
        reason=ErrorReason.UNPACK_FAILED,
    )
    return rootfs
