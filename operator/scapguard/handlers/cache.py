"""The operator's informer cache: which kinds, where, and the scanner Jobs' watch.

``scapguard.k8s.cache`` explains why; this module starts the informers (threads of their own,
``scapguard.k8s.informer``) for ImageScans, ScanPolicies and ImageStreams in the watched
namespaces and for scanner Jobs in the operator's namespace. Each replica keeps its cache,
standbys included, so a replica that becomes active answers from memory at once.

A scanner Job that ends without a result also pokes its scan at once, instead of waiting for
the policy timer's look at the scans under way (30 s). Why not ``@kopf.on.event`` for Jobs:
kopf would watch Jobs in every namespace it serves (all of them), which needs cluster-wide
access to Jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from scapguard.builders.job import scanner_selector
from scapguard.config import Settings
from scapguard.k8s.api import (
    IMAGESCAN,
    IMAGESTREAM,
    JOB,
    SCANPOLICY,
    Kube,
    KubeError,
    Obj,
    name_of,
)
from scapguard.k8s.cache import CachedKube, Store, feed
from scapguard.k8s.client import load_api_client
from scapguard.k8s.informer import Informer
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.jobs import nudge_scan_of_ended_job

logger = logging.getLogger(__name__)

SYNC_TIMEOUT = 120.0


@dataclass
class Cache:
    kube: CachedKube
    stores: tuple[Store, ...]
    informers: list[Informer]

    def wait_synced(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Block until every store has its first listing (or give up: lists go to the API)."""
        return all(store.wait_synced(timeout) for store in self.stores)

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()


def scopes(settings: Settings) -> list[str | None]:
    """Where ImageScans, ScanPolicies and ImageStreams are watched: everywhere or the list."""
    if not settings.watch_namespaces:
        return [None]
    return [*sorted(settings.watch_namespaces | {settings.namespace})]


def build_cache(kube: Kube, settings: Settings, *, image_api: bool) -> Cache:
    """The stores and a ``CachedKube`` over them; nothing runs until ``start_cache``."""
    where = scopes(settings)
    # ScanPolicies are only read by the scans' reconcile (and written by their own with no
    # resourceVersion guard): their GETs come from memory too.
    stores = [Store(IMAGESCAN, where), Store(SCANPOLICY, where, gets=True)]
    if image_api:
        stores.append(Store(IMAGESTREAM, where))
    stores.append(Store(JOB, [settings.namespace], scanner_selector()))
    return Cache(kube=CachedKube(kube, stores), stores=tuple(stores), informers=[])


def start_cache(cache: Cache, ctx: OperatorContext) -> None:
    """Start every informer (blocking: reads the kubeconfig; use ``asyncio.to_thread``)."""
    api_client = load_api_client()
    for store in cache.stores:
        for scope in store.scopes:
            replace, event, failed = feed(store, scope)
            if store.kind == JOB:
                replace, event = _nudging(ctx, replace, event)
            informer = Informer(
                api_client,
                store.kind,
                namespace=scope,
                label_selector=store.label_selector,
                on_replace=replace,
                on_event=event,
                on_failure=failed,
            )
            informer.start()
            cache.informers.append(informer)


def _nudging(
    ctx: OperatorContext,
    replace: Callable[[list[Obj]], None],
    event: Callable[[str, Obj], None],
) -> tuple[Callable[[list[Obj]], None], Callable[[str, Obj], None]]:
    """Feed the Job store, then poke the scan of every Job that ended without its result."""

    def nudge(job: Obj) -> None:
        try:
            nudge_scan_of_ended_job(ctx, job)
        except KubeError as exc:  # the policy timer still sees the Job
            logger.warning("could not poke the ImageScan of scanner Job %s: %s", name_of(job), exc)
        except Exception:
            logger.exception("could not poke the ImageScan of scanner Job %s", name_of(job))

    def replaced(jobs: list[Obj]) -> None:
        replace(jobs)
        for job in jobs:
            nudge(job)

    def changed(kind: str, job: Obj) -> None:
        event(kind, job)
        if kind != "DELETED":
            nudge(job)

    return replaced, changed
