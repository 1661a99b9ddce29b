"""The admission decision for a Pod: do its images resolve to a denied digest?

Pure: the Pod (and, on UPDATE, the old Pod) as dicts plus an :class:`ImageLookup` (the
watch-fed :class:`~scapguard.reconcile.imageindex.ImageIndex`) in, a :class:`Review` out.
No API calls and no network: a tag reference to a plain registry image cannot be resolved
offline, so it is allowed with a warning that says so.

Resolution, per container image:

1. ``anything@sha256:<hex>`` -> the Image named ``sha256:<hex>`` (a digest wins over a tag);
2. ``stream[:tag]`` (one path component, no registry host) -> the ImageStream ``stream`` in
   the Pod's namespace, when it exists, ``status.tags[tag].items[0].image`` (OpenShift's
   lookupPolicy.local names; resolved even when ``local`` is false: a short name that names
   a stream tag whose image is denied is refused rather than guessed about);
3. ``<repository>:tag`` where the repository is an ImageStream's ``dockerImageRepository`` or
   ``publicDockerImageRepository`` -> that stream's tag;
4. anything else by tag: unresolvable offline -> allowed, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from scapguard.reconcile.imageindex import DeniedImage, StreamEntry

DENIED_CODE: Final = 403
NOT_READY_CODE: Final = 503

# The reference grammar of github.com/distribution/reference.
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH: Final = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN: Final = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG: Final = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")

_KINDS: Final = (
    ("containers", "container"),
    ("initContainers", "init container"),
    ("ephemeralContainers", "ephemeral container"),
)


class ImageLookup(Protocol):
    """What the decision reads; :class:`ImageIndex` implements it."""

    @property
    def ready(self) -> bool: ...

    def not_ready_reason(self) -> str: ...

    def denied(self, digest: str) -> DeniedImage | None: ...

    def stream(self, namespace: str, name: str) -> StreamEntry | None: ...

    def stream_for_repository(self, repository: str) -> StreamEntry | None: ...


@dataclass(frozen=True)
class ImageReference:
    """A parsed container image reference."""

    domain: str | None  # registry host[:port]; None for Docker Hub short forms
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path


def parse_reference(image: str) -> ImageReference | None:
    """``[domain/]path[:tag][@digest]``, or None when it is not a valid reference."""
    name, at, digest = image.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return None
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            return None
    domain: str | None = None
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN.fullmatch(first):
            return None
        domain, name = first, rest
    if not _PATH.fullmatch(name):
        return None
    return ImageReference(domain=domain, path=name, tag=tag, digest=digest if at else None)


@dataclass(frozen=True)
class ContainerImage:
    kind: str  # "container", "init container", "ephemeral container"
    name: str
    image: str

    def describe(self) -> str:
        return f'{self.kind} "{self.name}" image "{self.image}"'


def _containers(pod: Mapping[str, Any]) -> list[ContainerImage]:
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return []
    found: list[ContainerImage] = []
    for key, kind in _KINDS:
        entries = spec.get(key)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, Mapping):
                found.append(
                    ContainerImage(kind, str(entry.get("name", "")), str(entry.get("image") or ""))
                )
    return found


def images_to_check(pod: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[ContainerImage]:
    """Every container on CREATE; on UPDATE only the new ones and those whose image changed
    (an image a deny caught after the Pod started does not block unrelated updates)."""
    current = _containers(pod)
    if old is None:
        return current
    before = {(c.kind, c.name): c.image for c in _containers(old)}
    return [c for c in current if before.get((c.kind, c.name)) != c.image]


@dataclass(frozen=True)
class Resolution:
    digest: str | None
    via: str = ""  # how a tag became the digest, e.g. "ImageStream ns/app:latest"
    warning: str | None = None


def _stream_tag(entry: StreamEntry, tag: str, ref: ContainerImage) -> Resolution:
    where = f"ImageStream {entry.namespace}/{entry.name}:{tag}"
    digest = entry.tags.get(tag)
    if digest is None:
        return Resolution(
            None,
            warning=(
                f"{ref.describe()}: {where} has no image yet, so scapguard could not check "
                "whether it is denied"
            ),
        )
    return Resolution(digest, via=where)


def resolve(ref: ContainerImage, namespace: str, index: ImageLookup) -> Resolution:
    parsed = parse_reference(ref.image)
    if parsed is None:
        return Resolution(
            None, warning=f"{ref.describe()} is not a valid image reference; not checked"
        )
    if parsed.digest is not None:
        return Resolution(parsed.digest)
    tag = parsed.tag or "latest"
    if parsed.domain is None and "/" not in parsed.path and namespace:
        entry = index.stream(namespace, parsed.path)
        if entry is not None:
            return _stream_tag(entry, tag, ref)
    entry = index.stream_for_repository(parsed.repository)
    if entry is not None:
        return _stream_tag(entry, tag, ref)
    return Resolution(
        None,
        warning=(
            f"{ref.describe()} is a tag reference to a registry image that is not an "
            "ImageStream; scapguard cannot resolve it to a digest without contacting the "
            "registry, so a denied image could run under this tag. Reference the image by "
            "digest (image@sha256:...) or through an ImageStream to have it checked"
        ),
    )


@dataclass(frozen=True)
class Review:
    allowed: bool
    message: str = ""
    code: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _refusal(ref: ContainerImage, resolution: Resolution, denied: DeniedImage) -> str:
    via = f" via {resolution.via}" if resolution.via else ""
    return (
        f"{ref.describe()}{via} resolves to {denied.digest}, which is denied execution "
        f"({denied.describe()})"
    )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def review_pod(
    pod: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    *,
    namespace: str,
    index: ImageLookup,
    fail_closed: bool,
) -> Review:
    """Refuse the Pod if any image to check resolves to a denied digest."""
    to_check = images_to_check(pod, old)
    if not to_check:
        return Review(allowed=True)
    if not index.ready:
        reason = (
            f"scapguard's image index is not ready ({index.not_ready_reason()}), so the Pod's "
            "images could not be checked"
        )
        if fail_closed:
            return Review(allowed=False, message=f"{reason}; retry shortly", code=NOT_READY_CODE)
        return Review(allowed=True, warnings=(f"{reason}; admitted (failurePolicy Ignore)",))
    refusals: list[str] = []
    warnings: list[str] = []
    for ref in to_check:
        resolution = resolve(ref, namespace, index)
        if resolution.warning:
            warnings.append(resolution.warning)
        if resolution.digest is None:
            continue
        denied = index.denied(resolution.digest)
        if denied is not None:
            refusals.append(_refusal(ref, resolution, denied))
    if refusals:
        return Review(
            allowed=False,
            message=f"{pod_name(pod, namespace)} refused by scapguard: " + "; ".join(refusals),
            code=DENIED_CODE,
            warnings=_unique(warnings),
        )
    return Review(allowed=True, warnings=_unique(warnings))


def pod_name(pod: Mapping[str, Any], namespace: str) -> str:
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "?")
    return f"Pod {namespace}/{name}"


#: Workload kinds whose Pod template the webhook reviews: kind -> path to the template.
WORKLOAD_TEMPLATES: Final = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_template(workload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Pod template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob."""
    node: object = workload
    for key in WORKLOAD_TEMPLATES.get(str(workload.get("kind")), ()):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) and node is not workload else None


def review_workload(
    workload: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    *,
    namespace: str,
    index: ImageLookup,
) -> tuple[str, ...]:
    """Warnings (never a refusal) for a workload whose Pod template names a denied image:
    the workload is stored, and its Pods will be refused when they are created."""
    template = pod_template(workload)
    if template is None or not index.ready:
        return ()
    before = pod_template(old) if old is not None else None
    meta = workload.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
    as_pod = {"metadata": {"name": name}, "spec": template.get("spec") or {}}
    old_pod = {"spec": before.get("spec") or {}} if before is not None else None
    review = review_pod(as_pod, old_pod, namespace=namespace, index=index, fail_closed=False)
    if review.allowed:
        return ()
    where = f"{workload.get('kind')} {namespace}/{name}"
    detail = review.message.split(" refused by scapguard: ", 1)[-1]
    return (f"{where}: its Pods will be refused by scapguard: {detail}",)
