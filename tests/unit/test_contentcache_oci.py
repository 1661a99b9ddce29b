"""The OCI client of the content cache against real registries on 127.0.0.1.

Most tests push artifacts and images to Debian's docker-registry (plain HTTP, one without and
one with basic auth) and read them back with :class:`RegistryClient`. What that registry cannot
show here is tested against :class:`FakeRegistry`, a scripted stand-in (NOT docker-registry)
also on 127.0.0.1: Bearer token auth (docker-registry's needs a separate token server),
redirects to blob storage, TLS, and registries that serve bytes other than the ones promised.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scapguard.contentcache.errors import ContentFetchError
from scapguard.contentcache.oci import (
    Artifact,
    OciRef,
    RegistryClient,
    auths_from_config,
    parse_reference,
)
from scapguard_dev.pki import CertificateAuthority, KeyPair
from scapguard_dev.ports import free_port
from scapguard_dev.registry import BasicAuth, Registry
from tests.ociartifacts import (
    CONTENT_TYPE,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Hardlink,
    Symlink,
    artifact_manifest,
    push_artifact,
    push_image,
    push_index,
    sha256_digest,
)

D1 = "sha256:" + "1" * 64
AUTH = BasicAuth("puller", "s3cret-pw")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry requiring basic auth (``AUTH``)."""
    with Registry(tmp_path_factory.mktemp("auth-registry"), auth=AUTH) as reg:
        yield reg


@pytest.fixture
def client(registry: Registry) -> RegistryClient:
    return RegistryClient(insecure=[registry.host], timeout=30)


def ref(host: str, rest: str) -> OciRef:
    return parse_reference(f"{host}/{rest}")


# -- references ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.example:5000/a/b:tag", OciRef("registry.example:5000", "a/b", "tag", None)),
        ("localhost/feeds@" + D1, OciRef("localhost", "feeds", None, D1)),
        ("mirror.example/oval/rhel:8@" + D1, OciRef("mirror.example", "oval/rhel", "8", D1)),
        (
            "127.0.0.1:5000/x/y-z__w.v:1.0_rc-2",
            OciRef("127.0.0.1:5000", "x/y-z__w.v", "1.0_rc-2", None),
        ),
        ("localhost:5000/a:b", OciRef("localhost:5000", "a", "b", None)),
    ],
)
def test_parse_reference_and_back(text: str, expected: OciRef) -> None:
    assert parse_reference(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rhel:8",  # no registry
        "library/rhel:8",  # first component is no host
        "https://mirror.example/a:b",  # scheme
        "mirror.example/a",  # neither tag nor digest
        "mirror.example/A:b",  # upper-case repository
        "mirror.example//a:b",
        "mirror.example/a:-b",
        "mirror.example/a@sha256:abc",
        "mirror.example/a@md5:" + "1" * 32,
        "mirror.example/a:b@",
        "bad_host.example/a:b",
    ],
)
def test_parse_reference_refuses_naming_the_reference(text: str) -> None:
    with pytest.raises(ContentFetchError, match=re.escape(repr(text))):
        parse_reference(text)


def test_a_hand_made_reference_is_checked_before_it_becomes_a_url(client: RegistryClient) -> None:
    with pytest.raises(ContentFetchError, match=r"not (a valid|an) OCI reference"):
        client.resolve(OciRef("127.0.0.1:1", "../../etc", "x", None))
    with pytest.raises(ContentFetchError, match=r"not (a valid|an) OCI reference"):
        client.resolve(OciRef("127.0.0.1:1", "a", None, None))


# -- artifacts on docker-registry ------------------------------------------------------------

FILES = {
    "rhel-8.oval.xml.bz2": b"BZh91AY&SY fake bzip2 " + bytes(range(256)),
    "ssg-rhel8-ds.xml": b"<ds:data-stream-collection/>\n",
}


def test_artifact_by_tag_by_digest_and_by_both(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    digest = push_artifact(registry.host, "cc/artifact", "v1", FILES)
    content = FILES["ssg-rhel8-ds.xml"]

    art = client.resolve(ref(registry.host, "cc/artifact:v1"), "ssg-rhel8-ds.xml")
    assert art.manifest_digest == digest
    assert art.blob_digest == sha256_digest(content)
    assert (art.size, art.media_type, art.path) == (len(content), CONTENT_TYPE, None)
    dest = tmp_path / "ds.xml"
    assert client.fetch(art, dest, max_bytes=len(content)) == sha256_hex(content)
    assert dest.read_bytes() == content

    for text in (f"cc/artifact@{digest}", f"cc/artifact:v1@{digest}"):
        pinned = client.resolve(ref(registry.host, text), "rhel-8.oval.xml.bz2")
        assert pinned.manifest_digest == digest
        assert pinned.blob_digest == sha256_digest(FILES["rhel-8.oval.xml.bz2"])
        dest = tmp_path / "oval.bz2"
        assert client.fetch(pinned, dest, max_bytes=1 << 20) == sha256_hex(
            FILES["rhel-8.oval.xml.bz2"]
        )
        assert dest.read_bytes() == FILES["rhel-8.oval.xml.bz2"]


def test_artifact_file_selection(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_artifact(registry.host, "cc/select", "two", FILES)
    push_artifact(registry.host, "cc/select", "one", {"feed.xml": b"<oval/>"})

    only = client.resolve(ref(registry.host, "cc/select:one"))
    assert only.blob_digest == sha256_digest(b"<oval/>")
    assert client.fetch(only, tmp_path / "f", max_bytes=100) == sha256_hex(b"<oval/>")

    two = ref(registry.host, "cc/select:two")
    with pytest.raises(ContentFetchError) as info:
        client.resolve(two)
    assert str(two) in str(info.value)
    assert "'rhel-8.oval.xml.bz2'" in str(info.value)
    assert "'ssg-rhel8-ds.xml'" in str(info.value)
    with pytest.raises(ContentFetchError, match=r"no file 'nope.xml' .*'ssg-rhel8-ds.xml'"):
        client.resolve(two, "nope.xml")


def test_unknown_manifest_and_blob(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_artifact(registry.host, "cc/unknown", "v1", {"f": b"x"})
    for text in ("cc/unknown:v2", f"cc/unknown@{D1}", "cc/never-pushed:v1"):
        missing = ref(registry.host, text)
        with pytest.raises(ContentFetchError, match=re.escape(f"{missing}: manifest unknown")):
            client.resolve(missing, "f")

    art = client.resolve(ref(registry.host, "cc/unknown:v1"), "f")
    lost = dataclasses.replace(art, blob_digest=sha256_digest(b"y"))
    dest = tmp_path / "f"
    with pytest.raises(ContentFetchError, match=re.escape(f"{art.ref}: blob unknown: ")):
        client.fetch(lost, dest, max_bytes=10)
    assert not dest.exists()


def test_artifact_over_the_bound(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_artifact(registry.host, "cc/big", "v1", {"big": b"x" * 1000})
    art = client.resolve(ref(registry.host, "cc/big:v1"))
    dest = tmp_path / "big"
    with pytest.raises(
        ContentFetchError, match=rf"{re.escape(str(art.ref))}: .*bound of 999 bytes"
    ):
        client.fetch(art, dest, max_bytes=999)
    assert not dest.exists()
    assert client.fetch(art, dest, max_bytes=1000) == sha256_hex(b"x" * 1000)


def test_oversize_manifest(registry: Registry, tmp_path: Path) -> None:
    push_artifact(registry.host, "cc/manifest-size", "v1", FILES)
    small = RegistryClient(insecure=[registry.host], max_manifest_bytes=100)
    with pytest.raises(ContentFetchError, match=r"cc/manifest-size:v1: manifest: .*limit of 100"):
        small.resolve(ref(registry.host, "cc/manifest-size:v1"))


# -- images on docker-registry ---------------------------------------------------------------


def test_image_file_comes_from_the_topmost_layer_that_has_it(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    digest = push_image(
        registry.host,
        "cc/image",
        "v1",
        [
            {"etc/os-release": b"ID=test\n", "/oval/a.xml": b"old a", "./oval/b.xml": b"base b"},
            {"oval/a.xml": b"new a", "oval/c.xml": b"c"},
        ],
    )
    art = client.resolve(ref(registry.host, "cc/image:v1"), "/oval/a.xml")
    assert (art.manifest_digest, art.blob_digest, art.path) == (digest, digest, "/oval/a.xml")
    assert [layer.media_type for layer in art.layers] == [OCI_LAYER_GZIP, OCI_LAYER_GZIP]
    assert art.size == sum(layer.size for layer in art.layers)

    dest = tmp_path / "out"
    assert client.fetch(art, dest, max_bytes=100) == sha256_hex(b"new a")
    assert dest.read_bytes() == b"new a"
    # "./oval/b.xml" in the bottom layer; the requested path is normalised too.
    lower = client.resolve(art.ref, "//oval/./b.xml")
    assert lower.path == "/oval/b.xml"
    assert client.fetch(lower, dest, max_bytes=100) == sha256_hex(b"base b")
    assert dest.read_bytes() == b"base b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with pytest.raises(
        ContentFetchError, match=re.escape("/oval/none.xml is not in any of the image's 2 layers")
    ):
        client.fetch(client.resolve(art.ref, "/oval/none.xml"), tmp_path / "none", max_bytes=9)
    assert not (tmp_path / "none").exists()


def test_image_whiteouts_delete(registry: Registry, client: RegistryClient, tmp_path: Path) -> None:
    base = {"oval/b.xml": b"b", "oval/keep.xml": b"keep"}
    push_image(registry.host, "cc/whiteout", "file", [base, {"oval/b.xml": None}])
    push_image(registry.host, "cc/whiteout", "dir", [base, {"oval": None}])
    push_image(
        registry.host, "cc/whiteout", "opaque", [base, {"oval/.wh..wh..opq": b"", "oval/n": b""}]
    )
    push_image(
        registry.host, "cc/whiteout", "back", [base, {"oval/b.xml": None}, {"oval/b.xml": b"2"}]
    )

    dest = tmp_path / "out"
    for tag, why in [("file", "is deleted"), ("dir", "is deleted"), ("opaque", "is hidden")]:
        art = client.resolve(ref(registry.host, f"cc/whiteout:{tag}"), "/oval/b.xml")
        with pytest.raises(ContentFetchError, match=f"cc/whiteout:{tag}: /oval/b.xml .*{why}"):
            client.fetch(art, dest, max_bytes=100)
        assert not dest.exists()
    # A whiteout hides only what is below it.
    kept = client.resolve(ref(registry.host, "cc/whiteout:file"), "/oval/keep.xml")
    assert client.fetch(kept, dest, max_bytes=100) == sha256_hex(b"keep")
    back = client.resolve(ref(registry.host, "cc/whiteout:back"), "/oval/b.xml")
    assert client.fetch(back, dest, max_bytes=100) == sha256_hex(b"2")
    assert dest.read_bytes() == b"2"


def test_image_links_are_never_followed(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_image(
        registry.host,
        "cc/links",
        "v1",
        [
            {"real/a.xml": b"secret"},
            {
                "oval/sym.xml": Symlink("/real/a.xml"),
                "oval/hard.xml": Hardlink("real/a.xml"),
                "feeds": Symlink("real"),
                "oval/dir.xml/x": b"",
            },
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        ("/oval/sym.xml", "is a symbolic link to '/real/a.xml'"),
        ("/oval/hard.xml", "is a hard link to 'real/a.xml'"),
        ("/feeds/a.xml", "its parent /feeds is a symbolic link to 'real'"),
        ("/oval/dir.xml", "is a directory"),
    ]
    for path, why in cases:
        art = client.resolve(ref(registry.host, "cc/links:v1"), path)
        with pytest.raises(ContentFetchError, match=re.escape(why)):
            client.fetch(art, out / "dest", max_bytes=100)
    assert list(out.iterdir()) == []


def test_image_member_over_the_bound(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_image(registry.host, "cc/image-big", "v1", [{"oval/big.xml": b"y" * 5000}])
    art = client.resolve(ref(registry.host, "cc/image-big:v1"), "/oval/big.xml")
    dest = tmp_path / "big"
    with pytest.raises(ContentFetchError, match=r"cc/image-big:v1: .*5000 bytes.* bound of 4999"):
        client.fetch(art, dest, max_bytes=4999)
    assert not dest.exists()
    assert client.fetch(art, dest, max_bytes=5000) == sha256_hex(b"y" * 5000)


def test_image_needs_an_absolute_file_and_readable_layers(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    push_image(registry.host, "cc/image-file", "v1", [{"oval/a.xml": b"a"}])
    image = ref(registry.host, "cc/image-file:v1")
    with pytest.raises(ContentFetchError, match="is an image: name the file"):
        client.resolve(image)
    for bad in ("oval/a.xml", "/", "/oval/../a.xml"):
        with pytest.raises(ContentFetchError, match="not an absolute path"):
            client.resolve(image, bad)

    push_image(registry.host, "cc/image-zstd", "v1", [{"a": b"a"}], layer_media_type=OCI_LAYER_ZSTD)
    with pytest.raises(ContentFetchError, match=r"tar\+zstd, which is not supported"):
        client.resolve(ref(registry.host, "cc/image-zstd:v1"), "/a")

    push_image(registry.host, "cc/image-tar", "v1", [{"a": b"plain"}], layer_media_type=OCI_LAYER)
    art = client.resolve(ref(registry.host, "cc/image-tar:v1"), "/a")
    assert [layer.media_type for layer in art.layers] == [OCI_LAYER]
    assert client.fetch(art, tmp_path / "a", max_bytes=10) == sha256_hex(b"plain")


def test_docker_images_and_indexes(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    host = registry.host
    amd64 = push_image(host, "cc/multi", "amd64", [{"f": b"amd64"}], docker=True)
    arm64 = push_image(host, "cc/multi", "arm64", [{"f": b"arm64"}])
    dest = tmp_path / "f"

    art = client.resolve(ref(host, "cc/multi:amd64"), "/f")
    assert art.media_type == DOCKER_MANIFEST
    assert client.fetch(art, dest, max_bytes=10) == sha256_hex(b"amd64")

    linux_amd64 = {"os": "linux", "architecture": "amd64"}
    linux_arm64 = {"os": "linux", "architecture": "arm64"}
    for docker in (False, True):
        index = push_index(
            host, "cc/multi", "index", [(arm64, linux_arm64), (amd64, linux_amd64)], docker=docker
        )
        art = client.resolve(ref(host, f"cc/multi:index@{index}"), "/f")
        assert (art.manifest_digest, art.blob_digest) == (index, amd64)
        assert client.fetch(art, dest, max_bytes=10) == sha256_hex(b"amd64")
        assert dest.read_bytes() == b"amd64"

    single = push_index(host, "cc/multi", "single", [(arm64, None)])
    art = client.resolve(ref(host, "cc/multi:single"), "/f")
    assert (art.manifest_digest, art.blob_digest) == (single, arm64)
    assert client.fetch(art, dest, max_bytes=10) == sha256_hex(b"arm64")

    push_index(host, "cc/multi", "ambiguous", [(arm64, linux_amd64), (amd64, linux_amd64)])
    with pytest.raises(ContentFetchError, match="2 of them for linux/amd64; expected exactly one"):
        client.resolve(ref(host, "cc/multi:ambiguous"), "/f")


# -- basic auth on docker-registry ---------------------------------------------------------


def test_basic_auth(auth_registry: Registry, tmp_path: Path) -> None:
    host = auth_registry.host
    digest = push_artifact(host, "cc/private", "v1", {"feed.xml": b"<private/>"}, auth=AUTH)
    private = ref(host, "cc/private:v1")

    anonymous = RegistryClient(insecure=[host])
    with pytest.raises(ContentFetchError, match=re.escape(f"{private}: authentication required")):
        anonymous.resolve(private)
    wrong = RegistryClient(auths={host: (AUTH.username, "wrong")}, insecure=[host])
    with pytest.raises(ContentFetchError, match=f"credentials for {host} were rejected"):
        wrong.resolve(private)

    # Keys as a .dockerconfigjson may write them.
    for key in (host, f"http://{host}/v2/"):
        client = RegistryClient(auths={key: (AUTH.username, AUTH.password)}, insecure=[host])
        art = client.resolve(private)
        assert art.manifest_digest == digest
        dest = tmp_path / "feed.xml"
        assert client.fetch(art, dest, max_bytes=100) == sha256_hex(b"<private/>")
        assert dest.read_bytes() == b"<private/>"


# -- transport failures ----------------------------------------------------------------------


def test_connection_refused_and_timeout() -> None:
    closed = f"127.0.0.1:{free_port()}"
    target = ref(closed, "a:b")
    with pytest.raises(ContentFetchError, match=re.escape(f"{target}: manifest: http://{closed}")):
        RegistryClient(insecure=[closed]).resolve(target)

    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        silent = f"127.0.0.1:{listener.getsockname()[1]}"
        target = ref(silent, "a:b")
        with pytest.raises(
            ContentFetchError, match=re.escape(f"{target}: manifest: ") + ".*timed out"
        ):
            RegistryClient(insecure=[silent], timeout=0.5).resolve(target)


def test_https_to_a_plain_http_registry_fails_cleanly(registry: Registry) -> None:
    target = ref(registry.host, "cc/anything:v1")
    with pytest.raises(ContentFetchError, match=re.escape(f"{target}: manifest: https://")):
        RegistryClient(timeout=10).resolve(target)


# -- a fake registry for what docker-registry does not do here --------------------------------


class _Server(ThreadingHTTPServer):
    fake: FakeRegistry


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.fake.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeRegistry:
    """NOT docker-registry: a scripted registry v2 API on 127.0.0.1 that records every request.

    Serves ``manifests`` (tag or digest -> (media type, bytes), as given, so they may lie) and
    ``blobs`` (digest -> bytes, ditto); ``/token`` is its Bearer token endpoint and
    ``/storage/<digest>`` its "blob storage".
    """

    def __init__(self, tls: KeyPair | None = None) -> None:
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.basic: tuple[str, str] | None = None  # /v2/ wants basic auth
        self.token: str | None = None  # /v2/ wants this Bearer token
        self.token_creds: tuple[str, str] | None = None  # /token wants basic auth
        self.realm: str | None = None  # default: our /token
        self.redirect_blobs: str | None = None  # blobs redirect to this URL + digest
        self.fail_with: int | None = None  # /v2/ answers this status
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def require_bearer(self, token: str, creds: tuple[str, str] | None = None) -> None:
        """/v2/ wants ``token``, which /token hands out (to ``creds`` only, if given)."""
        self.token, self.token_creds = token, creds

    def add_artifact(self, tag: str, files: Mapping[str, bytes]) -> str:
        manifest, blobs = artifact_manifest(files)
        raw = json.dumps(manifest).encode()
        self.manifests[tag] = self.manifests[sha256_digest(raw)] = (OCI_MANIFEST, raw)
        self.blobs.update(blobs)
        return sha256_digest(raw)

    def paths(self, prefix: str) -> list[str]:
        return [path for path, _ in self.requests if path.startswith(prefix)]

    def headers_of(self, prefix: str) -> list[dict[str, str]]:
        return [headers for path, headers in self.requests if path.startswith(prefix)]

    def handle(self, h: _Handler) -> None:
        self.requests.append((h.path, dict(h.headers.items())))
        path = urllib.parse.urlsplit(h.path).path
        authorization = h.headers.get("Authorization")
        if path == "/token":
            if self.token_creds is not None and authorization != _basic(*self.token_creds):
                return self._send(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return self._send(h, 200, json.dumps({"access_token": self.token}).encode())
        if path.startswith("/storage/"):
            return self._blob(h, path.removeprefix("/storage/"))
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
        if match is None:
            return self._send(h, 404, b"")
        repo, kind, reference = match.groups()
        if self.fail_with is not None:
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}'
            return self._send(h, self.fail_with, body)
        if self.token is not None and authorization != f"Bearer {self.token}":
            realm = self.realm or f"{self.url}/token"
            challenge = f'Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull"'
            return self._send(h, 401, b"", {"WWW-Authenticate": challenge})
        if self.basic is not None and authorization != _basic(*self.basic):
            return self._send(h, 401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
        if kind == "manifests":
            if reference not in self.manifests:
                return self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            media_type, body = self.manifests[reference]
            return self._send(h, 200, body, {"Content-Type": media_type})
        if self.redirect_blobs is not None:
            return self._send(h, 307, b"", {"Location": self.redirect_blobs + reference})
        return self._blob(h, reference)

    def _blob(self, h: _Handler, digest: str) -> None:
        if digest not in self.blobs:
            return self._send(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        return self._send(h, 200, self.blobs[digest], {"Content-Type": "application/octet-stream"})

    @staticmethod
    def _send(
        h: _Handler, code: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        h.send_response(code)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyPair]:
    """A CA and a serving certificate for 127.0.0.1."""
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"), "ca")
    return ca.cert_path, ca.issue("registry", "127.0.0.1", ips=("127.0.0.1",), server=True)


def test_bearer_token_with_credentials_cached_per_repository(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.require_bearer("t0ken.abc", ("robot", "pw"))
    digest = fake.add_artifact("v1", {"feed.xml": b"<feed/>"})
    target = ref(fake.host, "mirror/feeds:v1")

    client = RegistryClient(auths={fake.host: ("robot", "pw")}, insecure=[fake.host])
    art = client.resolve(target)
    assert art.manifest_digest == digest
    assert client.fetch(art, tmp_path / "f", max_bytes=100) == sha256_hex(b"<feed/>")
    assert client.resolve(target).blob_digest == art.blob_digest

    tokens = fake.paths("/token")
    assert len(tokens) == 1
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(tokens[0]).query))
    assert query == {"service": "fake", "scope": "repository:mirror/feeds:pull"}
    assert fake.headers_of("/token")[0]["Authorization"] == _basic("robot", "pw")
    registry_auth = [h.get("Authorization") for h in fake.headers_of("/v2/")]
    # anonymous, then the token for the first manifest, blob and second manifest
    assert registry_auth == [None, "Bearer t0ken.abc", "Bearer t0ken.abc", "Bearer t0ken.abc"]

    with pytest.raises(
        ContentFetchError, match=re.escape(f"{target}: token from ") + ".*authentication required"
    ):
        RegistryClient(insecure=[fake.host]).resolve(target)
    with pytest.raises(ContentFetchError, match=r"credentials for .* were rejected"):
        RegistryClient(auths={fake.host: ("robot", "bad")}, insecure=[fake.host]).resolve(target)


def test_anonymous_bearer_token(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.require_bearer("anon")
    fake.add_artifact("v1", {"feed.xml": b"<public/>"})
    client = RegistryClient(insecure=[fake.host])
    art = client.resolve(ref(fake.host, "public/feeds:v1"))
    assert client.fetch(art, tmp_path / "f", max_bytes=100) == sha256_hex(b"<public/>")
    assert "Authorization" not in fake.headers_of("/token")[0]


def test_tls_with_ca_file_and_a_plain_http_realm_refused(
    tls_pair: tuple[Path, KeyPair], tmp_path: Path
) -> None:
    ca_file, pair = tls_pair
    fake = FakeRegistry(tls=pair)
    token_server = FakeRegistry()
    try:
        fake.require_bearer("tls-token")
        token_server.require_bearer("tls-token")
        fake.add_artifact("v1", {"f": b"over tls"})
        target = ref(fake.host, "secure/feeds:v1")

        with pytest.raises(
            ContentFetchError,
            match=re.escape(f"{target}: manifest: https://") + ".*CERTIFICATE_VERIFY_FAILED",
        ):
            RegistryClient(timeout=10).resolve(target)

        client = RegistryClient(ca_file=str(ca_file), timeout=10)
        art = client.resolve(target)  # https realm: its own /token
        assert client.fetch(art, tmp_path / "f", max_bytes=100) == sha256_hex(b"over tls")

        fake.realm = f"{token_server.url}/token"
        with pytest.raises(ContentFetchError, match="is not https; refusing to ask it for a token"):
            RegistryClient(ca_file=str(ca_file), timeout=10).resolve(target)
        assert token_server.requests == []
    finally:
        fake.close()
        token_server.close()


def test_redirects_keep_authorization_only_on_the_registry(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    storage = FakeRegistry()
    try:
        fake.basic = ("robot", "pw")
        fake.add_artifact("v1", {"feed.xml": b"<redirected/>"})
        storage.blobs.update(fake.blobs)
        client = RegistryClient(auths={fake.host: ("robot", "pw")}, insecure=[fake.host])
        target = ref(fake.host, "mirror/feeds:v1")

        fake.redirect_blobs = f"{storage.url}/storage/"
        art = client.resolve(target)
        assert client.fetch(art, tmp_path / "f", max_bytes=100) == sha256_hex(b"<redirected/>")
        assert (tmp_path / "f").read_bytes() == b"<redirected/>"
        assert storage.paths("/storage/") == [f"/storage/{art.blob_digest}"]
        assert "Authorization" not in storage.headers_of("/storage/")[0]
        assert fake.headers_of("/v2/mirror/feeds/blobs/")[-1]["Authorization"] == _basic(
            "robot", "pw"
        )

        fake.redirect_blobs = f"{fake.url}/storage/"  # same origin: the credentials go along
        assert client.fetch(art, tmp_path / "f", max_bytes=100) == sha256_hex(b"<redirected/>")
        assert fake.headers_of("/storage/")[-1]["Authorization"] == _basic("robot", "pw")
    finally:
        storage.close()


def test_bytes_other_than_promised_are_invalid(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_artifact("v1", {"feed.xml": b"<genuine/>"})
    client = RegistryClient(insecure=[fake.host])
    target = ref(fake.host, "mirror/feeds:v1")
    art = client.resolve(target)

    # The manifest served under a pinned digest is another one.
    other = fake.add_artifact("v2", {"feed.xml": b"<other/>"})
    fake.manifests[digest] = fake.manifests[other]
    with pytest.raises(ContentFetchError, match=f"hashes to {other}, not {digest}") as info:
        client.resolve(ref(fake.host, f"mirror/feeds:v1@{digest}"))
    assert info.value.invalid

    dest = tmp_path / "f"
    for served in (b"<tampered>", b"<genuine/> and more"):
        fake.blobs[art.blob_digest] = served
        with pytest.raises(
            ContentFetchError, match=re.escape(f"{target}: blob {art.blob_digest}")
        ) as info:
            client.fetch(art, dest, max_bytes=100)
        assert info.value.invalid
        assert not dest.exists()


def test_bad_json_and_server_errors(fake: FakeRegistry) -> None:
    client = RegistryClient(insecure=[fake.host])
    fake.manifests["junk"] = (OCI_MANIFEST, b"{not json")
    fake.manifests["list"] = (OCI_INDEX, b"[]")
    config = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": D1, "size": 2}
    for tag, manifest in {
        "noconfig": {"schemaVersion": 2},
        "nolayers": {"schemaVersion": 2, "config": config, "layers": []},
        "schema1": {"schemaVersion": 1, "config": config, "layers": [config]},
    }.items():
        fake.manifests[tag] = (OCI_MANIFEST, json.dumps(manifest).encode())
    cases = {
        "junk": "manifest: not JSON",
        "list": "manifest: not a JSON object",
        "noconfig": "config is not a descriptor object",
        "nolayers": "the manifest's layers is not a non-empty list",
        "schema1": "manifest: schemaVersion is not 2",
    }
    for tag, why in cases.items():
        target = ref(fake.host, f"r/x:{tag}")
        with pytest.raises(ContentFetchError, match=re.escape(f"{target}: {why}")):
            client.resolve(target)

    fake.require_bearer("t")
    fake.realm = "ftp://127.0.0.1/token"
    with pytest.raises(
        ContentFetchError, match=re.escape("token realm 'ftp://127.0.0.1/token' is not an http")
    ):
        client.resolve(ref(fake.host, "r/x:junk"))


def test_server_errors_name_the_status(fake: FakeRegistry, tmp_path: Path) -> None:
    client = RegistryClient(insecure=[fake.host])
    target = ref(fake.host, "r/x:v1")
    fake.fail_with = 503
    with pytest.raises(
        ContentFetchError,
        match=re.escape(f"{target}: manifest: HTTP 503 ") + ".*UNAVAILABLE try later",
    ):
        client.resolve(target)

    fake.fail_with = None
    art = Artifact(
        ref=target, manifest_digest=D1, blob_digest=D1, size=1, media_type=CONTENT_TYPE, path=None
    )
    fake.redirect_blobs = f"http://127.0.0.1:{free_port()}/storage/"  # nothing listens there
    with pytest.raises(
        ContentFetchError, match=re.escape(f"{target}: blob {D1}: {fake.redirect_blobs}")
    ):
        client.fetch(art, tmp_path / "f", max_bytes=1)
    assert not (tmp_path / "f").exists()


def test_a_tag_check_reads_credentials_only_when_the_registry_is_asked(
    registry: Registry, tmp_path: Path
) -> None:
    """Pull secrets cost API reads: a check that is not due answers from the record alone."""
    from scapguard.contentcache.cache import ContentCache
    from scapguard.contentcache.store import ContentStore

    now = [1000.0]
    store = ContentStore(tmp_path / "cache", max_bytes=1 << 30, clock=lambda: now[0])
    cache = ContentCache(store, catalogue_overrides={}, poll_seconds=600,
                         max_download=1 << 20, timeout=10, clock=lambda: now[0])  # fmt: skip
    push_artifact(registry.host, "cc/polled", "v1", FILES)
    reads: list[int] = []

    def auths() -> dict[str, tuple[str, str]]:
        reads.append(1)
        return {}

    reference = f"{registry.host}/cc/polled:v1"
    first = cache.oci_current(
        reference, "rhel-8.oval.xml.bz2", auths=auths, insecure=[registry.host]
    )
    now[0] += 300
    again = cache.oci_current(
        reference, "rhel-8.oval.xml.bz2", auths=auths, insecure=[registry.host]
    )
    assert first == again == sha256_hex(FILES["rhel-8.oval.xml.bz2"])
    assert len(reads) == 1
    now[0] += 301
    cache.oci_current(reference, "rhel-8.oval.xml.bz2", auths=auths, insecure=[registry.host])
    assert len(reads) == 2


def test_auths_from_config_reads_both_dockerconfigjson_forms() -> None:
    doc = {
        "auths": {
            "registry.internal:5000": {"username": "u", "password": "p"},
            "https://mirror.internal/v1/": {"auth": "dXNlcjpwYTpzcw=="},  # user:pa:ss
            "broken.internal": {"auth": "%%%"},
        }
    }
    assert auths_from_config(doc) == {
        "registry.internal:5000": ("u", "p"),
        "mirror.internal": ("user", "pa:ss"),
    }
