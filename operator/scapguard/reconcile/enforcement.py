"""Deny execution of an image on the OpenShift Image object, per digest across all policies."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from scapguard.api import constants as c
from scapguard.api.annotations import (
    QualityInput,
    deny_set_by_person,
    enforcement_patch,
    person_deny_value,
    quality_annotation,
)
from scapguard.api.conditions import Reason
from scapguard.api.naming import digest_label
from scapguard.k8s.api import (
    IMAGE,
    IMAGESCAN,
    Conflict,
    NotFound,
    Obj,
    annotations_of,
    name_of,
    namespace_of,
)
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.scans import parsed

logger = logging.getLogger(__name__)

_IMAGE_PATCH_ATTEMPTS = 5


@dataclass(frozen=True)
class Enforcement:
    image_found: bool
    denied: bool  # the Image carries deny-execution (set by scapguard or by a person)
    by_person: bool
    lifted: bool = False
    denied_by: tuple[str, ...] = ()
    # A deny-execution annotation a person set, whatever its value (scapguard leaves it as is).
    person_value: str | None = None
    #: No image API (plain Kubernetes): the deny is the scans' verdicts, which the admission
    #: webhook enforces; ``denied`` says whether any scan of the digest denies it.
    by_admission: bool = False


def scans_for_digest(ctx: OperatorContext, digest: str) -> list[Obj]:
    selector = f"{c.DIGEST_LABEL}={digest_label(digest)}"
    found: list[Obj] = []
    for namespace in ctx.scan_namespaces():
        for scan in ctx.kube.list(IMAGESCAN, namespace, label_selector=selector):
            spec = parsed(scan)
            if spec is not None and spec.digest == digest:
                found.append(scan)
    return found


def reference_for(ctx: OperatorContext, scan: Obj) -> str:
    path = (
        f"/apis/{c.API_VERSION}/namespaces/{namespace_of(scan)}/{c.IMAGESCAN_PLURAL}/"
        f"{name_of(scan)}"
    )
    return f"{ctx.settings.reference_url}{path}"


def _quality(ctx: OperatorContext, scan: Obj) -> str | None:
    status = scan.get("status") or {}
    if status.get("result") not in ("Pass", "Fail", "Error") or not status.get("evaluatedAt"):
        return None
    vulns = status.get("vulnerabilities")
    comp = status.get("compliance")
    spec = parsed(scan)
    return quality_annotation(
        QualityInput(
            timestamp=str(status["evaluatedAt"]),
            reference=reference_for(ctx, scan),
            scanner_version=(status.get("scanner") or {}).get("version"),
            compliant=None if status["result"] == "Error" else status["result"] == "Pass",
            vulnerabilities=vulns if isinstance(vulns, Mapping) else None,
            failed_rules=int(status.get("failedRulesCount") or 0) if comp else None,
            description=(
                f"{status['result']} under ScanPolicy {namespace_of(scan)}/"
                f"{spec.policy if spec else '?'}: {status.get('message', '')}"
            )[:512],
        )
    )


def enforce_digest(
    ctx: OperatorContext, digest: str, overrides: Mapping[str, Obj] | None = None
) -> Enforcement:
    """Bring the Image named ``digest`` to what its scans want: denied if any scan denies.

    ``overrides`` maps a scan uid to a fresher copy of that scan (its status about to be written:
    the caller holds ``ctx.digest_lock(digest)`` until it is). The Image is patched with its
    resourceVersion as a precondition, so an annotation a person adds meanwhile is seen, never
    adopted.
    """
    with ctx.digest_lock(digest):
        scans = scans_for_digest(ctx, digest)
        fresh = dict(overrides or {})
        scans = [fresh.pop(str(s["metadata"].get("uid")), s) for s in scans] + list(fresh.values())
        denying = [s for s in scans if (s.get("status") or {}).get("denied") is True]
        denied_by = tuple(
            sorted({f"{namespace_of(s)}/{spec.policy}" for s in denying if (spec := parsed(s))})
        )
        evaluated = [s for s in scans if (s.get("status") or {}).get("evaluatedAt")]
        evaluated.sort(key=lambda s: str(s["status"]["evaluatedAt"]), reverse=True)
        representative = denying[0] if denying else (evaluated[0] if evaluated else None)
        quality = _quality(ctx, representative) if representative is not None else None
        if not ctx.image_api:
            return Enforcement(image_found=False, denied=bool(denying), by_person=False,
                               denied_by=denied_by, by_admission=True)  # fmt: skip
        annotated = _annotate(ctx, digest, bool(denying), denied_by, quality)
        if annotated is None:
            return Enforcement(
                image_found=False, denied=False, by_person=False, denied_by=denied_by
            )
        image, current, patch = annotated
        after = {**current, **{k: v for k, v in patch.items() if v is not None}}
        for key, value in patch.items():
            if value is None:
                after.pop(key, None)
        newly = patch.get(c.OPENSHIFT_DENY_ANNOTATION) == "true"
        result = Enforcement(
            image_found=True,
            denied=after.get(c.OPENSHIFT_DENY_ANNOTATION) == "true",
            by_person=deny_set_by_person(after),
            lifted=c.OPENSHIFT_DENY_ANNOTATION in patch
            and patch[c.OPENSHIFT_DENY_ANNOTATION] is None,
            denied_by=denied_by,
            person_value=person_deny_value(after),
        )
        if newly:
            _announce_denial(ctx, image, denying, denied_by)
        return result


def _annotate(
    ctx: OperatorContext, digest: str, deny: bool, denied_by: tuple[str, ...], quality: str | None
) -> tuple[Obj, dict[str, str], dict[str, str | None]] | None:
    """Patch the Image to the wanted annotations: (the Image read, its annotations, the patch).

    None when there is no Image. The patch carries the resourceVersion read: on a Conflict
    the Image changed meanwhile (a person's annotation, say) and is judged again.
    """
    if not ctx.image_api:
        return None
    conflicts = 0
    while True:
        try:
            image = ctx.kube.get(IMAGE, digest)
        except NotFound:
            return None
        current = annotations_of(image)
        patch = enforcement_patch(current, deny=deny, denied_by=denied_by, quality=quality)
        if not patch:
            return image, current, patch
        version = image["metadata"].get("resourceVersion")
        body = {"metadata": {"annotations": patch, "resourceVersion": version}}
        try:
            ctx.kube.patch(IMAGE, digest, None, body)
        except Conflict:
            conflicts += 1
            if conflicts == _IMAGE_PATCH_ATTEMPTS:
                raise
            continue
        logger.info("annotated Image %s: %s", digest, sorted(patch))
        return image, current, patch


def repair_denies(ctx: OperatorContext) -> int:
    """Re-judge every Image carrying scapguard's deny marker; return how many denies it lifted.

    The level-based backstop for a missed ImageScan deletion (a failed handler, the operator
    down): a deny no live scan wants is lifted; a person's (no marker) is never touched. One
    list of Images, at most once per ``ctx.deny_repair_throttle`` interval.
    """
    if not ctx.image_api or not ctx.deny_repair_throttle.ready():
        return 0  # plain Kubernetes: no Images, nothing was ever annotated
    lifted = 0
    for image in ctx.kube.list(IMAGE):
        if annotations_of(image).get(c.DENY_MARKER_ANNOTATION) != "true":
            continue
        try:
            result = enforce_digest(ctx, name_of(image))
        except NotFound:
            continue  # deleted meanwhile
        if result.lifted:
            lifted += 1
            logger.info(
                "lifted scapguard's deny of Image %s: no ImageScan wants it", name_of(image)
            )
            ctx.event(
                image, "Normal", Reason.DENY_LIFTED, "deny-execution lifted: no ImageScan wants it"
            )
    return lifted


def _announce_denial(
    ctx: OperatorContext, image: Obj, denying: list[Obj], denied_by: tuple[str, ...]
) -> None:
    message = f"image {name_of(image)} denied execution by ScanPolicy {', '.join(denied_by)}"
    streams: set[tuple[str, str]] = set()
    for scan in denying:
        spec = parsed(scan)
        if spec is None:
            continue
        ctx.metrics.denials.labels(f"{namespace_of(scan)}/{spec.policy}").inc()
        streams |= {(t.namespace, t.image_stream) for t in spec.tags}
    ctx.event(image, "Warning", "Denied", message)
    for namespace, stream in sorted(streams):
        regarding: Obj = {
            "apiVersion": f"{c.IMAGE_GROUP}/{c.IMAGE_VERSION}",
            "kind": "ImageStream",
            "metadata": {"name": stream, "namespace": namespace},
        }
        ctx.event(regarding, "Warning", "Denied", message)
