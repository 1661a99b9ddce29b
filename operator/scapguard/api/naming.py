"""Deterministic names: one ImageScan per (digest, policy), one Job per scan attempt."""

from __future__ import annotations

import hashlib
import re

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
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


def job_name(scan_uid: str, request: int, attempt: int) -> str:
    """The scanner Job (and its Secret) for one attempt of one request of one scan."""
    return f"scapguard-scan-{_hash(scan_uid, 12)}-{request}-{attempt}"


def promotion_job_name(scan_uid: str, request: int) -> str:
    """The promotion gate's copy Job (and its Secret) for one request of one scan."""
    return f"scapguard-promote-{_hash(scan_uid, 12)}-{request}"


def result_config_map_name(scan: str) -> str:
    name = f"{scan}-result"
    if len(name) <= _MAX_NAME:
        return name
    return f"{scan[:200]}-{_hash(scan, 10)}-result"
