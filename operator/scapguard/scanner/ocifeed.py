"""Canonical's OCI-flavoured OVAL (``oci.com.ubuntu.*``): tests on a ``./manifest`` file.

Ubuntu publishes, beside its dpkginfo feeds, feeds meant to be evaluated *next to* an image:
every test is a ``textfilecontent54_test`` on the object ``path`` ``.`` + ``filename``
``manifest`` with patterns ``^NAME(?::\\w+|)\\s+(.*)$`` and a ``debian_evr_string`` state on the
subexpression; the manifest is ``dpkg-query -W`` run in the image (Canonical: "generate it with
``dpkg-query -W > manifest``, run oscap in that directory").

Where oscap 1.3.7 looks for it (tested with the real feed): without ``OSCAP_PROBE_ROOT`` the path
``.`` is oscap's working directory. Under ``OSCAP_PROBE_ROOT=/x`` (how the scanner runs oscap)
the probe opens ``/x/.``, strips the prefix back to ``/.`` and compares that with ``.``: nothing
is ever collected. Under ``OSCAP_PROBE_ROOT=/x/`` (trailing slash) it strips back to ``.`` and
reads ``/x/manifest``. Writing the manifest into the image tree would modify it (and an image
may ship a ``/manifest`` of its own); running without a probe root would put the scanner's own
host name and addresses into the results' system_info. So a feed of this flavour is evaluated
with a probe root of its own, ``<scratch>/oci-manifest/`` with the slash, holding only the
manifest the scanner wrote from the image's dpkg database
(:func:`scapguard.scanner.inventory.dpkg_manifest`): oscap reads nothing of the image tree.
That is only sound when the feed reads nothing else: a feed mixing manifest tests with any
other test or object is ``ContentInvalid`` (:func:`is_manifest_feed`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from scapguard.results.model import ErrorReason
from scapguard.results.oval import NS_DEF
from scapguard.results.xmlsafe import local_name
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.feedfilter import FeedIndex, is_manifest_object

log = logging.getLogger(__name__)

_TEST: Final = f"{{{NS_DEF}#independent}}textfilecontent54_test"
MANIFEST: Final = "manifest"


def is_manifest_feed(index: FeedIndex) -> bool:
    """True for a feed of the OCI flavour (module docstring), False for any other feed.

    ``ContentInvalid`` for a feed with manifest objects *and* other tests or objects: no single
    oscap run can evaluate both (the manifest needs a probe root of its own, the rest the
    image's).
    """
    manifest: list[str] = []
    other: list[str] = []
    for ident, el in index.elements.items():
        kind = local_name(el.tag)
        if kind.endswith("_object"):
            (manifest if is_manifest_object(el) else other).append(ident)
        elif kind.endswith("_test") and el.tag != _TEST:
            other.append(ident)
    if not manifest:
        return False
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"{index.source}: {len(manifest)} objects read ./{MANIFEST} (Canonical's OCI "
            f"OVAL) but other tests or objects read the system ({shown}); such a mix cannot "
            "be evaluated in one oscap run",
        )
    return True


def write_manifest(lines: list[str], directory: Path) -> Path:
    """``directory/manifest`` with ``lines`` (``NAME[:ARCH]<TAB>VERSION``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    log.info("wrote %s with %d packages for an OCI-flavoured feed", path, len(lines))
    return path
