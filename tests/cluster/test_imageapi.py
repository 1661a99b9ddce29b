"""OpenShift's image.openshift.io/v1 API on the local control plane, for real."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import uuid
from typing import Any, cast

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from scapguard_dev.cluster import DevCluster, wait_for

pytestmark = pytest.mark.cluster

GROUP, VERSION = "image.openshift.io", "v1"


def _digest() -> str:
    return "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def _image(digest: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Image",
        "metadata": {"name": digest},
        "dockerImageReference": f"127.0.0.1:5000/demo/app@{digest}",
    }


def test_discovery_lists_the_image_group(cluster: DevCluster) -> None:
    out = cluster.kubectl("api-resources", "--api-group=image.openshift.io", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {
        "images.image.openshift.io",
        "imagestreams.image.openshift.io",
    }


def test_image_named_by_digest_create_list_watch_patch(
    cluster: DevCluster, admin_api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(admin_api)
    digest = _digest()
    created = cast(
        dict[str, Any],
        custom.create_cluster_custom_object(GROUP, VERSION, "images", _image(digest)),
    )
    assert created["metadata"]["name"] == digest
    listed = cast(dict[str, Any], custom.list_cluster_custom_object(GROUP, VERSION, "images"))
    assert digest in [i["metadata"]["name"] for i in listed["items"]]

    events: queue.Queue[dict[str, Any]] = queue.Queue()
    w = watch.Watch()

    def follow() -> None:
        try:
            _follow()
        except Exception as e:  # reported to the test thread, which fails on it
            events.put({"type": "ERROR", "object": {"error": repr(e)}})

    def _follow() -> None:
        for ev in w.stream(
            custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            "images",
            field_selector=f"metadata.name={digest}",
            resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=30,
        ):
            events.put(cast(dict[str, Any], ev))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        patched = cast(
            dict[str, Any],
            custom.patch_cluster_custom_object(
                GROUP,
                VERSION,
                "images",
                digest,
                {"metadata": {"annotations": {"images.openshift.io/deny-execution": "true"}}},
            ),
        )
        assert patched["metadata"]["annotations"]["images.openshift.io/deny-execution"] == "true"
        event = events.get(timeout=20)
        assert event["type"] == "MODIFIED", event
        annotations = event["object"]["metadata"]["annotations"]
        assert annotations == {"images.openshift.io/deny-execution": "true"}
    finally:
        w.stop()
    # kubectl merge-patches through the aggregator too.
    out = cluster.kubectl(
        "patch", "images.image.openshift.io", digest, "--type=merge", "-p",
        json.dumps({"metadata": {"annotations": {"example.com/x": "y"}}}),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = cast(dict[str, Any], custom.get_cluster_custom_object(GROUP, VERSION, "images", digest))
    assert got["metadata"]["annotations"]["example.com/x"] == "y"


def test_image_name_must_be_a_digest(admin_api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(admin_api)
    bad = _image("not-a-digest")
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(GROUP, VERSION, "images", bad)
    assert err.value.status == 422
    assert "metadata.name" in str(err.value.body)


def test_serviceaccount_without_patch_on_images_is_refused(
    cluster: DevCluster, admin_api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(admin_api)
    digest = _digest()
    custom.create_cluster_custom_object(GROUP, VERSION, "images", _image(digest))
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac = client.RbacAuthorizationV1Api(admin_api)
    role = f"image-reader-{namespace}"
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=role),
            rules=[
                client.V1PolicyRule(
                    api_groups=[GROUP], resources=["images"], verbs=["get", "list", "watch"]
                )
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=role),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        )
    )
    try:
        kubeconfig = cluster.kubeconfig_for_serviceaccount(namespace, "reader")

        def can_get() -> bool:
            return (
                cluster.kubectl(
                    "get", "images.image.openshift.io", digest, kubeconfig=kubeconfig
                ).returncode
                == 0
            )

        wait_for("the reader to get the Image", can_get, 30, interval=0.5)
        out = cluster.kubectl(
            "annotate", "images.image.openshift.io", digest,
            "images.openshift.io/deny-execution=true", kubeconfig=kubeconfig,
        )  # fmt: skip
        assert out.returncode != 0
        assert "forbidden" in out.stderr.lower()
        assert 'cannot patch resource "images"' in out.stderr
        got = cast(
            dict[str, Any], custom.get_cluster_custom_object(GROUP, VERSION, "images", digest)
        )
        assert not (got["metadata"].get("annotations") or {})
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


def test_imagestream_status_is_a_subresource(admin_api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(admin_api)
    stream = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageStream",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {},
        "status": {"dockerImageRepository": "ignored-on-create"},
    }
    created = cast(
        dict[str, Any],
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", stream),
    )
    assert not (created.get("status") or {}).get("dockerImageRepository")
    digest = _digest()
    item = {
        "created": "2026-01-01T00:00:00Z",
        "image": digest,
        "dockerImageReference": f"127.0.0.1:5000/app@{digest}",
        "generation": 1,
    }
    status = {
        "status": {
            "dockerImageRepository": "127.0.0.1:5000/app",
            "tags": [{"tag": "latest", "items": [item]}],
        }
    }
    # The main resource ignores status; the status subresource takes it.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", "app", status)
    got = cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", "app"),
    )
    assert not (got.get("status") or {}).get("tags")
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "imagestreams", "app", status
    )
    got = cast(
        dict[str, Any],
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagestreams", "app"),
    )
    assert got["status"]["tags"][0]["items"][0]["image"] == digest
