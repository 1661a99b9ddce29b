"""The hand-off: POST to the operator's endpoint with the bearer token; standalone verdicts."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from scapguard.results.model import decode_handoff
from scapguard_dev.fixtureimages import FixtureImages

pytestmark = pytest.mark.slow


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        _Receiver.received.append((self.path, self.headers.get("Authorization", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_result_is_posted_with_the_bearer_token(
    fixture_images: FixtureImages,
    run_scan: Callable[..., Any],
    shared_dir: Path,
    base_files_feed: Path,
    receiver: str,
) -> None:
    token = shared_dir / "token"
    token.write_text("per-scan-token-123\n", encoding="utf-8")
    token.chmod(0o644)
    image = fixture_images.get("debian12", "vulnerable")
    run = run_scan(
        image.by_digest, "--feed-file", str(base_files_feed),
        env={"SCAPGUARD_RESULTS_URL": f"{receiver}/results/scan-1",
             "SCAPGUARD_RESULTS_TOKEN_FILE": str(token)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(_Receiver.received) == 1
    path, auth, body = _Receiver.received[0]
    assert path == "/results/scan-1"
    assert auth == "Bearer per-scan-token-123"
    result, report = decode_handoff(json.loads(body))
    assert result.outcome == "Completed"
    assert result.image.digest == image.digest
    assert report is not None and b"<html" in report[:1000]
    assert result.vulnerabilities is not None
    assert [f.id for f in result.vulnerabilities.findings] == ["CVE-2099-0001"]


def test_policy_file_decides_the_standalone_exit_code(
    fixture_images: FixtureImages,
    run_scan: Callable[..., Any],
    shared_dir: Path,
    base_files_feed: Path,
) -> None:
    """Debian findings have no severity (unknown); failOn low still does not fail on unknown,
    an exception is honoured, and a whole ScanPolicy object is accepted."""
    policy = shared_dir / "policy.yaml"
    feed = base_files_feed
    policy.write_text(
        "apiVersion: scapguard.io/v1alpha1\nkind: ScanPolicy\nmetadata: {name: p}\n"
        "spec:\n  failOn: low\n  exceptions:\n  - {id: CVE-2099-0001, reason: test}\n",
        encoding="utf-8",
    )
    policy.chmod(0o644)
    image = fixture_images.get("debian12", "vulnerable").by_digest
    run = run_scan(image, "--feed-file", str(feed), "--policy-file", str(policy))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Pass" in run.stdout
    bad = shared_dir / "bad-policy.yaml"
    bad.write_text("spec:\n  failOn: sometimes\n", encoding="utf-8")
    bad.chmod(0o644)
    run = run_scan(image, "--feed-file", str(feed), "--policy-file", str(bad))
    assert run.returncode == 2
    assert "spec.failOn" in run.stderr
