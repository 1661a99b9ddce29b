"""ImageScan objects the operator creates, and the ConfigMap holding a scan's full result."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from scapguard.api import constants as c
from scapguard.api.imagescan import TagRef
from scapguard.api.naming import digest_label, result_config_map_name
from scapguard.builders.job import owner_reference


def build_imagescan(
    *,
    name: str,
    namespace: str,
    image: str,
    digest: str,
    policy: str,
    trigger: str,
    tags: Sequence[TagRef],
    origin: str = c.ORIGIN_IMAGESTREAM,
) -> dict[str, Any]:
    """An ImageScan the operator creates; ``origin`` says why (its ``scapguard.io/origin``
    label: an ImageStream tag, a Pod the policy selects, a registry's push notification)."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.IMAGESCAN_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                c.ORIGIN_LABEL: origin,
                c.DIGEST_LABEL: digest_label(digest),
                c.POLICY_LABEL: policy,
                c.MANAGED_BY_LABEL: c.MANAGED_BY,
            },
        },
        "spec": {
            "image": image,
            "policy": policy,
            "trigger": trigger,
            "tags": [t.to_dict() for t in sorted(tags, key=_tag_key)],
        },
    }


def _tag_key(tag: TagRef) -> tuple[str, str, str]:
    return (tag.namespace, tag.image_stream, tag.tag)


def sorted_tags(tags: Sequence[TagRef]) -> list[dict[str, str]]:
    return [t.to_dict() for t in sorted(set(tags), key=_tag_key)]


def build_result_config_map(
    *,
    scan_name: str,
    namespace: str,
    scan_uid: str,
    result_gz: bytes,
    report_gz: bytes | None,
) -> dict[str, Any]:
    """Full result (gzip JSON) and HTML report (gzip), owned by the ImageScan."""
    binary = {c.RESULT_KEY: base64.b64encode(result_gz).decode()}
    if report_gz is not None:
        binary[c.REPORT_KEY] = base64.b64encode(report_gz).decode()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": result_config_map_name(scan_name),
            "namespace": namespace,
            "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY},
            "annotations": {c.SCAN_NAME_ANNOTATION: scan_name},
            "ownerReferences": [
                owner_reference(c.IMAGESCAN_KIND, c.API_VERSION, scan_name, scan_uid)
            ],
        },
        "binaryData": binary,
    }
