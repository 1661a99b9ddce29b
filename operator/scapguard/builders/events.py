"""Kubernetes Events (core/v1) about our objects, with CamelCase reasons."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, Final

from scapguard.api.imagescan import format_time

COMPONENT: Final = "scapguard"
MAX_MESSAGE: Final = 1024


def build_event(
    *,
    regarding: dict[str, Any],
    type_: str,
    reason: str,
    message: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """An Event about ``regarding``; a cluster-scoped object's (an Image's) lives in
    ``default``: the API server refuses it in any other namespace."""
    meta = regarding.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    stamp = format_time(now)
    name = str(meta.get("name", "object"))[:200]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": regarding.get("apiVersion"),
            "kind": regarding.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
