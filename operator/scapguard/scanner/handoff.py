"""Hand the result to the operator (POST, per docs/api-contracts.md) or write it to a directory."""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scapguard.results.model import ScanResult, ScanResultError, encode_handoff

log = logging.getLogger(__name__)

RESULT_FILE: Final = "result.json"
REPORT_FILE: Final = "report.html"
# About two minutes of retries (2+4+8+16+30+30+30 s): long enough to ride out an operator
# restart or a leader change, within the share of the Job's deadline kept for reporting.
ATTEMPTS: Final = 8
BACKOFF: Final = 2.0
BACKOFF_MAX: Final = 30.0


class HandoffError(RuntimeError):
    """The result could not be delivered; the message names the URL or file."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    token_file: Path
    ca_file: Path | None = None
    timeout: float = 60.0


def write_output_dir(result: ScanResult, report_html: bytes | None, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT_FILE
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if report_html is not None:
        (out / REPORT_FILE).write_bytes(report_html)
    return path


def post(result: ScanResult, report_html: bytes | None, endpoint: Endpoint) -> None:
    """POST ``{"result", "reportGzipBase64"}`` with the bearer token; retries 5xx and I/O errors."""
    try:
        token = endpoint.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HandoffError(f"{endpoint.token_file}: cannot read token: {exc}") from exc
    if not endpoint.url.startswith("https://") and endpoint.ca_file is not None:
        raise HandoffError(f"{endpoint.url}: a CA file was given for a non-https URL")
    context = None
    if endpoint.url.startswith("https://"):
        context = ssl.create_default_context(
            cafile=str(endpoint.ca_file) if endpoint.ca_file else None
        )
    try:
        envelope = encode_handoff(result, report_html)
    except ScanResultError as exc:
        if exc.field != "reportGzipBase64":
            raise
        log.warning("sending the result without its HTML report: %s", exc)
        envelope = encode_handoff(result, None)
    body = json.dumps(envelope).encode()
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        request = urllib.request.Request(  # noqa: S310 - URL from the operator's Job spec
            endpoint.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout, context=context) as resp:  # noqa: S310
                log.info("result delivered to %s (HTTP %s)", endpoint.url, resp.status)
                return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read(2000).decode(errors='replace')}"
            exc.close()
            if exc.code < 500:
                raise HandoffError(f"{endpoint.url}: refused the result: {last}") from exc
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        log.warning("delivering to %s failed (attempt %s): %s", endpoint.url, attempt, last)
        if attempt < ATTEMPTS:
            time.sleep(min(BACKOFF**attempt, BACKOFF_MAX))
    raise HandoffError(f"{endpoint.url}: not delivered after {ATTEMPTS} attempts: {last}")
