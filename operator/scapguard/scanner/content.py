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
import logging
import lzma
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast

from lxml import etree

from scapguard.contentcache import catalogue
from scapguard.contentcache.catalogue import ORIGIN_HEADER, SHA256_HEADER, SOURCE_HEADER
from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.fetch import fetch_url
from scapguard.contentcache.store import sha256_file
from scapguard.results.model import ContentInfo, ContentSource, ErrorReason
from scapguard.results.xmlsafe import XMLContentError, local_name, parse_file, qname
from scapguard.scanner import feedfilter, handoff
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
    """A user-chosen source: ``url`` (+ ``sha256``), ``file`` (+ optional ``sha256``), or
    ``served``: what to ask the operator's content server for (``feed``, ``datastream``,
    ``tailoring``), which fetched the policy's source and serves it from its cache."""

    url: str | None = None
    sha256: str | None = None
    file: Path | None = None
    served: str | None = None


@dataclass(frozen=True)
class ContentServer:
    """The operator's content endpoint for this scan (``.../v1/content/<job>``), with the
    scan's bearer token (the one results are posted with) and the CA that signed it."""

    url: str
    token_file: Path
    ca_file: Path | None = None

    def fetch(self, what: str, dest: Path, *, max_bytes: int, timeout: float) -> dict[str, str]:
        """GET ``what`` into ``dest``; the response headers (lower-case names)."""
        url = f"{self.url.rstrip('/')}/{what}"
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE, f"{self.token_file}: cannot read token: {exc}"
            ) from exc
        for attempt in range(1, handoff.ATTEMPTS + 1):
            try:
                got = fetch_url(
                    url,
                    dest,
                    max_bytes=max_bytes,
                    timeout=timeout,
                    headers={"Authorization": f"Bearer {token}"},
                    ca_file=str(self.ca_file) if self.ca_file else None,
                    name=f"{what} from the operator",
                )
                break
            except ContentFetchError as exc:
                # the operator restarting or changing leader: ride it out like the result post
                if not exc.retryable or attempt == handoff.ATTEMPTS:
                    raise _failure(exc) from exc
                log.warning("%s (attempt %s); retrying", exc, attempt)
                time.sleep(min(handoff.BACKOFF**attempt, handoff.BACKOFF_MAX))
        return dict(got.headers or {})


@dataclass(frozen=True)
class ResolvedContent:
    path: Path  # the checked, decompressed XML file
    info: ContentInfo


def catalogue_key(os: DetectedOS) -> str:
    """The catalogue key of the OS's feed: codename for Debian and Ubuntu, else major."""
    if os.info.id in ("debian", "ubuntu") and os.codename:
        return catalogue.feed_key(os.info.id, os.codename)
    return catalogue.feed_key(os.info.id, os.major)


def catalogue_feed_url(os: DetectedOS) -> str | None:
    return catalogue.builtin_url(catalogue_key(os))


def feed_name(os: DetectedOS) -> str:
    return catalogue.feed_name(catalogue_key(os))


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


def _failure(exc: ContentFetchError) -> ScanFailure:
    reason = ErrorReason.CONTENT_INVALID if exc.invalid else ErrorReason.CONTENT_UNAVAILABLE
    return ScanFailure(reason, str(exc))


def _download(url: str, dest: Path, *, max_bytes: int, timeout: float) -> None:
    try:
        fetch_url(url, dest, max_bytes=max_bytes, timeout=timeout)
    except ContentFetchError as exc:
        raise _failure(exc) from exc


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
    catalogue_key: str | None = None,
    server: ContentServer | None = None,
    timeout: float = 600.0,
    max_download: int = MAX_DOWNLOAD,
    max_xml: int = MAX_XML,
) -> ResolvedContent:
    """Fetch/copy, verify (sha256), decompress and check one piece of content.

    With a ``server`` (a scan Job), content the policy names and catalogue feeds come from the
    operator's cache; without one (``scapguard-scan`` on a workstation), from their source.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"{kind}.raw"
    fetched = None
    if override is not None:
        fetched = _fetch_override(override, raw, server, max_download, timeout)
    if fetched is None:
        fetched = _fetch_catalogue(
            kind,
            name,
            raw,
            catalogue_file=catalogue_file,
            catalogue_key=catalogue_key,
            catalogue_url=catalogue_url,
            server=server,
            max_download=max_download,
            timeout=timeout,
        )
    origin = fetched.origin or (override.url if override and override.url else None)
    where = origin or _origin(override, fetched.raw)
    digest = _checked_sha256(fetched, override.sha256 if override else None, origin, where)
    xml = decompress(fetched.raw, workdir / f"{kind}.xml", max_bytes=max_xml, name=where)
    if kind == "oval":
        version = _checked_feed(xml, where, digest, max_xml)
    else:
        version = _checked_document(kind, xml, where, max_xml)
    log.info(
        "%s content %s from %s: sha256 %s, version %s", kind, name, fetched.source, digest, version
    )
    return ResolvedContent(
        path=xml,
        info=ContentInfo(
            name=name, source=fetched.source, sha256=digest, version=version, origin=origin
        ),
    )


@dataclass(frozen=True)
class _Fetched:
    raw: Path  # the bytes as fetched, or the scanner image's catalogue file in place
    source: ContentSource
    origin: str | None = None  # where the operator got them
    served_sha: str | None = None  # the sha256 the operator announced


def _fetch_override(
    override: ContentOverride,
    raw: Path,
    server: ContentServer | None,
    max_download: int,
    timeout: float,
) -> _Fetched | None:
    """The policy's own content (a file, served by the operator, or a URL), if it names any."""
    if override.file is not None:
        if not override.file.is_file():
            raise ScanFailure(ErrorReason.CONTENT_UNAVAILABLE, f"{override.file}: no such file")
        if override.file.stat().st_size > max_download:
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE,
                f"{override.file}: larger than {max_download} bytes",
            )
        shutil.copyfile(override.file, raw)
        return _Fetched(raw, "file")
    if override.served is not None:
        if server is None:
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE, f"{override.served}: no content server given"
            )
        return _served(server, override.served, raw, max_download, timeout)
    if override.url is not None:
        if not override.sha256:
            raise ScanFailure(ErrorReason.CONTENT_UNAVAILABLE, f"{override.url}: needs a sha256")
        _download(override.url, raw, max_bytes=max_download, timeout=timeout)
        return _Fetched(raw, "url")
    return None


def _fetch_catalogue(
    kind: Kind,
    name: str,
    raw: Path,
    *,
    catalogue_file: Path | None,
    catalogue_key: str | None,
    catalogue_url: str | None,
    server: ContentServer | None,
    max_download: int,
    timeout: float,
) -> _Fetched:
    """Built-in content: a file in the scanner image, or a feed from the operator's cache
    (in a scan Job) or from its source."""
    if catalogue_file is not None:
        if not catalogue_file.is_file():
            raise ScanFailure(
                ErrorReason.CONTENT_UNAVAILABLE,
                f"{catalogue_file}: not installed in the scanner image",
            )
        return _Fetched(catalogue_file, "catalogue")
    if server is not None and catalogue_key is not None:
        return _served(server, f"catalogue/{catalogue_key}", raw, max_download, timeout)
    if catalogue_url is not None:
        _download(catalogue_url, raw, max_bytes=max_download, timeout=timeout)
        return _Fetched(raw, "catalogue")
    raise ScanFailure(
        ErrorReason.CONTENT_UNAVAILABLE,
        f"no built-in {kind} content for {name}: give one in the policy",
    )


def _checked_sha256(
    fetched: _Fetched, expected_sha: str | None, origin: str | None, where: str
) -> str:
    """The bytes' sha256, once it matches what the operator announced and the policy expects."""
    digest = sha256_file(fetched.raw)
    announced = fetched.served_sha
    if announced is not None and digest != announced:
        raise ScanFailure(
            ErrorReason.CONTENT_UNAVAILABLE,
            f"{origin}: received bytes with sha256 {digest}, the operator sent {announced}",
        )
    if expected_sha and digest != expected_sha.lower():
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"{where}: sha256 {digest} does not match the expected {expected_sha}",
        )
    return digest


def _checked_feed(xml: Path, where: str, digest: str, max_xml: int) -> str | None:
    """Check an OVAL feed and give its timestamp. Streamed (a feed can be hundreds of MiB):
    root, safety, script checks and references checked now (ContentInvalid before any oscap
    run), the index kept for the pre-filter."""
    index = feedfilter.index_file(
        xml, where, max_bytes=max_xml, on_element=lambda el: _refuse_script_check(el, where)
    )
    feedfilter.remember(digest, index)
    return index.timestamp


def _checked_document(kind: Kind, xml: Path, where: str, max_xml: int) -> str | None:
    """Check a datastream or tailoring file (root, safety, script checks); its version."""
    roots = {"datastream": {_DS_ROOT}, "tailoring": set(_TAILORING_ROOTS)}[kind]
    try:
        root = parse_file(xml, expected_roots=roots, max_bytes=max_xml)
    except XMLContentError as exc:
        raise ScanFailure(ErrorReason.CONTENT_INVALID, str(exc)) from exc
    for el in root.iter():
        _refuse_script_check(el, where)
    return next(
        (
            "".join(str(t) for t in el.itertext()).strip()
            for el in root.iter()
            if local_name(el.tag) == "version"
        ),
        None,
    )


_SERVED_SOURCES: Final = frozenset({"url", "catalogue", "configMap", "oci"})


def _served(
    server: ContentServer, what: str, raw: Path, max_download: int, timeout: float
) -> _Fetched:
    """Fetch ``what`` from the operator, with its source kind, origin and announced sha256."""
    headers = server.fetch(what, raw, max_bytes=max_download, timeout=timeout)
    source = headers.get(SOURCE_HEADER, "")
    sha = headers.get(SHA256_HEADER, "")
    if source not in _SERVED_SOURCES or len(sha) != 64:
        raise ScanFailure(
            ErrorReason.CONTENT_UNAVAILABLE,
            f"{what} from the operator: no {SOURCE_HEADER}/{SHA256_HEADER} headers",
        )
    origin = headers.get(ORIGIN_HEADER) or what
    return _Fetched(raw, cast(ContentSource, source), origin, sha)


def _origin(override: ContentOverride | None, raw: Path) -> str:
    """How an error names the content: the user's URL or file, else the catalogue file."""
    if override is not None and (override.url or override.file):
        return str(override.url or override.file)
    if override is not None and override.served:
        return f"{override.served} from the operator"
    return str(raw)


def _refuse_script_check(el: etree._Element, where: str) -> None:
    """Refuse content with a check of the Script Check Engine's system (it runs scripts)."""
    system = el.get("system")
    if system is not None and system.strip().casefold() == SCE_SYSTEM.casefold():
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"{where}: a <{local_name(el.tag)}> uses the Script Check Engine "
            f"(system {SCE_SYSTEM!r}), which would run scripts from the content",
        )
