"""A small OCI distribution (registry v2 API) client for SCAP content mirrored into a registry.

Air-gapped clusters mirror OVAL feeds and datastreams into their own registry, in one of two
shapes:

- an *artifact* (ORAS style): every file is one layer, named by its
  ``org.opencontainers.image.title`` annotation, its blob the file's bytes;
- an *image*: tar layers, the content one regular file at an absolute path.

:meth:`RegistryClient.resolve` costs one manifest request (two through an index): it reads the
manifest, picks the layer of an artifact and the layer list of an image. :meth:`RegistryClient.
fetch` streams the content into one file. For an image it scans the layers from the top down
for the path, honouring whiteouts and refusing links, so which layer holds the file is known
only then; that is why an image's :attr:`Artifact.blob_digest` is the digest of the image
manifest (it fixes every layer, so with the path it identifies the content) rather than of a
layer.

Every digest is checked on the way: the manifest against a pinned reference, every blob and
layer over its whole compressed stream. Nothing holds a whole blob in memory, nothing but the
destination is ever written, and no link inside an image is ever followed. Every network or
registry problem is a :class:`ContentFetchError` naming the reference (``invalid`` when the
bytes arrived but are not the ones promised).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import posixpath
import re
import ssl
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, BinaryIO, Final, Literal, NoReturn

from scapguard.contentcache.errors import ContentFetchError

log = logging.getLogger(__name__)

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
_MANIFESTS: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_INDEXES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_ACCEPT: Final = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST))

_IMAGE_CONFIGS: Final = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
# Tar layers we read, and the tarfile stream mode for each.
_TAR_LAYERS: Final[Mapping[str, Literal["r|", "r|gz"]]] = MappingProxyType(
    {
        "application/vnd.oci.image.layer.v1.tar": "r|",
        "application/vnd.oci.image.layer.v1.tar+gzip": "r|gz",
        "application/vnd.docker.image.rootfs.diff.tar.gzip": "r|gz",
    }
)
# Tar layers we recognise but do not read.
_OTHER_TAR_LAYERS: Final = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
TITLE: Final = "org.opencontainers.image.title"

_USER_AGENT: Final = "scapguard"
_CHUNK: Final = 1 << 16
_MAX_REDIRECTS: Final = 5
_REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})
_MAX_TOKEN_BYTES: Final = 1 << 20
_ERROR_BODY_BYTES: Final = 4096
_NO_AUTHS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({})

_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
_DOMAIN_PART: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY: Final = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
)
_PATH_PART: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY: Final = re.compile(rf"{_PATH_PART}(?:/{_PATH_PART})*")
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MAX_REPOSITORY: Final = 255
_TOKEN: Final = re.compile(r"[\x21-\x7e]+")
_CHALLENGE_PARAM: Final = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')


# -- references ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OciRef:
    """An image or artifact reference with its registry: ``host[:port]/repository``, a tag,
    a digest or both."""

    registry: str  # host[:port]
    repository: str
    tag: str | None
    digest: str | None  # "sha256:<64 hex>"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(ref: str) -> OciRef:
    """``host[:port]/repo[:tag][@sha256:...]``; ContentFetchError naming ``ref`` otherwise.

    The registry part is required (no Docker Hub default): the first component must contain a
    ``.`` or a ``:`` or be ``localhost``. There is no implicit ``latest`` either: a reference
    needs a tag, a digest or both (then the digest is what is fetched).
    """

    def bad(why: str) -> ContentFetchError:
        return ContentFetchError(f"{ref!r}: not an OCI reference: {why}")

    if "://" in ref:
        raise bad("no scheme allowed (write host[:port]/repository:tag)")
    name, at, digest_part = ref.partition("@")
    digest: str | None = None
    if at:
        if not _DIGEST.fullmatch(digest_part):
            raise bad("the digest must be sha256: and 64 lower-case hex digits")
        digest = digest_part
    registry, slash, rest = name.partition("/")
    if not slash or not (
        "." in registry or ":" in registry or registry == "localhost"
    ):  # "library/x", "x:tag": no registry part
        raise bad("the registry part is required (host[:port]/repository)")
    if not _REGISTRY.fullmatch(registry):
        raise bad(f"{registry!r} is not a host[:port]")
    repository, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        repository, tag = rest.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise bad(f"{tag!r} is not a valid tag")
    if not _REPOSITORY.fullmatch(repository) or len(repository) > _MAX_REPOSITORY:
        raise bad(f"{repository!r} is not a valid repository name")
    if tag is None and digest is None:
        raise bad("a tag or an @sha256: digest is required")
    return OciRef(registry=registry, repository=repository, tag=tag, digest=digest)


# -- what resolve finds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One tar layer of an image, as :meth:`RegistryClient.fetch` downloads and scans it."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Artifact:
    """Where the content of a reference is, as :meth:`RegistryClient.resolve` found it.

    A plain artifact: ``blob_digest``, ``size`` and ``media_type`` are those of the layer that
    is the file, ``path`` is None. An image: ``path`` is the file's absolute path, ``layers``
    the image's tar layers from the top down, and ``blob_digest`` the digest of the image
    manifest (``size`` the layers' total, ``media_type`` the manifest's) because which layer
    holds the file is known only once :meth:`RegistryClient.fetch` has scanned them.
    """

    ref: OciRef
    manifest_digest: str  # of the manifest the reference names (an index, if it is one)
    blob_digest: str
    size: int
    media_type: str
    path: str | None
    layers: tuple[Layer, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]
    platform: Mapping[str, object]

    @property
    def title(self) -> str | None:
        return self.annotations.get(TITLE)


# -- the client ------------------------------------------------------------------------------


class RegistryClient:
    """Reads manifests and blobs from registries, anonymously or with the credentials given.

    ``auths``: registry ``host[:port]`` -> (username, password), as in a ``.dockerconfigjson``
    (keys written as URLs are reduced to their host). ``insecure``: hosts reached over plain
    http; every other host over https, verified with the default CAs or ``ca_file``. Bearer
    tokens are kept per (registry, repository) for the client's lifetime. Thread-safe.
    """

    def __init__(
        self,
        *,
        auths: Mapping[str, tuple[str, str]] = _NO_AUTHS,
        insecure: Collection[str] = (),
        ca_file: str | None = None,
        timeout: float = 60.0,
        max_manifest_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._auths = {_auth_host(key): creds for key, creds in auths.items()}
        self._insecure = frozenset(insecure)
        self._timeout = timeout
        self._max_manifest_bytes = max_manifest_bytes
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except OSError as exc:  # ssl.SSLError included
            raise ContentFetchError(f"CA file {ca_file}: {exc}") from exc
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )
        self._authorizations: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- resolve -----------------------------------------------------------------------------

    def resolve(self, ref: OciRef, file: str | None = None) -> Artifact:
        """Where ``file`` of ``ref`` is: its title in an artifact (None: the only file), its
        absolute path in an image (required)."""
        reference = _check_ref(ref)
        top_digest, manifest, media_type = self._manifest(ref, reference, expected=ref.digest)
        if media_type in _INDEXES:
            child = _pick_manifest(ref, manifest)
            _, manifest, media_type = self._manifest(ref, child.digest, expected=child.digest)
            if media_type in _INDEXES:
                raise ContentFetchError(f"{ref}: the index's manifest {child.digest} is an index")
            image_digest = child.digest
        else:
            image_digest = top_digest
        artifact = _locate(ref, top_digest, image_digest, media_type, manifest, file)
        if artifact.path is None:
            log.info("resolved %s: manifest %s, blob %s", ref, top_digest, artifact.blob_digest)
        else:
            log.info(
                "resolved %s: manifest %s, image %s (%s layers) for %s",
                ref,
                top_digest,
                artifact.blob_digest,
                len(artifact.layers),
                artifact.path,
            )
        return artifact

    def _manifest(
        self, ref: OciRef, reference: str, *, expected: str | None
    ) -> tuple[str, dict[str, object], str]:
        """(digest of the bytes served, the parsed manifest, its media type)."""
        what = "manifest" if reference in (ref.tag, ref.digest) else f"manifest {reference}"
        label = f"{ref}: {what}"
        with self._registry_get(ref, f"manifests/{reference}", accept=_ACCEPT, what=what) as resp:
            body = _read_limited(resp, self._max_manifest_bytes, label)
            content_type = resp.headers.get_content_type()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if expected is not None and digest != expected:
            raise ContentFetchError(
                f"{ref}: the manifest served for {reference} hashes to {digest}, not {expected}",
                invalid=True,
            )
        try:
            doc: object = json.loads(body)
        except ValueError as exc:
            raise ContentFetchError(f"{label}: not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ContentFetchError(f"{label}: not a JSON object")
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            media_type = declared
        elif content_type in _MANIFESTS | _INDEXES:
            media_type = content_type
        elif "manifests" in doc:  # OCI allows leaving mediaType out
            media_type = OCI_INDEX
        else:
            media_type = OCI_MANIFEST
        if media_type not in _MANIFESTS | _INDEXES:
            raise ContentFetchError(f"{label}: unsupported manifest media type {media_type!r}")
        if doc.get("schemaVersion") != 2:
            raise ContentFetchError(f"{label}: schemaVersion is not 2")
        return digest, doc, media_type

    # -- fetch -------------------------------------------------------------------------------

    def fetch(self, artifact: Artifact, dest: Path, *, max_bytes: int) -> str:
        """Write the content to ``dest``; returns the sha256 hex of the bytes written.

        At most ``max_bytes`` are written (a larger file is a ContentFetchError naming the
        bound); on any error ``dest`` is removed if this call wrote to it.
        """
        sink = _Sink(dest, max_bytes, str(artifact.ref))
        try:
            if artifact.path is None:
                self._fetch_blob(artifact, sink)
            else:
                self._fetch_from_image(artifact, artifact.path, sink)
            return sink.close()
        except BaseException:
            sink.discard()
            raise

    def _fetch_blob(self, artifact: Artifact, sink: _Sink) -> None:
        ref = artifact.ref
        if artifact.size > sink.max_bytes:
            raise ContentFetchError(
                f"{ref}: blob {artifact.blob_digest} is {artifact.size} bytes, "
                f"more than the bound of {sink.max_bytes} bytes"
            )
        layer = Layer(artifact.blob_digest, artifact.size, artifact.media_type)
        with self._blob(ref, layer) as reader:
            sink.begin()
            while chunk := reader.read(_CHUNK):
                sink.write(chunk)

    def _fetch_from_image(self, artifact: Artifact, path: str, sink: _Sink) -> None:
        ref = artifact.ref
        target = _image_path(ref, path).lstrip("/")
        for layer in artifact.layers:
            mode = _TAR_LAYERS.get(layer.media_type)
            if mode is None:
                raise _unsupported_layer(ref, layer.digest, layer.media_type)
            with self._blob(ref, layer) as reader:
                try:
                    with _LayerTar.open(fileobj=reader, mode=mode) as tar:
                        outcome = _scan_layer(tar, target, sink)
                except (tarfile.TarError, zlib.error, EOFError) as exc:
                    raise ContentFetchError(
                        f"{ref}: layer {layer.digest} ({layer.media_type}) is not a valid "
                        f"tar stream: {exc}"
                    ) from exc
                reader.drain()  # the rest of the stream, so the whole layer's digest is checked
            if outcome == "file":
                log.info("fetched /%s of %s from layer %s", target, ref, layer.digest)
                return
            if outcome is not None:
                raise ContentFetchError(f"{ref}: /{target} in layer {layer.digest} {outcome}")
        raise ContentFetchError(
            f"{ref}: /{target} is not in any of the image's {len(artifact.layers)} layers"
        )

    @contextmanager
    def _blob(self, ref: OciRef, layer: Layer) -> Iterator[_BlobReader]:
        with self._registry_get(
            ref, f"blobs/{layer.digest}", accept=None, what=f"blob {layer.digest}"
        ) as resp:
            yield _BlobReader(resp, layer, str(ref))

    # -- HTTP --------------------------------------------------------------------------------

    def _scheme(self, registry: str) -> str:
        return "http" if registry in self._insecure else "https"

    def _registry_get(
        self, ref: OciRef, path: str, *, accept: str | None, what: str
    ) -> http.client.HTTPResponse:
        """GET ``/v2/<repository>/<path>`` of ``ref``'s registry, answering one auth challenge.

        ``what`` ("manifest", "blob sha256:...") names the object in errors.
        """
        url = f"{self._scheme(ref.registry)}://{ref.registry}/v2/{ref.repository}/{path}"
        key = (ref.registry, ref.repository)
        with self._lock:
            authorization = self._authorizations.get(key)
        fresh = False
        with_credentials = False
        while True:
            headers = {"User-Agent": _USER_AGENT}
            if accept is not None:
                headers["Accept"] = accept
            if authorization is not None:
                headers["Authorization"] = authorization
            try:
                return self._send(url, headers, label=f"{ref}: {what}")
            except _Status as status:
                challenged = status.code == 401 and _origin(status.url) == _origin(url)
                if not challenged or fresh:
                    raise _status_error(ref, what, status, with_credentials) from None
                authorization, with_credentials = self._authorize(ref, status.challenges)
                fresh = True
                with self._lock:
                    self._authorizations[key] = authorization

    def _authorize(self, ref: OciRef, challenges: list[str]) -> tuple[str, bool]:
        """The Authorization header that answers the registry's challenge, and whether it
        carries our credentials (rather than an anonymous token)."""
        parsed = [_parse_challenge(c) for c in challenges]
        creds = self._auths.get(ref.registry)
        bearer = next((params for scheme, params in parsed if scheme == "bearer"), None)
        if bearer is not None:
            return self._bearer(ref, bearer, creds), creds is not None
        if any(scheme == "basic" for scheme, _ in parsed):
            if creds is None:
                raise ContentFetchError(
                    f"{ref}: authentication required (basic auth, and there are no "
                    f"credentials for {ref.registry})"
                )
            return _basic(creds), True
        shown = "; ".join(challenges) or "no WWW-Authenticate header"
        raise ContentFetchError(f"{ref}: authentication required (unsupported challenge: {shown})")

    def _bearer(self, ref: OciRef, params: Mapping[str, str], creds: tuple[str, str] | None) -> str:
        """A pull token for ``ref``'s repository from the challenge's realm."""
        realm = params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if not parts.netloc or parts.scheme not in ("https", "http"):
            raise ContentFetchError(f"{ref}: the token realm {realm!r} is not an http(s) URL")
        if parts.scheme != "https" and ref.registry not in self._insecure:
            raise ContentFetchError(
                f"{ref}: the token realm {realm} is not https; refusing to ask it for a token "
                f"({ref.registry} is not an insecure registry)"
            )
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if params.get("service"):
            query.append(("service", params["service"]))
        query.append(("scope", f"repository:{ref.repository}:pull"))
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        headers = {"User-Agent": _USER_AGENT}
        if creds is not None:
            headers["Authorization"] = _basic(creds)
        label = f"{ref}: token from {realm}"
        try:
            with self._send(url, headers, label=label) as resp:
                body = _read_limited(resp, _MAX_TOKEN_BYTES, label)
        except _Status as status:
            if status.code in (401, 403):
                why = (
                    f"the credentials for {ref.registry} were rejected"
                    if creds is not None
                    else "authentication required"
                )
                raise ContentFetchError(f"{label}: {why} (HTTP {status.code})") from None
            raise ContentFetchError(f"{label}: HTTP {status.code}{status.detail}") from None
        try:
            doc: object = json.loads(body)
        except ValueError as exc:
            raise ContentFetchError(f"{label}: not JSON: {exc}") from exc
        token = None
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise ContentFetchError(f"{label}: the answer has no usable token")
        log.debug("got a pull token for %s/%s from %s", ref.registry, ref.repository, realm)
        return f"Bearer {token}"

    def _send(
        self, url: str, headers: Mapping[str, str], *, label: str
    ) -> http.client.HTTPResponse:
        """GET ``url``, following redirects; the Authorization header only ever goes to
        ``url``'s own origin. Another final status than 2xx raises :class:`_Status`, any
        transport problem ContentFetchError naming ``label``."""
        origin = _origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if _origin(url) != origin:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            request = urllib.request.Request(url, headers=sent)  # noqa: S310 - http(s) only
            try:
                response: http.client.HTTPResponse = self._opener.open(
                    request, timeout=self._timeout
                )
            except urllib.error.HTTPError as exc:
                try:
                    location = exc.headers.get("Location")
                    if exc.code in _REDIRECT_CODES and location:
                        url = _redirect_target(url, location, label)
                        continue
                    raise _Status(
                        exc.code,
                        url,
                        exc.headers.get_all("WWW-Authenticate") or [],
                        _error_detail(exc),
                    ) from None
                finally:
                    exc.close()
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise ContentFetchError(f"{label}: {url}: {_reason(exc, self._timeout)}") from exc
            return response
        raise ContentFetchError(f"{label}: {url}: more than {_MAX_REDIRECTS} redirects")


# -- manifests -------------------------------------------------------------------------------


def _check_ref(ref: OciRef) -> str:
    """The tag or digest to ask for; a hand-made OciRef gets the checks a parsed one got (its
    parts end up in URLs)."""
    reference = ref.digest or ref.tag
    if reference is None or parse_reference(str(ref)) != ref:
        raise ContentFetchError(f"{ref!r}: not a valid OCI reference")
    return reference


def _descriptor(ref: OciRef, value: object, where: str) -> _Descriptor:
    if not isinstance(value, dict):
        raise ContentFetchError(f"{ref}: {where} is not a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ContentFetchError(f"{ref}: {where} has no mediaType")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ContentFetchError(f"{ref}: {where} has digest {digest!r}; only sha256 is supported")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ContentFetchError(f"{ref}: {where} has no valid size")
    annotations = value.get("annotations")
    platform = value.get("platform")
    return _Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations={str(k): v for k, v in (annotations or {}).items() if isinstance(v, str)}
        if isinstance(annotations, dict)
        else {},
        platform=platform if isinstance(platform, dict) else {},
    )


def _descriptors(ref: OciRef, doc: Mapping[str, object], key: str) -> list[_Descriptor]:
    values = doc.get(key)
    if not isinstance(values, list) or not values:
        raise ContentFetchError(f"{ref}: the manifest's {key} is not a non-empty list")
    return [_descriptor(ref, v, f"{key}[{i}]") for i, v in enumerate(values)]


def _pick_manifest(ref: OciRef, index: Mapping[str, object]) -> _Descriptor:
    """The index's only manifest, or its only linux/amd64 one."""
    children = _descriptors(ref, index, "manifests")
    if len(children) == 1:
        chosen = children[0]
    else:
        amd64 = [
            c
            for c in children
            if c.platform.get("os") == "linux" and c.platform.get("architecture") == "amd64"
        ]
        if len(amd64) != 1:
            platforms = ", ".join(
                f"{c.platform.get('os', '?')}/{c.platform.get('architecture', '?')}"
                for c in children
            )
            raise ContentFetchError(
                f"{ref}: the index lists {len(children)} manifests ({platforms}), "
                f"{len(amd64)} of them for linux/amd64; expected exactly one"
            )
        chosen = amd64[0]
    if chosen.media_type not in _MANIFESTS:
        raise ContentFetchError(
            f"{ref}: the index's manifest {chosen.digest} has media type {chosen.media_type!r}"
        )
    return chosen


def _is_tar_layer(media_type: str) -> bool:
    return media_type in _TAR_LAYERS or media_type in _OTHER_TAR_LAYERS


def _locate(
    ref: OciRef,
    manifest_digest: str,
    image_digest: str,
    media_type: str,
    manifest: Mapping[str, object],
    file: str | None,
) -> Artifact:
    """Artifact or image, and where ``file`` is in it.

    An image has an image config and only tar layers, none of them titled; everything else is
    an artifact whose layers are files (ORAS titles every file it pushes, image builders never
    title a layer; ORAS gives files the plain tar media type unless told otherwise).
    """
    config = _descriptor(ref, manifest.get("config"), "config")
    layers = _descriptors(ref, manifest, "layers")
    tar = [_is_tar_layer(layer.media_type) for layer in layers]
    image_like = (
        config.media_type in _IMAGE_CONFIGS
        and not manifest.get("artifactType")
        and not any(layer.title is not None for layer in layers)
    )
    if image_like and all(tar):
        return _locate_in_image(ref, manifest_digest, image_digest, media_type, layers, file)
    if image_like and any(tar):
        raise ContentFetchError(f"{ref}: the image mixes tar layers with other media types")
    chosen = _pick_file(ref, layers, file)
    return Artifact(
        ref=ref,
        manifest_digest=manifest_digest,
        blob_digest=chosen.digest,
        size=chosen.size,
        media_type=chosen.media_type,
        path=None,
    )


def _pick_file(ref: OciRef, layers: list[_Descriptor], file: str | None) -> _Descriptor:
    titles = ", ".join(repr(layer.title) for layer in layers)
    if file is None:
        if len(layers) == 1:
            return layers[0]
        raise ContentFetchError(
            f"{ref}: the artifact holds {len(layers)} files ({titles}); name the one to fetch"
        )
    matches = [layer for layer in layers if layer.title == file]
    if not matches:
        raise ContentFetchError(f"{ref}: the artifact has no file {file!r} (it has {titles})")
    if len(matches) > 1:
        raise ContentFetchError(f"{ref}: the artifact has {len(matches)} files titled {file!r}")
    return matches[0]


def _locate_in_image(
    ref: OciRef,
    manifest_digest: str,
    image_digest: str,
    media_type: str,
    layers: list[_Descriptor],
    file: str | None,
) -> Artifact:
    if file is None:
        raise ContentFetchError(
            f"{ref} is an image: name the file to fetch by its absolute path inside it"
        )
    path = _image_path(ref, file)
    for layer in layers:
        if layer.media_type not in _TAR_LAYERS:
            raise _unsupported_layer(ref, layer.digest, layer.media_type)
    return Artifact(
        ref=ref,
        manifest_digest=manifest_digest,
        blob_digest=image_digest,
        size=sum(layer.size for layer in layers),
        media_type=media_type,
        path=path,
        layers=tuple(Layer(d.digest, d.size, d.media_type) for d in reversed(layers)),
    )


def _image_path(ref: OciRef, file: str) -> str:
    """``file`` as ``/a/b`` (repeated and trailing slashes, ``.`` components dropped)."""
    parts = [p for p in file.split("/") if p not in ("", ".")]
    if not file.startswith("/") or not parts or ".." in parts:
        raise ContentFetchError(
            f"{ref}: {file!r} is not an absolute path to a file (like /oval/feed.xml)"
        )
    return "/" + "/".join(parts)


def _unsupported_layer(ref: OciRef, digest: str, media_type: str) -> ContentFetchError:
    return ContentFetchError(
        f"{ref}: layer {digest} has media type {media_type}, which is not supported "
        f"(only {', '.join(sorted(_TAR_LAYERS))})"
    )


# -- layers ----------------------------------------------------------------------------------


def _member_name(name: str) -> str:
    """A tar member's name as a path relative to the root: no ``./`` or ``/`` prefix, no
    repeated or trailing slashes."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.isdir():
        return "a directory"
    return "not a regular file"


class _LayerTar(tarfile.TarFile):
    """tarfile.TarFile with the attribute where it keeps every header read (typeshed omits it):
    in stream mode nothing else needs them, and a layer may have a great many."""

    members: list[tarfile.TarInfo]


def _scan_layer(tar: _LayerTar, target: str, sink: _Sink) -> str | None:
    """What one layer says about ``target``: ``"file"`` (then written to the sink), None
    (nothing: look in the layer below), or why the path is unusable (a link, deleted).

    Within a layer the last entry for a path wins; a whiteout hides only lower layers, so the
    layer's own entry for the path wins over it.
    """
    ancestors = [posixpath.dirname(target)]
    while ancestors[-1]:
        ancestors.append(posixpath.dirname(ancestors[-1]))
    ancestors.pop()  # the root: neither whited out nor replaced
    whiteouts = {
        posixpath.join(posixpath.dirname(p), f".wh.{posixpath.basename(p)}"): p
        for p in (target, *ancestors)
    }
    opaques = {f"{a}/.wh..wh..opq" for a in ancestors}
    state: str | None = None
    hidden: str | None = None
    while (member := tar.next()) is not None:
        tar.members.clear()  # see _LayerTar
        name = _member_name(member.name)
        if name == target:
            if member.isreg():
                source = tar.extractfile(member)
                if source is None:  # tarfile gives every regular file a reader
                    raise ContentFetchError(f"{sink.label}: tarfile cannot read /{target}")
                sink.begin(member.size)
                while chunk := source.read(_CHUNK):
                    sink.write(chunk)
                state = "file"
            else:
                state = f"is {_kind(member)}; links and other types are never followed"
        elif name in whiteouts:
            hidden = f"is deleted (whiteout {member.name!r} for /{whiteouts[name]})"
        elif name in opaques:
            hidden = f"is hidden (opaque whiteout {member.name!r})"
        elif name in ancestors and not member.isdir():
            hidden = f"cannot exist: its parent /{name} is {_kind(member)}, which is never followed"
    return state if state is not None else hidden


class _BlobReader:
    """A blob response as a stream that checks the descriptor's size and digest as it goes."""

    def __init__(self, response: http.client.HTTPResponse, layer: Layer, label: str) -> None:
        self._response = response
        self._layer = layer
        self._label = label
        self._hash = hashlib.sha256()
        self._count = 0
        self._done = False

    def read(self, size: int = _CHUNK, /) -> bytes:
        if self._done:
            return b""
        want = _CHUNK if size < 0 else min(size, _CHUNK)
        try:
            chunk = self._response.read(want)
        except (http.client.HTTPException, OSError) as exc:
            raise ContentFetchError(
                f"{self._label}: reading blob {self._layer.digest} failed: {exc}"
            ) from exc
        self._count += len(chunk)
        if self._count > self._layer.size:
            raise ContentFetchError(
                f"{self._label}: blob {self._layer.digest} is larger than the "
                f"{self._layer.size} bytes its descriptor says",
                invalid=True,
            )
        if chunk:
            self._hash.update(chunk)
            return chunk
        self._done = True
        if self._count != self._layer.size:
            raise ContentFetchError(
                f"{self._label}: blob {self._layer.digest} ended after {self._count} of "
                f"{self._layer.size} bytes"
            )
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._layer.digest:
            raise ContentFetchError(
                f"{self._label}: blob {self._layer.digest} hashes to {actual}", invalid=True
            )
        return b""

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    # The rest of what tarfile expects of a file object; it only ever reads a stream.
    def write(self, data: bytes, /) -> NoReturn:
        raise OSError("a blob stream is read-only")

    def seek(self, pos: int, /) -> NoReturn:
        raise OSError("a blob stream cannot seek")

    def tell(self) -> int:
        return self._count

    def close(self) -> None:
        self._response.close()


class _Sink:
    """The destination file, opened on first write, hashed and bounded as it is written."""

    def __init__(self, dest: Path, max_bytes: int, label: str) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.label = label
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._count = 0

    def begin(self, size: int = 0) -> None:
        """Start (over) with an empty file; ``size`` is the size announced for it."""
        if size > self.max_bytes:
            raise self._too_large(f"{size} bytes")
        if self._file is None:
            self._file = self.dest.open("wb")
        else:
            self._file.seek(0)
            self._file.truncate()
        self._hash = hashlib.sha256()
        self._count = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError("_Sink.write before begin")
        self._count += len(data)
        if self._count > self.max_bytes:
            raise self._too_large(f"more than {self.max_bytes} bytes")
        self._file.write(data)
        self._hash.update(data)

    def _too_large(self, size: str) -> ContentFetchError:
        return ContentFetchError(
            f"{self.label}: the content is {size}, over the bound of {self.max_bytes} bytes"
        )

    def close(self) -> str:
        if self._file is None:
            raise RuntimeError("_Sink.close before begin")
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Remove the destination if this sink wrote it."""
        if self._file is not None:
            self._file.close()
            self.dest.unlink(missing_ok=True)


# -- HTTP helpers ----------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hands every redirect back as an HTTPError: :meth:`RegistryClient._send` follows it
    itself, so the Authorization header never leaves the registry's origin (urllib's own
    handler copies it to any host)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> None:
        return None


class _Status(Exception):
    """A final HTTP status other than 2xx (internal: turned into ContentFetchError)."""

    def __init__(self, code: int, url: str, challenges: list[str], detail: str) -> None:
        super().__init__(f"HTTP {code} from {url}")
        self.code = code
        self.url = url
        self.challenges = challenges
        self.detail = detail


def _status_error(
    ref: OciRef, what: str, status: _Status, with_credentials: bool
) -> ContentFetchError:
    if status.code == 404:
        kind, _, digest = what.partition(" ")
        return ContentFetchError(f"{ref}: {kind} unknown" + (f": {digest}" if digest else ""))
    if status.code == 401:
        why = (
            f"the credentials for {ref.registry} were rejected"
            if with_credentials
            else "authentication required"
        )
        return ContentFetchError(f"{ref}: {what}: {why} (HTTP 401)")
    return ContentFetchError(f"{ref}: {what}: HTTP {status.code}{status.detail} ({status.url})")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """``: CODE message`` from a registry's JSON error body, else its reason phrase."""
    reason = f" {exc.reason}" if exc.reason else ""
    try:
        body = exc.read(_ERROR_BODY_BYTES)
        doc: object = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return reason
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return reason
    shown = [
        f"{e.get('code', '?')} {e.get('message', '')}".strip()
        for e in errors[:3]
        if isinstance(e, dict)
    ]
    return f"{reason}: {'; '.join(shown)}" if shown else reason


def _read_limited(resp: http.client.HTTPResponse, limit: int, label: str) -> bytes:
    """The whole body, refused past ``limit`` bytes (by Content-Length or while reading)."""
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ContentFetchError(f"{label}: {length} bytes, more than the limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := resp.read(min(_CHUNK, limit + 1 - total)):
            total += len(chunk)
            if total > limit:
                raise ContentFetchError(f"{label}: more than the limit of {limit} bytes")
            chunks.append(chunk)
    except (http.client.HTTPException, OSError) as exc:
        raise ContentFetchError(f"{label}: reading the answer failed: {exc}") from exc
    return b"".join(chunks)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port or default


def _redirect_target(url: str, location: str, label: str) -> str:
    target = urllib.parse.urljoin(url, location)
    scheme = urllib.parse.urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise ContentFetchError(f"{label}: {url} redirects to {target}, not an http(s) URL")
    if scheme == "http" and url.startswith("https:"):
        raise ContentFetchError(f"{label}: {url} redirects from https to {target}; refused")
    return target


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for key, value in _CHALLENGE_PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return scheme.lower(), params


def _basic(creds: tuple[str, str]) -> str:
    user, password = creds
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _auth_host(key: str) -> str:
    """A ``.dockerconfigjson`` auths key as ``host[:port]`` (``https://host/v1/`` -> ``host``)."""
    if "://" in key:
        return urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0]


def auths_from_config(doc: object) -> dict[str, tuple[str, str]]:
    """``{host[:port]: (user, password)}`` from a containers-auth / ``.dockerconfigjson``
    document: each entry's ``username``/``password``, else its base64 ``auth``; entries that
    are neither are skipped."""
    auths = doc.get("auths") if isinstance(doc, Mapping) else None
    out: dict[str, tuple[str, str]] = {}
    for key, entry in (auths if isinstance(auths, Mapping) else {}).items():
        creds = _credentials(entry) if isinstance(entry, Mapping) else None
        if creds is not None:
            out[_auth_host(str(key))] = creds
    return out


def _credentials(entry: Mapping[str, object]) -> tuple[str, str] | None:
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str):
        return user, password
    try:
        decoded = base64.b64decode(str(entry.get("auth") or ""), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None
