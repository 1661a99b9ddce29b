"""Inspect an image's layers, then unpack them with umoci into a throw-away bundle.

Pre-inspection streams every layer once (never extracting) and refuses, with the layer and
entry named (``HostileImage``):

* entry names that are absolute or contain ``..`` (``../`` escapes);
* hardlinks whose target is absolute, contains ``..`` or was not seen earlier in the layer;
* whiteout entries that are not plain files, ``.wh..wh.`` names other than the opaque marker,
  and whiteouts of ``.`` or ``..`` (``.wh..``, ``.wh...``: the directory itself or its parent);
* entries beyond the count limit, and more unpacked bytes than the limit (``ImageTooLarge``;
  the decompressed stream is counted as it is read, so a decompression bomb stops at the limit);
* headers Python's ``tarfile`` and Go's ``archive/tar`` (umoci) could read differently, so that
  umoci would unpack entries this inspection never saw: numeric fields other than octal digits
  between optional leading spaces and trailing spaces/NULs (or GNU base-256), a header
  ``tarfile`` finds invalid (where it would silently stop), a name prefix where Go reads none
  (GNU, v7 and star headers), and any byte other than NUL after the end-of-archive block;
* pax and GNU long-name headers larger than 64 KiB (``tarfile`` reads them whole into memory);
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
import re
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final, Self, cast

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
MAX_EXTENDED_HEADER: Final = 64 * 1024
_EXTENDED_TYPES: Final = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
#: (field, start, end) of the numeric fields of a tar header block.
_NUMERIC_FIELDS: Final = (
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
    ("chksum", 148, 156),
    ("devmajor", 329, 337),
    ("devminor", 337, 345),
)
#: Fields GNU tar leaves all NUL on entries that are not devices.
_MAY_BE_BLANK: Final = frozenset({"devmajor", "devminor"})
#: Octal as both parsers read it: Go trims spaces and NULs at both ends, Python cuts at the
#: first NUL, so a leading NUL (Python: 0, Go: the digits after it) is not allowed.
_OCTAL: Final = re.compile(rb" *[0-7]+[ \x00]*")
_BASE256: Final = (0x80, 0xFF)  # the leading bytes both read as GNU base-256
_USTAR_MAGIC: Final = b"ustar\x0000"
_STAR_TRAILER: Final = b"tar\x00"
_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class UnpackLimits:
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED
    max_entries: int = DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class LayerStats:
    layers: int
    entries: int


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


class _HeaderRefused(Exception):
    """A tar header the two parsers could read differently (the layer is added by the caller)."""

    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"entry {entry!r} {why}")
        self.entry = entry
        self.why = why


def _raw_name(buf: bytes) -> str:
    return buf[0:100].split(b"\x00", 1)[0].decode("utf-8", errors="replace")


def _check_header_block(buf: bytes) -> None:
    """Refuse what Go's archive/tar would read differently from :mod:`tarfile` (module doc)."""
    name = _raw_name(buf)
    for field, start, end in _NUMERIC_FIELDS:
        value = buf[start:end]
        if value[0] in _BASE256 and field != "chksum":
            continue
        if field in _MAY_BE_BLANK and not value.strip(b" \x00"):
            continue
        if not _OCTAL.fullmatch(value):
            raise _HeaderRefused(name, f"has a {field} field that is not plain octal: {value!r}")
    # tarfile reads a prefix up to its first NUL, whatever the magic; Go reads none outside
    # ustar. Only a prefix tarfile would read differs: a GNU sparse map further on does not.
    prefix = buf[345:500].split(b"\x00", 1)[0]
    magic, trailer = buf[257:265], buf[508:512]
    if magic == _USTAR_MAGIC and trailer == _STAR_TRAILER:
        raise _HeaderRefused(name, "has a star header (its name prefix is read differently)")
    if magic != _USTAR_MAGIC and prefix:
        raise _HeaderRefused(name, "has a name prefix outside a ustar header")


class _GuardedTarInfo(tarfile.TarInfo):
    """``tarfile``'s header parsing, refusing ambiguous and oversized headers before use."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) != _TAR_BLOCK or buf.count(0) == _TAR_BLOCK:
            return super().frombuf(buf, encoding, errors)  # end of the archive or stream
        _check_header_block(bytes(buf))
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:  # tarfile would stop there without a word
            raise _HeaderRefused(_raw_name(bytes(buf)), f"has an invalid header: {exc}") from exc
        if info.type in _EXTENDED_TYPES and info.size > MAX_EXTENDED_HEADER:
            raise _HeaderRefused(
                info.name,
                f"is an extended header of {info.size} bytes (more than {MAX_EXTENDED_HEADER})",
            )
        return info


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


@dataclass
class _Tally:
    entries: int = 0
    unpacked: int = 0
    devices: int = 0


def inspect_layers(image: PulledImage, limits: UnpackLimits) -> LayerStats:
    """Stream every layer of ``image`` once and apply the checks in the module docstring."""
    tally = _Tally()
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
            counted = _Counting(
                stream, limits.max_unpacked_bytes - tally.unpacked, f"layer {digest}"
            )
            try:
                _inspect_tar(counted, digest, limits, tally)
            except _HeaderRefused as exc:
                raise _hostile(digest, exc.entry, exc.why) from exc
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                raise ScanFailure(
                    ErrorReason.UNPACK_FAILED, f"layer {digest} is not a readable tar: {exc}"
                ) from exc
    if tally.devices:
        log.info("image has %s device nodes; they are unpacked as empty files", tally.devices)
    return LayerStats(layers=len(layers), entries=tally.entries)


def _inspect_tar(counted: _Counting, digest: str, limits: UnpackLimits, tally: _Tally) -> None:
    seen: set[str] = set()
    with tarfile.open(  # type: ignore[call-overload]
        fileobj=counted, mode="r|", tarinfo=_GuardedTarInfo
    ) as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # a stream is read once: keep no list of every entry
            tally.entries += 1
            if tally.entries > limits.max_entries:
                raise ScanFailure(
                    ErrorReason.IMAGE_TOO_LARGE, f"more than {limits.max_entries} entries"
                )
            _check_member(digest, member, seen)
            if member.ischr() or member.isblk():
                tally.devices += 1
            tally.unpacked += _TAR_BLOCK + member.size
            if tally.unpacked > limits.max_unpacked_bytes:
                raise ScanFailure(
                    ErrorReason.IMAGE_TOO_LARGE,
                    f"more than {limits.max_unpacked_bytes} bytes unpacked",
                )
        _check_after_end(tar, digest)


def _check_member(digest: str, member: tarfile.TarInfo, seen: set[str]) -> None:
    path = _check_path(digest, member.name)
    base = path.name
    if base.startswith(_WHITEOUT):
        if not member.isfile():
            raise _hostile(digest, member.name, "is a whiteout but not a file")
        if base.startswith(".wh..wh.") and base != _OPAQUE:
            raise _hostile(digest, member.name, "is an unknown whiteout")
        if base == _WHITEOUT:
            raise _hostile(digest, member.name, "whites out nothing")
        if base.removeprefix(_WHITEOUT) in {".", ".."}:
            raise _hostile(digest, member.name, "whites out '.' or '..'")
    if member.islnk():
        target = _check_path(digest, member.linkname, "hardlink target ")
        if str(target) not in seen:
            raise _hostile(
                digest,
                member.name,
                f"hardlinks to {member.linkname!r}, not earlier in the layer",
            )
    seen.add(str(path))


def _check_after_end(tar: tarfile.TarFile, digest: str) -> None:
    """Only NULs may follow the end-of-archive block (Go reads on where tarfile stopped).

    What is read is counted against the unpacked limit like the rest of the layer.
    """
    rest = cast(IO[bytes], tar.fileobj)
    offset = tar.offset + _TAR_BLOCK  # tarfile stops on the first end-of-archive block
    while chunk := rest.read(_CHUNK):
        data = chunk.lstrip(b"\x00")
        if data:
            raise ScanFailure(
                ErrorReason.HOSTILE_IMAGE,
                f"layer {digest}: data after the end-of-archive marker "
                f"(at offset {offset + len(chunk) - len(data)} of the tar)",
            )
        offset += len(chunk)


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
