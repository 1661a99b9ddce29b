"""The integrated-registry stand-in: push, then the ImageStream's status tags move."""

from __future__ import annotations

from typing import Any, cast

import pytest
from kubernetes import client

from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.imagestreams import GROUP, VERSION, resolve_digest, tag_image, untag
from scapguard_dev.registry import Registry

pytestmark = pytest.mark.cluster


def _stream(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    return cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", name),
    )


def test_push_then_tag_sets_status_items_newest_first(
    admin_api: client.ApiClient,
    namespace: str,
    registry: Registry,
    fixture_images: FixtureImages,
) -> None:
    old = fixture_images.get("debian12", "vulnerable")
    new = fixture_images.get("debian12", "patched")
    assert resolve_digest(old.by_tag) == old.digest
    repository = f"{registry.host}/{old.repository}"

    tag_image(admin_api, namespace, "app", "latest", repository, old.digest)
    tag_image(admin_api, namespace, "app", "latest", repository, new.digest)
    # Same digest again: no new TagEvent.
    tag_image(admin_api, namespace, "app", "latest", repository, new.digest)
    tag_image(admin_api, namespace, "app", "stable", repository, old.digest)

    status = _stream(admin_api, namespace, "app")["status"]
    assert status["dockerImageRepository"] == repository
    tags = {t["tag"]: t["items"] for t in status["tags"]}
    assert [i["image"] for i in tags["latest"]] == [new.digest, old.digest]
    assert tags["latest"][0]["dockerImageReference"] == f"{repository}@{new.digest}"
    assert [i["image"] for i in tags["stable"]] == [old.digest]

    # Each digest has its cluster-scoped Image, named by the digest.
    custom = client.CustomObjectsApi(admin_api)
    for digest in (old.digest, new.digest):
        image = cast(
            dict[str, Any], custom.get_cluster_custom_object(GROUP, VERSION, "images", digest)
        )
        assert image["dockerImageReference"].endswith(f"@{digest}")

    untag(admin_api, namespace, "app", "stable")
    status = _stream(admin_api, namespace, "app")["status"]
    assert [t["tag"] for t in status["tags"]] == ["latest"]
