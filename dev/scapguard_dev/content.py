"""SCAP content for development hosts and CI whose own distribution ships too old a version.

Debian 12's ``ssg-debian`` (0.1.65) has no Debian 12 datastream; trixie's (0.1.76) has. The
scanner image installs trixie's package (scanner-image/packages.txt); a bookworm development
host gets the same files by downloading the ``.deb`` from trixie with a private apt
configuration and extracting it under ``~/.cache/scapguard/`` (nothing is installed, the host's
apt state is untouched). The mirror is the one the machine's own apt sources already use, read
at run time; no host name is written anywhere.

    python -m scapguard_dev.content      # prints the extracted SSG content directory
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from scapguard_dev import fixtureimages

log = logging.getLogger(__name__)

KEYRING: Final = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SUITE: Final = "trixie"
_APT_TIMEOUT: Final = 600.0


class DevContentError(RuntimeError):
    """The development SCAP content could not be fetched; the message names the step."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scapguard"


def debian_mirror() -> tuple[str, str]:
    """(URI, keyring) of the machine's Debian archive, read from its own apt sources."""
    return fixtureimages.debian_mirror(), str(KEYRING)


def _run(cmd: Sequence[str], *, timeout: float = _APT_TIMEOUT, cwd: Path | None = None) -> None:
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise DevContentError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise DevContentError(
            f"{' '.join(cmd)} failed with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )


def fetch_deb(package: str, dest: Path, *, suite: str = SUITE) -> Path:
    """Download ``package``'s .deb from ``suite`` into ``dest`` with a private apt state."""
    uri, keyring = debian_mirror()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scapguard-apt-") as tmp:
        root = Path(tmp)
        (root / "lists" / "partial").mkdir(parents=True)
        (root / "archives" / "partial").mkdir(parents=True)
        (root / "sourceparts").mkdir()
        sources = root / "sources.list"
        sources.write_text(f"deb [signed-by={keyring}] {uri} {suite} main\n", encoding="utf-8")
        opts = [
            f"-oDir::Etc::SourceList={sources}",
            f"-oDir::Etc::SourceParts={root / 'sourceparts'}",
            f"-oDir::State::Lists={root / 'lists'}",
            f"-oDir::Cache={root}",
            f"-oDir::Cache::Archives={root / 'archives'}",
            "-oAPT::Get::List-Cleanup=false",
            # The host's architecture only; trixie's lists for it are all we need.
            "-oAcquire::Languages=none",
        ]
        _run(["apt-get", "-q", *opts, "update"])
        _run(["apt-get", "-q", *opts, "download", package], cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise DevContentError(f"apt-get download {package} left no .deb in {dest}")
    return debs[-1]


def ssg_debian_content(*, suite: str = SUITE) -> Path:
    """The ``ssg-debian`` content directory (…/usr/share/xml/scap/ssg/content) from ``suite``.

    Downloaded and extracted once into the cache; later calls reuse it.
    """
    root = cache_root() / f"ssg-debian-{suite}"
    content = root / "tree" / "usr" / "share" / "xml" / "scap" / "ssg" / "content"
    marker = root / "complete"
    if marker.is_file() and content.is_dir():
        return content
    if root.exists():
        shutil.rmtree(root)
    deb = fetch_deb("ssg-debian", root / "debs", suite=suite)
    _run(["dpkg-deb", "-x", str(deb), str(root / "tree")])
    if not content.is_dir():
        raise DevContentError(f"{deb} holds no {content.relative_to(root / 'tree')}")
    marker.write_text(deb.name + "\n", encoding="utf-8")
    log.info("ssg-debian from %s extracted to %s", suite, content)
    return content


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", default=SUITE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = ssg_debian_content(suite=args.suite)
    except DevContentError as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
