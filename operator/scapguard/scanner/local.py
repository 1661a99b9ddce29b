"""Local input for ``scapguard-scan --oci-layout DIR`` and ``--rootfs DIR``.

An OCI image layout (``oci-layout`` + ``index.json``) is never unpacked where it lies: the one
image it names is copied into the scan's work directory, blob by blob, each blob's sha256 and
size checked against its descriptor while it is copied (``DigestMismatch`` naming the blob and
the layout), descriptors whose digest is not ``sha256:<64 hex>`` refused (``HostileImage``: a
digest is a path in the layout), blobs that are not regular files refused (no symlink is
followed), manifests and indexes bounded, the compressed size checked against the limit before
any layer is copied. The copy then goes through the same layer inspection and umoci unpack as a
pulled image (:mod:`scapguard.scanner.unpack`).

Which image: the layout's only manifest, or the one whose ``org.opencontainers.image.ref.name``
annotation is ``ref`` (``--oci-ref``); an image index is resolved to its ``linux/ARCH`` manifest.

A root filesystem is scanned in place and never written to (the scanner's outputs go to its
work directory). Its symlinks are therefore *not* contained as an unpacked image's are:
:func:`escaping_symlinks` counts those a probe could follow out of the tree, and the scan logs
a warning. ``--rootfs`` is for trees you trust (your own build output); scan untrusted images
from a registry or an OCI layout.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Final

from scapguard.results.model import ErrorReason
from scapguard.scanner.contain import canonical_target
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.pull import (
    INDEX_TYPES,
    LAYOUT_TAG,
    MANIFEST_TYPES,
    PulledImage,
    compressed_size,
    pick_platform,
)

log = logging.getLogger(__name__)

REF_ANNOTATION: Final = "org.opencontainers.image.ref.name"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_DIGEST: Final = re.compile(r"^sha256:[a-f0-9]{64}$")
_MAX_JSON: Final = 4 * 1024 * 1024
_CHUNK: Final = 1 << 20


def _bad(path: Path, message: str, reason: str = ErrorReason.UNPACK_FAILED) -> ScanFailure:
    return ScanFailure(reason, f"OCI layout {path}: {message}")


def _open_regular(path: Path, what: str, layout: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _bad(layout, f"{what} is a symlink", ErrorReason.HOSTILE_IMAGE) from exc
        raise _bad(layout, f"cannot read {what} ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _bad(layout, f"{what} is not a regular file", ErrorReason.HOSTILE_IMAGE)
    return fd


def _read_bounded(path: Path, what: str, layout: Path) -> bytes:
    fd = _open_regular(path, what, layout)
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise _bad(layout, f"{what} is larger than {_MAX_JSON} bytes")
    return data


def _json_object(data: bytes, what: str, layout: Path) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise _bad(layout, f"{what} is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _bad(layout, f"{what} is not a JSON object")
    return doc


def _read_json(path: Path, what: str, layout: Path) -> dict[str, Any]:
    return _json_object(_read_bounded(path, what, layout), what, layout)


def _blob(layout: Path, digest: object) -> Path:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        why = f"descriptor digest {digest!r} is not sha256:<64 hex>"
        raise _bad(layout, why, ErrorReason.HOSTILE_IMAGE)
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _read_blob_json(layout: Path, digest: object) -> tuple[bytes, dict[str, Any]]:
    what = f"blob {digest}"
    data = _read_bounded(_blob(layout, digest), what, layout)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise _bad(layout, f"{what} does not match its digest", ErrorReason.DIGEST_MISMATCH)
    return data, _json_object(data, what, layout)


def _copy_blob(layout: Path, descriptor: dict[str, Any], dest: Path) -> None:
    digest = descriptor.get("digest")
    src = _blob(layout, digest)
    target = _blob(dest, digest)
    if target.exists():
        return
    size = descriptor.get("size")
    hasher = hashlib.sha256()
    copied = 0
    fd = _open_regular(src, f"blob {digest}", layout)
    with os.fdopen(fd, "rb") as f, target.open("xb") as out:
        while chunk := f.read(_CHUNK):
            copied += len(chunk)
            if isinstance(size, int) and copied > size:
                break
            hasher.update(chunk)
            out.write(chunk)
    if copied != size or "sha256:" + hasher.hexdigest() != digest:
        target.unlink()
        raise _bad(
            layout,
            f"blob {digest} does not match its descriptor (size {size})",
            ErrorReason.DIGEST_MISMATCH,
        )


def _select(index: dict[str, Any], ref: str | None, layout: Path) -> dict[str, Any]:
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if ref is not None:
        named = [m for m in entries if (m.get("annotations") or {}).get(REF_ANNOTATION) == ref]
        if len(named) != 1:
            raise _bad(layout, f"{len(named)} images are named {ref!r} in index.json")
        return named[0]
    if len(entries) != 1:
        names = sorted(str((m.get("annotations") or {}).get(REF_ANNOTATION)) for m in entries)
        raise _bad(layout, f"index.json lists {len(entries)} images {names}: pick one (--oci-ref)")
    return entries[0]


def copy_layout(
    layout: Path, dest: Path, *, ref: str | None, arch: str, max_compressed_bytes: int
) -> PulledImage:
    """Copy the image ``ref`` (or the only one) of ``layout`` into a new layout ``dest``, tagged
    :data:`~scapguard.scanner.pull.LAYOUT_TAG`, checked as the module docstring says."""
    layout = layout.absolute()
    version = _read_json(layout / "oci-layout", "oci-layout", layout)
    if not isinstance(version.get("imageLayoutVersion"), str):
        raise _bad(layout, "oci-layout has no imageLayoutVersion")
    top = _select(_read_json(layout / "index.json", "index.json", layout), ref, layout)
    digest = str(top.get("digest"))
    raw, manifest = _read_blob_json(layout, top.get("digest"))
    manifest_digest = digest
    top_is_manifest = True
    if top.get("mediaType") in INDEX_TYPES or manifest.get("mediaType") in INDEX_TYPES:
        top_is_manifest = False
        manifest_digest = pick_platform(manifest, arch, f"OCI layout {layout}")
        raw, manifest = _read_blob_json(layout, manifest_digest)
    if manifest.get("mediaType", OCI_MANIFEST) not in MANIFEST_TYPES:
        raise _bad(layout, f"unsupported manifest media type {manifest.get('mediaType')!r}")
    size = compressed_size(manifest, f"OCI layout {layout}")
    if size > max_compressed_bytes:
        raise _bad(
            layout,
            f"image is {size} bytes compressed, more than the limit {max_compressed_bytes}",
            ErrorReason.IMAGE_TOO_LARGE,
        )
    (dest / "blobs" / "sha256").mkdir(parents=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}', encoding="utf-8")
    _blob(dest, manifest_digest).write_bytes(raw)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        _copy_blob(layout, descriptor, dest)
    media = manifest.get("mediaType") or (top.get("mediaType") if top_is_manifest else None)
    entry = {
        "mediaType": media or OCI_MANIFEST,
        "digest": manifest_digest,
        "size": len(raw),
        "annotations": {REF_ANNOTATION: LAYOUT_TAG},
    }
    (dest / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [entry]}), encoding="utf-8"
    )
    _, config = _read_blob_json(dest, manifest["config"]["digest"])
    log.info("copied %s from the OCI layout %s (%s bytes)", manifest_digest, layout, size)
    return PulledImage(
        reference=f"oci:{layout}@{digest}",
        digest=digest,
        manifest_digest=manifest_digest,
        layout=dest,
        manifest=manifest,
        config=config,
    )


def check_rootfs(rootfs: Path) -> Path:
    """``rootfs`` as an absolute path; ``UnpackFailed`` naming it when it is no directory."""
    path = rootfs.absolute()
    if not path.is_dir():
        raise ScanFailure(ErrorReason.UNPACK_FAILED, f"root filesystem {path}: not a directory")
    return path


def escaping_symlinks(rootfs: Path, *, limit: int = 100_000) -> int:
    """How many symlinks of ``rootfs`` are absolute or climb out of their directory's depth
    (those an unpacked image would get rewritten); stops counting after ``limit`` entries."""
    found = seen = 0
    for dirpath, dirnames, filenames in os.walk(rootfs, followlinks=False):
        rel = os.path.relpath(dirpath, rootfs)
        rel = "" if rel == "." else rel
        for name in (*dirnames, *filenames):
            seen += 1
            if seen > limit:
                return found
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.readlink(path)
                found += canonical_target(rel, target) != target
    return found
