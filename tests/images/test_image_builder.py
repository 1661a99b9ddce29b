"""Image builder: rootfs -> OCI image -> registry -> pulled by digest -> unpacked, owners intact."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from scapguard_dev.images import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
    RawLayer,
    build_and_push,
    push_raw_layers,
)
from scapguard_dev.registry import Registry


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{cmd} failed: {proc.stderr}"
    return proc.stdout


def _registry_get(registry: Registry, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": MEDIA_TYPE_MANIFEST})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"GET {path}: {resp.status} {body!r}"
        return body
    finally:
        conn.close()


def _make_tree(root: Path) -> None:
    (root / "data").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    owned = root / "data/owned"
    owned.write_text("owned by 1234:5678\n")
    os.chown(owned, 1234, 5678)
    owned.chmod(0o640)
    suid = root / "usr/bin/suid"
    suid.write_bytes(b"#!/bin/sh\n")
    suid.chmod(0o4755)
    sgid_dir = root / "data/shared"
    sgid_dir.mkdir()
    os.chown(sgid_dir, 1000, 1000)
    sgid_dir.chmod(0o2750)
    os.link(owned, root / "data/hardlink")
    (root / "data/relative-link").symlink_to("owned")
    (root / "data/absolute-link").symlink_to("/etc/passwd")
    os.mkfifo(root / "data/fifo", 0o600)


def test_pushed_image_pulls_back_by_digest_with_owners_modes_and_links(
    registry: Registry, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"
    _make_tree(rootfs)
    image = build_and_push(rootfs, registry.host, "t/owners", "v1", workdir=tmp_path / "build")

    raw = _run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image.by_tag}"]
    ).encode()
    assert image.digest == f"sha256:{hashlib.sha256(raw).hexdigest()}"

    layout = tmp_path / "pulled"
    _run(
        [
            "skopeo", "copy", "--src-tls-verify=false",
            f"docker://{registry.host}/t/owners@{image.digest}", f"oci:{layout}:x",
        ]
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    _run(["umoci", "unpack", "--image", f"{layout}:x", str(bundle)])
    out = bundle / "rootfs"

    owned = (out / "data/owned").lstat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 5678, 0o640)
    assert (out / "data/owned").read_text() == "owned by 1234:5678\n"
    suid = (out / "usr/bin/suid").lstat()
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert (suid.st_uid, suid.st_gid) == (0, 0)
    shared = (out / "data/shared").lstat()
    assert stat.S_ISDIR(shared.st_mode)
    assert (shared.st_uid, shared.st_gid, stat.S_IMODE(shared.st_mode)) == (1000, 1000, 0o2750)
    assert stat.S_IMODE((out / "tmp").lstat().st_mode) == 0o1777
    hard = (out / "data/hardlink").lstat()
    assert hard.st_ino == owned.st_ino
    assert hard.st_nlink == 2
    assert os.readlink(out / "data/relative-link") == "owned"
    assert os.readlink(out / "data/absolute-link") == "/etc/passwd"
    assert stat.S_ISFIFO((out / "data/fifo").lstat().st_mode)


def test_same_tree_gives_same_digest_and_content_changes_it(
    registry: Registry, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/b").write_text("b\n")
    (rootfs / "etc/a").write_text("a\n")
    first = build_and_push(rootfs, registry.host, "t/repro", "one", workdir=tmp_path / "b1")
    os.utime(rootfs / "etc/a", (1, 1))  # mtimes do not reach the layer
    second = build_and_push(rootfs, registry.host, "t/repro", "two", workdir=tmp_path / "b2")
    assert first.digest == second.digest
    (rootfs / "etc/a").write_text("changed\n")
    third = build_and_push(rootfs, registry.host, "t/repro", "three", workdir=tmp_path / "b3")
    assert third.digest != first.digest


def _hostile_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add(tarfile.TarInfo("../escape"), b"outside\n")
        absolute = tarfile.TarInfo("etc/shadow-link")
        absolute.type, absolute.linkname = tarfile.SYMTYPE, "/etc/shadow"
        add(absolute)
        hard = tarfile.TarInfo("etc/hard-out")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../../outside"
        add(hard)
        dev = tarfile.TarInfo("dev/mem")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 1
        add(dev)
        add(tarfile.TarInfo("etc/.wh.passwd"))
        add(tarfile.TarInfo("var/.wh..wh..opq"))
    return buf.getvalue()


def _bomb_tar_gz(size: int) -> tuple[bytes, str]:
    """A tar holding ``size`` zero bytes, gzipped; returns (compressed, diff_id)."""
    header = tarfile.TarInfo("zeros")
    header.size = size
    tar_bytes = header.tobuf(format=tarfile.PAX_FORMAT) + bytes(size) + bytes(1024)
    return gzip.compress(tar_bytes, mtime=0), f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"


def test_raw_layers_are_pushed_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    hostile = _hostile_tar()
    hostile_gz = gzip.compress(hostile, mtime=0)
    bomb, bomb_diff_id = _bomb_tar_gz(32 * 1024 * 1024)
    assert len(bomb) < 100_000
    not_a_tar = b"this is not a tar archive"
    layers = [
        RawLayer(hostile),
        RawLayer(hostile_gz, MEDIA_TYPE_LAYER_GZIP),
        RawLayer(bomb, MEDIA_TYPE_LAYER_GZIP, diff_id=bomb_diff_id),
        RawLayer(not_a_tar, MEDIA_TYPE_LAYER_GZIP, diff_id="sha256:" + "0" * 64),
    ]
    image = push_raw_layers(layers, registry.host, "t/hostile", "v1", workdir=tmp_path)

    # Read back through the registry API (never unpack hostile layers on the host; and a
    # plain `skopeo copy docker://... oci:...` would recompress the uncompressed ones).
    manifest_bytes = _registry_get(registry, f"/v2/t/hostile/manifests/{image.digest}")
    assert image.digest == f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}"
    manifest = json.loads(manifest_bytes)
    expected = [hostile, hostile_gz, bomb, not_a_tar]
    pulled = [
        _registry_get(registry, f"/v2/t/hostile/blobs/{d['digest']}") for d in manifest["layers"]
    ]
    assert pulled == expected
    assert [d["mediaType"] for d in manifest["layers"]] == [
        MEDIA_TYPE_LAYER_TAR,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_GZIP,
    ]
    config = json.loads(
        _registry_get(registry, f"/v2/t/hostile/blobs/{manifest['config']['digest']}")
    )
    hostile_digest = f"sha256:{hashlib.sha256(hostile).hexdigest()}"
    assert config["rootfs"]["diff_ids"] == [
        hostile_digest,
        hostile_digest,
        bomb_diff_id,
        "sha256:" + "0" * 64,
    ]
