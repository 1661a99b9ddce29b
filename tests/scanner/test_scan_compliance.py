"""Compliance on the debootstrap Debian 12 minbase image with the SSG Debian 12 datastream.

The reference is a plain ``oscap xccdf eval`` of the same image, pulled and unpacked by root
(owners kept) with only a clean apt configuration (the host's Docker-style apt.conf.d would make
1.3.7's dpkginfo fail, see scapguard.scanner.oscap). The scanner, run as a non-root user in its
user namespace, must give the same result for every rule.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scapguard.results.xccdf import parse_xccdf_results
from scapguard.scanner.pipeline import OWNERSHIP_RULE
from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.registry import Registry

pytestmark = pytest.mark.slow

PROFILE = "xccdf_org.ssgproject.content_profile_standard"


@pytest.fixture(scope="module")
def reference(
    fixture_images: FixtureImages,
    registry: Registry,
    ssg_debian12_ds: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """rule id -> result of a plain root ``oscap xccdf eval`` of the minbase image."""
    image = fixture_images.debian12_minbase()
    work = tmp_path_factory.mktemp("reference")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
         f"docker://{image.by_digest}", f"oci:{work / 'oci'}:ref"],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["umoci", "unpack", "--image", f"{work / 'oci'}:ref", str(work / "bundle")],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    apt_conf = work / "apt.conf"
    (work / "apt.conf.d").mkdir()
    apt_conf.write_text(
        f'Dir::Etc::main "/dev/null";\nDir::Etc::parts "{work / "apt.conf.d"}";\n',
        encoding="utf-8",
    )
    results = work / "results.xml"
    proc = subprocess.run(
        ["oscap", "xccdf", "eval", "--profile", PROFILE, "--results", str(results),
         str(ssg_debian12_ds)],
        env={"PATH": os.environ["PATH"], "OSCAP_PROBE_ROOT": str(work / "bundle" / "rootfs"),
             "APT_CONFIG": str(apt_conf), "HOME": str(work)},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode in {0, 2}, proc.stderr
    assert "dpkginfo_init has failed" not in proc.stderr
    parsed = parse_xccdf_results(results)
    return {r.id: r.result for r in parsed.rules}


def test_standard_profile_equals_a_plain_oscap_run_rule_for_rule(
    fixture_images: FixtureImages,
    run_scan: Callable[..., Any],
    ssg_debian12_ds: Path,
    reference: dict[str, str],
) -> None:
    image = fixture_images.debian12_minbase()
    run = run_scan(
        image.by_digest, "--compliance", "--no-vulnerabilities",
        "--datastream-file", str(ssg_debian12_ds), "--id-mapping", "userns", "--keep-work-dir",
    )  # fmt: skip
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    compliance = run.result.compliance
    assert compliance is not None
    got = {r.id: r.result for r in compliance.rules}
    assert got == reference
    assert compliance.not_checked_reason is None
    assert compliance.profile == PROFILE
    assert compliance.content.version == "0.1.76"
    assert compliance.score is not None and 0 < compliance.score < 100
    assert sum(1 for r in got.values() if r == "fail") >= 1
    # The owner-sensitive rules are judged, with the image's true owners.
    assert any(OWNERSHIP_RULE.search(rule) and res == "pass" for rule, res in got.items())
    # oscap ran as the scanning user, not root: its output files belong to that user on the
    # host (uid 0 of the scanner's user namespace is the scanning user outside).
    results = list(run.work_dir.glob("scan-*/oscap/xccdf-results.xml"))
    assert len(results) == 1
    assert results[0].stat().st_uid == 65532
    # ...and the tree kept its owners as subordinate ids (shadow is root:shadow in the image).
    shadow = next(run.work_dir.glob("scan-*/bundle/rootfs/etc/shadow"))
    assert (shadow.stat().st_uid, shadow.stat().st_gid) == (65532, 1_000_000 + 42 - 1)
    assert (run.result.scanner.id_mapping, run.result.scanner.id_mapping_fallback) == (
        "userns",
        None,
    )


def test_rootless_mode_reports_ownership_rules_notchecked_never_false(
    fixture_images: FixtureImages,
    run_scan: Callable[..., Any],
    ssg_debian12_ds: Path,
    reference: dict[str, str],
) -> None:
    run = run_scan(
        fixture_images.debian12_minbase().by_digest, "--compliance", "--no-vulnerabilities",
        "--datastream-file", str(ssg_debian12_ds), "--id-mapping", "rootless",
    )  # fmt: skip
    assert run.result is not None, run.stderr
    compliance = run.result.compliance
    assert compliance is not None
    assert compliance.not_checked_reason is not None
    assert "rootless" in compliance.not_checked_reason
    # Asked for: rootless, but nothing was expected and lost, so no fallback is reported.
    assert (run.result.scanner.id_mapping, run.result.scanner.id_mapping_fallback) == (
        "rootless",
        None,
    )
    got = {r.id: r.result for r in compliance.rules}
    assert set(got) == set(reference)
    marked = {rule for rule, res in got.items() if res == "notchecked" and reference[rule] != res}
    assert marked, "ownership rules should be notchecked"
    assert all(OWNERSHIP_RULE.search(rule) for rule in marked)
    # Every rule still judged agrees with the reference: no false fail, no false pass.
    for rule, res in got.items():
        if rule not in marked:
            assert res == reference[rule], rule


def test_inside_a_pod_user_namespace_the_scanner_keeps_owners_without_a_wrapper(
    fixture_images: FixtureImages,
    run_scan: Callable[..., Any],
    ssg_debian12_ds: Path,
    reference: dict[str, str],
) -> None:
    """A pod with hostUsers: false runs the scanner as uid 0 of a user namespace with 65536
    ids: the scanner detects it (mode inherited) and needs no unshare of its own."""
    pod_userns = ["unshare", "--map-root-user", "--map-users=1000000,1,65535",
                  "--map-groups=1000000,1,65535", "--"]  # fmt: skip
    run = run_scan(
        fixture_images.debian12_minbase().by_digest, "--compliance", "--no-vulnerabilities",
        "--datastream-file", str(ssg_debian12_ds), "--id-mapping", "inherited",
        wrap=pod_userns,
    )  # fmt: skip
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    assert run.result.compliance is not None
    assert {r.id: r.result for r in run.result.compliance.rules} == reference
    assert run.result.compliance.not_checked_reason is None
