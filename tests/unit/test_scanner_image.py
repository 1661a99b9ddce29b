"""The scanner image and the tests use one package list: scanner-image/packages.txt."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scapguard_dev import content as devcontent

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = REPO / "scanner-image" / "packages.txt"
CONTAINERFILE = REPO / "scanner-image" / "Containerfile"
#: Tools the scanner runs (and the scanner tests run on the host).
TOOLS = ("oscap", "skopeo", "umoci", "newuidmap", "newgidmap", "unshare")


def packages() -> list[str]:
    lines = PACKAGES.read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def test_containerfile_installs_exactly_the_package_list() -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    assert "COPY scanner-image/packages.txt" in text
    installs = re.findall(r"apt-get install[^\n]*", text)
    assert len(installs) == 1
    # Nothing is installed beside the list: the line ends with the options.
    assert installs[0].rstrip(" \\").endswith("--no-install-recommends")
    assert re.search(r"^USER 65532", text, re.MULTILINE)
    assert 'ENTRYPOINT ["scapguard-scan"]' in text
    assert len(packages()) == len(set(packages()))


def test_the_ssg_content_the_tests_fetch_is_the_images_package() -> None:
    assert "ssg-debian" in packages()
    assert devcontent.SUITE == "trixie"  # the image's base release


@pytest.mark.parametrize("tool", TOOLS)
def test_host_tools_come_from_the_listed_packages(tool: str) -> None:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (hack/apt-packages.txt)")
    real = str(Path(path).resolve())
    owners: set[str] = set()
    for candidate in {
        path,
        real,
        real.replace("/usr/bin/", "/bin/"),
        real.replace("/bin/", "/usr/bin/"),
    }:
        proc = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        if proc.returncode == 0:
            owners |= {o.strip() for o in proc.stdout.split(":", 1)[0].split(",")}
    assert owners & set(packages()), f"{tool} ({path}) comes from {owners}, not packages.txt"
