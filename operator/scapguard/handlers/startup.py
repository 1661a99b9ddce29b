"""Operator start-up and clean-up: settings, kopf configuration, servers."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from scapguard.api.constants import KOPF_STORAGE_PREFIX, PREFIX
from scapguard.config import Settings, SettingsError
from scapguard.handlers.admission import AdmissionOptions, configure_admission
from scapguard.handlers.cache import Cache, build_cache, start_cache
from scapguard.handlers.context import MEMO_KEY, Logger
from scapguard.k8s.api import IMAGE, Kube
from scapguard.k8s.client import load_client
from scapguard.metrics import Metrics
from scapguard.reconcile.background import start_loops
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.runtime import scanner_user_namespace
from scapguard.results_server import start_registry_events_server, start_results_server


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: Logger, **_: Any) -> None:
    await start_operator(settings, memo, logger)


@kopf.on.cleanup()
async def stop(memo: Any, logger: Logger, **_: Any) -> None:
    await stop_operator(memo, logger)


async def start_operator(settings: kopf.OperatorSettings, memo: Any, logger: Logger) -> None:
    """Settings from the environment (bad ones stop the operator), kopf settings, servers."""
    try:
        config = Settings.from_env()
    except SettingsError as exc:
        raise kopf.PermanentError(f"invalid setting {exc}") from exc
    _configure_kopf(settings, config)
    kube = await asyncio.to_thread(load_client)
    image_api = await asyncio.to_thread(kube.serves, IMAGE)
    if not image_api:
        logger.warning(
            "no image.openshift.io API: no ImageStreams to select nor Images to annotate; "
            "workloads and registry pushes are scanned, and the webhook refuses by scan verdict"
        )
    ctx = await _start_reconciling(kube, config, image_api, memo, logger)
    await _start_servers(ctx, memo)
    await asyncio.to_thread(
        configure_admission, settings, memo, _admission_options(config, image_api=image_api)
    )
    logger.info(
        "scapguard started: namespace=%s watching=%s limits=%s/%s",
        config.namespace,
        sorted(config.watch_namespaces) or "all",
        config.max_concurrent_scans,
        config.max_concurrent_scans_per_policy,
    )


def _configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    """kopf's own storage under scapguard's prefix, its workers, and peering."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_STORAGE_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = config.max_workers
    if config.peering_name:
        settings.peering.name = config.peering_name
        settings.peering.mandatory = True
        # Equal priorities pause every replica (kopf's rule): a random one elects a single one.
        settings.peering.priority = secrets.randbelow(2**30) + 1
    else:
        settings.peering.standalone = True


async def _start_reconciling(
    kube: Kube, config: Settings, image_api: bool, memo: Any, logger: Logger
) -> OperatorContext:
    """The operator's context, its cache (first listings awaited, bounded) and its loops."""
    metrics = Metrics(per_cve=config.per_cve_metrics)
    userns, why = await asyncio.to_thread(scanner_user_namespace, kube, config)
    logger.info("scanner pods %s a user namespace: %s", "get" if userns else "do not get", why)
    cache = build_cache(kube, config, image_api=image_api)
    ctx = OperatorContext(kube=cache.kube, settings=config, metrics=metrics,
                          scanner_user_namespace=userns, image_api=image_api)  # fmt: skip
    memo["scapguard_cache"] = cache
    await asyncio.to_thread(start_cache, cache, ctx)
    if not await asyncio.to_thread(cache.wait_synced):
        logger.warning("the cache's first listings are late; listing from the API meanwhile")
    memo["scapguard_background"] = start_loops(ctx)
    memo[MEMO_KEY] = ctx
    return ctx


async def _start_servers(ctx: OperatorContext, memo: Any) -> None:
    """Metrics (unless its port is 0), results and registry notifications."""
    config = ctx.settings
    if config.metrics_port:
        server, _thread = start_http_server(
            config.metrics_port, config.metrics_bind, registry=ctx.metrics.registry
        )
        memo["scapguard_metrics_server"] = server
    memo["scapguard_results_runner"] = await start_results_server(ctx)
    memo["scapguard_registry_events_runner"] = await start_registry_events_server(ctx)


def _admission_options(config: Settings, *, image_api: bool) -> AdmissionOptions:
    return AdmissionOptions(
        certfile=config.admission_tls_cert_file or "",
        pkeyfile=config.admission_tls_key_file or "",
        bind=config.admission_bind,
        port=config.admission_port,
        failure_policy=config.admission_failure_policy,
        enabled=config.admission_enabled,
        image_api=image_api,
    )


async def stop_operator(memo: Any, logger: Logger) -> None:
    for key in ("scapguard_results_runner", "scapguard_registry_events_runner"):
        runner = memo.get(key)
        if isinstance(runner, web.AppRunner):
            await runner.cleanup()
    for loop in memo.get("scapguard_background") or []:
        await asyncio.to_thread(loop.stop)
    cache = memo.get("scapguard_cache")
    if isinstance(cache, Cache):
        await asyncio.to_thread(cache.stop)
    server = memo.get("scapguard_metrics_server")
    if server is not None:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
    logger.info("scapguard stopped")
