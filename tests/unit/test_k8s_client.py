"""KubeClient over a stub ApiClient: request paths, merge patches, typed errors, paging."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from scapguard.k8s.api import (
    IMAGE,
    IMAGESCAN,
    JOB,
    SECRET,
    AlreadyExists,
    Conflict,
    KubeError,
    NotFound,
)
from scapguard.k8s.client import KubeClient, current_namespace, load_client


@dataclass
class Response:
    status: int
    data: bytes
    reason: str = ""

    def read(self) -> bytes:
        return self.data


class StubApi:
    """Stands in for kubernetes.client.ApiClient (param_serialize + call_api)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def param_serialize(self, *, method: str, resource_path: str, **kwargs: Any) -> Any:
        self.calls.append((method, resource_path, kwargs))
        return method, resource_path, kwargs["header_params"], kwargs["body"], None

    def call_api(self, method: str, url: str, **_: Any) -> Response:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Response):
            return answer
        return Response(200, json.dumps(answer).encode())


def api_error(status: int, reason: str) -> Response:
    return Response(status, f'{{"kind":"Status","reason":"{reason}","message":"m"}}'.encode())


def test_paths_and_merge_patch() -> None:
    stub = StubApi([{}, {}, {}, {}])
    kube = KubeClient(stub)
    kube.get(IMAGESCAN, "s", "apps")
    kube.patch_status(IMAGESCAN, "s", "apps", {"status": {"result": "Pass"}})
    kube.patch(IMAGE, "sha256:x", None, {"metadata": {}})
    kube.delete(JOB, "j", "scapguard")
    (m1, p1, _), (m2, p2, k2), (m3, p3, _), (m4, p4, k4) = stub.calls
    assert (m1, p1) == ("GET", "/apis/scapguard.io/v1alpha1/namespaces/apps/imagescans/s")
    assert (m2, p2) == ("PATCH", "/apis/scapguard.io/v1alpha1/namespaces/apps/imagescans/s/status")
    assert k2["header_params"]["Content-Type"] == "application/merge-patch+json"
    assert (m3, p3) == ("PATCH", "/apis/image.openshift.io/v1/images/sha256:x")
    assert (m4, p4) == ("DELETE", "/apis/batch/v1/namespaces/scapguard/jobs/j")
    assert k4["body"]["propagationPolicy"] == "Background"


def test_list_pages_and_fills_kind() -> None:
    stub = StubApi(
        [
            {"items": [{"metadata": {"name": "a"}}], "metadata": {"continue": "t"}},
            {"items": [{"metadata": {"name": "b"}}], "metadata": {}},
        ]
    )
    items = KubeClient(stub).list(SECRET, "ns", label_selector="a=b")
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert items[0]["kind"] == "Secret" and items[0]["apiVersion"] == "v1"
    assert stub.calls[0][1] == "/api/v1/namespaces/ns/secrets"
    assert ("continue", "t") in stub.calls[1][2]["query_params"]


def test_transport_errors_are_typed() -> None:
    kube = KubeClient(StubApi([ApiException(status=0, reason="connection refused")]))
    with pytest.raises(KubeError):
        kube.get(SECRET, "x", "ns")


@pytest.mark.parametrize(
    ("status", "reason", "error"),
    [
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
    ],
)
def test_errors_are_typed(status: int, reason: str, error: type[Exception]) -> None:
    kube = KubeClient(StubApi([api_error(status, reason)]))
    with pytest.raises(error):
        kube.get(SECRET, "x", "ns")


KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: a
clusters:
- {name: ca, cluster: {server: "https://a.example:6443"}}
- {name: cb, cluster: {server: "https://b.example:6443"}}
users:
- {name: u, user: {token: t}}
contexts:
- {name: a, context: {cluster: ca, user: u}}
- {name: b, context: {cluster: cb, user: u, namespace: ns-b}}
"""


def test_kubeconfig_and_context_choose_server_and_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    path = tmp_path / "config"
    path.write_text(KUBECONFIG, encoding="utf-8")
    assert current_namespace(kubeconfig=str(path)) == "default"
    assert current_namespace(kubeconfig=str(path), context="b") == "ns-b"
    assert load_client(kubeconfig=str(path))._api.configuration.host == "https://a.example:6443"
    chosen = load_client(kubeconfig=str(path), context="b")
    assert chosen._api.configuration.host == "https://b.example:6443"
    with pytest.raises(KubeError, match="no context 'c'"):
        current_namespace(kubeconfig=str(path), context="c")
    with pytest.raises(KubeError, match="NoConfiguration"):
        load_client(kubeconfig=str(path), context="c")
    with pytest.raises(KubeError, match="NoConfiguration"):
        current_namespace()  # $KUBECONFIG names no file


def test_list_sends_a_field_selector() -> None:
    stub = StubApi([{"items": []}])
    KubeClient(stub).list(IMAGESCAN, None, field_selector="metadata.name=x")
    _method, path, kwargs = stub.calls[0]
    assert path == "/apis/scapguard.io/v1alpha1/imagescans"
    assert ("fieldSelector", "metadata.name=x") in kwargs["query_params"]


def test_an_api_server_nobody_listens_on_is_a_transient_kube_error(tmp_path: Path) -> None:
    """Not urllib3's own exception: callers (handlers, the results server) retry KubeErrors
    that say "try later" without a traceback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    kube = load_client(kubeconfig=str(kubeconfig))
    with pytest.raises(KubeError) as caught:
        kube.get(IMAGESCAN, "x", "apps")
    assert (caught.value.status, caught.value.reason) == (0, "Unreachable")
    assert caught.value.transient
    assert "GET /apis/scapguard.io/v1alpha1/namespaces/apps/imagescans/x" in str(caught.value)
    assert not NotFound(404, "NotFound", "x").transient
    assert KubeError(503, "ServiceUnavailable", "etcd").transient
