"""Deterministic names: one ImageScan per (digest, policy), one Job per scan attempt."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
#: A scanner Job's (and its Secret's) name: ``job_name`` writes it, ``parse_job_name`` reads it.
JOB_NAME: Final = re.compile(
    r"scapguard-scan-(?P<scan>[0-9a-f]{12})-(?P<request>[0-9]+)-(?P<attempt>[0-9]+)"
)
_MAX_NAME = 253


def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def digest_hex(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return match.group(1)


def scan_name(digest: str, policy_namespace: str, policy_name: str) -> str:
    """``<first 12 hex of the digest>-<hash of digest and policy>``: stable across restarts."""
    hexdigest = digest_hex(digest)
    return f"{hexdigest[:12]}-{_hash(f'{digest}|{policy_namespace}/{policy_name}', 10)}"


def digest_label(digest: str) -> str:
    """Label values hold at most 63 characters: the first 63 hex digits."""
    return digest_hex(digest)[:63]


@dataclass(frozen=True)
class JobName:
    """What a scanner Job's name says: whose scan, which request and attempt."""

    scan_hash: str  # the first 12 hex digits of sha256(scan uid)
    request: int
    attempt: int


def job_name(scan_uid: str, request: int, attempt: int) -> str:
    """The scanner Job (and its Secret) for one attempt of one request of one scan."""
    return f"scapguard-scan-{_hash(scan_uid, 12)}-{request}-{attempt}"


def parse_job_name(name: str) -> JobName | None:
    """The parts of a scanner Job's name; None if ``name`` is not one (a URL path segment)."""
    match = JOB_NAME.fullmatch(name)
    if match is None:
        return None
    return JobName(match["scan"], int(match["request"]), int(match["attempt"]))


def promotion_job_name(scan_uid: str, request: int) -> str:
    """The promotion gate's copy Job (and its Secret) for one request of one scan."""
    return f"scapguard-promote-{_hash(scan_uid, 12)}-{request}"


def result_config_map_name(scan: str) -> str:
    name = f"{scan}-result"
    if len(name) <= _MAX_NAME:
        return name
    return f"{scan[:200]}-{_hash(scan, 10)}-result"
