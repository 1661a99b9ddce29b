"""Scanner Job and Secret manifests: hardened pod, explicit command, the hand-off env."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from typing import Any

from scapguard.api import constants as c
from scapguard.api.policy import parse_policy_spec
from scapguard.builders.imagescan import build_result_config_map
from scapguard.builders.job import (
    CREDENTIALS_DIR,
    DEFAULT_RESOURCES,
    ScanJobInput,
    build_scan_job,
    build_scan_secret,
    ignored_scanner_fields,
    user_namespace_probe,
)
from tests.harness import digest


def job_input(**changes: Any) -> ScanJobInput:
    base = ScanJobInput(
        job_name="scapguard-scan-0123456789ab-1-1",
        namespace="scapguard-system",
        scan_namespace="apps",
        scan_name="scan",
        scan_uid="uid-1",
        policy_uid="uid-p",
        request=1,
        attempt=1,
        image=f"r/x@{digest(1)}",
        policy=parse_policy_spec(
            {
                "scanner": {
                    "timeoutSeconds": 300,
                    "nodeSelector": {"pool": "scan"},
                    "tolerations": [{"key": "k", "operator": "Exists"}],
                    "resources": {"limits": {"memory": "1Gi"}},
                }
            }
        ),
        scanner_image="quay.io/scapguard/scanner:0.1.0",
        results_url="https://scapguard-results.scapguard-system.svc:8443",
        ttl_seconds=3600,
        ca_config_map="scapguard-results-ca",
    )
    return dataclasses.replace(base, **changes)


def test_job_pod_is_hardened_and_tokenless() -> None:
    job = build_scan_job(job_input())
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 300)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"] == {"drop": ["ALL"]} and sec["runAsNonRoot"] is True
    assert container["command"] == ["scapguard-scan"]
    assert container["args"][0] == f"r/x@{digest(1)}"
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}} in pod["volumes"]
    assert container["resources"] == DEFAULT_RESOURCES  # a tenant policy: the defaults
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SCAPGUARD_RESULTS_URL"] == (
        "https://scapguard-results.scapguard-system.svc:8443/v1/results/"
        "scapguard-scan-0123456789ab-1-1"
    )
    assert env["SCAPGUARD_RESULTS_TOKEN_FILE"] == f"{CREDENTIALS_DIR}/{c.TOKEN_KEY}"
    assert env["SCAPGUARD_RESULTS_CA_FILE"] == "/var/run/scapguard-ca/service-ca.crt"
    assert "REGISTRY_AUTH_FILE" not in env
    labels = job["metadata"]["labels"]
    assert labels[c.SCAN_UID_LABEL] == "uid-1" and labels[c.COMPONENT_LABEL] == "scanner"
    assert "ownerReferences" not in job["metadata"], "no cross-namespace owner"


def test_scanner_image_placement_and_resources_only_from_the_operator_namespace() -> None:
    """The scanner pod holds the scan's results token and spends the operator namespace's
    quota: a tenant's policy must not pick its image, placement or size."""
    policy = parse_policy_spec(
        {
            "scanner": {
                "image": "evil.example/scanner:1",
                "nodeSelector": {"pool": "scan"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "resources": {"requests": {"cpu": "64", "memory": "512Gi"}},
            }
        }
    )
    tenant = build_scan_job(job_input(policy=policy))["spec"]["template"]["spec"]
    assert tenant["containers"][0]["image"] == "quay.io/scapguard/scanner:0.1.0"
    assert "nodeSelector" not in tenant and "tolerations" not in tenant
    assert tenant["containers"][0]["resources"] == DEFAULT_RESOURCES
    assert ignored_scanner_fields(policy, "apps", "scapguard-system") == (
        "spec.scanner.image",
        "spec.scanner.nodeSelector",
        "spec.scanner.tolerations",
        "spec.scanner.resources",
    )
    admin_input = job_input(policy=policy, scan_namespace="scapguard-system")
    admin = build_scan_job(admin_input)["spec"]["template"]["spec"]
    assert admin["containers"][0]["image"] == "evil.example/scanner:1"
    assert admin["nodeSelector"] == {"pool": "scan"}
    assert admin["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert admin["containers"][0]["resources"] == {"requests": {"cpu": "64", "memory": "512Gi"}}
    assert ignored_scanner_fields(policy, "scapguard-system", "scapguard-system") == ()
    assert ignored_scanner_fields(parse_policy_spec({}), "apps", "scapguard-system") == ()


def test_secret_carries_token_policy_and_registry_auth() -> None:
    inp = job_input(registry_auth=True)
    credential = secrets.token_hex(8)
    secret = build_scan_secret(
        inp, token=credential, policy_json='{"failOn":"high"}', registry_auth_json='{"auths":{}}'
    )
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        c.TOKEN_KEY: credential,
        "policy.json": '{"failOn":"high"}',
        "auth.json": '{"auths":{}}',
    }
    env = {
        e["name"]: e["value"]
        for e in build_scan_job(inp)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["REGISTRY_AUTH_FILE"] == "/var/run/scapguard/auth.json"
    assert secret["metadata"]["name"] == inp.job_name


def test_result_config_map_is_owned_by_the_scan() -> None:
    cm = build_result_config_map(
        scan_name="s", namespace="apps", scan_uid="u", result_gz=b"\x1f\x8b", report_gz=None
    )
    (owner,) = cm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["blockOwnerDeletion"]) == ("ImageScan", "u", False)
    assert list(cm["binaryData"]) == [c.RESULT_KEY]
    assert json.dumps(cm)


def test_content_is_served_not_carried_the_secret_records_its_digests() -> None:
    """The Secret holds the digests of the ConfigMap bytes read for the scan, never the bytes;
    the pod fetches content from the operator's endpoint for its own Job."""
    inp = job_input(run_as_user=65532)
    plan = '{"feed": {"origin": "apps/feeds/debian.xml.bz2", "sha256": "' + "a" * 64 + '"}}'
    secret = build_scan_secret(
        inp,
        token=secrets.token_hex(8),
        policy_json="{}",
        registry_auth_json=None,
        content_plan_json=plan,
    )
    assert base64.b64decode(secret["data"][c.CONTENT_KEY]).decode() == plan
    pod = build_scan_job(inp)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert "content" not in [v["name"] for v in pod["volumes"]]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["SCAPGUARD_CONTENT_URL"] == (
        env["SCAPGUARD_RESULTS_URL"].replace("/v1/results/", "/v1/content/")
    )
    assert env["SCAPGUARD_CONTENT_URL"].endswith(f"/v1/content/{inp.job_name}")


def test_user_namespace_pod_is_uid_0_of_its_own_namespace_and_otherwise_hardened() -> None:
    """uid 0 and file-owner capabilities of the pod's own user namespace, nothing more."""
    pod = build_scan_job(job_input(user_namespace=True))["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    # Only file-owner capabilities, confined to the pod's user namespace (PodSecurity baseline).
    assert security["capabilities"] == {
        "drop": ["ALL"],
        "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP", "SYS_CHROOT"],
    }
    assert security["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    # Without it, no hostUsers field at all and a non-root user.
    plain = build_scan_job(job_input())["spec"]["template"]["spec"]
    assert "hostUsers" not in plain
    assert plain["securityContext"]["runAsNonRoot"] is True


def test_the_user_namespace_probe_asks_for_what_scanner_jobs_would_run() -> None:
    inp = job_input(user_namespace=True, run_as_user=None)
    job_pod = build_scan_job(inp)["spec"]["template"]["spec"]
    probe = user_namespace_probe(inp.namespace, inp.scanner_image, None)
    assert probe["metadata"]["namespace"] == inp.namespace
    assert probe["spec"]["hostUsers"] is False
    assert probe["spec"]["securityContext"] == job_pod["securityContext"]
    (container,) = probe["spec"]["containers"]
    assert container["image"] == inp.scanner_image
    assert container["securityContext"] == job_pod["containers"][0]["securityContext"]


def test_scanner_pods_have_a_writable_tmp_beside_a_read_only_root() -> None:
    """oscap creates its datastream temp dir under /tmp whatever TMPDIR says."""
    pod = build_scan_job(job_input())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume
    assert not tmp.get("readOnly")


def test_an_event_about_a_cluster_scoped_image_lives_in_default() -> None:
    """The API server refuses an Event whose involvedObject has no namespace anywhere else
    ("does not match event.namespace"): the Image's Denied Event was never posted."""
    import datetime as dt

    from scapguard.builders.events import build_event

    image = {"apiVersion": "image.openshift.io/v1", "kind": "Image",
             "metadata": {"name": "sha256:" + "a" * 64, "uid": "u"}}  # fmt: skip
    event = build_event(regarding=image, type_="Warning", reason="Denied", message="m",
                        now=dt.datetime(2026, 12, 3, tzinfo=dt.UTC))  # fmt: skip
    assert event["metadata"]["namespace"] == "default"
    assert event["involvedObject"]["namespace"] is None
    scan = {"kind": "ImageScan", "metadata": {"name": "s", "namespace": "apps"}}
    about_scan = build_event(regarding=scan, type_="Normal", reason="R", message="m",
                             now=dt.datetime(2026, 12, 3, tzinfo=dt.UTC))  # fmt: skip
    assert about_scan["metadata"]["namespace"] == "apps"
