"""The admission webhook on the real control plane: kopf serves it, kube-apiserver calls it.

A control plane of its own without a node (admitted Pods are bound to a node that does not
exist, so they are stored and never run): the webhook is a host process on 127.0.0.1, where
that API server calls it, and no installed scapguard's webhook answers beside it.

The operator (``admission_operator.py``: the admission handlers and a startup calling
``configure_admission``) runs as a process under a ServiceAccount bound to the shipped
ClusterRole (deploy/rbac/admission.yaml); the ValidatingWebhookConfiguration comes from the same
builder as deploy/admission/, pointed at 127.0.0.1 with a certificate from the cluster CA.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scapguard.api import constants as c
from scapguard.api.annotations import QualityInput, quality_annotation
from scapguard.builders.admission import NAMESPACE_NAME_LABEL, webhook_configuration
from scapguard_dev.cluster import DevCluster, free_port, wait_for
from scapguard_dev.imagestreams import GROUP, VERSION, tag_image
from tests.controlplane import control_plane, control_plane_api  # noqa: F401 - this module's

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HARNESS = Path(__file__).with_name("admission_operator.py")
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac" / "admission.yaml"
SA = "scapguard"
T = TypeVar("T")


def _digest() -> str:
    return "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def _pod_dict(name: str, image: str) -> dict[str, Any]:
    # Bound to a node that does not exist: admitted Pods are stored, never run.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "scapguard-e2e-nowhere",
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": image}],
        },
    }


def _model(parsed: T | None) -> T:
    assert parsed is not None
    return parsed


def _pod(name: str, image: str) -> client.V1Pod:
    return _model(client.V1Pod.from_dict(_pod_dict(name, image)))


def _outcome(call: Any) -> tuple[int, str]:
    """(HTTP status, the API server's message) of one request."""
    try:
        call()
    except ApiException as e:
        body = json.loads(e.body) if e.body else {}
        return int(e.status), str(body.get("message", e.reason))
    return 200, ""


class Operator:
    """The webhook operator as a process of its own, stopped by pid."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                "--verbose",
                str(HARNESS),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited ({self.proc.returncode}):\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def operator_namespace(admin_api: client.ApiClient, namespace: str) -> Iterator[str]:
    name = f"{namespace}-op"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def operator_kubeconfig(
    cluster: DevCluster, admin_api: client.ApiClient, operator_namespace: str
) -> Iterator[Path]:
    """A ServiceAccount bound to the shipped ClusterRole, nothing more."""
    core = client.CoreV1Api(admin_api)
    rbac = client.RbacAuthorizationV1Api(admin_api)
    core.create_namespaced_service_account(
        operator_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SA))
    )
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    name = f"scapguard-admission-{operator_namespace}"
    role["metadata"]["name"] = name
    rbac.create_cluster_role(_model(client.V1ClusterRole.from_dict(role)))
    rbac.create_cluster_role_binding(
        _model(
            client.V1ClusterRoleBinding.from_dict(
                {
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": name,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": SA, "namespace": operator_namespace}
                    ],
                }
            )
        )
    )
    try:
        yield cluster.kubeconfig_for_serviceaccount(operator_namespace, SA)
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def _deny(custom: client.CustomObjectsApi, digest: str, namespace: str) -> None:
    quality = quality_annotation(
        QualityInput(
            timestamp="2025-01-01T00:00:00Z",
            reference="https://scapguard.example/scan",
            scanner_version="0.1.0",
            compliant=False,
            vulnerabilities={"critical": 2, "high": 1},
            failed_rules=None,
            description=f"Fail under ScanPolicy {namespace}/strict",
        )
    )
    annotations = {
        c.OPENSHIFT_DENY_ANNOTATION: "true",
        c.DENY_MARKER_ANNOTATION: "true",
        c.DENIED_BY_ANNOTATION: f"{namespace}/strict",
        c.QUALITY_ANNOTATION: quality,
    }
    custom.patch_cluster_custom_object(
        GROUP, VERSION, "images", digest, {"metadata": {"annotations": annotations}}
    )


def test_webhook_refuses_pods_with_denied_images(
    cluster: DevCluster,
    admin_api: client.ApiClient,
    namespace: str,
    operator_namespace: str,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(admin_api)
    custom = client.CustomObjectsApi(admin_api)
    admission = client.AdmissionregistrationV1Api(admin_api)
    bad, good = _digest(), _digest()
    repository = f"127.0.0.1:5999/{namespace}/app"
    config_name = f"scapguard-e2e-{namespace}"

    for ns in (namespace, operator_namespace):

        def has_default_sa(ns: str = ns) -> bool:
            return _outcome(lambda: core.read_namespaced_service_account("default", ns))[0] == 200

        wait_for(f"ServiceAccount {ns}/default", has_default_sa, 30, interval=0.2)

    tag_image(admin_api, namespace, "app", "latest", repository, bad)
    tag_image(admin_api, namespace, "app", "good", repository, good)
    _deny(custom, bad, namespace)

    port = free_port()
    pair = cluster.ca.issue(
        f"webhook-{namespace}", "scapguard-webhook", ips=("127.0.0.1",), server=True
    )
    env = {
        **os.environ,
        "KUBECONFIG": str(operator_kubeconfig),
        "SCAPGUARD_E2E_WEBHOOK_CERT": str(pair.cert),
        "SCAPGUARD_E2E_WEBHOOK_KEY": str(pair.key),
        "SCAPGUARD_E2E_WEBHOOK_PORT": str(port),
    }
    operator = Operator(env, tmp_path / "operator.log")
    config = webhook_configuration(
        operator_namespace=operator_namespace,
        name=config_name,
        url=f"https://127.0.0.1:{port}",
        ca_bundle=cluster.ca.pem,
        failure_policy="Fail",
    )
    # This session's other tests keep creating Pods: only this test's namespaces are in scope.
    for hook in config["webhooks"]:
        hook["namespaceSelector"]["matchExpressions"].append(
            {
                "key": NAMESPACE_NAME_LABEL,
                "operator": "In",
                "values": [namespace, operator_namespace],
            }
        )
    try:
        admission.create_validating_webhook_configuration(
            _model(client.V1ValidatingWebhookConfiguration.from_dict(config))
        )

        def create(
            name: str, image: str, ns: str = namespace, dry_run: bool = True
        ) -> tuple[int, str]:
            return _outcome(
                lambda: core.create_namespaced_pod(
                    ns, _pod(name, image), dry_run="All" if dry_run else None
                )
            )

        by_digest = f"{repository}@{bad}"

        def refused_by_scapguard() -> bool:
            operator.check_alive()
            status, message = create("probe", by_digest)
            return status == 403 and "refused by scapguard" in message

        wait_for(
            "the webhook to refuse a Pod by denied digest", refused_by_scapguard, 60, interval=0.5
        )

        # 1. By digest: 403 naming the webhook, container, image, digest and scan summary.
        status, message = create("by-digest", by_digest, dry_run=False)
        assert status == 403, message
        assert 'admission webhook "pod-images.scapguard.io" denied the request' in message
        assert f'Pod {namespace}/by-digest refused by scapguard: container "app" image ' in message
        assert f'"{by_digest}" resolves to {bad}, which is denied execution' in message
        assert f"set by scapguard for ScanPolicy {namespace}/strict" in message
        assert "critical=2 high=1 medium=0 low=0" in message

        # 2. By ImageStream tag: the short name in the Pod's namespace, and the full pull spec.
        status, message = create("by-stream", "app:latest")
        assert status == 403, message
        assert f"via ImageStream {namespace}/app:latest resolves to {bad}" in message
        status, message = create("by-pull-spec", f"{repository}:latest")
        assert status == 403, message
        assert f'image "{repository}:latest" via ImageStream {namespace}/app:latest' in message

        # 3. Clean digest and clean tag: admitted (one stored for real, for the UPDATE checks).
        assert create("clean", f"{repository}@{good}", dry_run=False) == (200, "")
        assert create("clean-tag", "app:good") == (200, "")

        # 4. A registry tag cannot be resolved offline: admitted, with a warning.
        result = cluster.kubectl(
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            "-",
            input_text=json.dumps(_pod_dict("ext", "docker.io/busybox:1")),
        )
        assert result.returncode == 0, result.stderr
        assert "cannot resolve it to a digest without contacting the registry" in result.stderr

        # 5. UPDATEs: switching a container to a denied image and kubectl debug are refused;
        #    an update that changes no image is not even sent to the webhook.
        status, message = _outcome(
            lambda: core.patch_namespaced_pod(
                "clean",
                namespace,
                {"spec": {"containers": [{"name": "app", "image": by_digest}]}},
            )
        )
        assert status == 403, message
        status, message = _outcome(
            lambda: core.patch_namespaced_pod_ephemeralcontainers(
                "clean",
                namespace,
                {"spec": {"ephemeralContainers": [{"name": "debug", "image": by_digest}]}},
            )
        )
        assert status == 403, message
        assert 'ephemeral container "debug"' in message
        assert _outcome(
            lambda: core.patch_namespaced_pod(
                "clean", namespace, {"metadata": {"labels": {"checked": "yes"}}}
            )
        ) == (200, "")

        # 6. The operator's namespace is exempt (namespaceSelector).
        assert create("exempt", by_digest, ns=operator_namespace) == (200, "")

        # 7. Lifting the deny: the watch updates the index, the same Pods are admitted.
        custom.patch_cluster_custom_object(
            GROUP,
            VERSION,
            "images",
            bad,
            {"metadata": {"annotations": {c.OPENSHIFT_DENY_ANNOTATION: None}}},
        )
        wait_for(
            "the Pod by digest to be admitted once the deny is lifted",
            lambda: create("by-digest", by_digest) == (200, ""),
            30,
            interval=0.2,
        )
        assert create("by-stream", "app:latest") == (200, "")

        # 8. Operator down: fail closed, except in the exempt operator namespace.
        assert operator.stop() == 0, operator.output()
        status, message = create("while-down", f"{repository}@{good}")
        assert status == 500, message
        assert "failed calling webhook" in message
        assert create("while-down", by_digest, ns=operator_namespace) == (200, "")
    finally:
        admission.delete_validating_webhook_configuration(config_name)
        operator.stop()
        for digest in (bad, good):
            custom.delete_cluster_custom_object(GROUP, VERSION, "images", digest)

    output = operator.output()
    assert "Traceback" not in output, output
    assert "listed" in output and "imagestreams.image.openshift.io" in output, output
    assert f"Pod {namespace}/by-digest refused by scapguard" in output, output
    assert "list/watch of" not in output, output  # no watch failures, not even at shutdown
