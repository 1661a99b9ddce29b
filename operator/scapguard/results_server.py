"""The HTTP endpoint scanner pods talk to (started in kopf's startup), one bearer token per scan.

``POST /v1/results/{job}``: the scan's result; the checks and the recording are in
``scapguard.reconcile.ingest``. ``GET /v1/content/{job}/{what}``: the SCAP content the scan's
policy names, from the operator's content cache (``scapguard.reconcile.contentserve``).
``POST /v1/registry-events``: a registry's push notification
(``scapguard.reconcile.registryevents``), here and, when ``SCAPGUARD_REGISTRY_EVENTS_PORT`` is
set, alone on a plain-HTTP listener for registries that cannot be given a CA. Blocking work
(API calls, upstream fetches) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from scapguard.contentcache.catalogue import ORIGIN_HEADER, SHA256_HEADER, SOURCE_HEADER
from scapguard.k8s.api import KubeError
from scapguard.reconcile.contentserve import Served, serve
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.ingest import Ingested, ingest
from scapguard.reconcile.registryevents import MAX_BODY, Received, receive, too_large

logger = logging.getLogger(__name__)

CONTEXT: Final = web.AppKey("scapguard_context", OperatorContext)
BEARER: Final = "Bearer "
REGISTRY_EVENTS_PATH: Final = "/v1/registry-events"


@web.middleware
async def api_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API server unreachable or failing (a restart, an upgrade): 503, which scanners
    and registries retry, not a 500 with a traceback. Nothing was recorded."""
    try:
        return await handler(request)
    except KubeError as exc:
        if not exc.transient:
            raise
        logger.warning("%s %s: the API server failed (%s); answered 503", request.method,
                       request.path, exc)  # fmt: skip
        return web.json_response(
            {"reason": "APIUnavailable", "message": "the Kubernetes API is unavailable; retry"},
            status=503,
        )


def build_app(ctx: OperatorContext) -> web.Application:
    app = web.Application(
        client_max_size=ctx.settings.results_max_bytes, middlewares=[api_unavailable]
    )
    app[CONTEXT] = ctx
    app.router.add_post("/v1/results/{job}", post_result)
    app.router.add_get("/v1/content/{job}/{what:.+}", get_content)
    app.router.add_post(REGISTRY_EVENTS_PATH, post_registry_events)
    app.router.add_get("/healthz", healthz)
    return app


def build_registry_events_app(ctx: OperatorContext) -> web.Application:
    """The plain-HTTP listener: registry notifications only (and /healthz)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[api_unavailable])
    app[CONTEXT] = ctx
    app.router.add_post(REGISTRY_EVENTS_PATH, post_registry_events)
    app.router.add_get("/healthz", healthz)
    return app


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _answer(result: Ingested) -> web.Response:
    return web.json_response(
        {"reason": result.reason, "message": result.message}, status=result.status
    )


async def post_result(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    job = request.match_info["job"]
    header = request.headers.get("Authorization", "")
    if not header.startswith(BEARER) or len(header) == len(BEARER):
        ctx.metrics.results_rejected.labels("Unauthorized").inc()
        return _answer(Ingested(401, "Unauthorized", "a bearer token is required"))
    limit = ctx.settings.results_max_bytes
    if request.content_length is not None and request.content_length > limit:
        ctx.metrics.results_rejected.labels("TooLarge").inc()
        return _answer(Ingested(413, "TooLarge", f"results are limited to {limit} bytes"))
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        ctx.metrics.results_rejected.labels("TooLarge").inc()
        return _answer(Ingested(413, "TooLarge", f"results are limited to {limit} bytes"))
    result = await asyncio.to_thread(ingest, ctx, job, header[len(BEARER) :].strip(), body)
    return _answer(result)


def _received(result: Received) -> web.Response:
    return web.json_response(result.to_dict(), status=result.status)


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` bytes (whatever the app's own limit)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def post_registry_events(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    header = request.headers.get("Authorization", "")
    token = header[len(BEARER) :].strip() if header.startswith(BEARER) else ""
    body = await _read_bounded(request, MAX_BODY)
    if body is None:
        return _received(too_large(ctx))
    return _received(await asyncio.to_thread(receive, ctx, token, body))


async def get_content(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    header = request.headers.get("Authorization", "")
    if not header.startswith(BEARER) or len(header) == len(BEARER):
        return _content_error(Served(401, "Unauthorized", "a bearer token is required"))
    served = await asyncio.to_thread(
        serve,
        ctx,
        request.match_info["job"],
        header[len(BEARER) :].strip(),
        request.match_info["what"],
    )
    entry = served.entry
    if entry is None:
        return _content_error(served)
    return web.FileResponse(
        entry.path,
        headers={
            "Content-Type": "application/octet-stream",
            SHA256_HEADER: entry.sha256,
            SOURCE_HEADER: entry.source,
            ORIGIN_HEADER: entry.origin,
        },
    )


def _content_error(served: Served) -> web.Response:
    return web.json_response(
        {"reason": served.reason, "message": served.message}, status=served.status
    )


async def start_results_server(ctx: OperatorContext) -> web.AppRunner:
    settings = ctx.settings
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    tls: ssl.SSLContext | None = None
    if settings.results_tls_cert_file and settings.results_tls_key_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(settings.results_tls_cert_file, settings.results_tls_key_file)
    site = web.TCPSite(runner, settings.results_bind, settings.results_port, ssl_context=tls)
    await site.start()
    logger.info(
        "results endpoint listening on %s:%s (%s)",
        settings.results_bind,
        settings.results_port,
        "https" if tls else "http",
    )
    return runner


async def start_registry_events_server(ctx: OperatorContext) -> web.AppRunner | None:
    """The plain-HTTP registry notification listener, when a port is configured."""
    settings = ctx.settings
    if not settings.registry_events_port:
        return None
    runner = web.AppRunner(build_registry_events_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.registry_events_bind, settings.registry_events_port)
    await site.start()
    logger.info(
        "registry notification listener on %s:%s (http)",
        settings.registry_events_bind,
        settings.registry_events_port,
    )
    return runner
