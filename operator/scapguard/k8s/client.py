"""The Kube Protocol over the ``kubernetes`` package (the only module that imports it)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from scapguard.k8s.api import Kind, KubeError, Obj, error_for

logger = logging.getLogger(__name__)

_MERGE_PATCH = "application/merge-patch+json"
POOL_SIZE = 32
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


def _in_cluster(kubeconfig: str | None, context: str | None) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (kubeconfig or context)


def _no_config(kubeconfig: str | None, exc: Exception) -> str:
    return f"no usable kubeconfig ({kubeconfig or '$KUBECONFIG'}): {exc}"


def load_client(*, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config.

    ``kubeconfig`` and ``context`` (kubectl's ``--kubeconfig``/``--context``) choose a file and
    a context in it; either one means a kubeconfig, in a pod too.
    """
    return KubeClient(load_api_client(kubeconfig=kubeconfig, context=context))


def load_api_client(*, kubeconfig: str | None = None, context: str | None = None) -> Any:
    """The ``kubernetes`` package's ApiClient, configured as ``load_client`` says; each call a
    client of its own (long-lived watches should not hold the connections of the client that
    reconciles)."""
    configuration = k8s_client.Configuration()
    try:
        if _in_cluster(kubeconfig, context):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
    except k8s_config.ConfigException as exc:
        raise KubeError(0, "NoConfiguration", _no_config(kubeconfig, exc)) from exc
    # kopf's handler threads, the selector's creates and the admitter share one client: the
    # default pool (cpu count + 4) discarded connections at scale.
    configuration.connection_pool_maxsize = POOL_SIZE
    return k8s_client.ApiClient(configuration)


def current_namespace(*, kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context (the current one unless ``context`` names one;
    in a pod without either argument: its own); else "default"."""
    in_pod = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if _in_cluster(kubeconfig, context) and in_pod.is_file():
        return in_pod.read_text().strip()
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except k8s_config.ConfigException as exc:
        raise KubeError(0, "NoConfiguration", _no_config(kubeconfig, exc)) from exc
    if context:
        active = next((x for x in contexts or [] if x.get("name") == context), None)
        if active is None:
            raise KubeError(0, "NoConfiguration", f"no context {context!r} in the kubeconfig")
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


def _path(kind: Kind, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    if kind.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{kind.plural}"
    if name is not None:
        base += f"/{name}"
    if sub:
        base += f"/{sub}"
    return base


def _status_error(status: int, reason: str, body: object) -> KubeError:
    """A typed error from an HTTP status and the API server's Status body, if it sent one."""
    message = str(body or reason)
    if isinstance(body, str | bytes) and body:
        try:
            doc = json.loads(body)
        except ValueError:
            logger.debug("non-JSON error body from the API server: %s", body)
        else:
            if isinstance(doc, dict):
                reason = str(doc.get("reason") or reason)
                message = str(doc.get("message") or message)
    return error_for(status, reason, message)


def _error(exc: ApiException) -> KubeError:
    return _status_error(int(exc.status or 0), str(exc.reason or ""), exc.body)


class KubeClient:
    def __init__(self, api_client: Any, *, timeout: float = 30.0) -> None:
        self._api = api_client
        self._timeout = timeout

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Obj:
        try:
            method, url, headers, payload, post = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or None,
                header_params={"Accept": accept, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                method,
                url,
                header_params=headers,
                body=payload,
                post_params=post,
                _request_timeout=self._timeout,
            )
            data = response.read()
        except ApiException as exc:
            raise _error(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(0, "Unreachable", f"{method} {path}: {exc}") from exc
        if not 200 <= int(response.status) <= 299:
            raise _status_error(int(response.status), str(response.reason or ""), data)
        result = json.loads(data) if data else {}
        return result if isinstance(result, dict) else {}

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        return self._call("GET", _path(kind, namespace, name))

    def serves(self, kind: Kind) -> bool:
        # /apis lists every group, aggregated ones (image.openshift.io) included; errors
        # propagate: a start-up that cannot reach the API server should not guess.
        if not kind.group:
            return kind.version in (self._call("GET", "/api").get("versions") or [])
        groups = self._call("GET", "/apis").get("groups")
        return any(
            isinstance(g, dict)
            and g.get("name") == kind.group
            and any(v.get("version") == kind.version for v in g.get("versions") or [])
            for g in groups or []
        )

    def get_metadata(self, kind: Kind, name: str, namespace: str | None = None) -> Obj:
        # The API server strips data and status; plain JSON is the fallback it may choose.
        return self._call("GET", _path(kind, namespace, name), accept=_METADATA_ONLY)

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        items: list[Obj] = []
        token: str | None = None
        while True:
            page = [*query, ("limit", "500")] + ([("continue", token)] if token else [])
            result = self._call("GET", _path(kind, namespace), query=page)
            for item in result.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("apiVersion", kind.api_version)
                    item.setdefault("kind", kind.kind)
                    items.append(item)
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return items

    def create(self, kind: Kind, body: Obj) -> Obj:
        namespace = (body.get("metadata") or {}).get("namespace")
        return self._call("POST", _path(kind, namespace), body=body)

    def dry_run_create(self, kind: Kind, body: Obj) -> Obj:
        namespace = (body.get("metadata") or {}).get("namespace")
        return self._call("POST", _path(kind, namespace), body=body, query=[("dryRun", "All")])

    def patch(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        return self._call(
            "PATCH", _path(kind, namespace, name), body=patch, content_type=_MERGE_PATCH
        )

    def patch_status(self, kind: Kind, name: str, namespace: str | None, patch: Obj) -> Obj:
        return self._call(
            "PATCH", _path(kind, namespace, name, "status"), body=patch, content_type=_MERGE_PATCH
        )

    def delete(
        self, kind: Kind, name: str, namespace: str | None, *, uid: str | None = None
    ) -> None:
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        self._call("DELETE", _path(kind, namespace, name), body=options)
