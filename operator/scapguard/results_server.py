"""The HTTP endpoint scanner pods POST their results to (started in kopf's startup).

``POST /v1/results/{job}`` with ``Authorization: Bearer <per-scan token>``; the checks and the
recording are in ``scapguard.reconcile.ingest`` (blocking API calls run in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final

from aiohttp import web

from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.ingest import Ingested, ingest

logger = logging.getLogger(__name__)

CONTEXT: Final = web.AppKey("scapguard_context", OperatorContext)
BEARER: Final = "Bearer "


def build_app(ctx: OperatorContext) -> web.Application:
    app = web.Application(client_max_size=ctx.settings.results_max_bytes)
    app[CONTEXT] = ctx
    app.router.add_post("/v1/results/{job}", post_result)
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
