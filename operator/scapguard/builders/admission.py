"""The ValidatingWebhookConfiguration that sends Pod admissions to scapguard's webhook.

Shipped as an install manifest (``deploy/admission/``, generated from this function) rather than
managed by kopf (``settings.admission.managed``): kopf's managed configuration cannot carry a
namespaceSelector, matchConditions or a short timeout, and would need cluster-wide write access
to admission configuration for the operator. See docs/admission.md.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.admission import DEFAULT_FAILURE_POLICY, FailurePolicy, parse_failure_policy

# Webhook ids: the kopf handler ids and the last URL path segment (kopf routes by it).
POD_WEBHOOK: Final = "pod-images"
EPHEMERAL_WEBHOOK: Final = "pod-ephemeral-containers"
#: Warns (never refuses, failurePolicy Ignore) on workloads whose Pod templates name denied
#: images: Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs.
WORKLOAD_WEBHOOK: Final = "workload-templates"
WORKLOAD_RESOURCES: Final = (
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
)

CONFIGURATION_NAME: Final = "scapguard-image-denial"
SERVICE_NAME: Final = "scapguard-webhook"
DEFAULT_TIMEOUT_SECONDS: Final = 5
ALWAYS_EXEMPT: Final = ("kube-system",)
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
# OpenShift's control-plane namespaces; its docs ask webhooks to leave them alone.
RUN_LEVEL_LABEL: Final = "openshift.io/run-level"
INJECT_CA_ANNOTATION: Final = "service.beta.openshift.io/inject-cabundle"

# Only UPDATEs that change an image reach the webhook (CEL, admissionregistration/v1).
IMAGES_CHANGED: Final = (
    "request.operation != 'UPDATE'"
    " || object.spec.containers.map(c, c.image) != oldObject.spec.containers.map(c, c.image)"
    " || (has(object.spec.initContainers)"
    " ? object.spec.initContainers.map(c, c.image) : [])"
    " != (has(oldObject.spec.initContainers)"
    " ? oldObject.spec.initContainers.map(c, c.image) : [])"
)


def _client_config(
    webhook: str, *, url: str | None, service: tuple[str, str, int] | None, ca_bundle: bytes | None
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if url is not None:
        config["url"] = f"{url.rstrip('/')}/{webhook}"
    elif service is not None:
        namespace, name, port = service
        config["service"] = {
            "namespace": namespace,
            "name": name,
            "path": f"/{webhook}",
            "port": port,
        }
    else:
        raise ValueError("either url or service is required")
    if ca_bundle is not None:
        config["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    return config


def webhook_configuration(
    *,
    operator_namespace: str,
    name: str = CONFIGURATION_NAME,
    service: tuple[str, int] | None = (SERVICE_NAME, 443),
    url: str | None = None,
    ca_bundle: bytes | None = None,
    failure_policy: FailurePolicy = DEFAULT_FAILURE_POLICY,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    exempt_namespaces: Iterable[str] = (),
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for the operator in ``operator_namespace``.

    ``url`` (a base URL) replaces the in-cluster ``service`` (name, port). Without ``ca_bundle``
    the configuration asks OpenShift's service CA operator to inject it. Pods in the operator's
    namespace, kube-system, OpenShift run-level 0/1 namespaces and ``exempt_namespaces`` never
    reach the webhook, so a stopped operator cannot block its own recovery.
    """
    failure_policy = parse_failure_policy(failure_policy, "failurePolicy")
    if not 1 <= timeout_seconds <= 30:
        raise ValueError(f"timeoutSeconds must be 1..30, not {timeout_seconds}")
    exempt = sorted({*ALWAYS_EXEMPT, operator_namespace, *exempt_namespaces})
    svc = (operator_namespace, service[0], service[1]) if service is not None else None

    def webhook(
        webhook_id: str,
        resource: str,
        operations: list[str],
        conditions: list[dict[str, str]],
        *,
        rules: list[dict[str, Any]] | None = None,
        policy: FailurePolicy = failure_policy,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"{webhook_id}.{c.GROUP}",
            "admissionReviewVersions": ["v1"],
            "clientConfig": _client_config(webhook_id, url=url, service=svc, ca_bundle=ca_bundle),
            "failurePolicy": policy,
            "matchPolicy": "Equivalent",
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": list(exempt)},
                    {"key": RUN_LEVEL_LABEL, "operator": "NotIn", "values": ["0", "1"]},
                ]
            },
            "rules": rules
            or [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": operations,
                    "resources": [resource],
                    "scope": "Namespaced",
                }
            ],
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
        }
        if conditions:
            body["matchConditions"] = conditions
        return body

    metadata: dict[str, Any] = {
        "name": name,
        "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY, c.PART_OF_LABEL: c.MANAGED_BY},
    }
    if ca_bundle is None:
        metadata["annotations"] = {INJECT_CA_ANNOTATION: "true"}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            webhook(
                POD_WEBHOOK,
                "pods",
                ["CREATE", "UPDATE"],
                [{"name": "images-changed", "expression": IMAGES_CHANGED}],
            ),
            webhook(EPHEMERAL_WEBHOOK, "pods/ephemeralcontainers", ["UPDATE"], []),
            webhook(
                WORKLOAD_WEBHOOK,
                "",
                [],
                [],
                rules=[
                    {
                        "apiGroups": [group],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [resource],
                        "scope": "Namespaced",
                    }
                    for group, resource in WORKLOAD_RESOURCES
                ],
                policy="Ignore",  # a warning must never block a rollout
            ),
        ],
    }
