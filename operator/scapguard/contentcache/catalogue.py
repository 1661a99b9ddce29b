"""The built-in catalogue of vendors' official OVAL feeds, by feed key (``debian-bookworm``).

==========================  ==========================================================
key                         feed
==========================  ==========================================================
``debian-<codename>``       ``https://www.debian.org/security/oval/oval-definitions-<codename>.xml.bz2``
``ubuntu-<codename>``       ``https://security-metadata.canonical.com/oval/com.ubuntu.<codename>.cve.oval.xml.bz2``
``rhel-<major>``            ``https://security.access.redhat.com/data/oval/v2/RHEL<major>/rhel-<major>.oval.xml.bz2``
``almalinux-<major>``       ``https://security.almalinux.org/oval/org.almalinux.alsa-<major>.xml.bz2``
==========================  ==========================================================

CentOS Stream, Rocky and Fedora have none built in: Red Hat's definitions also check Red Hat's
signing key, so on a rebuild they would all be false (a false pass). An admin may add or
replace any key (an internal mirror, a rebuild's own feed) with the operator's
``SCAPGUARD_CONTENT_CATALOGUE`` setting; the operator fetches only the URLs of its catalogue,
never one a scanner names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

#: Response headers of the operator's content endpoint (scapguard.results_server).
SHA256_HEADER: Final = "x-scapguard-content-sha256"
SOURCE_HEADER: Final = "x-scapguard-content-source"
ORIGIN_HEADER: Final = "x-scapguard-content-origin"

KEY: Final = re.compile(r"[a-z][a-z0-9]*-[a-z0-9][a-z0-9.]*")
_CODENAME: Final = re.compile(r"[a-z]+")
_MAJOR: Final = re.compile(r"[0-9]+")


def feed_key(os_id: str, version: str) -> str:
    """The key of the feed for an OS (``version``: the codename where the OS has one, else the
    major version)."""
    return f"{os_id}-{version}"


def feed_name(key: str) -> str:
    """How results and ``status.content`` name the catalogue feed of ``key``."""
    return f"oval:{key}"


def key_of_name(name: str) -> str | None:
    """The inverse of :func:`feed_name`."""
    key = name.removeprefix("oval:")
    return key if key != name and KEY.fullmatch(key) else None


def builtin_url(key: str) -> str | None:
    os_id, _, version = key.partition("-")
    if os_id == "debian" and _CODENAME.fullmatch(version):
        return f"https://www.debian.org/security/oval/oval-definitions-{version}.xml.bz2"
    if os_id == "ubuntu" and _CODENAME.fullmatch(version):
        return f"https://security-metadata.canonical.com/oval/com.ubuntu.{version}.cve.oval.xml.bz2"
    if os_id == "rhel" and _MAJOR.fullmatch(version):
        return (
            f"https://security.access.redhat.com/data/oval/v2/RHEL{version}/"
            f"rhel-{version}.oval.xml.bz2"
        )
    if os_id == "almalinux" and _MAJOR.fullmatch(version):
        return f"https://security.almalinux.org/oval/org.almalinux.alsa-{version}.xml.bz2"
    return None


def catalogue_url(key: str, overrides: Mapping[str, str]) -> str | None:
    """The URL of ``key``'s feed: the admin's override, else the built-in one, else None."""
    return overrides.get(key) or builtin_url(key)
