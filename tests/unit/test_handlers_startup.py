"""The kopf start-up handler: settings from the environment, kopf configuration, servers."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request

import kopf
import pytest

from scapguard.api.constants import (
    KOPF_STORAGE_PREFIX,
    RESCAN_ANNOTATION,
    WAKE_ANNOTATION,
)
from scapguard.handlers import startup
from scapguard.handlers.cache import Cache
from scapguard.handlers.context import MEMO_KEY, in_scope
from scapguard.reconcile.context import OperatorContext
from tests.fakekube import FakeKube


class CacheStart:
    """Stands in for the cache's informers (threads on a real API server: tests/e2e): each
    store gets the empty first listing an informer would give it."""

    def __init__(self) -> None:
        self.ctx: OperatorContext | None = None
        self.cache: Cache | None = None

    def __call__(self, cache: Cache, ctx: OperatorContext) -> None:
        self.ctx, self.cache = ctx, cache
        for store in cache.stores:
            for scope in store.scopes:
                store.replace(scope, [])


@pytest.fixture
def job_watch(monkeypatch: pytest.MonkeyPatch) -> CacheStart:
    start = CacheStart()
    monkeypatch.setattr(startup, "start_cache", start)
    return start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_startup_configures_kopf_and_serves(
    monkeypatch: pytest.MonkeyPatch, job_watch: CacheStart
) -> None:
    results, metrics = free_port(), free_port()
    for name, value in {
        "SCAPGUARD_NAMESPACE": "scapguard",
        "SCAPGUARD_WATCH_NAMESPACES": "apps",
        "SCAPGUARD_RESULTS_BIND": "127.0.0.1",
        "SCAPGUARD_RESULTS_PORT": str(results),
        "SCAPGUARD_METRICS_BIND": "127.0.0.1",
        "SCAPGUARD_METRICS_PORT": str(metrics),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(startup, "load_client", FakeKube)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    logger = logging.getLogger("test")

    async def run() -> tuple[bytes, bytes]:
        await startup.start_operator(settings, memo, logger)
        try:

            def fetch(url: str) -> bytes:
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 -- local
                    body: bytes = answer.read()
                    return body

            health = await asyncio.to_thread(fetch, f"http://127.0.0.1:{results}/healthz")
            scraped = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics}/metrics")
        finally:
            await startup.stop_operator(memo, logger)
        return health, scraped

    health, scraped = asyncio.run(run())
    assert health == b"ok"
    assert b"scapguard_scan_queue_wait_seconds" in scraped
    assert settings.persistence.finalizer == "scapguard.io/finalizer"
    assert settings.peering.name == "scapguard" and settings.peering.mandatory
    assert settings.peering.priority > 0
    assert isinstance(memo[MEMO_KEY], OperatorContext)
    assert job_watch.ctx is memo[MEMO_KEY] and job_watch.cache is not None
    assert job_watch.ctx.kube is job_watch.cache.kube
    assert {s.kind.plural for s in job_watch.cache.stores} == {
        "imagescans",
        "scanpolicies",
        "imagestreams",
        "jobs",
    }
    assert in_scope(namespace="apps", memo=memo) and in_scope(namespace="scapguard", memo=memo)
    assert not in_scope(namespace="other", memo=memo)


def test_bad_setting_stops_the_operator_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCAPGUARD_NAMESPACE", "scapguard")
    monkeypatch.setenv("SCAPGUARD_MAX_CONCURRENT_SCANS", "lots")
    with pytest.raises(kopf.PermanentError, match="SCAPGUARD_MAX_CONCURRENT_SCANS"):
        asyncio.run(
            startup.start_operator(kopf.OperatorSettings(), kopf.Memo(), logging.getLogger("test"))
        )


def test_scapguard_annotations_reach_update_handlers(
    monkeypatch: pytest.MonkeyPatch, job_watch: CacheStart
) -> None:
    """kopf leaves out of its diff every annotation under a prefix marked ``kopf-managed``:
    its own storage must not use scapguard.io, or rescans and wake-ups go unnoticed."""
    monkeypatch.setenv("SCAPGUARD_NAMESPACE", "scapguard")
    monkeypatch.setenv("SCAPGUARD_RESULTS_BIND", "127.0.0.1")
    monkeypatch.setenv("SCAPGUARD_RESULTS_PORT", str(free_port()))
    monkeypatch.setenv("SCAPGUARD_METRICS_PORT", "0")
    monkeypatch.setattr(startup, "load_client", FakeKube)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    logger = logging.getLogger("test")

    async def run() -> None:
        await startup.start_operator(settings, memo, logger)
        await startup.stop_operator(memo, logger)

    asyncio.run(run())
    storage = settings.persistence.diffbase_storage
    ours = {RESCAN_ANNOTATION: "2", WAKE_ANNOTATION: "result-received:scapguard-scan-0-1-1"}
    body = kopf.Body(
        {
            "apiVersion": "scapguard.io/v1alpha1",
            "kind": "ImageScan",
            "metadata": {
                "name": "s",
                "annotations": {**ours, f"{KOPF_STORAGE_PREFIX}/kopf-managed": "yes"},
            },
            "spec": {"image": "r/a@sha256:" + "0" * 64, "policy": "p"},
        }
    )
    essence = storage.build(body=body)
    assert essence["metadata"]["annotations"] == ours


def test_deletion_handlers_run_for_deletions_only() -> None:
    from scapguard.handlers.context import deletion
    from tests.harness import harness

    memo = kopf.Memo()
    memo[MEMO_KEY] = harness().ctx
    assert deletion(type="DELETED", namespace="apps", memo=memo)
    assert not deletion(type="MODIFIED", namespace="apps", memo=memo)
    assert not deletion(type="DELETED", namespace="apps", memo=kopf.Memo())


def test_what_another_try_fixes_is_a_temporary_error_and_the_rest_is_not() -> None:
    from scapguard.handlers.context import retried
    from scapguard.k8s.api import Conflict, Invalid, KubeError

    for transient in (Conflict(409, "Conflict", "x"), KubeError(0, "Unreachable", "refused"),
                      KubeError(503, "ServiceUnavailable", "etcd")):  # fmt: skip
        with pytest.raises(kopf.TemporaryError), retried():
            raise transient
    with pytest.raises(Invalid), retried():
        raise Invalid(422, "Invalid", "spec.x")
