"""Benchmark: the scanner's content path on a feed as big as the issue asks for (256 MiB).

Generates a Red Hat style OVAL feed (rpminfo test, object and state per definition, padded
with realistic metadata) of the size asked for, then, each in a fresh process:

- scapguard: ``content.resolve`` (sha256, reference check and index, as in a scan) and the
  pre-filter for an image with 300 installed packages of which 30 are named by the feed;
- ``oscap info`` on the same file: a full parse by oscap's libxml2, the least any plain
  ``oscap oval eval`` of the whole feed costs (scapguard hands oscap only the kept definitions).

Prints wall time and peak RSS (MiB) of each. Run: .venv/bin/python bench/big_feed.py [MiB]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5"
 xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"
 xmlns:red-def="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux">
<generator><oval:product_name>bench</oval:product_name>
<oval:schema_version>5.10</oval:schema_version>
<oval:timestamp>2026-12-01T00:00:00</oval:timestamp></generator>
"""
CVE_URL = "https://access.redhat.com/security/cve/CVE-2026-{i}"
DEF = (
    '<definition class="patch" id="oval:bench:def:{i}" version="1"><metadata>\n'
    "<title>RHSA-2026:{i}: pkg{p} security update (Important)</title>\n"
    '<affected family="unix"><platform>Red Hat Enterprise Linux 9</platform></affected>\n'
    '<reference ref_id="RHSA-2026:{i}" source="RHSA"'
    ' ref_url="https://access.redhat.com/errata/RHSA-2026:{i}"/>\n'
    f'<reference ref_id="CVE-2026-{{i}}" ref_url="{CVE_URL}" source="CVE"/>\n'
    "<description>{pad}</description>\n"
    '<advisory from="secalert@redhat.com"><severity>Important</severity>\n'
    '<cve cvss3="7.5/CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"'
    f' href="{CVE_URL}" impact="important" public="20260101">CVE-2026-{{i}}</cve>\n'
    "</advisory></metadata>\n"
    '<criteria operator="AND"><criterion comment="pkg{p} is earlier than 0:1.{i}-1.el9"'
    ' test_ref="oval:bench:tst:{i}"/></criteria>\n'
    "</definition>\n"
)
TEST = (
    '<red-def:rpminfo_test check="at least one" comment="pkg{p} is earlier"'
    ' id="oval:bench:tst:{i}" version="1"><red-def:object object_ref="oval:bench:obj:{i}"/>'
    '<red-def:state state_ref="oval:bench:ste:{i}"/></red-def:rpminfo_test>\n'
)
OBJ = (
    '<red-def:rpminfo_object id="oval:bench:obj:{i}" version="1">'
    "<red-def:name>pkg{p}</red-def:name></red-def:rpminfo_object>\n"
)
STE = (
    '<red-def:rpminfo_state id="oval:bench:ste:{i}" version="1"><red-def:evr'
    ' datatype="evr_string" operation="less than">0:1.{i}-1.el9</red-def:evr>'
    "</red-def:rpminfo_state>\n"
)
PAD = "A flaw was found in the package. An attacker could use it to cause a denial of service. " * 4
PACKAGES = 3000


def write_feed(path: Path, mib: int) -> int:
    per_def = len(DEF.format(i=100000, p=1000, pad=PAD)) + len(TEST) + len(OBJ) + len(STE) + 90
    count = mib * 1024 * 1024 // per_def
    with path.open("w", encoding="utf-8") as f:
        f.write(HEAD)
        for section, template in (("definitions", DEF), ("tests", TEST), ("objects", OBJ),
                                  ("states", STE)):  # fmt: skip
            f.write(f"<{section}>\n")
            for i in range(1, count + 1):
                f.write(template.format(i=i, p=i % PACKAGES, pad=PAD))
            f.write(f"</{section}>\n")
        f.write("</oval_definitions>\n")
    return count


CHILD = """
import sys, time, resource
from pathlib import Path
from scapguard.scanner import content, feedfilter
feed, work = Path(sys.argv[1]), Path(sys.argv[2])
t = time.monotonic()
resolved = content.resolve("oval", "bench", work / "c", override=content.ContentOverride(file=feed))
t_resolve = time.monotonic() - t
index = feedfilter.cached(resolved.info.sha256)
named = {f"pkg{i}" for i in range(0, 3000, 100)}
installed = frozenset(named | {f"other{i}" for i in range(270)})
t = time.monotonic()
kept = feedfilter.prefilter(index, installed, work / "filtered.xml")
t_filter = time.monotonic() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{t_resolve:.1f} {t_filter:.1f} {peak:.0f} {kept.definitions} {kept.kept}")
"""


OSCAP_CHILD = """
import resource, subprocess, sys
rc = subprocess.run(["/usr/bin/oscap", "info", sys.argv[1]], capture_output=True).returncode
print(rc, round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
"""


def main() -> int:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory(prefix="scapguard-bigfeed-") as tmp:
        work = Path(tmp)
        feed = work / "feed.xml"
        count = write_feed(feed, mib)
        size = feed.stat().st_size / 1024 / 1024
        print(f"feed: {size:.0f} MiB, {count} definitions (rpminfo), {PACKAGES} package names")
        started = time.monotonic()
        out = subprocess.run(  # noqa: S603 - argument lists built here
            [sys.executable, "-c", CHILD, str(feed), str(work)],
            capture_output=True, text=True, check=True, cwd=REPO / "operator",
        )  # fmt: skip
        wall = time.monotonic() - started
        t_resolve, t_filter, peak, defs, kept = out.stdout.split()
        print(f"scapguard resolve (hash, parse, reference check, index): {t_resolve} s")
        print(f"scapguard pre-filter for 30 named packages: {t_filter} s, kept {kept} of {defs}")
        print(f"scapguard total {wall:.1f} s, peak RSS {peak} MiB "
              f"({float(peak) / size:.1f}x the feed)")  # fmt: skip
        started = time.monotonic()
        info = subprocess.run(  # noqa: S603 - argument lists built here
            [sys.executable, "-c", OSCAP_CHILD, str(feed)], capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        wall = time.monotonic() - started
        rc, peak = info.stdout.split()
        print(f"oscap info (libxml2 parse of the same file): {wall:.1f} s, rc {rc}, "
              f"peak RSS {peak} MiB ({float(peak) / size:.1f}x the feed)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
