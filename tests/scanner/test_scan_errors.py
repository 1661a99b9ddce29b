"""What must never pass: broken probes, unsupported OSes, hostile layers, bad pulls."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scapguard.results.model import ErrorReason
from scapguard_dev.fixtureimages import FixtureImages, make_fixture_rootfs
from scapguard_dev.images import (
    MEDIA_TYPE_LAYER_GZIP,
    RawLayer,
    build_and_push,
    push_raw_layers,
)
from scapguard_dev.registry import BasicAuth, Registry

pytestmark = pytest.mark.slow

HOST_MARKER = "SCAPGUARD-HOST-HOST_MARKER-4711"


def expect_error(run: Any, reason: str, words: str = "") -> None:
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Error"
    assert run.result.error is not None
    assert run.result.error.reason == reason, run.result.error
    assert words in run.result.error.message, run.result.error.message
    assert run.result.vulnerabilities is None and run.result.compliance is None
    # Nothing is left behind: the pulled image, the tree and oscap's files are gone.
    assert list(run.work_dir.iterdir()) == [], list(run.work_dir.rglob("*"))[:5]


def push_tree(root: Path, registry: Registry, name: str, workdir: Path) -> str:
    return build_and_push(root, registry.host, f"scantests/{name}", "latest",
                          workdir=workdir).by_digest  # fmt: skip


def test_unreadable_package_database_is_an_error_not_a_pass(
    registry: Registry, run_scan: Callable[..., Any], base_files_feed: Path, tmp_path: Path
) -> None:
    """1.3.7's dpkginfo cannot initialise without /usr/share/dpkg/cputable: it would report
    every package absent with exit 0. The scanner must call that an error."""
    root = make_fixture_rootfs(tmp_path / "rootfs", "debian12", "vulnerable", workdir=tmp_path)
    (root / "usr/share/dpkg/cputable").unlink()
    ref = push_tree(root, registry, "broken-probe", tmp_path)
    run = run_scan(ref, "--feed-file", str(base_files_feed))
    expect_error(run, ErrorReason.PROBE_FAILED, "dpkginfo")


def test_alpine_like_image_is_unsupported(
    registry: Registry, run_scan: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "alpine"
    (root / "etc").mkdir(parents=True)
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "etc/os-release").write_text(
        'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\n'
        'PRETTY_NAME="Alpine Linux v3.20"\n', encoding="utf-8")  # fmt: skip
    (root / "lib/apk/db/installed").write_text("P:musl\nV:1.2.5-r0\n\n", encoding="utf-8")
    run = run_scan(push_tree(root, registry, "alpine", tmp_path))
    expect_error(run, ErrorReason.UNSUPPORTED_OS, "Alpine Linux v3.20")
    assert run.result.os is None


def test_distroless_debian_without_dpkg_status_is_unsupported(
    registry: Registry, run_scan: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "distroless"
    (root / "etc").mkdir(parents=True)
    (root / "var/lib/dpkg/status.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Distroless"\nID=debian\nVERSION_ID="12"\n', encoding="utf-8"
    )
    (root / "var/lib/dpkg/status.d/libc6").write_text("Package: libc6\n", encoding="utf-8")
    run = run_scan(push_tree(root, registry, "distroless", tmp_path))
    expect_error(run, ErrorReason.UNSUPPORTED_OS, "distroless")


def test_an_rpm_database_path_chosen_by_the_image_is_never_used(
    registry: Registry, run_scan: Callable[..., Any], base_files_feed: Path, tmp_path: Path
) -> None:
    """/var/lib/rpm -> /%(touch PWNED) would put the image's shell command into rpm's macros
    (``OSCAP_PROBE_RPMDB_PATH``, ``%_dbpath``): a database elsewhere is no database."""
    root = make_fixture_rootfs(tmp_path / "rootfs", "rhel9", "vulnerable", workdir=tmp_path)
    (root / "var/lib/rpm").rename(root / "%(touch PWNED)")
    (root / "var/lib/rpm").symlink_to("/%(touch PWNED)")
    run = run_scan(push_tree(root, registry, "rpmdb-macro", tmp_path),
                   "--feed-file", str(base_files_feed))  # fmt: skip
    expect_error(run, ErrorReason.UNSUPPORTED_OS, "no rpm database")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = 1_704_067_200
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


HOSTILE: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "dotdot-path": ([(_entry("etc/../../escaped"), b"x")], "contains '..'"),
    "absolute-path": ([(_entry("/etc/evil"), b"x")], "absolute path"),
    "hardlink-out": ([(_entry("etc/passwd", tarfile.LNKTYPE, "../../../etc/passwd"), None)],
                     "contains '..'"),
    "hardlink-absolute": ([(_entry("etc/shadow", tarfile.LNKTYPE, "/etc/shadow"), None)],
                          "absolute path"),
    "hardlink-unknown": ([(_entry("etc/x", tarfile.LNKTYPE, "etc/not-in-layer"), None)],
                         "not earlier in the layer"),
    "whiteout-symlink": ([(_entry("etc/.wh.passwd", tarfile.SYMTYPE, "/etc/shadow"), None)],
                         "whiteout but not a file"),
    "whiteout-unknown": ([(_entry("etc/.wh..wh.plnk"), b"")], "unknown whiteout"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused(
    case: str, registry: Registry, run_scan: Callable[..., Any], tmp_path: Path
) -> None:
    members, words = HOSTILE[case]
    image = push_raw_layers([RawLayer(_tar(members))], registry.host, f"hostile/{case}",
                            "latest", workdir=tmp_path)  # fmt: skip
    run = run_scan(image.by_digest)
    expect_error(run, ErrorReason.HOSTILE_IMAGE, words)


def test_decompression_bomb_stops_at_the_limit(
    registry: Registry, run_scan: Callable[..., Any], tmp_path: Path
) -> None:
    big = _entry("bomb")
    big.size = 256 * 1024 * 1024
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(big.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(256):
            gz.write(zeros)
        gz.write(bytes(1024))
    data = buf.getvalue()
    assert len(data) < 2 * 1024 * 1024
    image = push_raw_layers(
        [RawLayer(data, MEDIA_TYPE_LAYER_GZIP, diff_id="sha256:" + "0" * 64)],
        registry.host, "hostile/bomb", "latest", workdir=tmp_path,
    )  # fmt: skip
    run = run_scan(image.by_digest, "--max-unpacked-bytes", str(32 * 1024 * 1024))
    expect_error(run, ErrorReason.IMAGE_TOO_LARGE, "more than")


def test_compressed_size_limit_is_checked_before_download(
    fixture_images: FixtureImages, run_scan: Callable[..., Any]
) -> None:
    run = run_scan(fixture_images.get("debian12", "patched").by_digest,
                   "--max-compressed-bytes", "100")  # fmt: skip
    expect_error(run, ErrorReason.IMAGE_TOO_LARGE, "compressed")


def test_escaping_symlinks_are_contained(
    registry: Registry,
    run_scan: Callable[..., Any],
    shared_dir: Path,
    base_files_feed: Path,
    tmp_path: Path,
) -> None:
    """An image's /etc/motd -> /<host path of a secret> must not let a probe read the host file."""
    secret = shared_dir / "host-secret.txt"
    secret.write_text(f"{HOST_MARKER}\n", encoding="utf-8")
    secret.chmod(0o644)
    root = make_fixture_rootfs(tmp_path / "rootfs", "debian12", "vulnerable", workdir=tmp_path)
    (root / "etc/motd").symlink_to(str(secret))
    os.mknod(root / "etc/console-node", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    (root / "etc/issue").symlink_to("../../../../../../../.." + str(secret))
    run = run_scan(push_tree(root, registry, "symlinks", tmp_path),
                   "--feed-file", str(base_files_feed), "--keep-work-dir")  # fmt: skip
    assert run.result is not None and run.result.outcome == "Completed", run.stderr
    assert run.result.vulnerabilities is not None
    ids = {f.id for f in run.result.vulnerabilities.findings}
    assert ids == {"CVE-2099-0001"}  # base-files seen; the secret not
    assert HOST_MARKER not in (run.output_dir / "report.html").read_text(encoding="utf-8")
    tree = next(run.work_dir.glob("scan-*/bundle/rootfs"))
    assert os.readlink(tree / "etc/motd") == "../" + str(secret).lstrip("/")
    assert os.readlink(tree / "etc/issue") == "../" + str(secret).lstrip("/")
    node = (tree / "etc/console-node").lstat()
    assert stat.S_ISREG(node.st_mode) and node.st_size == 0  # a device node became a file


def test_scanning_as_root_is_refused(
    fixture_images: FixtureImages, run_scan: Callable[..., Any]
) -> None:
    run = run_scan(fixture_images.get("debian12", "patched").by_digest, user=False)
    expect_error(run, ErrorReason.INSECURE_ENVIRONMENT, "root")


def test_tags_are_refused_and_tls_is_verified_by_default(
    fixture_images: FixtureImages, run_scan: Callable[..., Any]
) -> None:
    image = fixture_images.get("debian12", "patched")
    run = run_scan(image.by_tag)
    assert run.returncode == 2 and run.result is None
    assert "sha256" in run.stderr
    # Without the explicit opt-out the plain-http test registry fails TLS verification.
    direct = run_scan(image.by_digest, "--insecure-registry", "other.invalid:5000",
                      insecure=False)  # fmt: skip
    expect_error(direct, ErrorReason.PULL_FAILED, "http")


def test_private_registry_needs_the_mounted_dockerconfigjson(
    run_scan: Callable[..., Any], shared_dir: Path, base_files_feed: Path, tmp_path: Path
) -> None:
    auth = BasicAuth("scanner", "s3cret-pass")
    root = tmp_path / "rootfs"
    make_fixture_rootfs(root, "debian12", "patched", workdir=tmp_path)
    with Registry(tmp_path / "private", auth=auth) as private:
        pushed = build_and_push(root, private.host, "private/debian12", "patched",
                                workdir=tmp_path, creds=auth)  # fmt: skip
        authfile = shared_dir / "dockerconfig.json"
        authfile.write_text(json.dumps(private.dockerconfigjson()), encoding="utf-8")
        authfile.chmod(0o644)
        written = hashlib.sha256(authfile.read_bytes()).hexdigest()
        feed = base_files_feed
        denied = run_scan(pushed.by_digest, "--insecure-registry", private.host,
                          "--feed-file", str(feed))  # fmt: skip
        expect_error(denied, ErrorReason.PULL_FAILED, "")
        ok = run_scan(pushed.by_digest, "--insecure-registry", private.host,
                      "--feed-file", str(feed), "--authfile", str(authfile))  # fmt: skip
        assert ok.result is not None and ok.result.outcome == "Completed", ok.stderr
        # The scanner reads the mounted file; it never rewrites it.
        assert hashlib.sha256(authfile.read_bytes()).hexdigest() == written
    shutil.rmtree(tmp_path / "private", ignore_errors=True)


def test_the_time_budget_ends_the_scan_as_an_error(
    fixture_images: FixtureImages, run_scan: Callable[..., Any], ssg_debian12_ds: Path
) -> None:
    run = run_scan(fixture_images.debian12_minbase().by_digest, "--compliance",
                   "--datastream-file", str(ssg_debian12_ds), "--timeout", "2")  # fmt: skip
    expect_error(run, ErrorReason.TIMEOUT, "")


class _LyingRegistry(http.server.BaseHTTPRequestHandler):
    """Serves, for any manifest digest asked for, a manifest with another digest."""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + "1" * 64, "size": 2},
            "layers": [],
        }).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Docker-Content-Digest", self.path.rsplit("/", 1)[-1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_registry_serving_another_manifest_is_refused(run_scan: Callable[..., Any]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LyingRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        run = run_scan(f"{host}/fake/app@sha256:{'2' * 64}", "--insecure-registry", host)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert run.result is not None and run.result.error is not None, run.stderr
    assert run.result.error.reason in {ErrorReason.DIGEST_MISMATCH, ErrorReason.PULL_FAILED}
    assert "digest" in run.result.error.message.lower()
    assert run.returncode == 2
