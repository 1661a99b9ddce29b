"""The node agent's side of the API: JSON requests, the Node, its Lease, pods' referents.

Requests go through the ``kubernetes`` client's transport (kubeconfig loading, TLS, auth) but
bodies stay plain API JSON (camelCase dicts): the agent reads and writes raw objects, as a kubelet
does, and never depends on the generated models accepting every field.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import urllib3
from kubernetes import client, config

from scapguard.devcluster.nodeagent_spec import HOST_IP, JSON
from scapguard.devcluster.nodeagent_status import now_rfc3339

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
MAX_PODS = 110
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
AGENT_VERSION = "scapguard-nodeagent://0.1.0"
# Transient failures talking to the API server (connection refused, timeouts, TLS resets).
TransportError = urllib3.exceptions.HTTPError


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body}")
        self.status = status


def microtime(moment: dt.datetime | None = None) -> str:
    """metav1.MicroTime, as in Lease.spec.renewTime."""
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Rest:
    """JSON in, JSON out, on top of the kubernetes client's ApiClient."""

    def __init__(self, kubeconfig: Path, pool_size: int = 32) -> None:
        cfg = client.Configuration()
        # kubernetes.config and ApiClient.close() are not annotated upstream.
        cast(Any, config).load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool_size
        self.host: str = cfg.host
        self._client = client.ApiClient(configuration=cfg)

    def close(self) -> None:
        cast(Any, self._client).close()

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: JSON | None,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> Any:
        request = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self._client.call_api(*request, _request_timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: JSON | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        response = self._send(method, path, query, body, content_type, timeout)
        data: bytes = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason, data.decode(errors="replace")[:500])
        parsed: JSON = json.loads(data) if data else {}
        return parsed

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self.call("PATCH", path, body=body, content_type="application/merge-patch+json")

    def watch(self, path: str, query: dict[str, str], seconds: int) -> Iterator[JSON]:
        """Watch events (dicts with type/object) until the server ends the stream."""
        query = {**query, "watch": "true", "timeoutSeconds": str(seconds)}
        response = self._send("GET", path, query, None, "application/json", (10.0, seconds + 30))
        raw = response.response
        try:
            if not 200 <= response.status < 300:
                data = raw.read()
                raise ApiError(response.status, response.reason, data.decode(errors="replace"))
            buffer = b""
            for chunk in raw.stream(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event: JSON = json.loads(line)
                        yield event
        finally:
            raw.release_conn()


class ApiObjects:
    """The ObjectSource of nodeagent_spec, from the API server."""

    def __init__(self, rest: Rest) -> None:
        self._rest = rest

    def _get(self, path: str) -> JSON | None:
        try:
            return self._rest.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def get_secret(self, namespace: str, name: str) -> JSON | None:
        return self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    def get_config_map(self, namespace: str, name: str) -> JSON | None:
        return self._get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def request_token(self, pod: JSON, audiences: list[str], expiration_seconds: int) -> str:
        meta, spec = pod["metadata"], pod.get("spec", {})
        account = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        answer = self._rest.call("POST", path, body=body)
        return str(answer["status"]["token"])


class PodGone(Exception):
    """The pod is no longer in the API, or a new pod with another uid took its name."""


class PodApi:
    """What a pod worker writes: the pod status, and the final deletion."""

    def __init__(self, rest: Rest) -> None:
        self._rest = rest
        self.objects = ApiObjects(rest)

    @staticmethod
    def _path(pod: JSON) -> str:
        meta = pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"

    def patch_status(self, pod: JSON, status: JSON) -> None:
        # metadata.uid in the patch makes it fail if the name now belongs to another pod.
        body = {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status}
        try:
            self._rest.merge_patch(self._path(pod) + "/status", body)
        except ApiError as exc:
            # A pod with another uid under this name answers 422 "metadata.uid ... immutable".
            replaced = exc.status == 422 and "metadata.uid" in str(exc)
            if exc.status in (404, 409) or replaced:
                raise PodGone(str(exc)) from exc
            raise

    def delete(self, pod: JSON) -> None:
        """Delete with grace 0, only this pod (uid precondition), as a kubelet finalising it."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod["metadata"]["uid"]},
        }
        try:
            self._rest.call("DELETE", self._path(pod), body=body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise


# --- the Node and its Lease -------------------------------------------------------------------


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def node_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_object(name: str) -> JSON:
    """The Node as the agent registers it: no taints, labels a kubelet would set."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": node_arch(),
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": node_arch(),
            },
        },
        "spec": {},
    }


def node_status(name: str, root: Path, version: str, now: str) -> JSON:
    """Ready, no pressure, this machine's cpu/memory/disk, 127.0.0.1."""
    resources = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_kib()}Ki",
        "ephemeral-storage": str(shutil.disk_usage(root).total),
        "pods": str(MAX_PODS),
    }

    def condition(kind: str, status: str, reason: str, message: str) -> JSON:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "not checked"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "not checked"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "not checked"),
            condition("Ready", "True", "KubeletReady", "scapguard node agent is posting ready"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "machineID": _read("/etc/machine-id"),
            "systemUUID": _read("/etc/machine-id"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(),
            "osImage": _os_image(),
            "containerRuntimeVersion": AGENT_VERSION,
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": node_arch(),
        },
    }


def _keep_transition_times(status: JSON, node: JSON) -> None:
    before = {c.get("type"): c for c in node.get("status", {}).get("conditions") or []}
    for cond in status["conditions"]:
        old = before.get(cond["type"], {})
        if old.get("status") == cond["status"] and old.get("lastTransitionTime"):
            cond["lastTransitionTime"] = old["lastTransitionTime"]


def kubelet_version(version: JSON) -> str:
    """The API server's version, as a kubelet of the same release would report it."""
    git = str(version.get("gitVersion") or "")
    if re.match(r"^v[1-9]\d*\.\d+\.\d+", git):
        return git
    minor = re.sub(r"\D", "", str(version.get("minor") or "0")) or "0"
    return f"v{version.get('major') or '1'}.{minor}.0"  # an unstamped build says v0.0.0-master


class NodeRegistration:
    """Registers the Node and keeps it Ready: Lease renewals plus node status heartbeats."""

    STATUS_EVERY = 60.0  # seconds between node status heartbeats (the Lease is renewed more)

    def __init__(self, rest: Rest, name: str, root: Path) -> None:
        self._rest = rest
        self.name = name
        self._root = root
        self._uid = ""
        self._version = ""
        self._last_status = 0.0

    @property
    def _node_path(self) -> str:
        return f"/api/v1/nodes/{self.name}"

    def register(self, monotonic_now: float) -> None:
        """Create the Node if needed, post a Ready status, create or renew the Lease."""
        self._version = kubelet_version(self._rest.call("GET", "/version"))
        # Created with a Ready status, so the node lifecycle controller never sees it without
        # one (it would taint it node.kubernetes.io/not-ready until its next pass).
        body = node_object(self.name)
        body["status"] = node_status(self.name, self._root, self._version, now_rfc3339())
        try:
            node = self._rest.call("POST", "/api/v1/nodes", body=body)
            log.info("registered node %s", self.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = self._rest.call("GET", self._node_path)
            log.info("node %s already registered; taking it over", self.name)
        self._uid = node["metadata"]["uid"]
        self._post_status(node, monotonic_now)
        self.renew_lease()
        self._lift_not_ready_taint()

    def _lift_not_ready_taint(self) -> None:
        """Drop the not-ready taint the TaintNodesByCondition admission plugin puts on every new
        Node: this one is Ready, and the node lifecycle controller would only lift it on its next
        pass (up to node-monitor-period, 5 s, of an unschedulable node). Guarded by
        resourceVersion; a conflict leaves the job to the controller."""
        node = self._rest.call("GET", self._node_path)
        taints = node.get("spec", {}).get("taints") or []
        kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
        if len(kept) == len(taints):
            return
        patch = {
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"taints": kept or None},
        }
        try:
            self._rest.merge_patch(self._node_path, patch)
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.info("node %s changed meanwhile; leaving its taints to the controller", self.name)

    def _post_status(self, node: JSON, monotonic_now: float) -> None:
        status = node_status(self.name, self._root, self._version, now_rfc3339())
        _keep_transition_times(status, node)
        self._rest.merge_patch(self._node_path + "/status", {"status": status})
        self._last_status = monotonic_now

    def heartbeat(self, monotonic_now: float) -> None:
        """Renew the Lease; re-post the node status when due or when it is not Ready."""
        self.renew_lease()
        node = self._rest.call("GET", self._node_path)
        ready = [
            c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"
        ]
        is_ready = bool(ready) and ready[0].get("status") == "True"
        if not is_ready or monotonic_now - self._last_status >= self.STATUS_EVERY:
            if not is_ready:
                log.warning("node %s was not Ready (%s); re-posting its status", self.name, ready)
            self._post_status(node, monotonic_now)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": microtime(),
        }
        try:
            self._rest.merge_patch(path, {"spec": spec})
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
                ],
            },
            "spec": spec,
        }
        self._rest.call(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body=lease
        )


def service_env(host_url: str) -> dict[str, str]:
    """KUBERNETES_SERVICE_* pointing at the real API server (there is no kube-proxy)."""
    parts = urlsplit(host_url)
    host = parts.hostname or HOST_IP
    port = str(parts.port or 443)
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
    }
