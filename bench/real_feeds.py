"""Benchmark: scapguard's feed evaluation against plain ``oscap oval eval`` on real vendor feeds.

For the openSUSE Leap 15.3 feed (9,138 definitions) and Red Hat's RHEL 8 RHSA feed (129), it
builds the same fixture tree as tests/scanner/test_real_feeds.py (packages one below / at the
feed's fixed versions), then times plain ``oscap oval eval`` of the whole feed (root, the
decompressed file) and scapguard's path (content resolution with decompression and reference
checks, the canary with the package inventory, the pre-filter, ``oscap oval eval`` as the
scanning user in its user namespace, results parsing). It prints both times, the speed-up and
whether both found the same true definitions. Feeds are read from ``<repo>/../shared/feeds``.
Needs root (the scanning user, rpm databases). Run: .venv/bin/python bench/real_feeds.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.scanner.test_real_feeds import (  # noqa: E402
    CASES,
    FEEDS,
    build_tree,
    feed_bytes,
    plain_oscap,
    scapguard,
)

from scapguard_dev.scanuser import ensure_scan_user  # noqa: E402

BENCH_CASES = ("opensuse-leap-15.3", "rhel8-rhsa")


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """The tree becomes the scanning user's, as the test does (uid 0 in its namespace)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, uid, gid, follow_symlinks=False)


def main() -> int:
    user = ensure_scan_user()
    print(f"{'feed':<22}{'defs':>6}{'kept':>6}{'oscap s':>9}{'scapguard s':>13}"
          f"{'speed-up':>10}  same true definitions")  # fmt: skip
    for name in BENCH_CASES:
        case = CASES[name]
        feed = FEEDS / case.feed
        if not feed.is_file():
            print(f"{name:<22} skipped: {feed} not present")
            continue
        work = Path(tempfile.mkdtemp(prefix="bench-realfeed-", dir="/var/tmp"))
        work.chmod(0o755)
        try:
            doc = feed_bytes(feed)
            tree = build_tree(case, doc, work / "tree")
            chown_tree(tree.root, user.uid, user.gid)
            feed_xml = work / "feed.xml"
            feed_xml.write_bytes(doc)
            started = time.perf_counter()
            plain = plain_oscap(tree, feed_xml, work)
            plain_s = time.perf_counter() - started
            started = time.perf_counter()
            ours = scapguard(tree, feed, work, user)
            ours_s = time.perf_counter() - started
            same = f"{ours.true == plain} ({len(plain)} true)"
            print(f"{name:<22}{ours.definitions:>6}{ours.kept:>6}{plain_s:>9.2f}{ours_s:>13.2f}"
                  f"{plain_s / ours_s:>9.1f}x  {same}")  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
