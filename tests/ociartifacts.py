"""Push OCI artifacts, images and indexes to a test registry through its HTTP API.

Plain HTTP to ``registry_host`` (the dev registry on 127.0.0.1): every blob is uploaded with
``POST /v2/<repo>/blobs/uploads/`` then ``PUT <location>?digest=``, then the manifest with
``PUT /v2/<repo>/manifests/<tag>``. Layers are built in memory (test content is small) and
byte-for-byte reproducible (mtime 0, root-owned, gzip without a timestamp).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import tarfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from scapguard_dev.registry import BasicAuth

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
TITLE: Final = "org.opencontainers.image.title"
CONTENT_TYPE: Final = "application/vnd.scapguard.content.v1"


class PushError(RuntimeError):
    """The registry refused an upload."""


@dataclass(frozen=True)
class Symlink:
    """A symbolic link entry in a layer."""

    target: str


@dataclass(frozen=True)
class Hardlink:
    """A hard link entry in a layer (``target``: another member's name)."""

    target: str


#: A layer entry: file content, a link, or None for a whiteout of that path.
Entry = bytes | Symlink | Hardlink | None


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    registry_host: str,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: BasicAuth | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    host, port = registry_host.rsplit(":", 1)
    sent = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(auth.skopeo_creds().encode()).decode()
        sent["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, target, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def push_blob(registry_host: str, repo: str, data: bytes, *, auth: BasicAuth | None = None) -> str:
    """Upload ``data`` as a blob of ``repo``; returns its digest."""
    digest = sha256_digest(data)
    status, headers, body = _request(
        registry_host, "POST", f"/v2/{repo}/blobs/uploads/", body=b"", auth=auth
    )
    location = headers.get("Location")
    if status != 202 or not location:
        raise PushError(f"POST blob upload to {repo}: HTTP {status} {body[:300]!r}")
    parts = urllib.parse.urlsplit(location)
    query = "&".join(q for q in (parts.query, urllib.parse.urlencode({"digest": digest})) if q)
    status, _, body = _request(
        registry_host,
        "PUT",
        f"{parts.path}?{query}",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
    )
    if status != 201:
        raise PushError(f"PUT blob {digest} to {repo}: HTTP {status} {body[:300]!r}")
    return digest


def push_manifest(
    registry_host: str,
    repo: str,
    reference: str,
    manifest: Mapping[str, Any],
    *,
    auth: BasicAuth | None = None,
) -> str:
    """PUT ``manifest`` (its ``mediaType`` as Content-Type); returns the digest of its bytes."""
    raw = json.dumps(manifest, indent=2).encode()
    status, headers, body = _request(
        registry_host,
        "PUT",
        f"/v2/{repo}/manifests/{reference}",
        body=raw,
        headers={"Content-Type": str(manifest["mediaType"])},
        auth=auth,
    )
    if status != 201:
        raise PushError(f"PUT manifest {repo}:{reference}: HTTP {status} {body[:300]!r}")
    digest = sha256_digest(raw)
    if headers.get("Docker-Content-Digest") != digest:
        raise PushError(f"{repo}:{reference}: registry says {headers.get('Docker-Content-Digest')}")
    return digest


def _descriptor(media_type: str, data: bytes, digest: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def push_artifact(
    registry_host: str,
    repo: str,
    tag: str,
    files: Mapping[str, bytes],
    *,
    auth: BasicAuth | None = None,
    media_type: str = CONTENT_TYPE,
) -> str:
    """An ORAS-style artifact (:func:`artifact_manifest`); returns the manifest digest."""
    manifest, blobs = artifact_manifest(files, media_type=media_type)
    for data in blobs.values():
        push_blob(registry_host, repo, data, auth=auth)
    return push_manifest(registry_host, repo, tag, manifest, auth=auth)


def artifact_manifest(
    files: Mapping[str, bytes], *, media_type: str = CONTENT_TYPE
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An ORAS-style artifact manifest (one layer per file, titled with its name, the empty
    config ``{}``) and its blobs by digest."""
    empty = b"{}"
    blobs = {sha256_digest(data): data for data in (empty, *files.values())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": media_type,
        "config": _descriptor(OCI_EMPTY, empty, sha256_digest(empty)),
        "layers": [
            _descriptor(media_type, data, sha256_digest(data), annotations={TITLE: name})
            for name, data in files.items()
        ],
    }
    return manifest, blobs


def layer_tar(entries: Mapping[str, Entry]) -> bytes:
    """An uncompressed tar layer; names are written as given (``./a``, ``/a`` and ``a`` alike),
    parent directories of plain names added first; None is a whiteout ``.wh.<name>``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, entry in entries.items():
            parent = name.strip("/").rsplit("/", 1)[0] if "/" in name.strip("/") else ""
            path = ""
            for part in (p for p in parent.split("/") if p not in ("", ".")):
                path = f"{path}{part}/"
                if path not in dirs:
                    dirs.add(path)
                    tar.addfile(_info(path, tarfile.DIRTYPE, mode=0o755))
            if entry is None:
                head, _, base = name.rpartition("/")
                tar.addfile(_info(f"{head}/.wh.{base}" if head else f".wh.{base}", tarfile.REGTYPE))
            elif isinstance(entry, Symlink):
                tar.addfile(_info(name, tarfile.SYMTYPE, linkname=entry.target))
            elif isinstance(entry, Hardlink):
                tar.addfile(_info(name, tarfile.LNKTYPE, linkname=entry.target))
            else:
                info = _info(name, tarfile.REGTYPE)
                info.size = len(entry)
                tar.addfile(info, io.BytesIO(entry))
    return buf.getvalue()


def _info(name: str, kind: bytes, *, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.linkname = linkname
    return info


def push_image(
    registry_host: str,
    repo: str,
    tag: str,
    layers: Sequence[Mapping[str, Entry]],
    auth: BasicAuth | None = None,
    *,
    layer_media_type: str = OCI_LAYER_GZIP,
    docker: bool = False,
) -> str:
    """An image with ``layers`` bottom first (manifest order), each entry as :func:`layer_tar`.

    Layers are gzip tars unless ``layer_media_type`` is the plain tar type; a zstd type is only
    declared (the bytes stay gzip: the client must refuse it before reading). ``docker``: a
    Docker v2 schema 2 manifest with Docker media types instead of an OCI one.
    """
    descriptors = []
    diff_ids = []
    for entries in layers:
        tar = layer_tar(entries)
        diff_ids.append(sha256_digest(tar))
        media_type = DOCKER_LAYER if docker else layer_media_type
        data = tar if media_type == OCI_LAYER else gzip.compress(tar, mtime=0)
        descriptors.append(
            _descriptor(media_type, data, push_blob(registry_host, repo, data, auth=auth))
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": _descriptor(
            DOCKER_CONFIG if docker else OCI_CONFIG,
            config,
            push_blob(registry_host, repo, config, auth=auth),
        ),
        "layers": descriptors,
    }
    return push_manifest(registry_host, repo, tag, manifest, auth=auth)


def push_index(
    registry_host: str,
    repo: str,
    tag: str,
    manifests: Sequence[tuple[str, Mapping[str, str] | None]],
    *,
    auth: BasicAuth | None = None,
    docker: bool = False,
) -> str:
    """An index (``docker``: a manifest list) of manifests already in ``repo``:
    (digest, platform such as ``{"os": "linux", "architecture": "amd64"}`` or None)."""
    entries = []
    for digest, platform in manifests:
        status, headers, _ = _request(
            registry_host,
            "HEAD",
            f"/v2/{repo}/manifests/{digest}",
            headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
            auth=auth,
        )
        if status != 200:
            raise PushError(f"HEAD {repo}@{digest}: HTTP {status}")
        entry: dict[str, Any] = {
            "mediaType": headers.get_content_type(),
            "digest": digest,
            "size": int(headers["Content-Length"]),
        }
        if platform is not None:
            entry["platform"] = dict(platform)
        entries.append(entry)
    index = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
        "manifests": entries,
    }
    return push_manifest(registry_host, repo, tag, index, auth=auth)
