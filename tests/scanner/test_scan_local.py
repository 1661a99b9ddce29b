"""``scapguard-scan --rootfs DIR`` and ``--oci-layout DIR``: local directories, real oscap.

The fixture trees and the hand-written feeds are the registry tests' (devcluster fixtureimages,
ovalgen); here they never go through a registry. A root filesystem must come out of the scan
exactly as it went in (it belongs to the scanning user, who could write it); an OCI layout is
copied and unpacked like a pulled image, so a hostile layer in it is refused the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scapguard.results.model import ErrorReason
from scapguard_dev.fixtureimages import make_fixture_rootfs
from scapguard_dev.images import RawLayer, build_oci_layout, write_layer_tar
from scapguard_dev.images import write_raw_oci_layout as raw_layout
from scapguard_dev.ovalgen import feed_for
from scapguard_dev.scanuser import ScanUser

pytestmark = pytest.mark.slow

ScanRunner = Callable[..., Any]
Snapshot = dict[str, tuple[int, int, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every entry's mode, owner, size, mtime and content hash (or link target)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            if os.path.islink(path):
                what = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                what = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                what = "dir"
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_size,
                                                st.st_mtime_ns, what)  # fmt: skip
    return out


@pytest.fixture
def build(shared_dir: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="local-", dir=shared_dir))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def feed_file(build: Path) -> tuple[Path, set[str]]:
    doc, expected = feed_for("debian12")
    feed = build / "feed.xml"
    feed.write_text(doc, encoding="utf-8")
    feed.chmod(0o644)
    return feed, {e.cve for e in expected}


def test_rootfs_is_scanned_in_place_and_left_untouched(
    build: Path, scan_user: ScanUser, run_local_scan: ScanRunner
) -> None:
    root = make_fixture_rootfs(build / "rootfs", "debian12", "vulnerable", workdir=build)
    # The scanning user owns the tree, so only the scanner's discipline keeps it unchanged.
    subprocess.run(["chown", "-R", f"{scan_user.uid}:{scan_user.gid}", str(root)], check=True)
    (root / "etc/escape").symlink_to("/etc/shadow")  # not contained: it is not ours to rewrite
    feed, cves = feed_file(build)
    before = snapshot(root)
    run = run_local_scan(None, "--rootfs", str(root), "--feed-file", str(feed), "--compliance",
                         "--datastream-file", str(build / "missing-ds.xml"))  # fmt: skip
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Error"  # the datastream is missing: still nothing written
    assert run.result.image.source == "rootfs" and run.result.image.path == str(root)
    assert snapshot(root) == before
    run = run_local_scan(None, "--rootfs", str(root), "--feed-file", str(feed))
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    assert run.result.vulnerabilities is not None
    assert {f.id for f in run.result.vulnerabilities.findings} == cves
    image = run.result.image
    assert (image.source, image.path, image.digest) == ("rootfs", str(root), None)
    assert image.reference == f"rootfs:{root}"
    assert run.stdout.startswith(f"rootfs:{root}: "), run.stdout
    assert "symlinks are absolute or climb out of the tree" in run.stderr
    assert snapshot(root) == before
    assert list(run.work_dir.iterdir()) == []


def test_oci_layout_is_scanned_with_its_manifest_digest(
    build: Path, run_local_scan: ScanRunner
) -> None:
    root = make_fixture_rootfs(build / "rootfs", "debian12", "vulnerable", workdir=build)
    layout = build / "layout"
    build_oci_layout(write_layer_tar(root, build / "layer.tar"), layout, "v1")
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    digest = index["manifests"][0]["digest"]
    feed, cves = feed_file(build)
    before = snapshot(layout)
    run = run_local_scan(None, "--oci-layout", str(layout), "--feed-file", str(feed))
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    assert run.result.vulnerabilities is not None
    assert {f.id for f in run.result.vulnerabilities.findings} == cves
    image = run.result.image
    assert (image.source, image.path, image.digest) == ("ociLayout", str(layout), digest)
    assert image.reference == f"oci:{layout}@{digest}"
    assert snapshot(layout) == before
    assert list(run.work_dir.iterdir()) == []


def test_hostile_layer_in_an_oci_layout_is_refused(build: Path, run_local_scan: ScanRunner) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    layout = build / "hostile"
    raw_layout([RawLayer(buf.getvalue())], layout, "bad")
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    run = run_local_scan(None, "--oci-layout", str(layout))
    assert run.result is not None, run.stderr
    assert run.result.error is not None
    assert run.result.error.reason == ErrorReason.HOSTILE_IMAGE, run.result.error
    assert "'../escape'" in run.result.error.message
    assert run.returncode == 2


def test_missing_directory_is_named(build: Path, run_local_scan: ScanRunner) -> None:
    run = run_local_scan(None, "--rootfs", str(build / "nope"))
    assert run.returncode == 2 and run.result is None
    assert f"--rootfs {build / 'nope'}: not a directory" in run.stderr
