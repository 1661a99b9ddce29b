"""The dev registry: Debian's docker-registry on loopback, with and without basic auth."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from pathlib import Path

import pytest

from scapguard_dev.images import ImageBuildError, build_and_push, fetch_rootfs
from scapguard_dev.registry import BasicAuth, Registry, RegistryError


def _get(reg: Registry, path: str, auth: BasicAuth | None = None) -> tuple[int, bytes]:
    headers = {}
    if auth is not None:
        token = base64.b64encode(auth.skopeo_creds().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(condition: str, check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for: {condition}")
        time.sleep(0.05)


def test_registry_serves_v2_on_loopback_and_stops_by_pid(tmp_path: Path) -> None:
    with Registry(tmp_path) as reg:
        host, port = reg.host.split(":")
        assert host == "127.0.0.1"
        assert int(port) == reg.port
        status, body = _get(reg, "/v2/_catalog")
        assert (status, json.loads(body)) == (200, {"repositories": []})
        pid = reg.pid
        assert pid is not None
        assert not _pid_gone(pid)
    _wait_for(f"registry pid {pid} to exit", lambda: _pid_gone(pid))
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", int(port)))
    assert reg.pid is None


def test_registry_stores_blobs_under_its_workdir(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hello").write_text("hello\n")
    with Registry(tmp_path / "registry") as reg:
        image = build_and_push(rootfs, reg.host, "t/stored", "v1", workdir=tmp_path / "build")
        repo_dir = reg.storage_dir / "docker/registry/v2/repositories/t/stored"
        assert repo_dir.is_dir()
        digest_hex = image.digest.removeprefix("sha256:")
        revision = repo_dir / "_manifests/revisions/sha256" / digest_hex
        assert revision.is_dir()


def test_registry_start_failure_names_the_binary(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no-such-registry-binary"):
        Registry(tmp_path, binary="no-such-registry-binary").start()


def test_basic_auth_registry_refuses_anonymous_pulls_and_accepts_credentials(
    tmp_path: Path,
) -> None:
    auth = BasicAuth("scanner", "s3cret with spaces")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "secret-image").write_text("only with credentials\n")
    with Registry(tmp_path / "registry", auth=auth) as reg:
        assert _get(reg, "/v2/")[0] == 401
        assert _get(reg, "/v2/", BasicAuth("scanner", "wrong"))[0] == 401
        assert _get(reg, "/v2/", auth)[0] == 200

        with pytest.raises(ImageBuildError, match="skopeo copy"):
            build_and_push(rootfs, reg.host, "t/private", "v1", workdir=tmp_path / "b0")
        image = build_and_push(
            rootfs, reg.host, "t/private", "v1", workdir=tmp_path / "b1", creds=auth
        )
        with pytest.raises(ImageBuildError, match="skopeo copy"):
            fetch_rootfs(image, tmp_path / "anonymous")
        pulled = fetch_rootfs(image, tmp_path / "authenticated", creds=auth)
        assert (pulled / "etc/secret-image").read_text() == "only with credentials\n"

        config = reg.dockerconfigjson()
        entry = config["auths"][reg.host]
        assert base64.b64decode(entry["auth"]).decode() == "scanner:s3cret with spaces"
    assert (tmp_path / "registry/htpasswd").read_text().startswith("scanner:$2y$")
