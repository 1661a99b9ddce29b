"""The scanner Job and its per-scan Secret: pure functions from typed input to manifests.

Jobs live in the operator's namespace while ImageScans live in their policy's namespace, so a
Job cannot have the ImageScan as owner (cross-namespace owner references are invalid). The Job
carries the scan's uid as a label and its namespace/name as annotations; the operator deletes it
once the attempt is recorded, ``ttlSecondsAfterFinished`` is a backstop, and a sweep deletes Jobs
whose ImageScan is gone. The Secret is owned by the Job (same namespace) and goes with it.

The scanner pod runs in the operator's namespace holding the scan's results token, so whoever
picks its image can post any result for any digest. ``spec.scanner.image`` (and the pod's
placement, ``nodeSelector`` and ``tolerations``, and its ``resources``, which spend the operator
namespace's quota) are therefore honoured only for policies in the operator's own namespace,
which only cluster admins write; elsewhere the operator's configured scanner image and the
defaults apply, and the ScanPolicy's Ready message names the ignored fields.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api.policy import ScanPolicySpec

SCANNER_COMMAND: Final = "scapguard-scan"
CONTAINER_NAME: Final = "scanner"
CREDENTIALS_DIR: Final = "/var/run/scapguard"
CA_DIR: Final = "/var/run/scapguard-ca"
# The key OpenShift's service CA operator injects into an annotated ConfigMap.
CA_KEY: Final = "service-ca.crt"
SCRATCH_DIR: Final = "/scratch"
READ_ONLY_FILE_MODE: Final = 0o444
DEFAULT_RESOURCES: Final[Mapping[str, Any]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "2Gi"},
}
SCRATCH_SIZE_LIMIT: Final = "10Gi"
TMP_SIZE_LIMIT: Final = "1Gi"


@dataclass(frozen=True)
class ScanJobInput:
    job_name: str
    namespace: str
    scan_namespace: str
    scan_name: str
    scan_uid: str
    policy_uid: str
    request: int
    attempt: int
    image: str
    policy: ScanPolicySpec
    scanner_image: str
    results_url: str
    ttl_seconds: int
    ca_config_map: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None
    registry_auth: bool = False
    # Unset on OpenShift: the restricted SCC assigns a uid from the namespace's range, and the
    # scanner image's USER (65532) applies elsewhere. Set it where the runtime cannot tell.
    run_as_user: int | None = None
    #: Run in a user namespace of the pod's own (``hostUsers: false``) as its uid 0, so the
    #: scanner keeps the image's file owners (id mapping ``inherited``).
    user_namespace: bool = False
    extra_labels: Mapping[str, str] = field(default_factory=dict)


def ignored_scanner_fields(
    policy: ScanPolicySpec, policy_namespace: str, operator_namespace: str
) -> tuple[str, ...]:
    """The admin-only ``spec.scanner`` fields ``policy`` sets that its scan Jobs do not honour
    (all of them, unless the policy lives in the operator's namespace)."""
    if policy_namespace == operator_namespace:
        return ()
    scanner = policy.scanner
    set_fields = (
        ("image", scanner.image is not None),
        ("nodeSelector", bool(scanner.node_selector)),
        ("tolerations", bool(scanner.tolerations)),
        ("resources", bool(scanner.resources)),
    )
    return tuple(f"spec.scanner.{name}" for name, is_set in set_fields if is_set)


def job_labels(inp: ScanJobInput) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "scapguard",
        c.COMPONENT_LABEL: c.SCANNER_COMPONENT,
        c.MANAGED_BY_LABEL: c.MANAGED_BY,
        c.SCAN_UID_LABEL: inp.scan_uid,
        c.POLICY_UID_LABEL: inp.policy_uid,
        **inp.extra_labels,
    }


def job_annotations(inp: ScanJobInput) -> dict[str, str]:
    return {
        c.SCAN_NAMESPACE_ANNOTATION: inp.scan_namespace,
        c.SCAN_NAME_ANNOTATION: inp.scan_name,
        c.REQUEST_ANNOTATION: str(inp.request),
        c.ATTEMPT_ANNOTATION: str(inp.attempt),
    }


def results_url(base_url: str, job_name: str) -> str:
    return f"{base_url.rstrip('/')}/v1/results/{job_name}"


def scanner_selector() -> str:
    """Label selector for every scanner Job and Secret scapguard created."""
    return f"{c.COMPONENT_LABEL}={c.SCANNER_COMPONENT},{c.MANAGED_BY_LABEL}={c.MANAGED_BY}"


def content_url(base_url: str, job_name: str) -> str:
    """Where the scan's pod fetches its policy content and catalogue feeds."""
    return f"{base_url.rstrip('/')}/v1/content/{job_name}"


def build_scan_secret(
    inp: ScanJobInput,
    *,
    token: str,
    policy_json: str,
    registry_auth_json: str | None,
    content_plan_json: str | None = None,
) -> dict[str, Any]:
    """The per-scan Secret: bearer token, the policy for the scanner, registry credentials,
    and which bytes of the policy's ConfigMap content the operator read for the scan (the
    digests it serves them under from its content cache).

    Created before the Job (so the pod never waits for it) and then given the Job as owner.
    """
    data = {c.TOKEN_KEY: token.encode(), c.POLICY_KEY: policy_json.encode()}
    if registry_auth_json is not None:
        data[c.AUTH_KEY] = registry_auth_json.encode()
    if content_plan_json is not None:
        data[c.CONTENT_KEY] = content_plan_json.encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": inp.job_name,
            "namespace": inp.namespace,
            "labels": job_labels(inp),
            "annotations": job_annotations(inp),
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def owner_reference(kind: str, api_version: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _pod_security(user_namespace: bool, run_as_user: int | None) -> dict[str, Any]:
    if user_namespace:
        # uid 0 of the pod's own user namespace, an unprivileged id on the node.
        return {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0,
                "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    security: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_user is not None:
        security["runAsUser"] = run_as_user
        security["runAsGroup"] = run_as_user
    return security


#: What uid 0 of the pod's own user namespace needs to unpack with the image's owners and let
#: oscap read every file (chown, modes and setuid bits of files it does not own, file
#: capabilities, the chroot() some probes do). They act inside that namespace only, on ids
#: that are unprivileged on the node; PodSecurity "baseline" allows them, "restricted" not.
USER_NAMESPACE_CAPABILITIES: Final = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP",
                                      "SYS_CHROOT")  # fmt: skip


def _container_security(user_namespace: bool = False) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if user_namespace:
        capabilities["add"] = list(USER_NAMESPACE_CAPABILITIES)
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": not user_namespace,
        "capabilities": capabilities,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def user_namespace_probe(namespace: str, image: str, service_account: str | None) -> dict[str, Any]:
    """A Pod shaped like a scanner pod in a user namespace, for a dry-run create: whether the
    API server (feature gates, PodSecurity, admission) admits what scanner Jobs would make."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostUsers": False,
        "securityContext": _pod_security(True, None),
        "containers": [
            {"name": "probe", "image": image, "securityContext": _container_security(True)}
        ],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "scapguard-userns-probe", "namespace": namespace},
        "spec": spec,
    }


def _env(inp: ScanJobInput) -> list[dict[str, str]]:
    env = [
        {"name": "SCAPGUARD_RESULTS_URL", "value": results_url(inp.results_url, inp.job_name)},
        {"name": "SCAPGUARD_RESULTS_TOKEN_FILE", "value": f"{CREDENTIALS_DIR}/{c.TOKEN_KEY}"},
        {"name": "SCAPGUARD_SCAN", "value": f"{inp.scan_namespace}/{inp.scan_name}"},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]
    env.append(
        {"name": "SCAPGUARD_CONTENT_URL", "value": content_url(inp.results_url, inp.job_name)}
    )
    if inp.ca_config_map:
        env.append({"name": "SCAPGUARD_RESULTS_CA_FILE", "value": f"{CA_DIR}/{CA_KEY}"})
    if inp.registry_auth:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{CREDENTIALS_DIR}/{c.AUTH_KEY}"})
    return env


def _scan_volumes(inp: ScanJobInput) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The scanner pod's volumes and the container's mounts of them."""
    volumes: list[dict[str, Any]] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": SCRATCH_SIZE_LIMIT}},
        # oscap makes its datastream temp dir under a fixed /tmp, whatever TMPDIR says, and the
        # root filesystem is read-only.
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        {
            "name": "credentials",
            "secret": {"secretName": inp.job_name, "defaultMode": READ_ONLY_FILE_MODE},
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
        {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True},
    ]
    if inp.ca_config_map:
        volumes.append(
            {
                "name": "results-ca",
                "configMap": {"name": inp.ca_config_map, "defaultMode": READ_ONLY_FILE_MODE},
            }
        )
        mounts.append({"name": "results-ca", "mountPath": CA_DIR, "readOnly": True})
    return volumes, mounts


def _admin_policy(inp: ScanJobInput) -> bool:
    """Whether the scan's policy (which lives in the scan's namespace) is the admin's, in the
    operator's namespace: only that one may choose the scanner's image, resources and nodes."""
    return inp.scan_namespace == inp.namespace


def _scanner_container(inp: ScanJobInput, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    scanner = inp.policy.scanner
    admin_policy = _admin_policy(inp)
    return {
        "name": CONTAINER_NAME,
        "image": (scanner.image if admin_policy else None) or inp.scanner_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [SCANNER_COMMAND],
        "args": [inp.image, "--policy-file", f"{CREDENTIALS_DIR}/{c.POLICY_KEY}"],
        "env": _env(inp),
        "resources": (dict(scanner.resources) if admin_policy else {}) or dict(DEFAULT_RESOURCES),
        "securityContext": _container_security(inp.user_namespace),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _scan_pod_spec(inp: ScanJobInput) -> dict[str, Any]:
    scanner = inp.policy.scanner
    admin_policy = _admin_policy(inp)
    volumes, mounts = _scan_volumes(inp)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(inp.user_namespace, inp.run_as_user),
        "containers": [_scanner_container(inp, mounts)],
        "volumes": volumes,
    }
    if inp.user_namespace:
        pod_spec["hostUsers"] = False
    if inp.service_account:
        pod_spec["serviceAccountName"] = inp.service_account
    if inp.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in inp.image_pull_secrets]
    if admin_policy and scanner.node_selector:
        pod_spec["nodeSelector"] = dict(scanner.node_selector)
    if admin_policy and scanner.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in scanner.tolerations]
    return pod_spec


def build_scan_job(inp: ScanJobInput) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inp.job_name,
            "namespace": inp.namespace,
            "labels": job_labels(inp),
            "annotations": job_annotations(inp),
        },
        "spec": {
            # Retries belong to the operator (with backoff, each attempt counted), not the Job.
            "backoffLimit": 0,
            "activeDeadlineSeconds": inp.policy.scanner.timeout_seconds,
            "ttlSecondsAfterFinished": inp.ttl_seconds,
            "template": {
                "metadata": {"labels": job_labels(inp), "annotations": job_annotations(inp)},
                "spec": _scan_pod_spec(inp),
            },
        },
    }


# -- the promotion gate: a Job copying a passing digest with skopeo -----------------------------


@dataclass(frozen=True)
class PromotionInput:
    job_name: str
    namespace: str  # the operator's
    scan_namespace: str
    scan_name: str
    scan_uid: str
    request: int
    source: str  # repository@sha256:...
    target: str  # repository:tag
    scanner_image: str  # the operator's configured scanner image (it ships skopeo)
    ttl_seconds: int
    insecure_registries: tuple[str, ...] = ()
    registry_auth: bool = False
    run_as_user: int | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None


#: The copy pod's own emptyDir (its root filesystem is read-only): skopeo's home and temp files.
_TMP: Final = "/tmp"  # noqa: S108


def _host(reference: str) -> str:
    return reference.split("/", 1)[0]


def promotion_labels(inp: PromotionInput) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "scapguard",
        c.COMPONENT_LABEL: c.PROMOTER_COMPONENT,
        c.MANAGED_BY_LABEL: c.MANAGED_BY,
        c.SCAN_UID_LABEL: inp.scan_uid,
    }


def promotion_command(inp: PromotionInput) -> list[str]:
    """``skopeo copy --all --preserve-digests``: the target gets exactly the digest scanned (all
    of an index's manifests; the scan judged the one for the node's platform)."""
    cmd = ["skopeo", "copy", "--all", "--preserve-digests", "--retry-times", "3"]
    if _host(inp.source) in inp.insecure_registries:
        cmd.append("--src-tls-verify=false")
    if _host(inp.target) in inp.insecure_registries:
        cmd.append("--dest-tls-verify=false")
    if inp.registry_auth:
        cmd += ["--authfile", f"{CREDENTIALS_DIR}/{c.AUTH_KEY}"]
    return [*cmd, f"docker://{inp.source}", f"docker://{inp.target}"]


def build_promotion_secret(inp: PromotionInput, registry_auth_json: str) -> dict[str, Any]:
    """The registry credentials of the copy (the policy's pull secrets), owned by its Job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": inp.job_name,
            "namespace": inp.namespace,
            "labels": promotion_labels(inp),
        },
        "type": "Opaque",
        "data": {c.AUTH_KEY: base64.b64encode(registry_auth_json.encode()).decode()},
    }


def build_promotion_job(inp: PromotionInput) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": _TMP}]
    if inp.registry_auth:
        secret = {"secretName": inp.job_name, "defaultMode": READ_ONLY_FILE_MODE}
        volumes.append({"name": "credentials", "secret": secret})
        mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    annotations = {
        c.SCAN_NAMESPACE_ANNOTATION: inp.scan_namespace,
        c.SCAN_NAME_ANNOTATION: inp.scan_name,
        c.REQUEST_ANNOTATION: str(inp.request),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(False, inp.run_as_user),
        "containers": [
            {
                "name": "promote",
                "image": inp.scanner_image,
                "imagePullPolicy": "IfNotPresent",
                "command": promotion_command(inp),
                "env": [{"name": "HOME", "value": _TMP}, {"name": "TMPDIR", "value": _TMP}],
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"memory": "512Mi"},
                },
                "securityContext": _container_security(),
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if inp.service_account:
        pod_spec["serviceAccountName"] = inp.service_account
    if inp.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in inp.image_pull_secrets]
    labels = promotion_labels(inp)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inp.job_name,
            "namespace": inp.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            "ttlSecondsAfterFinished": inp.ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
