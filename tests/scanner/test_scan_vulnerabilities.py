"""True positives and true negatives with the real oscap on the synthetic fixture images.

The OVAL is written here by hand, in each vendor's own style, and derived from
FIXTURE_PACKAGES: for every package whose vulnerable and patched versions differ, a definition
"PACKAGE earlier than PATCHED" (true on the vulnerable image, false on the patched one), plus a
definition for a package no image has and one whose fixed version is the installed one (false on
both). Images go through the registry; the scanner runs as a non-root user.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scapguard.results.model import Finding, Severity
from scapguard_dev.fixtureimages import Distro, FixtureImages
from scapguard_dev.ovalgen import feed_for

pytestmark = pytest.mark.slow


def by_id(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


@pytest.mark.parametrize("distro", ["debian12", "ubuntu2204", "rhel9"])
def test_vulnerable_image_has_exactly_the_expected_findings(
    distro: Distro, fixture_images: FixtureImages, run_scan: Callable[..., Any], shared_dir: Path
) -> None:
    doc, expected = feed_for(distro)
    feed = shared_dir / f"feed-{distro}.xml"
    feed.write_text(doc, encoding="utf-8")
    feed.chmod(0o644)
    image = fixture_images.get(distro, "vulnerable")
    run = run_scan(image.by_digest, "--feed-file", str(feed))
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    assert run.result.vulnerabilities is not None
    found = by_id(run.result.vulnerabilities.findings)
    want: dict[str, dict[str, str]] = {}
    severities: dict[str, Severity] = {}
    for e in expected:
        want.setdefault(e.cve, {})[e.package] = e.fixed
        severities[e.cve] = e.severity
    assert set(found) == set(want), run.stderr
    for cve, packages in want.items():
        assert {p.name: p.fixed_version for p in found[cve].packages} == packages, cve
        assert found[cve].severity == severities[cve], cve
    assert run.result.image.digest == image.digest
    assert run.result.os is not None and run.result.os.family in {"debian", "rhel"}
    assert run.result.vulnerabilities.content.source == "file"
    assert run.result.vulnerabilities.content.version == "2024-06-01T00:00:00"
    # The default policy (failOn high, failOnUnknown true): a high, critical or unknown finding
    # fails, so the Debian image (its feed gives no severity) fails too.
    fails = any(severities[c] in {"high", "critical", "unknown"} for c in want)
    assert run.returncode == (1 if fails else 0), run.stdout + run.stderr
    assert b"<html" in (run.output_dir / "report.html").read_bytes()[:1000]
    assert list(run.work_dir.iterdir()) == []  # the pulled image and the tree are gone


@pytest.mark.parametrize("distro", ["debian12", "ubuntu2204", "rhel9"])
def test_patched_image_has_no_findings(
    distro: Distro, fixture_images: FixtureImages, run_scan: Callable[..., Any], shared_dir: Path
) -> None:
    doc, _ = feed_for(distro)
    feed = shared_dir / f"feed-{distro}.xml"
    feed.write_text(doc, encoding="utf-8")
    feed.chmod(0o644)
    run = run_scan(fixture_images.get(distro, "patched").by_digest, "--feed-file", str(feed))
    assert run.result is not None, run.stderr
    assert run.result.outcome == "Completed", run.result.error
    assert run.result.vulnerabilities is not None
    assert run.result.vulnerabilities.findings == ()
    assert run.returncode == 0, run.stdout + run.stderr
