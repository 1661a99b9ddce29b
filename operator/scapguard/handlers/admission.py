"""The validating admission webhook that refuses Pods running denied images (flow step 5).

The operator's startup handler calls :func:`configure_admission`, which starts the watches that
feed an in-memory :class:`ImageIndex` and points kopf's webhook server at the handlers below.
The ValidatingWebhookConfiguration is an install manifest, not managed by kopf
(``scapguard.builders.admission``; docs/admission.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import kopf

from scapguard.api.admission import DEFAULT_FAILURE_POLICY, FailurePolicy, parse_failure_policy
from scapguard.builders.admission import EPHEMERAL_WEBHOOK, POD_WEBHOOK, WORKLOAD_WEBHOOK
from scapguard.k8s.api import IMAGE, IMAGESCAN, IMAGESTREAM
from scapguard.k8s.client import load_api_client
from scapguard.k8s.informer import Informer
from scapguard.reconcile.admission import review_pod, review_workload
from scapguard.reconcile.imageindex import (
    IMAGES,
    IMAGESCANS,
    IMAGESTREAMS,
    OPENSHIFT_SOURCES,
    SCAN_SOURCES,
    ImageIndex,
)

logger = logging.getLogger(__name__)

MEMO_KEY: Final = "scapguard_admission"


@dataclass(frozen=True)
class AdmissionOptions:
    """How the webhook is served. ``failure_policy`` must match the installed
    ValidatingWebhookConfiguration: with ``Fail`` the webhook also refuses while its index is
    not synced, with ``Ignore`` it admits with a warning."""

    certfile: str
    pkeyfile: str
    bind: str = "0.0.0.0"  # noqa: S104 -- in-pod; the Service fronts it
    port: int = 9443
    host: str | None = None  # the name the API server uses; only logged (kopf does not manage)
    failure_policy: FailurePolicy = DEFAULT_FAILURE_POLICY
    enabled: bool = True
    #: whether the cluster serves image.openshift.io (else the index reads ImageScan verdicts)
    image_api: bool = True

    def __post_init__(self) -> None:
        parse_failure_policy(self.failure_policy, "failure_policy")


@dataclass
class AdmissionRuntime:
    index: ImageIndex
    fail_closed: bool
    informers: tuple[Informer, ...]

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()


class _NoWebhookServer:
    """Serves nothing: admission is switched off, but kopf insists on a server for handlers."""

    async def __call__(self, _fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        await asyncio.Event().wait()
        yield kopf.WebhookClientConfig()  # never reached: the wait above lasts forever


def configure_admission(
    settings: kopf.OperatorSettings, memo: kopf.Memo, options: AdmissionOptions
) -> AdmissionRuntime | None:
    """Serve the webhook and start the index's watches; call from the startup handler.

    It only reads the kubeconfig (or ServiceAccount) files and starts threads that do the
    listing: from an async startup handler, ``await asyncio.to_thread(configure_admission, ...)``.
    The webhook answers "not ready" until both initial listings have arrived.
    """
    settings.admission.managed = None
    if not options.enabled:
        settings.admission.server = _NoWebhookServer()
        logger.warning("admission webhook disabled: denied images are only annotated")
        return None
    index, informers, watched = _watch(load_api_client(), image_api=options.image_api)
    runtime = AdmissionRuntime(
        index=index, fail_closed=options.failure_policy == "Fail", informers=informers
    )
    memo[MEMO_KEY] = runtime
    settings.admission.server = kopf.WebhookServer(
        addr=options.bind,
        port=options.port,
        host=options.host,
        certfile=options.certfile,
        pkeyfile=options.pkeyfile,
    )
    for informer in informers:
        informer.start()
    logger.info(
        "admission webhook on %s:%s (failurePolicy %s); watching %s",
        options.bind,
        options.port,
        options.failure_policy,
        watched,
    )
    return runtime


def _watch(api_client: Any, *, image_api: bool) -> tuple[ImageIndex, tuple[Informer, ...], str]:
    """The index, the informers that feed it (not started yet), and what they watch."""
    if image_api:
        index = ImageIndex(OPENSHIFT_SOURCES)
        images = Informer(
            api_client,
            IMAGE,
            on_replace=index.replace_images,
            on_event=index.apply_image,
            on_failure=lambda reason: index.fail(IMAGES, reason),
        )
        streams = Informer(
            api_client,
            IMAGESTREAM,
            on_replace=index.replace_streams,
            on_event=index.apply_stream,
            on_failure=lambda reason: index.fail(IMAGESTREAMS, reason),
        )
        return index, (images, streams), "images and imagestreams"
    # Plain Kubernetes: no Images to carry a deny, no ImageStreams to resolve tags.
    index = ImageIndex(SCAN_SOURCES)
    scans = Informer(
        api_client,
        IMAGESCAN,
        on_replace=index.replace_scans,
        on_event=index.apply_scan,
        on_failure=lambda reason: index.fail(IMAGESCANS, reason),
    )
    watched = "imagescans (no image.openshift.io API: denies come from scan verdicts)"
    return index, (scans,), watched


def _runtime(memo: kopf.Memo) -> AdmissionRuntime:
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, AdmissionRuntime):
        raise kopf.AdmissionError("scapguard admission is not configured", code=500)
    return runtime


def review_admission(
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    namespace: str | None,
    memo: kopf.Memo,
    warnings: list[str],
    logger: kopf.Logger,
) -> None:
    """Both webhooks: review the Pod, pass on warnings, refuse with kopf.AdmissionError."""
    runtime = _runtime(memo)
    review = review_pod(
        body, old, namespace=namespace or "", index=runtime.index, fail_closed=runtime.fail_closed
    )
    warnings.extend(review.warnings)
    if not review.allowed:
        # kopf logs the refusal itself ("Webhook ... failed permanently: <message>").
        raise kopf.AdmissionError(review.message, code=review.code)
    if review.warnings:
        logger.debug("admitted with warnings: %s", "; ".join(review.warnings))


@kopf.on.validate("v1", "pods", id=POD_WEBHOOK, operations=["CREATE", "UPDATE"])
async def validate_pod(
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    warnings: list[str],
    logger: kopf.Logger,
    old: kopf.Body | None = None,
    operation: str | None = None,
    **_: Any,
) -> None:
    """CREATE: every container; UPDATE: containers whose image changed."""
    review_admission(
        body, old if operation == "UPDATE" else None, namespace, memo, warnings, logger
    )


@kopf.on.validate(
    "v1", "pods", id=EPHEMERAL_WEBHOOK, subresource="ephemeralcontainers", operations=["UPDATE"]
)
async def validate_ephemeral_containers(
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    warnings: list[str],
    logger: kopf.Logger,
    old: kopf.Body | None = None,
    **_: Any,
) -> None:
    """``kubectl debug``: only the ephemeral containers being added."""
    review_admission(body, old, namespace, memo, warnings, logger)


_WRITES: Final[tuple[Literal["CREATE"], Literal["UPDATE"]]] = ("CREATE", "UPDATE")


@kopf.on.validate("apps", "v1", "deployments", id=WORKLOAD_WEBHOOK, operations=_WRITES)
@kopf.on.validate("apps", "v1", "statefulsets", id=WORKLOAD_WEBHOOK, operations=_WRITES)
@kopf.on.validate("apps", "v1", "daemonsets", id=WORKLOAD_WEBHOOK, operations=_WRITES)
@kopf.on.validate("apps", "v1", "replicasets", id=WORKLOAD_WEBHOOK, operations=_WRITES)
@kopf.on.validate("batch", "v1", "jobs", id=WORKLOAD_WEBHOOK, operations=_WRITES)
@kopf.on.validate("batch", "v1", "cronjobs", id=WORKLOAD_WEBHOOK, operations=_WRITES)
async def validate_workload(
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    warnings: list[str],
    logger: kopf.Logger,
    old: kopf.Body | None = None,
    **_: Any,
) -> None:
    """Warn, never refuse: the workload's Pods will be refused when they are created."""
    found = review_workload(body, old, namespace=namespace or "", index=_runtime(memo).index)
    warnings.extend(found)
    if found:
        logger.info("warned: %s", "; ".join(found))


@kopf.on.cleanup()
def stop_admission_index(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get(MEMO_KEY)
    if isinstance(runtime, AdmissionRuntime):
        runtime.stop()
