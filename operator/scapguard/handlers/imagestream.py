"""ImageStream events: a tag moved to a new digest -> ensure its ImageScans at once."""

from __future__ import annotations

from typing import Any

import kopf

from scapguard.api.constants import IMAGE_GROUP, IMAGE_VERSION, IMAGESTREAM_PLURAL
from scapguard.handlers.context import context, in_scope, retried
from scapguard.reconcile.imagestream import reconcile_imagestream


@kopf.on.event(IMAGE_GROUP, IMAGE_VERSION, IMAGESTREAM_PLURAL, when=in_scope)
def imagestream_changed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    if type == "DELETED":
        return  # the policies' reconcile collects scans no tag points at any more
    with retried():
        reconcile_imagestream(context(memo), dict(body))
