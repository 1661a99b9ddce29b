"""The product wheel (what the operator and scanner images install) holds the product only."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

from scapguard_dev.binaries import repo_root
from scapguard_dev.productimages import product_wheel


def _tracked(root: Path, under: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", under],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return [name for name in out.split("\0") if name]


def test_the_wheel_holds_the_tracked_product_files_and_nothing_left_from_earlier_builds(
    tmp_path: Path,
) -> None:
    root = repo_root()
    tree = tmp_path / "tree"
    for name in ["pyproject.toml", "README.md", *_tracked(root, "operator")]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, tree / name)
    # An earlier build's output: a module since moved out of the product.
    stale = tree / "build" / "lib" / "scapguard" / "devcluster" / "cluster.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise SystemExit('a stale module was packed')\n")

    wheel = product_wheel(tree, tmp_path / "wheels")

    with zipfile.ZipFile(wheel) as archive:
        packed = {n for n in archive.namelist() if not n.startswith("scapguard-0")}
    product = {
        name.removeprefix("operator/")
        for name in _tracked(root, "operator/scapguard")
        if not name.endswith(".pyc")
    }
    assert packed == product, (
        f"not in the tree: {sorted(packed - product)}; missing: {sorted(product - packed)}"
    )
