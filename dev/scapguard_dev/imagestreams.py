"""Play the OpenShift integrated registry's part on the local control plane.

On OpenShift, a push to the integrated registry (or ``oc tag``/``oc import-image``)
makes the image API create an ``Image`` named by the manifest digest and put a
new TagEvent at the top of the ImageStream's ``status.tags[].items``. Here a
test or the demo pushes to the local registry, then calls :func:`tag_image`,
which does the same through the real image.openshift.io/v1 API.
"""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP = "image.openshift.io"
VERSION = "v1"


class ImageStreamError(RuntimeError):
    """The image could not be resolved or recorded."""


@dataclass(frozen=True)
class TaggedImage:
    digest: str
    pull_spec: str  # repository@digest
    stream: str
    tag: str


def resolve_digest(reference: str, *, tls_verify: bool = False, timeout: float = 60) -> str:
    """The manifest digest of ``reference`` (``host/repo:tag``), via ``skopeo inspect``."""
    proc = subprocess.run(
        [
            "skopeo",
            "inspect",
            f"--tls-verify={'true' if tls_verify else 'false'}",
            "--format",
            "{{.Digest}}",
            f"docker://{reference}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    digest = proc.stdout.strip()
    if proc.returncode != 0 or not digest.startswith("sha256:"):
        raise ImageStreamError(f"skopeo inspect docker://{reference} failed: {proc.stderr.strip()}")
    return digest


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_image(api: client.ApiClient, digest: str, pull_spec: str) -> dict[str, Any]:
    """Create the cluster-scoped Image named by ``digest`` unless it exists."""
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Image",
        "metadata": {"name": digest},
        "dockerImageReference": pull_spec,
        "dockerImageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
    }
    try:
        return cast(
            dict[str, Any], custom.create_cluster_custom_object(GROUP, VERSION, "images", body)
        )
    except ApiException as e:
        if e.status != 409:
            raise
    return cast(dict[str, Any], custom.get_cluster_custom_object(GROUP, VERSION, "images", digest))


def ensure_stream(
    api: client.ApiClient, namespace: str, stream: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Create the ImageStream unless it exists."""
    custom = client.CustomObjectsApi(api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageStream",
        "metadata": {"name": stream, "namespace": namespace, "labels": labels or {}},
        "spec": {"lookupPolicy": {"local": False}},
    }
    try:
        return cast(
            dict[str, Any],
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", body),
        )
    except ApiException as e:
        if e.status != 409:
            raise
    return cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", stream),
    )


def tag_image(
    api: client.ApiClient,
    namespace: str,
    stream: str,
    tag: str,
    repository: str,
    digest: str,
    *,
    labels: dict[str, str] | None = None,
) -> TaggedImage:
    """Point ``stream:tag`` at ``repository@digest`` like OpenShift does after a push.

    Creates the Image and the ImageStream if needed and puts a TagEvent at the
    top of the tag's history (newest first); a no-op when it is already there.
    """
    pull_spec = f"{repository}@{digest}"
    ensure_image(api, digest, pull_spec)
    current = ensure_stream(api, namespace, stream, labels)
    custom = client.CustomObjectsApi(api)
    status = current.get("status") or {}
    tags: list[dict[str, Any]] = list(status.get("tags") or [])
    entry = next((t for t in tags if t.get("tag") == tag), None)
    if entry is None:
        entry = {"tag": tag, "items": []}
        tags.append(entry)
    items: list[dict[str, Any]] = list(entry.get("items") or [])
    if items and items[0].get("image") == digest:
        return TaggedImage(digest, pull_spec, stream, tag)
    event = {
        "created": _now(),
        "dockerImageReference": pull_spec,
        "image": digest,
        "generation": current["metadata"].get("generation", 1),
    }
    entry["items"] = [event, *items]
    patch = {
        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
        "status": {"dockerImageRepository": repository, "tags": tags},
    }
    # A merge patch (the client's default for custom objects) carrying the
    # resourceVersion: a concurrent change makes this fail with 409, not vanish.
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "imagestreams", stream, patch
    )
    return TaggedImage(digest, pull_spec, stream, tag)


def untag(api: client.ApiClient, namespace: str, stream: str, tag: str) -> None:
    """Remove ``tag`` from the stream's status (like ``oc tag -d``)."""
    custom = client.CustomObjectsApi(api)
    current = cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", stream),
    )
    tags = [t for t in (current.get("status") or {}).get("tags") or [] if t.get("tag") != tag]
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "imagestreams", stream, {"status": {"tags": tags}}
    )
