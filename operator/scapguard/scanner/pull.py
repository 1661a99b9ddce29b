"""Pull one image by digest with skopeo into an OCI layout, checked and bounded.

* The reference must name a digest (``host/repo@sha256:...``); tags are refused.
* Credentials: ``--authfile`` (a mounted ``.dockerconfigjson``). Without one, skopeo still
  gets an auth file of its own, empty: it never looks in the machine's or the pod's default
  places (``/run/containers/UID/auth.json``, ``$XDG_RUNTIME_DIR``, ``~/.docker``), which may
  exist unreadable for the scanning user (root once ran buildah on the node) and then fail
  the pull with "permission denied".
* TLS is verified, except for registries listed explicitly (``insecure_registries``,
  ``host[:port]`` as written in the reference).
* The raw manifest is fetched first: its sha256 must equal the requested digest (an index is
  resolved to the linux manifest for ``arch``), and the compressed size (config + layers) must
  stay under the limit before any layer is downloaded. After the copy the layout must hold that
  very manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from scapguard.results.model import ErrorReason
from scapguard.scanner.errors import ScanFailure, run

log = logging.getLogger(__name__)

_REF: Final = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[a-f0-9]{64})$")
INDEX_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
LAYOUT_TAG: Final = "image"
DEFAULT_MAX_COMPRESSED: Final = 4 * 1024 * 1024 * 1024
_MAX_MANIFEST: Final = 4 * 1024 * 1024
_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class PullOptions:
    authfile: Path | None = None
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    max_compressed_bytes: int = DEFAULT_MAX_COMPRESSED
    arch: str = "amd64"
    timeout: float = 1800.0


@dataclass(frozen=True)
class PulledImage:
    reference: str
    digest: str  # the requested digest (an index digest stays the image's identity)
    manifest_digest: str  # the platform manifest actually unpacked
    layout: Path
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def architecture(self) -> str:
        return str(self.config.get("architecture", ""))


def split_reference(reference: str) -> tuple[str, str, str]:
    """(registry host, repository, digest) of ``host/repo@sha256:...``."""
    match = _REF.match(reference)
    if match is None:
        raise ScanFailure(
            ErrorReason.PULL_FAILED,
            f"image reference {reference!r} must be HOST/REPO@sha256:<64 hex>",
        )
    name = match["name"]
    host, _, repo = name.partition("/")
    if not repo or ("." not in host and ":" not in host and host != "localhost"):
        raise ScanFailure(
            ErrorReason.PULL_FAILED,
            f"image reference {reference!r} must start with a registry host",
        )
    return host, repo, match["digest"]


def _tls_args(flag: str, host: str, opts: PullOptions) -> list[str]:
    return [f"{flag}=false"] if host in opts.insecure_registries else [f"{flag}=true"]


def _auth_args(flag: str, opts: PullOptions, home: Path) -> list[str]:
    """Always an explicit auth file: the mounted one, or an empty one of the scan's own."""
    if opts.authfile is not None:
        return [flag, str(opts.authfile)]
    empty = home / "auth.json"
    if not empty.exists():
        home.mkdir(parents=True, exist_ok=True)
        empty.write_text('{"auths": {}}\n', encoding="utf-8")
    return [flag, str(empty)]


def skopeo_env(home: Path) -> dict[str, str]:
    """skopeo with a private HOME and runtime dir: no registries.conf or auth from the
    caller's home or the machine's ``/run/containers``."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": _PATH, "HOME": str(home), "XDG_RUNTIME_DIR": str(home), "LANG": "C.UTF-8"}


def _registries_d(home: Path) -> Path:
    # No signature lookaside or registry settings from the machine (or the root defaults).
    path = home / "registries.d"
    path.mkdir(parents=True, exist_ok=True)
    # Without this, skopeo running as (namespace) root reads /var/lib/containers/sigstore.
    (path / "default.yaml").write_text(
        f"default-docker:\n  lookaside: file://{home / 'sigstore'}\n", encoding="utf-8"
    )
    return path


def _policy_file(home: Path) -> Path:
    # Integrity comes from the pinned digest; signature policies are out of scope here.
    path = home / "policy.json"
    path.write_text('{"default":[{"type":"insecureAcceptAnything"}]}', encoding="utf-8")
    return path


def _inspect_raw(ref: str, host: str, opts: PullOptions, home: Path) -> bytes:
    proc = run(
        [
            "skopeo",
            "--registries.d",
            str(_registries_d(home)),
            "inspect",
            "--raw",
            "--retry-times",
            "2",
            *_tls_args("--tls-verify", host, opts),
            *_auth_args("--authfile", opts, home),
            f"docker://{ref}",
        ],
        timeout=min(opts.timeout, 300.0),
        reason=ErrorReason.PULL_FAILED,
        env=skopeo_env(home),
    )
    if len(proc.stdout) > _MAX_MANIFEST:
        raise ScanFailure(ErrorReason.PULL_FAILED, f"manifest of {ref} is larger than 4 MiB")
    return proc.stdout


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(data)
    except ValueError as exc:
        raise ScanFailure(ErrorReason.PULL_FAILED, f"{what} is not JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ScanFailure(ErrorReason.PULL_FAILED, f"{what} is not a JSON object")
    return loaded


def pick_platform(index: dict[str, Any], arch: str, ref: str) -> str:
    for entry in index.get("manifests", []):
        platform = entry.get("platform", {}) if isinstance(entry, dict) else {}
        if platform.get("os") == "linux" and platform.get("architecture") == arch:
            return str(entry["digest"])
    raise ScanFailure(ErrorReason.PULL_FAILED, f"{ref} is an index without a linux/{arch} image")


def compressed_size(manifest: dict[str, Any], what: str) -> int:
    try:
        sizes = [int(manifest["config"]["size"])]
        sizes += [int(layer["size"]) for layer in manifest["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanFailure(ErrorReason.PULL_FAILED, f"{what}: malformed manifest ({exc})") from exc
    if any(s < 0 for s in sizes):
        raise ScanFailure(ErrorReason.PULL_FAILED, f"{what}: negative blob size")
    return sum(sizes)


def pull(reference: str, layout: Path, opts: PullOptions) -> PulledImage:
    host, repo, digest = split_reference(reference)
    home = layout.parent / "skopeo-home"
    manifest_digest, manifest = _platform_manifest(reference, host, repo, digest, opts, home)
    size = compressed_size(manifest, reference)
    if size > opts.max_compressed_bytes:
        raise ScanFailure(
            ErrorReason.IMAGE_TOO_LARGE,
            f"{reference} is {size} bytes compressed, more than the limit "
            f"{opts.max_compressed_bytes}",
        )
    _copy(reference, layout, host, opts, home)
    manifest, config = _stored_image(layout, manifest_digest)
    log.info(
        "pulled %s (%s bytes compressed, %s layers)",
        reference,
        size,
        len(manifest.get("layers", [])),
    )
    return PulledImage(
        reference=reference,
        digest=digest,
        manifest_digest=manifest_digest,
        layout=layout,
        manifest=manifest,
        config=config,
    )


def _platform_manifest(
    reference: str, host: str, repo: str, digest: str, opts: PullOptions, home: Path
) -> tuple[str, dict[str, Any]]:
    """The digest and manifest of the image to unpack, checked against the requested digest:
    the manifest itself, or an index's linux/``arch`` one."""
    raw = _inspect_raw(reference, host, opts, home)
    if _sha(raw) != digest:
        raise ScanFailure(
            ErrorReason.DIGEST_MISMATCH,
            f"registry served a manifest with digest {_sha(raw)} for {reference}",
        )
    top = _json(raw, f"manifest of {reference}")
    manifest_digest = digest
    manifest = top
    if top.get("mediaType") in INDEX_TYPES or "manifests" in top:
        manifest_digest = pick_platform(top, opts.arch, reference)
        child_ref = f"{host}/{repo}@{manifest_digest}"
        child_raw = _inspect_raw(child_ref, host, opts, home)
        if _sha(child_raw) != manifest_digest:
            raise ScanFailure(
                ErrorReason.DIGEST_MISMATCH, f"registry served a wrong manifest for {child_ref}"
            )
        manifest = _json(child_raw, f"manifest of {child_ref}")
    if manifest.get("mediaType", next(iter(MANIFEST_TYPES))) not in MANIFEST_TYPES:
        raise ScanFailure(
            ErrorReason.PULL_FAILED,
            f"unsupported manifest media type {manifest.get('mediaType')!r}",
        )
    return manifest_digest, manifest


def _copy(reference: str, layout: Path, host: str, opts: PullOptions, home: Path) -> None:
    """``skopeo copy`` of the image (digests preserved) into ``layout``."""
    run(
        [
            "skopeo",
            "--registries.d",
            str(_registries_d(home)),
            "--policy",
            str(_policy_file(home)),
            "copy",
            "--quiet",
            "--preserve-digests",
            "--retry-times",
            "2",
            *_tls_args("--src-tls-verify", host, opts),
            *_auth_args("--src-authfile", opts, home),
            "--override-os",
            "linux",
            "--override-arch",
            opts.arch,
            f"docker://{reference}",
            f"oci:{layout}:{LAYOUT_TAG}",
        ],
        timeout=opts.timeout,
        reason=ErrorReason.PULL_FAILED,
        env=skopeo_env(home),
    )


def _stored_image(layout: Path, manifest_digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config the layout holds, once it is checked to hold exactly the
    manifest that was inspected."""
    index = _json((layout / "index.json").read_bytes(), f"{layout}/index.json")
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    if len(entries) != 1 or entries[0].get("digest") != manifest_digest:
        got = [m.get("digest") for m in entries]
        raise ScanFailure(
            ErrorReason.DIGEST_MISMATCH, f"pulled layout holds {got}, expected {manifest_digest}"
        )
    blob = layout / "blobs" / "sha256" / manifest_digest.removeprefix("sha256:")
    stored = blob.read_bytes()
    if _sha(stored) != manifest_digest:
        raise ScanFailure(ErrorReason.DIGEST_MISMATCH, f"{blob} does not match its digest")
    manifest = _json(stored, str(blob))
    config_digest = str(manifest["config"]["digest"])
    config_blob = layout / "blobs" / "sha256" / config_digest.removeprefix("sha256:")
    config = _json(config_blob.read_bytes(), f"image config {config_digest}")
    return manifest, config
