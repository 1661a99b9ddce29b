"""Scan on push: a registry's push notification becomes ImageScans (``POST /v1/registry-events``).

Authenticated with the bearer token in Secret ``scapguard-registry-events`` (key ``token``) in
the operator's namespace, bounded (1 MiB, 1000 events), parsed completely before anything is
created (a malformed notification creates nothing), then every pushed manifest (repository,
digest) gets one ImageScan per ScanPolicy whose ``spec.registryPushes.repositories`` match the
repository, named as every ImageScan of that (digest, policy) is: delivering a notification
twice creates nothing new. The endpoint only creates scans; the active replica's reconcile runs
them, so a standby replica may serve a notification.

Payloads understood (docs/operator.md, "Scan on push"):

- Docker distribution (``docker-registry``, CNCF Distribution): the envelope
  ``{"events": [{"action": "push", "target": {"mediaType", "digest", "repository", "tag"}}]}``
  (media type ``application/vnd.docker.distribution.events.v1+json``, ``.v2+json`` in v3).
  Manifest pushes count; blob pushes, mounts, pulls and deletes are ignored.
- Harbor webhooks, default format ``{"type": "PUSH_ARTIFACT", "event_data": {"resources":
  [{"digest", "tag", "resource_url"}], "repository": {"repo_full_name"}}}`` and CloudEvents
  ``{"specversion", "type": "harbor.artifact.pushed", "data": {same as event_data}}``; other
  event types are ignored.
- Quay's repository push notification ``{"repository", "docker_url", "updated_tags", ...}``
  names tags but no digest: scapguard scans digests, so it answers 202 and does nothing.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from scapguard.api import constants as c
from scapguard.api.errors import SpecError
from scapguard.api.naming import scan_name
from scapguard.api.policy import parse_policy_spec
from scapguard.builders.imagescan import build_imagescan
from scapguard.builders.job import owner_reference
from scapguard.k8s.api import (
    IMAGESCAN,
    SCANPOLICY,
    SECRET,
    AlreadyExists,
    KubeError,
    NotFound,
    meta,
    name_of,
    namespace_of,
    uid_of,
)
from scapguard.reconcile.context import OperatorContext

logger = logging.getLogger(__name__)

TOKEN_SECRET: Final = "scapguard-registry-events"  # noqa: S105 -- a Secret's name
TOKEN_KEY: Final = c.TOKEN_KEY
MAX_BODY: Final = 1024 * 1024
MAX_EVENTS: Final = 1000

#: What counts as a pushed image: image manifests, OCI manifests, manifest lists and indexes.
MANIFEST_MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)
HARBOR_PUSH: Final = "PUSH_ARTIFACT"
HARBOR_CLOUDEVENT_PUSH: Final = "harbor.artifact.pushed"

# The distribution spec's repository name grammar (path components joined by "/").
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_MAX_REPOSITORY: Final = 255
_SHA256_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
# The OCI image spec's digest grammar: algorithm ":" encoded.
_ANY_DIGEST: Final = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# cosign stores signatures, attestations and SBOMs as manifests tagged sha256-<hex>.<kind>:
# not images, nothing to scan.
_COSIGN_TAG: Final = re.compile(r"sha256-[0-9a-f]{64}\.(?:sig|att|sbom)")

SCANNED: Final = "scanned"
IGNORED: Final = "ignored"
REFUSED: Final = "refused"


@dataclass(frozen=True)
class Received:
    """How a notification was answered: the HTTP status, a CamelCase reason and what came of
    it (ImageScans created, already there, events ignored, scans that could not be created)."""

    status: int
    reason: str
    message: str = ""
    created: int = 0
    existing: int = 0
    ignored: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "message": self.message,
            "created": self.created,
            "existing": self.existing,
            "ignored": self.ignored,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Push:
    """A manifest pushed to ``repository`` (a path, without the registry host)."""

    repository: str
    digest: str


@dataclass(frozen=True)
class Notification:
    """What a notification asks for: pushes to scan, events ignored (and why)."""

    pushes: tuple[Push, ...]
    ignored: int = 0
    notes: tuple[str, ...] = ()
    status: int = 200
    reason: str = ""


class MalformedNotification(ValueError):
    """Not a notification scapguard understands; the message names the problem."""


class TooManyEvents(MalformedNotification):
    pass


# -- parsing (pure) -------------------------------------------------------------------------


def parse_notification(doc: object) -> Notification:
    """The pushes in a decoded notification body; raises MalformedNotification."""
    if not isinstance(doc, dict):
        raise MalformedNotification("the body must be a JSON object")
    if "events" in doc:
        return _distribution(doc["events"])
    if "specversion" in doc:
        return _harbor_cloudevent(doc)
    if "event_data" in doc:
        return _harbor(doc)
    if "updated_tags" in doc:
        return _quay(doc)
    raise MalformedNotification(
        "not a registry notification: expected Docker distribution's envelope "
        '{"events": [...]}, a Harbor webhook {"type", "event_data"} or CloudEvent '
        '{"specversion", "type", "data"}, or a Quay repository push {"updated_tags", ...}'
    )


def _str(data: Mapping[str, object], key: str, where: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise MalformedNotification(f"{where}.{key}: is required")
        return ""
    if not isinstance(value, str):
        raise MalformedNotification(f"{where}.{key}: must be a string")
    return value


def _object(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise MalformedNotification(f"{where}: must be an object")
    return value


def _list(value: object, where: str) -> Sequence[object]:
    if not isinstance(value, list):
        raise MalformedNotification(f"{where}: must be a list")
    if len(value) > MAX_EVENTS:
        raise TooManyEvents(f"{where}: {len(value)} entries, at most {MAX_EVENTS} are accepted")
    return value


def _repository(value: str, where: str) -> str:
    if len(value) > _MAX_REPOSITORY or not _REPOSITORY.fullmatch(value):
        raise MalformedNotification(f"{where}: {value[:100]!r} is not a repository name")
    return value


def _digest(value: str, where: str) -> str | None:
    """The digest when it is sha256 (what scans are named by), None for another algorithm."""
    if _SHA256_DIGEST.fullmatch(value):
        return value
    if _ANY_DIGEST.fullmatch(value) and not value.startswith("sha256:"):
        return None
    raise MalformedNotification(f"{where}: {value[:100]!r} is not a digest")


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class _Collector:
    def __init__(self) -> None:
        self.pushes: dict[Push, None] = {}
        self.ignored = 0
        self.notes: dict[str, None] = {}

    def ignore(self, note: str) -> None:
        self.ignored += 1
        self.notes[note] = None

    def push(self, repository: str, digest: str | None, tag: str) -> None:
        if digest is None:
            self.ignore("digests other than sha256 are not scanned")
        elif _COSIGN_TAG.fullmatch(tag):
            self.ignore("cosign signatures and attestations are not images")
        else:
            self.pushes[Push(repository, digest)] = None

    def result(self, status: int = 200, reason: str = "") -> Notification:
        return Notification(
            tuple(self.pushes), self.ignored, tuple(self.notes), status=status, reason=reason
        )


def _distribution(events: object) -> Notification:
    out = _Collector()
    for index, item in enumerate(_list(events, "events")):
        where = f"events[{index}]"
        event = _object(item, where)
        action = _str(event, "action", where)
        target = _object(event.get("target", {}), f"{where}.target")
        media_type = _media_type(_str(target, "mediaType", f"{where}.target"))
        if action != "push":
            out.ignore(f"{action[:40] or 'unnamed'} events are not pushes")
            continue
        if media_type not in MANIFEST_MEDIA_TYPES:
            out.ignore("blob pushes and non-image manifests are not scanned")
            continue
        repository = _repository(
            _str(target, "repository", f"{where}.target", required=True),
            f"{where}.target.repository",
        )
        digest = _digest(
            _str(target, "digest", f"{where}.target", required=True), f"{where}.target.digest"
        )
        out.push(repository, digest, _str(target, "tag", f"{where}.target"))
    return out.result()


def _harbor_resources(data: Mapping[str, object], where: str, out: _Collector) -> None:
    repo = _object(data.get("repository"), f"{where}.repository")
    repository = _repository(
        _str(repo, "repo_full_name", f"{where}.repository", required=True),
        f"{where}.repository.repo_full_name",
    )
    for index, item in enumerate(_list(data.get("resources"), f"{where}.resources")):
        at = f"{where}.resources[{index}]"
        resource = _object(item, at)
        digest = _digest(_str(resource, "digest", at, required=True), f"{at}.digest")
        out.push(repository, digest, _str(resource, "tag", at))


def _harbor(doc: Mapping[str, object]) -> Notification:
    out = _Collector()
    kind = _str(doc, "type", "webhook", required=True)
    if kind != HARBOR_PUSH:
        out.ignore(f"Harbor {kind[:40]} events are not pushes")
        return out.result()
    _harbor_resources(_object(doc.get("event_data"), "event_data"), "event_data", out)
    return out.result()


def _harbor_cloudevent(doc: Mapping[str, object]) -> Notification:
    out = _Collector()
    kind = _str(doc, "type", "cloudevent", required=True)
    if kind != HARBOR_CLOUDEVENT_PUSH:
        out.ignore(f"{kind[:40]} events are not Harbor artifact pushes")
        return out.result()
    _harbor_resources(_object(doc.get("data"), "data"), "data", out)
    return out.result()


def _quay(doc: Mapping[str, object]) -> Notification:
    repository = _str(doc, "repository", "notification", required=True)
    tags = _list(doc.get("updated_tags"), "updated_tags")
    out = _Collector()
    out.ignored = max(len(tags), 1)
    out.notes[
        f"Quay's repository push notification for {repository[:100]} names tags but no "
        "manifest digest; scapguard scans digests and cannot act on it"
    ] = None
    return out.result(status=202, reason="NoDigest")


# -- acting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    namespace: str
    name: str
    uid: str
    registry: str
    repositories: tuple[str, ...]

    def matches(self, repository: str) -> bool:
        return any(fnmatch.fnmatchcase(repository, glob) for glob in self.repositories)


def _refuse(ctx: OperatorContext, status: int, reason: str, message: str) -> Received:
    ctx.metrics.registry_events.labels(REFUSED).inc()
    logger.warning("refused a registry notification: %s (%s)", reason, message)
    return Received(status, reason, message)


def too_large(ctx: OperatorContext) -> Received:
    """A body over the limit (the HTTP layer stops reading it)."""
    return _refuse(ctx, 413, "TooLarge", f"notifications are limited to {MAX_BODY} bytes")


def _authenticate(ctx: OperatorContext, token: str) -> Received | None:
    if not token:
        return _refuse(ctx, 401, "Unauthorized", "a bearer token is required")
    namespace = ctx.settings.namespace
    try:
        secret = ctx.kube.get(SECRET, TOKEN_SECRET, namespace)
    except NotFound:
        return _refuse(
            ctx,
            503,
            "NotConfigured",
            f"Secret {namespace}/{TOKEN_SECRET} (key {TOKEN_KEY}) does not exist",
        )
    except KubeError as exc:
        return _refuse(ctx, 503, "Unavailable", f"could not read the token Secret: {exc.reason}")
    stored = (secret.get("data") or {}).get(TOKEN_KEY)
    try:
        expected = base64.b64decode(stored, validate=True).strip() if stored else b""
    except (binascii.Error, TypeError, ValueError):
        expected = b""
    if not expected:
        return _refuse(
            ctx, 503, "NotConfigured", f"Secret {namespace}/{TOKEN_SECRET} has no key {TOKEN_KEY}"
        )
    # Header values may carry undecodable bytes as surrogates: hash them, never fail on them.
    presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    if not hmac.compare_digest(hashlib.sha256(expected).digest(), presented):
        return _refuse(ctx, 401, "Unauthorized", "bad credential")
    return None


def _push_policies(ctx: OperatorContext) -> list[_Policy]:
    """Every valid, watched ScanPolicy with ``spec.registryPushes`` (one list call)."""
    out: list[_Policy] = []
    for obj in ctx.kube.list(SCANPOLICY, None):
        namespace = namespace_of(obj)
        if namespace is None or not ctx.settings.watches(namespace):
            continue
        if meta(obj).get("deletionTimestamp"):
            continue
        try:
            spec = parse_policy_spec(obj.get("spec"))
        except SpecError as exc:
            # The policy's own reconcile reports it (Ready=False, InvalidSpec).
            logger.debug("ScanPolicy %s/%s skipped: %s", namespace, name_of(obj), exc)
            continue
        pushes = spec.registry_pushes
        if pushes is not None:
            out.append(
                _Policy(namespace, name_of(obj), uid_of(obj), pushes.registry, pushes.repositories)
            )
    return out


def _transient(exc: KubeError) -> bool:
    return exc.status in (0, 429) or exc.status >= 500


def _ensure_scan(ctx: OperatorContext, policy: _Policy, push: Push) -> bool:
    """Create the ImageScan of (digest, policy); True if created, False if already there."""
    image = f"{policy.registry}/{push.repository}@{push.digest}"
    body = build_imagescan(
        name=scan_name(push.digest, policy.namespace, policy.name),
        namespace=policy.namespace,
        image=image,
        digest=push.digest,
        policy=policy.name,
        trigger="NewImage",
        tags=[],
        origin=c.ORIGIN_REGISTRY_PUSH,
    )
    body["metadata"]["ownerReferences"] = [
        owner_reference(c.SCANPOLICY_KIND, c.API_VERSION, policy.name, policy.uid)
    ]
    try:
        ctx.kube.create(IMAGESCAN, body)
    except AlreadyExists:
        return False
    logger.info("created ImageScan %s/%s for pushed %s", policy.namespace, name_of(body), image)
    return True


def receive(ctx: OperatorContext, token: str, body: bytes) -> Received:
    """Answer one notification: authenticate, bound, parse, create the ImageScans."""
    refused = _authenticate(ctx, token)
    if refused is not None:
        return refused
    if len(body) > MAX_BODY:
        return too_large(ctx)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return _refuse(ctx, 422, "InvalidJSON", f"the body is not JSON: {str(exc)[:200]}")
    try:
        notification = parse_notification(doc)
    except TooManyEvents as exc:
        return _refuse(ctx, 413, "TooManyEvents", str(exc))
    except MalformedNotification as exc:
        return _refuse(ctx, 422, "Malformed", str(exc))
    policies: list[_Policy] = []
    if notification.pushes:
        try:
            policies = _push_policies(ctx)
        except KubeError as exc:
            return _refuse(ctx, 503, "Unavailable", f"could not list ScanPolicies: {exc.reason}")
    return _act(ctx, notification, policies)


def _act(ctx: OperatorContext, notification: Notification, policies: list[_Policy]) -> Received:
    created = existing = failed = 0
    ignored = notification.ignored
    notes = list(notification.notes)
    counter = ctx.metrics.registry_events
    for push in notification.pushes:
        matching = [p for p in policies if p.matches(push.repository)]
        if not matching:
            ignored += 1
            notes.append(f"no ScanPolicy's registryPushes.repositories match {push.repository}")
            continue
        before = created + existing
        for policy in matching:
            try:
                if _ensure_scan(ctx, policy, push):
                    created += 1
                else:
                    existing += 1
            except KubeError as exc:
                if _transient(exc):
                    # The registry delivers again; creating is idempotent.
                    counter.labels(REFUSED).inc()
                    logger.warning("ImageScan for a push not created, retry: %s", exc)
                    return Received(
                        503,
                        "Unavailable",
                        f"could not create ImageScans: {exc.reason}",
                        created,
                        existing,
                        ignored,
                    )
                failed += 1
                notes.append(
                    f"ImageScan of {push.repository}@{push.digest} for ScanPolicy "
                    f"{policy.namespace}/{policy.name}: {exc.status} {exc.message[:200]}"
                )
                logger.warning(
                    "ImageScan of %s@%s for ScanPolicy %s/%s not created: %s",
                    push.repository,
                    push.digest,
                    policy.namespace,
                    policy.name,
                    exc,
                )
        if created + existing > before:
            counter.labels(SCANNED).inc()
    if ignored:
        counter.labels(IGNORED).inc(ignored)
    summary = f"{created} ImageScans created, {existing} already there, {ignored} ignored"
    if failed:
        summary += f", {failed} failed"
    message = "; ".join([summary, *dict.fromkeys(notes)])[:1000]
    reason = notification.reason or ("Scanned" if created or existing else "Ignored")
    return Received(notification.status, reason, message, created, existing, ignored, failed)
