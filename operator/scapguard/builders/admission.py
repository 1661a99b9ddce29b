"""The ValidatingWebhookConfiguration that sends Pod admissions to scapguard's webhook.

Shipped as an install manifest (``deploy/admission/``, generated from this function) rather than
managed by kopf (``settings.admission.managed``): kopf's managed configuration cannot carry a
namespaceSelector, matchConditions or a short timeout, and would need cluster-wide write access
to admission configuration for the operator. See docs/admission.md.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Target:
    """What every webhook entry shares: where reviews go, which namespaces never send any,
    how long the API server waits."""

    url: str | None
    service: tuple[str, str, int] | None  # namespace, name, port
    ca_bundle: bytes | None
    exempt: tuple[str, ...]
    timeout_seconds: int

    def client_config(self, webhook: str) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.url is not None:
            config["url"] = f"{self.url.rstrip('/')}/{webhook}"
        elif self.service is not None:
            namespace, name, port = self.service
            config["service"] = {
                "namespace": namespace,
                "name": name,
                "path": f"/{webhook}",
                "port": port,
            }
        else:
            raise ValueError("either url or service is required")
        if self.ca_bundle is not None:
            config["caBundle"] = base64.b64encode(self.ca_bundle).decode("ascii")
        return config


def _rule(group: str, resource: str, operations: list[str]) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": ["v1"],
        "operations": operations,
        "resources": [resource],
        "scope": "Namespaced",
    }


def _webhook(
    webhook_id: str,
    rules: list[dict[str, Any]],
    target: _Target,
    policy: FailurePolicy,
    conditions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"{webhook_id}.{c.GROUP}",
        "admissionReviewVersions": ["v1"],
        "clientConfig": target.client_config(webhook_id),
        "failurePolicy": policy,
        "matchPolicy": "Equivalent",
        "namespaceSelector": {
            "matchExpressions": [
                {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": list(target.exempt)},
                {"key": RUN_LEVEL_LABEL, "operator": "NotIn", "values": ["0", "1"]},
            ]
        },
        "rules": rules,
        "sideEffects": "None",
        "timeoutSeconds": target.timeout_seconds,
    }
    if conditions:
        body["matchConditions"] = conditions
    return body


def _metadata(name: str, ca_bundle: bytes | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY, c.PART_OF_LABEL: c.MANAGED_BY},
    }
    if ca_bundle is None:
        metadata["annotations"] = {INJECT_CA_ANNOTATION: "true"}
    return metadata


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
    policy = parse_failure_policy(failure_policy, "failurePolicy")
    if not 1 <= timeout_seconds <= 30:
        raise ValueError(f"timeoutSeconds must be 1..30, not {timeout_seconds}")
    target = _Target(
        url=url,
        service=(operator_namespace, service[0], service[1]) if service is not None else None,
        ca_bundle=ca_bundle,
        exempt=tuple(sorted({*ALWAYS_EXEMPT, operator_namespace, *exempt_namespaces})),
        timeout_seconds=timeout_seconds,
    )
    images_changed = [{"name": "images-changed", "expression": IMAGES_CHANGED}]
    workloads = [
        _rule(group, resource, ["CREATE", "UPDATE"]) for group, resource in WORKLOAD_RESOURCES
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _metadata(name, ca_bundle),
        "webhooks": [
            _webhook(
                POD_WEBHOOK,
                [_rule("", "pods", ["CREATE", "UPDATE"])],
                target,
                policy,
                images_changed,
            ),
            _webhook(
                EPHEMERAL_WEBHOOK,
                [_rule("", "pods/ephemeralcontainers", ["UPDATE"])],
                target,
                policy,
            ),
            # Workloads only get warnings, which must never block a rollout.
            _webhook(WORKLOAD_WEBHOOK, workloads, target, "Ignore"),
        ],
    }
