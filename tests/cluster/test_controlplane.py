"""The local control plane is a real Kubernetes: CRDs, RBAC, GC, webhooks (no node here: the
real node has tests/cluster/test_node.py)."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scapguard.k8s.api import CONFIGMAP, IMAGE, Kind, NotFound
from scapguard.k8s.client import KubeClient
from scapguard_dev.cluster import DevCluster, free_port, wait_for
from scapguard_dev.node import remove_tree
from tests.controlplane import control_plane, control_plane_api  # noqa: F401 - this module's

pytestmark = pytest.mark.cluster


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    )


def test_starts_and_stops_cleanly() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-dev-"))
    dev = DevCluster(workdir)
    dev.start()
    pids = dev.pids()
    try:
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "image-apiserver",
        }
        version = dev.api_request("GET", "/version")
        assert version["gitVersion"].startswith("v1.")
        assert version["major"] == "1"
        assert int(version["minor"].rstrip("+")) >= 33
        assert dev.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        dev.stop()
        remove_tree(workdir)
    assert not [name for name, pid in pids.items() if _pid_alive(pid)]
    assert dev.pids() == {}


def test_crd_with_printer_columns_is_served(cluster: DevCluster, namespace: str) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"}
                    ],
                }
            ],
        },
    }
    cluster.api_request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    cluster.wait_crds_established([f"widgets.{group}"], timeout=30)
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 7},
    }
    out = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(widget))
    assert out.returncode == 0, out.stderr
    bad = dict(widget, metadata={"name": "w2", "namespace": namespace}, spec={"size": 0})
    out = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(bad))
    assert out.returncode != 0
    assert "spec.size" in out.stderr
    out = cluster.kubectl("get", f"widgets.{group}", "-n", namespace)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "SIZE"]
    assert row.split() == ["w1", "7"]


def test_serviceaccount_needs_rbac(
    cluster: DevCluster, admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot"))
    )
    kubeconfig = cluster.kubeconfig_for_serviceaccount(namespace, "robot")
    cm = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c1", "namespace": namespace},
        }
    )
    denied = cluster.kubectl("create", "-f", "-", kubeconfig=kubeconfig, input_text=cm)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{namespace}:robot" in denied.stderr

    rbac = client.RbacAuthorizationV1Api(admin_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="cm-writer"),
            rules=[
                client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["create"])
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="cm-writer"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="cm-writer"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace=namespace)
            ],
        ),
    )

    def allowed() -> bool:
        out = cluster.kubectl("create", "-f", "-", kubeconfig=kubeconfig, input_text=cm)
        return out.returncode == 0

    wait_for("the ServiceAccount to create a ConfigMap once bound", allowed, 30, interval=0.5)
    # Still forbidden outside what the Role grants.
    other = cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig)
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()


def test_deleting_an_owner_collects_its_children(
    admin_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata is not None and owner.metadata.uid
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="child", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_secret("child", namespace)
        except ApiException as e:
            return bool(e.status == 404)
        return False

    wait_for("the garbage collector to delete Secret child", gone, 60, interval=0.5)


class _DenyLabelled(BaseHTTPRequestHandler):
    """A validating webhook that denies ConfigMaps labelled deny=yes."""

    calls: list[str] = []  # noqa: RUF012 - class-level record shared with the test

    def do_POST(self) -> None:
        review: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        labels = request["object"]["metadata"].get("labels") or {}
        denied = labels.get("deny") == "yes"
        self.calls.append(request["name"])
        response: dict[str, Any] = {"uid": request["uid"], "allowed": not denied}
        if denied:
            response["status"] = {"code": 403, "message": "labelled deny=yes by the test webhook"}
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def webhook_server(cluster: DevCluster) -> Iterator[int]:
    port = free_port()
    pair = cluster.ca.issue(f"webhook-{port}", "webhook", ips=("127.0.0.1",), server=True)
    server = HTTPServer(("127.0.0.1", port), _DenyLabelled)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_validating_webhook_is_called_and_honoured(
    cluster: DevCluster, admin_api: client.ApiClient, namespace: str, webhook_server: int
) -> None:
    import base64

    name = f"deny-labelled-{namespace}"
    admission = client.AdmissionregistrationV1Api(admin_api)
    admission.create_validating_webhook_configuration(
        client.V1ValidatingWebhookConfiguration(
            metadata=client.V1ObjectMeta(name=name),
            webhooks=[
                client.V1ValidatingWebhook(
                    name="deny.test.scapguard.io",
                    admission_review_versions=["v1"],
                    side_effects="None",
                    failure_policy="Fail",
                    namespace_selector=client.V1LabelSelector(
                        match_labels={"kubernetes.io/metadata.name": namespace}
                    ),
                    rules=[
                        client.V1RuleWithOperations(
                            api_groups=[""],
                            api_versions=["v1"],
                            operations=["CREATE"],
                            resources=["configmaps"],
                        )
                    ],
                    client_config=client.AdmissionregistrationV1WebhookClientConfig(
                        url=f"https://127.0.0.1:{webhook_server}/validate",
                        ca_bundle=base64.b64encode(cluster.ca.pem).decode(),
                    ),
                )
            ],
        )
    )
    core = client.CoreV1Api(admin_api)
    try:
        # The configuration reaches the apiserver's webhook cache asynchronously.
        def denied() -> bool:
            try:
                core.create_namespaced_config_map(
                    namespace,
                    client.V1ConfigMap(
                        metadata=client.V1ObjectMeta(generate_name="probe-", labels={"deny": "yes"})
                    ),
                )
            except ApiException as e:
                assert e.status == 403, e.body
                assert "labelled deny=yes by the test webhook" in str(e.body)
                return True
            return False

        wait_for("the webhook to deny a labelled ConfigMap", denied, 30, interval=0.5)
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="plain"))
        )
        assert "plain" in _DenyLabelled.calls
    finally:
        admission.delete_validating_webhook_configuration(name)


def test_the_operators_client_reads_metadata_without_data(
    admin_api: client.ApiClient, namespace: str
) -> None:
    """``KubeClient.get_metadata``: the API server answers a PartialObjectMetadata."""
    kube = KubeClient(admin_api)
    body = {"metadata": {"name": "feed", "namespace": namespace}, "data": {"oval.xml": "x" * 4096}}
    created = kube.create(CONFIGMAP, body)
    partial = kube.get_metadata(CONFIGMAP, "feed", namespace)
    assert partial["kind"] == "PartialObjectMetadata"
    assert "data" not in partial
    assert partial["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    with pytest.raises(NotFound):
        kube.get_metadata(CONFIGMAP, "absent", namespace)


def test_discovery_tells_whether_the_image_api_is_served(admin_api: client.ApiClient) -> None:
    """The admission webhook picks its index by this at start (plain Kubernetes has no
    image.openshift.io: its denies then come from the ImageScans' verdicts)."""
    kube = KubeClient(admin_api)
    assert kube.serves(IMAGE) is True
    assert kube.serves(Kind("images.example.com", "v1", "images", "Image")) is False
    assert kube.serves(Kind("", "v1", "pods", "Pod")) is True
