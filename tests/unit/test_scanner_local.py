"""``scapguard-scan --oci-layout DIR`` / ``--rootfs DIR``: arguments, layout copy, result."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import pytest

from scapguard.results.model import (
    ErrorReason,
    ImageRef,
    ScanError,
    ScannerInfo,
    ScanResult,
    ScanResultError,
)
from scapguard.scanner import cli, local
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.local import REF_ANNOTATION as REF_NAME
from scapguard.scanner.pipeline import ScanRequest
from scapguard.scanner.pull import PulledImage
from scapguard_dev.images import RawLayer, write_raw_oci_layout

DIGEST = "sha256:" + "ab" * 32


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"ID=debian\nVERSION_ID=12\n"
        info = tarfile.TarInfo("etc/os-release")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layout(tmp_path: Path, tag: str = "latest") -> tuple[Path, str]:
    path = tmp_path / "layout"
    return path, write_raw_oci_layout([RawLayer(_layer())], path, tag)


# -- arguments --------------------------------------------------------------------------------


def request(*argv: str) -> ScanRequest:
    args = cli.parser().parse_args(list(argv))
    return cli.build_request(args, cli.load_policy(None))


def test_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(cli.UsageError, match="give one of IMAGE, --oci-layout DIR or --rootfs"):
        request()
    with pytest.raises(cli.UsageError, match="got IMAGE and --rootfs"):
        request(f"reg.example/a@{DIGEST}", "--rootfs", str(tmp_path))
    with pytest.raises(cli.UsageError, match="--oci-ref needs --oci-layout"):
        request("--rootfs", str(tmp_path), "--oci-ref", "latest")


def test_rootfs_argument(tmp_path: Path) -> None:
    req = request("--rootfs", str(tmp_path))
    assert (req.source, req.rootfs, req.oci_layout) == ("rootfs", tmp_path, None)
    missing = tmp_path / "nope"
    with pytest.raises(cli.UsageError, match=f"--rootfs {missing}: not a directory"):
        request("--rootfs", str(missing))


def test_oci_layout_argument(tmp_path: Path) -> None:
    path, _ = layout(tmp_path)
    req = request("--oci-layout", str(path), "--oci-ref", "latest")
    assert (req.source, req.oci_layout, req.oci_ref) == ("ociLayout", path, "latest")
    (path / "index.json").unlink()
    with pytest.raises(cli.UsageError, match=f"--oci-layout {path}: no index.json .*--rootfs"):
        request("--oci-layout", str(path))
    with pytest.raises(cli.UsageError, match=f"--oci-layout {tmp_path}: no oci-layout"):
        request("--oci-layout", str(tmp_path))


def test_image_argument_unchanged() -> None:
    req = request(f"reg.example/a@{DIGEST}")
    assert (req.source, req.reference) == ("registry", f"reg.example/a@{DIGEST}")
    with pytest.raises(cli.UsageError, match="must be HOST/REPO@sha256"):
        request("reg.example/a:latest")


def test_bad_arguments_exit_2_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--rootfs", str(tmp_path / "gone")]) == cli.EXIT_ERROR
    assert f"--rootfs {tmp_path / 'gone'}: not a directory" in capsys.readouterr().err


# -- what the result says was scanned ---------------------------------------------------------


def result(image: ImageRef) -> ScanResult:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return ScanResult(image, None, "Error", ScanError(ErrorReason.UNSUPPORTED_OS, "x"), None,
                      None, ScannerInfo("0", None), now, now)  # fmt: skip


def test_local_sources_in_the_result(tmp_path: Path) -> None:
    rootfs = ScanRequest("", tmp_path, rootfs=tmp_path / "tree").image_ref(None)
    assert rootfs == ImageRef(f"rootfs:{tmp_path}/tree", None, "rootfs", f"{tmp_path}/tree")
    doc = result(rootfs).to_dict()
    assert doc["image"] == {"reference": f"rootfs:{tmp_path}/tree", "digest": None,
                            "source": "rootfs", "path": f"{tmp_path}/tree"}  # fmt: skip
    assert ScanResult.from_dict(doc).image == rootfs
    oci = ScanRequest("", tmp_path, oci_layout=tmp_path / "l").image_ref(DIGEST)
    assert oci == ImageRef(f"oci:{tmp_path}/l@{DIGEST}", DIGEST, "ociLayout", f"{tmp_path}/l")
    assert ScanResult.from_dict(result(oci).to_dict()).image == oci
    registry = result(ImageRef(f"r.example/a@{DIGEST}", DIGEST)).to_dict()["image"]
    assert registry == {"reference": f"r.example/a@{DIGEST}", "digest": DIGEST}  # as before


@pytest.mark.parametrize(
    ("image", "field"),
    [
        ({"reference": "rootfs:/x", "digest": DIGEST, "source": "rootfs", "path": "/x"},
         "image.digest"),
        ({"reference": "oci:/x", "digest": None, "source": "ociLayout", "path": "/x"},
         "image.digest"),
        ({"reference": "rootfs:/x", "digest": None, "source": "rootfs"}, "image.path"),
        ({"reference": "r.example/a", "digest": None}, "image.digest"),
        ({"reference": f"r.example/a@{DIGEST}", "digest": DIGEST, "path": "/x"}, "image.path"),
        ({"reference": "x", "digest": None, "source": "disk", "path": "/x"}, "image.source"),
    ],
)  # fmt: skip
def test_image_documents_are_checked(image: dict[str, object], field: str) -> None:
    doc = result(ImageRef(f"r.example/a@{DIGEST}", DIGEST)).to_dict()
    doc["image"] = image
    with pytest.raises(ScanResultError) as info:
        ScanResult.from_dict(doc)
    assert info.value.field == field


# -- OCI layouts ------------------------------------------------------------------------------


def copy(path: Path, dest: Path, ref: str | None = None, limit: int = 1 << 30) -> PulledImage:
    return local.copy_layout(path, dest, ref=ref, arch="amd64", max_compressed_bytes=limit)


def test_layout_copied_checked_and_tagged(tmp_path: Path) -> None:
    path, digest = layout(tmp_path)
    image = copy(path, tmp_path / "work")
    assert (image.digest, image.manifest_digest) == (digest, digest)
    assert image.reference == f"oci:{path}@{digest}" and image.architecture == "amd64"
    index = json.loads((tmp_path / "work/index.json").read_text(encoding="utf-8"))
    assert index["manifests"][0]["annotations"] == {REF_NAME: "image"}
    assert index["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert len(list((tmp_path / "work/blobs/sha256").iterdir())) == 3  # manifest, config, layer
    assert copy(path, tmp_path / "w2", ref="latest").digest == digest


def _layer_blob(path: Path, digest: str) -> Path:
    manifest = json.loads((path / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    layer = str(manifest["layers"][0]["digest"])
    return path / "blobs/sha256" / layer.removeprefix("sha256:")


def test_tampered_blob_is_a_digest_mismatch_naming_the_layout(tmp_path: Path) -> None:
    path, digest = layout(tmp_path)
    blob = _layer_blob(path, digest)
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")
    with pytest.raises(ScanFailure) as info:
        copy(path, tmp_path / "work")
    assert info.value.reason == ErrorReason.DIGEST_MISMATCH
    assert str(path) in info.value.message


def test_symlinked_blob_and_path_digest_are_hostile(tmp_path: Path) -> None:
    path, digest = layout(tmp_path)
    blob = _layer_blob(path, digest)
    (tmp_path / "elsewhere").write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ScanFailure) as info:
        copy(path, tmp_path / "work")
    assert info.value.reason == ErrorReason.HOSTILE_IMAGE
    assert "is a symlink" in info.value.message
    index = json.loads((path / "index.json").read_text(encoding="utf-8"))
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ScanFailure) as info:
        copy(path, tmp_path / "work2")
    assert info.value.reason == ErrorReason.HOSTILE_IMAGE and "sha256:<64 hex>" in str(info.value)


def test_several_images_need_a_ref_and_size_is_bounded(tmp_path: Path) -> None:
    path, digest = layout(tmp_path)
    index = json.loads((path / "index.json").read_text(encoding="utf-8"))
    second = dict(index["manifests"][0], annotations={REF_NAME: "other"})
    index["manifests"].append(second)
    (path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ScanFailure, match=r"lists 2 images \['latest', 'other'\].*--oci-ref"):
        copy(path, tmp_path / "w1")
    assert copy(path, tmp_path / "w2", ref="other").digest == digest
    with pytest.raises(ScanFailure, match="0 images are named 'nope'"):
        copy(path, tmp_path / "w3", ref="nope")
    with pytest.raises(ScanFailure) as info:
        copy(path, tmp_path / "w4", ref="latest", limit=10)
    assert info.value.reason == ErrorReason.IMAGE_TOO_LARGE


def test_rootfs_checks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/ok").symlink_to("../usr/x")
    (tree / "etc/abs").symlink_to("/etc/shadow")
    (tree / "etc/up").symlink_to("../../../../host")
    assert local.escaping_symlinks(tree) == 2
    assert local.check_rootfs(tree) == tree
    with pytest.raises(ScanFailure, match=f"root filesystem {tmp_path / 'no'}: not a directory"):
        local.check_rootfs(tmp_path / "no")
