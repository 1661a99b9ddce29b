"""SCAP content: the OVAL feed and the XCCDF datastream for a detected OS, checked before use.

Vulnerability feeds (built-in catalogue of the vendors' official OVAL, bz2 read directly):

==========================  ==========================================================
OS                          feed
==========================  ==========================================================
Debian 10-13                ``https://www.debian.org/security/oval/oval-definitions-{codename}.xml.bz2``
Ubuntu 18.04-24.04          ``https://security-metadata.canonical.com/oval/com.ubuntu.{codename}.cve.oval.xml.bz2``
RHEL 8, 9                   ``https://security.access.redhat.com/data/oval/v2/RHEL{major}/rhel-{major}.oval.xml.bz2``
AlmaLinux 8, 9              ``https://security.almalinux.org/oval/org.almalinux.alsa-{major}.xml.bz2``
CentOS Stream, Rocky,       none built in: Red Hat's definitions also check Red Hat's signing
Fedora                      key, so on a rebuild they would all be false (a false pass). Give
                            a feed by URL + sha256 or by file, or the scan ends
                            ``ContentUnavailable``.
==========================  ==========================================================

An override is a URL with its sha256 (the download must match it; plain http is accepted only
with a sha256) or a local file (a mounted ConfigMap or volume for air-gapped clusters). Every
feed is size-bounded, decompressed with a bound when it is bz2, gzip or xz (by magic, not by
name; concatenated streams read to the end; at most ``max_xml``, 2 GiB by default, and past
16 MiB also at most 200 times the compressed size; ContentInvalid naming the file otherwise),
parsed
with :mod:`scapguard.results.xmlsafe` and must have ``oval_definitions`` as its root.

Datastreams come from the SCAP Security Guide shipped in the scanner image (``ssg_dir``,
default ``/usr/share/xml/scap/ssg/content``): ``ssg-{debian12,ubuntu2204,rhel9,...}-ds.xml``.
A datastream override (URL + sha256 or file) and an optional tailoring file are checked the
same way (root ``data-stream-collection``; tailoring root ``Tailoring``). Content naming the
Script Check Engine as a check system (``http://open-scap.org/page/SCE``; Debian's oscap is
built with it) is refused: oscap would run the scripts it names.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import lzma
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from lxml import etree

from scapguard.results import oval as oval_results
from scapguard.results.model import ContentInfo, ContentSource, ErrorReason
from scapguard.results.xmlsafe import XMLContentError, local_name, parse_file, qname
from scapguard.scanner import feedfilter
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.osdetect import DetectedOS

log = logging.getLogger(__name__)

DEFAULT_SSG_DIR: Final = Path("/usr/share/xml/scap/ssg/content")
MAX_DOWNLOAD: Final = 512 * 1024 * 1024
MAX_XML: Final = 2 * 1024 * 1024 * 1024
#: Real OVAL feeds compress 20-40x; far denser XML costs lxml ~30x its size in memory. Above
#: RATIO_FROM bytes decompressed, more than MAX_RATIO times the compressed file is refused.
MAX_RATIO: Final = 200
RATIO_FROM: Final = 16 * 1024 * 1024
_CHUNK: Final = 1 << 20
_XZ_MAGIC: Final = b"\xfd7zXZ\x00"
_MAGICS: Final = {"bz2": b"BZh", "gz": b"\x1f\x8b", "xz": _XZ_MAGIC}
_DS_ROOT: Final = qname("http://scap.nist.gov/schema/scap/source/1.2", "data-stream-collection")
_TAILORING_ROOTS: Final = frozenset(
    {
        qname("http://checklists.nist.gov/xccdf/1.2", "Tailoring"),
        qname("http://checklists.nist.gov/xccdf/1.1", "Tailoring"),
    }
)

#: oscap runs a check of this system as a script (OpenSCAP's Script Check Engine).
SCE_SYSTEM: Final = "http://open-scap.org/page/SCE"

Kind = Literal["oval", "datastream", "tailoring"]


@dataclass(frozen=True)
class ContentOverride:
    """A user-chosen source: ``url`` (+ ``sha256``) or ``file`` (+ optional ``sha256``)."""

    url: str | None = None
    sha256: str | None = None
    file: Path | None = None


@dataclass(frozen=True)
class ResolvedContent:
    path: Path  # the checked, decompressed XML file
    info: ContentInfo


def catalogue_feed_url(os: DetectedOS) -> str | None:
    info = os.info
    if info.id == "debian" and os.codename:
        return f"https://www.debian.org/security/oval/oval-definitions-{os.codename}.xml.bz2"
    if info.id == "ubuntu" and os.codename:
        return (
            "https://security-metadata.canonical.com/oval/"
            f"com.ubuntu.{os.codename}.cve.oval.xml.bz2"
        )
    if info.id == "rhel":
        return (
            f"https://security.access.redhat.com/data/oval/v2/RHEL{os.major}/"
            f"rhel-{os.major}.oval.xml.bz2"
        )
    if info.id == "almalinux":
        return f"https://security.almalinux.org/oval/org.almalinux.alsa-{os.major}.xml.bz2"
    return None


def feed_name(os: DetectedOS) -> str:
    return f"oval:{os.info.id}-{os.codename or os.major}"


def datastream_file(os: DetectedOS, ssg_dir: Path = DEFAULT_SSG_DIR) -> Path | None:
    info = os.info
    names = {
        "debian": f"ssg-debian{os.major}-ds.xml",
        "ubuntu": f"ssg-ubuntu{os.major.replace('.', '')}-ds.xml",
        "rhel": f"ssg-rhel{os.major}-ds.xml",
        "centos": f"ssg-cs{os.major}-ds.xml" if os.major == "9" else f"ssg-centos{os.major}-ds.xml",
        "almalinux": f"ssg-almalinux{os.major}-ds.xml",
        "fedora": "ssg-fedora-ds.xml",
    }
    name = names.get(info.id)
    return ssg_dir / name if name else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, *, max_bytes: int, timeout: float) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in {"https", "http"}:
        raise ScanFailure(ErrorReason.CONTENT_UNAVAILABLE, f"{url}: only https/http URLs")
    context = ssl.create_default_context() if parsed.scheme == "https" else None
    request = urllib.request.Request(url, headers={"User-Agent": "scapguard-scan"})  # noqa: S310
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout, context=context) as resp,  # noqa: S310
            dest.open("wb") as out,
        ):
            total = 0
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise ScanFailure(
                        ErrorReason.CONTENT_UNAVAILABLE, f"{url}: larger than {max_bytes} bytes"
                    )
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ScanFailure(
            ErrorReason.CONTENT_UNAVAILABLE, f"{url}: download failed: {exc}"
        ) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ScanFailure(
            ErrorReason.CONTENT_UNAVAILABLE, f"{url}: download failed: {exc}"
        ) from exc


def _new_inflater(kind: str) -> bz2.BZ2Decompressor | lzma.LZMADecompressor | _Gunzip:
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return _Gunzip()


class _Gunzip:
    """zlib's gzip decompressor with the bz2/lzma interface (``max_length``, ``needs_input``)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=31)

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._z.decompress(self._z.unconsumed_tail + data, max_length)


def compression_of(path: Path) -> str | None:
    """``bz2``, ``gz`` or ``xz`` by the file's magic bytes (never by its name), else None."""
    with path.open("rb") as f:
        head = f.read(len(_XZ_MAGIC))
    for kind, magic in _MAGICS.items():
        if head.startswith(magic):
            return kind
    return None


def decompress(src: Path, dest: Path, *, max_bytes: int, name: str) -> Path:
    """``src`` decompressed into ``dest`` if it is bz2, gzip or xz (by magic), else ``src``.

    Concatenated streams (pbzip2, multi-member gzip, multi-stream xz) are read to the end.
    Output is bounded while it is produced: more than ``max_bytes`` (or, past
    :data:`RATIO_FROM`, more than :data:`MAX_RATIO` times the compressed size) is
    ContentInvalid naming ``name``, as is a truncated or corrupt stream.
    """
    kind = compression_of(src)
    if kind is None:
        return src
    total = 0
    ratio_limit = max(RATIO_FROM, MAX_RATIO * src.stat().st_size)
    try:
        with src.open("rb") as fin, dest.open("wb") as fout:
            inflater = _new_inflater(kind)
            pending = b""
            while True:
                chunk = pending or fin.read(_CHUNK)
                pending = b""
                if not chunk:
                    if not inflater.eof:
                        raise ScanFailure(
                            ErrorReason.CONTENT_INVALID, f"{name}: truncated {kind} stream"
                        )
                    break
                while True:
                    out = inflater.decompress(chunk, max_length=_CHUNK * 4)
                    total += len(out)
                    _check_inflated(name, total, max_bytes, ratio_limit)
                    fout.write(out)
                    chunk = b""
                    if inflater.eof or inflater.needs_input:
                        break
                if inflater.eof:
                    rest = inflater.unused_data + fin.read(_CHUNK)
                    if not rest.strip(b"\0"):
                        break  # end of file (or zero padding, as some tools write)
                    inflater, pending = _new_inflater(kind), rest
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ScanFailure(ErrorReason.CONTENT_INVALID, f"{name}: not valid {kind}: {exc}") from exc
    return dest


def _check_inflated(name: str, total: int, max_bytes: int, ratio_limit: int) -> None:
    if total > max_bytes:
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID, f"{name}: more than {max_bytes} bytes once decompressed"
        )
    if total > ratio_limit:
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"{name}: decompresses to more than {MAX_RATIO} times its compressed size "
            "(real feeds: 20-40 times)",
        )


def resolve(
    kind: Kind,
    name: str,
    workdir: Path,
    *,
    override: ContentOverride | None,
    catalogue_url: str | None = None,
    catalogue_file: Path | None = None,
    timeout: float = 600.0,
    max_download: int = MAX_DOWNLOAD,
    max_xml: int = MAX_XML,
) -> ResolvedContent:
    """Fetch/copy, verify (sha256), decompress and check one piece of content."""
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"{kind}.raw"
    source: ContentSource
    expected_sha = override.sha256 if override else None
    if override is not None and override.file is not None:
        source = "file"
        if not override.file.is_file():
            raise ScanFailure(ErrorReason.CONTENT_UNAVAILABLE, f"{override.file}: no such file")
        if override.file.stat().st_size > max_download:
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE,
                f"{override.file}: larger than {max_download} bytes",
            )
        shutil.copyfile(override.file, raw)
    elif override is not None and override.url is not None:
        source = "url"
        if not expected_sha:
            raise ScanFailure(ErrorReason.CONTENT_UNAVAILABLE, f"{override.url}: needs a sha256")
        _download(override.url, raw, max_bytes=max_download, timeout=timeout)
    elif catalogue_file is not None:
        source = "catalogue"
        if not catalogue_file.is_file():
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE,
                f"{catalogue_file}: not installed in the scanner image",
            )
        raw = catalogue_file
    elif catalogue_url is not None:
        source = "catalogue"
        _download(catalogue_url, raw, max_bytes=max_download, timeout=timeout)
    else:
        raise ScanFailure(
            ErrorReason.CONTENT_UNAVAILABLE,
            f"no built-in {kind} content for {name}: give one in the policy",
        )
    digest = sha256_file(raw)
    if expected_sha and digest != expected_sha.lower():
        where = _origin(override, raw)
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"{where}: sha256 {digest} does not match the expected {expected_sha}",
        )
    xml = decompress(raw, workdir / f"{kind}.xml", max_bytes=max_xml, name=_origin(override, raw))
    roots = {
        "oval": {oval_results.DEFINITIONS_ROOT},
        "datastream": {_DS_ROOT},
        "tailoring": set(_TAILORING_ROOTS),
    }[kind]
    try:
        root = parse_file(xml, expected_roots=roots, max_bytes=max_xml)
    except XMLContentError as exc:
        raise ScanFailure(ErrorReason.CONTENT_INVALID, str(exc)) from exc
    _refuse_script_checks(root, _origin(override, raw))
    version: str | None
    if kind == "oval":
        version = oval_results.definitions_generator_timestamp(root)
        # references checked now (ContentInvalid before any oscap run), index kept for the
        # pre-filter of this scan
        feedfilter.remember(digest, feedfilter.index_feed(root, _origin(override, raw)))
    else:
        version = next(
            (
                "".join(str(t) for t in el.itertext()).strip()
                for el in root.iter()
                if local_name(el.tag) == "version"
            ),
            None,
        )
    del root
    log.info("%s content %s from %s: sha256 %s, version %s", kind, name, source, digest, version)
    return ResolvedContent(
        path=xml, info=ContentInfo(name=name, source=source, sha256=digest, version=version)
    )


def _origin(override: ContentOverride | None, raw: Path) -> str:
    """How an error names the content: the user's URL or file, else the catalogue file."""
    if override is not None and (override.url or override.file):
        return str(override.url or override.file)
    return str(raw)


def _refuse_script_checks(root: etree._Element, where: str) -> None:
    """Refuse content with a check of the Script Check Engine's system (it runs scripts)."""
    for el in root.iter():
        system = el.get("system")
        if system is not None and system.strip().casefold() == SCE_SYSTEM.casefold():
            raise ScanFailure(
                ErrorReason.CONTENT_INVALID,
                f"{where}: a <{local_name(el.tag)}> uses the Script Check Engine "
                f"(system {SCE_SYSTEM!r}), which would run scripts from the content",
            )
