"""Fixtures for the scanner tests: a non-root scanning user, the scanner runtime, a runner.

The scan runs as ``scapguard-scan`` (uid 65532), never as root: the tests (root) create that
user once, with a subordinate id range in /etc/subuid and /etc/subgid so the scanner can use a
user namespace (``--id-mapping=userns``). ``scapguard-scan`` comes from a world-readable
virtualenv with this checkout installed (:mod:`scapguard_dev.scannerenv`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from scapguard.results.model import ScanResult
from scapguard_dev.content import ssg_debian_content
from scapguard_dev.registry import Registry
from scapguard_dev.scannerenv import ensure_scanner_venv
from scapguard_dev.scanuser import ScanUser, ensure_scan_user


@dataclass(frozen=True)
class ScanRun:
    returncode: int
    result: ScanResult | None
    stdout: str
    stderr: str
    output_dir: Path
    work_dir: Path


@pytest.fixture(scope="session")
def scan_user() -> ScanUser:
    if os.geteuid() != 0:
        pytest.skip("the scanner tests create the scanning user: run them as root")
    user = ensure_scan_user()
    # uid = gid = 65532, as the pods run: with a system gid newuidmap refuses the map.
    assert (user.uid, user.gid) == (65532, 65532), user
    return user


@pytest.fixture(scope="session")
def scanner_bin() -> Path:
    return ensure_scanner_venv() / "scapguard-scan"


@pytest.fixture(scope="session")
def root_used_buildah() -> None:
    """The node as it is once root has run buildah or podman: ``/run/containers`` exists,
    root's, mode 0700. skopeo's default auth lookup (``/run/containers/UID/auth.json``) then
    fails with "permission denied" for the scanning user; the scanner must never look there."""
    path = Path("/run/containers")
    if not path.exists():
        path.mkdir(mode=0o700)
    assert path.stat().st_uid == 0


@pytest.fixture(scope="session")
def shared_dir(scan_user: ScanUser, root_used_buildah: None) -> Iterator[Path]:
    """A directory the scanning user can reach (pytest's own tmp is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="scapguard-scantests-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ssg_debian12_ds(shared_dir: Path) -> Path:
    """trixie's ssg-debian Debian 12 datastream, readable by the scanning user."""
    src = ssg_debian_content() / "ssg-debian12-ds.xml"
    dest = shared_dir / "ssg-debian12-ds.xml"
    if not dest.exists():
        shutil.copyfile(src, dest)
        dest.chmod(0o644)
    return dest


@pytest.fixture(scope="session")
def base_files_feed(shared_dir: Path) -> Path:
    """A feed with one always-relevant definition (base-files below 99) so a silent probe
    failure would show up as a missing finding, not as an error."""
    feed = shared_dir / "feed-base-files.xml"
    ns = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
    feed.write_text(
        f"""<?xml version="1.0"?>
<oval_definitions xmlns="{ns}" xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"
    xmlns:l="{ns}#linux" xmlns:i="{ns}#independent">
  <generator><oval:schema_version>5.11.2</oval:schema_version>
    <oval:timestamp>2024-01-01T00:00:00</oval:timestamp></generator>
  <definitions>
    <definition id="oval:org.debian:def:1" version="1" class="vulnerability">
      <metadata><title>CVE-2099-0001 base-files</title><description>x</description>
        <reference source="CVE" ref_id="CVE-2099-0001"/></metadata>
      <criteria><criterion test_ref="oval:org.debian:tst:1"/></criteria></definition>
    <definition id="oval:org.debian:def:2" version="1" class="vulnerability">
      <metadata><title>CVE-2099-0002 leaked</title><description>x</description>
        <reference source="CVE" ref_id="CVE-2099-0002"/></metadata>
      <criteria><criterion test_ref="oval:org.debian:tst:2"/></criteria></definition>
  </definitions>
  <tests>
    <l:dpkginfo_test id="oval:org.debian:tst:1" version="1" check="all"
        check_existence="at_least_one_exists" comment="x">
      <l:object object_ref="oval:org.debian:obj:1"/><l:state state_ref="oval:org.debian:ste:1"/>
    </l:dpkginfo_test>
    <i:textfilecontent54_test id="oval:org.debian:tst:2" version="1" check="all"
        check_existence="at_least_one_exists" comment="secret reachable">
      <i:object object_ref="oval:org.debian:obj:2"/></i:textfilecontent54_test>
  </tests>
  <objects>
    <l:dpkginfo_object id="oval:org.debian:obj:1" version="1"><l:name>base-files</l:name>
    </l:dpkginfo_object>
    <i:textfilecontent54_object id="oval:org.debian:obj:2" version="1">
      <i:filepath>/etc/motd</i:filepath>
      <i:pattern operation="pattern match">(.*SECRET.*)</i:pattern>
      <i:instance datatype="int" operation="greater than or equal">1</i:instance>
    </i:textfilecontent54_object>
  </objects>
  <states>
    <l:dpkginfo_state id="oval:org.debian:ste:1" version="1">
      <l:evr datatype="debian_evr_string" operation="less than">0:99</l:evr></l:dpkginfo_state>
  </states>
</oval_definitions>
""",
        encoding="utf-8",
    )
    feed.chmod(0o644)
    return feed


def world_readable(path: Path, shared_dir: Path, text: str) -> Path:
    dest = shared_dir / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    dest.chmod(0o644)
    return dest


ScanRunner = Callable[..., ScanRun]


def _scan_runner(scan_user: ScanUser, scanner_bin: Path, shared_dir: Path,
                 registry_host: str | None, made: list[Path]) -> ScanRunner:  # fmt: skip
    def runner(image: str | None, *args: str, user: bool = True, insecure: bool = True,
               env: dict[str, str] | None = None, timeout: float = 900,
               wrap: Sequence[str] = ()) -> ScanRun:  # fmt: skip
        base = Path(tempfile.mkdtemp(prefix="scan-", dir=shared_dir))
        made.append(base)
        base.chmod(0o755)
        out, work, home = base / "out", base / "work", base / "home"
        for d in (out, work, home):
            d.mkdir()
            os.chown(d, scan_user.uid, scan_user.gid)
        cmd: Sequence[str] = [
            *wrap, str(scanner_bin), *([image] if image is not None else []),
            "--output-dir", str(out), "--work-dir", str(work),
            *(["--insecure-registry", registry_host] if insecure and registry_host else []),
            *args,
        ]  # fmt: skip
        if user:
            cmd = ["setpriv", f"--reuid={scan_user.uid}", f"--regid={scan_user.gid}",
                   "--clear-groups", *cmd]  # fmt: skip
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "LANG": "C.UTF-8", **(env or {})}  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=home,
                              env=full_env, check=False)  # fmt: skip
        result_file = out / "result.json"
        result = None
        if result_file.exists():
            result = ScanResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))
        return ScanRun(proc.returncode, result, proc.stdout, proc.stderr, out, work)

    return runner


@pytest.fixture
def run_scan(
    scan_user: ScanUser, scanner_bin: Path, shared_dir: Path, registry: Registry
) -> Iterator[ScanRunner]:
    """Run ``scapguard-scan IMAGE ARGS...`` as the scanning user against the test registry."""
    made: list[Path] = []
    try:
        yield _scan_runner(scan_user, scanner_bin, shared_dir, registry.host, made)
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_local_scan(
    scan_user: ScanUser, scanner_bin: Path, shared_dir: Path
) -> Iterator[ScanRunner]:
    """Run ``scapguard-scan ARGS...`` (``--rootfs`` / ``--oci-layout``: no registry) as the
    scanning user; the runner's first argument is None."""
    made: list[Path] = []
    try:
        yield _scan_runner(scan_user, scanner_bin, shared_dir, None, made)
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
