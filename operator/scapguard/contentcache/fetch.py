"""Download one URL to a file: bounded, streamed, optionally conditional (ETag/Last-Modified).

Shared by the operator's content cache and the scanner's standalone mode. Only http and https;
redirects are followed by urllib (an https URL redirected to plain http is refused).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Final

from scapguard.contentcache.errors import ContentFetchError

_CHUNK: Final = 1 << 20
_MAX_ERROR_BODY: Final = 4096
#: 502 is not among them: scapguard's content server says so when the source failed.
_RETRYABLE: Final = frozenset({500, 503, 504})
USER_AGENT: Final = "scapguard"


@dataclass(frozen=True)
class Fetched:
    """``modified`` False: the server answered 304 and ``dest`` was not written."""

    modified: bool
    etag: str | None = None
    last_modified: str | None = None
    headers: Mapping[str, str] | None = None


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise urllib.error.URLError(f"refused a redirect from https to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _error_body(exc: urllib.error.HTTPError) -> tuple[str | None, str]:
    """A JSON error body's ``reason`` and ``message`` (scapguard's content server sends them)."""
    try:
        doc = json.loads(exc.read(_MAX_ERROR_BODY))
    except (OSError, ValueError):
        return None, ""
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
        return None, ""
    reason = doc.get("reason") if isinstance(doc.get("reason"), str) else None
    return reason, f": {doc['message']}"


def fetch_url(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
    etag: str | None = None,
    last_modified: str | None = None,
    headers: Mapping[str, str] | None = None,
    ca_file: str | None = None,
    name: str | None = None,
) -> Fetched:
    """GET ``url`` into ``dest``; ContentFetchError naming ``name`` (default the URL)."""
    where = name or url
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in {"https", "http"}:
        raise ContentFetchError(f"{where}: only https/http URLs")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})  # noqa: S310
    if etag:
        request.add_header("If-None-Match", etag)
    if last_modified:
        request.add_header("If-Modified-Since", last_modified)
    context = ssl.create_default_context(cafile=ca_file) if scheme == "https" else None
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoDowngrade()
    )
    try:
        with opener.open(request, timeout=timeout) as resp, dest.open("wb") as out:
            total = 0
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise ContentFetchError(f"{where}: larger than {max_bytes} bytes")
                out.write(chunk)
            got = {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 304:
                return Fetched(modified=False, etag=etag, last_modified=last_modified)
            reason, detail = _error_body(exc)
        raise ContentFetchError(
            f"{where}: download failed: HTTP {exc.code} {exc.reason}{detail}",
            invalid=reason == "ContentInvalid",
            retryable=exc.code in _RETRYABLE,
        ) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ContentFetchError(f"{where}: download failed: {exc}", retryable=True) from exc
    return Fetched(
        modified=True, etag=got.get("etag"), last_modified=got.get("last-modified"), headers=got
    )
