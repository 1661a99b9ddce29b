"""Install scapguard on a real-node local cluster the way it ships: its images, ``helm install``
(or ``kubectl apply -f deploy/...``, the documented manifest install).

``ChartInstall(cluster, images).install()``:

1. creates the release namespace with PodSecurity ``restricted`` enforced (as
   deploy/rbac/00-namespace-serviceaccount.yaml does);
2. plays OpenShift's service CA operator, which the chart relies on: it issues the serving
   certificates the chart's Services ask for (``service.beta.openshift.io/serving-cert-secret-
   name``) from the cluster CA into those Secrets, and after the install injects the CA bundle
   where the chart asks for it (``service.beta.openshift.io/inject-cabundle``: the results CA
   ConfigMap and the ValidatingWebhookConfiguration);
3. runs the real Helm (built from its Go module) on charts/scapguard with the images pushed to
   the cluster's registry, and waits until the operator Deployment is available. With
   ``method="kubectl"`` it applies deploy/crds, deploy/rbac, deploy/operator.yaml (the image
   references and replica count replaced, as an admin would edit them) and deploy/admission.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scapguard_dev import productimages
from scapguard_dev.binaries import repo_root, tool_binary
from scapguard_dev.cluster import ClusterError, DevCluster, wait_for
from scapguard_dev.images import PushedImage

log = logging.getLogger(__name__)

RELEASE = "scapguard"
NAMESPACE = "scapguard"
DEPLOYMENT = "scapguard-operator"
WEBHOOK_CONFIGURATION = "scapguard-image-denial"
RESULTS_CA_CONFIGMAP = "scapguard-results-ca"
CRDS = ("scanpolicies.scapguard.io", "imagescans.scapguard.io", "clusterkopfpeerings.kopf.dev")
#: Service -> the Secret the service CA issues its serving certificate into (from the chart).
SERVING_CERTS = {
    "scapguard-results": "scapguard-results-tls",
    "scapguard-webhook": "scapguard-webhook-tls",
}
_HELM_TIMEOUT = 300.0


@dataclass
class ChartInstall:
    """One ``helm install`` of charts/scapguard on ``cluster``."""

    cluster: DevCluster
    operator_image: PushedImage
    scanner_image: PushedImage
    namespace: str = NAMESPACE
    #: Extra ``--set`` values (key -> value), e.g. {"replicas": "1"}.
    values: dict[str, str] = field(default_factory=dict)
    #: "helm" (helm install charts/scapguard) or "kubectl" (kubectl apply -f deploy/...).
    method: str = "helm"

    def helm(self, *args: str, timeout: float = _HELM_TIMEOUT) -> str:
        """Run the real Helm against the cluster; raise ClusterError naming the command."""
        argv = [str(tool_binary("helm")), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        out = self.cluster.kubectl(*args, input_text=input_text)
        if out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def set_values(self) -> list[str]:
        values = {
            "image.repository": f"{self.operator_image.registry}/{self.operator_image.repository}",
            "image.tag": self.operator_image.tag,
            "scanner.image": self.scanner_image.by_digest,
            **self.values,
        }
        return [f"--set={key}={value}" for key, value in values.items()]

    def install(self, timeout: float = 180.0) -> None:
        self._namespace()
        self._issue_serving_certs()
        if self.method == "kubectl":
            self._apply_deploy()
        else:
            chart = repo_root() / "charts" / "scapguard"
            self.helm("install", RELEASE, str(chart), f"--namespace={self.namespace}",
                      *self.set_values())  # fmt: skip
        self._inject_ca_bundles()
        self.wait_available(timeout)

    def uninstall(self) -> None:
        if self.method == "kubectl":
            deploy = repo_root() / "deploy"
            for part in ("admission", "operator.yaml"):
                self.kubectl("delete", "--wait=true", "-f", str(deploy / part))
            return
        self.helm("uninstall", RELEASE, f"--namespace={self.namespace}", "--wait")

    def _apply_deploy(self) -> None:
        """deploy/ as README's install line applies it, with this build's images."""
        deploy = repo_root() / "deploy"
        self.kubectl("apply", "-f", str(deploy / "crds"))
        self.cluster.wait_crds_established(CRDS)
        self.kubectl("apply", "-f", str(deploy / "rbac"))
        documents = list(yaml.safe_load_all((deploy / "operator.yaml").read_text()))
        for doc in documents:
            if doc.get("kind") == "Deployment":
                doc["spec"]["replicas"] = int(self.values.get("replicas", "2"))
                (container,) = doc["spec"]["template"]["spec"]["containers"]
                container["image"] = self.operator_image.by_digest
                for env in container["env"]:
                    if env["name"] == "SCAPGUARD_SCANNER_IMAGE":
                        env["value"] = self.scanner_image.by_digest
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))
        self.kubectl("apply", "-f", str(deploy / "admission"))

    def _namespace(self) -> None:
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": self.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "scapguard",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
        }
        self.kubectl("apply", "-f", "-", input_text=json.dumps(namespace))

    def _issue_serving_certs(self) -> None:
        ca = self.cluster.ca
        for service, secret in SERVING_CERTS.items():
            host = f"{service}.{self.namespace}.svc"
            pair = ca.issue(secret, host, dns_names=(host, f"{host}.cluster.local"), server=True)
            manifest = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": secret, "namespace": self.namespace},
                "data": {
                    "tls.crt": base64.b64encode(pair.cert.read_bytes()).decode(),
                    "tls.key": base64.b64encode(pair.key.read_bytes()).decode(),
                },
            }
            self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def _inject_ca_bundles(self) -> None:
        pem = self.cluster.ca.pem.decode()
        patch = {"data": {"service-ca.crt": pem}}
        self.kubectl("-n", self.namespace, "patch", "configmap", RESULTS_CA_CONFIGMAP,
                     "--type=merge", f"-p={json.dumps(patch)}")  # fmt: skip
        found = self.cluster.kubectl("get", "validatingwebhookconfiguration",
                                     WEBHOOK_CONFIGURATION, "-o", "json")  # fmt: skip
        if found.returncode != 0:
            return  # admission.enabled=false
        config: dict[str, Any] = json.loads(found.stdout)
        bundle = base64.b64encode(self.cluster.ca.pem).decode()
        ops = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(config.get("webhooks") or []))
        ]
        self.kubectl("patch", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
                     "--type=json", f"-p={json.dumps(ops)}")  # fmt: skip

    def wait_available(self, timeout: float = 180.0) -> None:
        def available() -> bool:
            out = self.cluster.kubectl("-n", self.namespace, "get", "deployment", DEPLOYMENT,
                                       "-o", "json")  # fmt: skip
            if out.returncode != 0:
                return False
            status = json.loads(out.stdout).get("status") or {}
            return any(
                c.get("type") == "Available" and c.get("status") == "True"
                for c in status.get("conditions") or []
            ) and status.get("readyReplicas") == status.get("replicas")

        try:
            wait_for(f"Deployment {self.namespace}/{DEPLOYMENT} available", available, timeout, 1.0)
        except ClusterError as exc:
            pods = self.cluster.kubectl("-n", self.namespace, "describe", "pods").stdout
            raise ClusterError(f"{exc}\n{pods[-3000:]}\n{self.logs()[-3000:]}") from exc

    def allow_user_namespace_scanners(self, timeout: float = 180.0) -> None:
        """PodSecurity ``baseline`` on the release namespace and a restarted operator: its
        start-up probe then finds user-namespace scanner pods admitted (hostUsers: false)."""
        self.kubectl("label", "namespace", self.namespace, "--overwrite",
                     "pod-security.kubernetes.io/enforce=baseline")  # fmt: skip
        self.kubectl("-n", self.namespace, "rollout", "restart", "deployment", DEPLOYMENT)
        self.kubectl("-n", self.namespace, "rollout", "status", "deployment", DEPLOYMENT,
                     f"--timeout={timeout:.0f}s")  # fmt: skip
        wait_for("the operator to choose user-namespace scanner pods",
                 lambda: "scanner pods get a user namespace" in self.logs(), 60, 1.0)  # fmt: skip

    def operator_pods(self) -> list[dict[str, Any]]:
        out = self.kubectl("-n", self.namespace, "get", "pods", "-o", "json",
                           "-l", "app.kubernetes.io/component=operator")  # fmt: skip
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def logs(self) -> str:
        """Every operator pod's log (the current container and, if any, the previous one).

        A pod of the old ReplicaSet may be gone between the listing and its log (a rollout
        restart): it is left out rather than failing the read.
        """
        text = []
        for pod in self.operator_pods():
            name = pod["metadata"]["name"]
            current = self.cluster.kubectl("-n", self.namespace, "logs", name)
            if current.returncode != 0:
                if "NotFound" in current.stderr:
                    continue
                raise ClusterError(f"kubectl logs {name}: {current.stderr.strip()}")
            text.append(current.stdout)
            previous = self.cluster.kubectl("-n", self.namespace, "logs", name, "--previous")
            if previous.returncode == 0:
                text.append(previous.stdout)
        return "\n".join(text)

    def operator_pod(self) -> dict[str, Any]:
        """The one operator pod (raises when there is none or more than one)."""
        pods = self.operator_pods()
        if len(pods) != 1:
            raise ClusterError(f"expected one operator pod, found {len(pods)}")
        return pods[0]

    def ready(self) -> bool:
        """Whether one operator pod runs and is Ready."""
        try:
            pod = self.operator_pod()
        except ClusterError:
            return False
        return all(s.get("ready") for s in pod["status"].get("containerStatuses") or [{}])

    def restarts(self) -> int:
        """The operator container's restart count."""
        (state,) = self.operator_pod()["status"]["containerStatuses"]
        return int(state.get("restartCount", 0))

    def kill(self, timeout: float = 120.0) -> None:
        """A crash: SIGKILL every process of the operator container from the host (no handler
        runs, nothing is drained); return once the kubelet has restarted it (not yet Ready:
        see :meth:`ready`)."""
        before = sigkill_container(self.operator_pod())
        wait_for("the kubelet to restart the killed operator container",
                 lambda: self.restarts() > before, timeout, 0.2)  # fmt: skip

    @contextlib.contextmanager
    def port_forward(self, port: int) -> Iterator[int]:
        """``kubectl port-forward`` to ``port`` of the operator pod; yields the local port."""
        name = self.operator_pod()["metadata"]["name"]
        argv = [str(self.cluster.binary), "kubectl", f"--kubeconfig={self.cluster.kubeconfig}",
                "-n", self.namespace, "port-forward", f"pod/{name}", f":{port}"]  # fmt: skip
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                # "Forwarding from 127.0.0.1:PORT -> 8443"
                line = proc.stdout.readline() if proc.stdout is not None else ""
                found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
                if found is None:
                    proc.kill()
                    _, err = proc.communicate(timeout=10)
                    raise ClusterError(f"kubectl port-forward pod/{name}: {line}{err}".strip())
                yield int(found.group(1))
            finally:
                proc.terminate()

    def metrics(self) -> str:
        """The Prometheus exposition of one operator pod, through the API server's pod proxy."""
        name = self.operator_pods()[0]["metadata"]["name"]
        return self.cluster.raw_request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}:9090/proxy/metrics"
        ).decode()


def container_pids(container_id: str) -> set[int]:
    """The host pids of one container's processes (its cgroup path ends with its id)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if container_id in cgroups:
            pids.add(int(entry.name))
    return pids


def install_scapguard(cluster: DevCluster, method: str = "helm", **values: str) -> ChartInstall:
    """Build (or reuse) both images, push them to the cluster's registry, install scapguard
    (``helm install``, or ``kubectl apply -f deploy/...`` with ``method="kubectl"``)."""
    registry = cluster.registry
    if registry is None:
        raise ClusterError("the cluster has no registry (real_node=False)")
    pushed = {}
    for name in productimages.IMAGES:
        built = productimages.build(name)
        tag = built.reference.rsplit(":", 1)[1]
        pushed[name] = productimages.push(built, registry.host, tag=tag).at(registry.cluster_host)
    release = ChartInstall(
        cluster, pushed["operator"], pushed["scanner"], values=values, method=method
    )
    release.install()
    return release


def sigkill_container(pod: dict[str, Any]) -> int:
    """SIGKILL every process of a one-container pod's container from the host (a crash: no
    handler runs, nothing is drained); returns its restart count before the kill."""
    (state,) = pod["status"]["containerStatuses"]
    before = int(state.get("restartCount", 0))
    container = state["containerID"].split("://", 1)[1]
    pids = container_pids(container)
    if not pids:
        raise ClusterError(f"no process found in the operator's container {container}")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return before
