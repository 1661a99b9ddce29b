"""The shipped ValidatingWebhookConfiguration, its builder, RBAC, and the handler settings."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from scapguard.builders.admission import (
    EPHEMERAL_WEBHOOK,
    POD_WEBHOOK,
    webhook_configuration,
)
from scapguard.handlers.admission import AdmissionOptions, configure_admission

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_shipped_manifest_is_the_builder_output() -> None:
    shipped = yaml.safe_load(
        (DEPLOY / "admission" / "validatingwebhookconfiguration.yaml").read_text()
    )
    assert shipped == webhook_configuration(operator_namespace="scapguard"), (
        "regenerate deploy/admission/validatingwebhookconfiguration.yaml from "
        "scapguard.builders.admission.webhook_configuration(operator_namespace='scapguard')"
    )


def test_service_targets_the_configured_service() -> None:
    service = yaml.safe_load((DEPLOY / "admission" / "service.yaml").read_text())
    config = webhook_configuration(operator_namespace="scapguard")
    for hook in config["webhooks"]:
        ref = hook["clientConfig"]["service"]
        assert (ref["namespace"], ref["name"]) == (
            service["metadata"]["namespace"],
            service["metadata"]["name"],
        )
        assert ref["port"] == service["spec"]["ports"][0]["port"]
    assert service["spec"]["ports"][0]["targetPort"] == AdmissionOptions("c", "k").port


def test_rbac_reads_images_and_imagestreams_only() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "rbac" / "admission.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": ["image.openshift.io"],
            "resources": ["images", "imagestreams"],
            "verbs": ["list", "watch"],
        }
    ]


def _hooks(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in config["webhooks"]}


def test_webhooks_routes_selector_and_policy() -> None:
    config = webhook_configuration(
        operator_namespace="ops",
        url="https://127.0.0.1:9443/",
        ca_bundle=b"PEM",
        failure_policy="Ignore",
        timeout_seconds=3,
        exempt_namespaces=["openshift-monitoring"],
    )
    hooks = _hooks(config)
    pods = hooks[f"{POD_WEBHOOK}.scapguard.io"]
    debug = hooks[f"{EPHEMERAL_WEBHOOK}.scapguard.io"]
    assert pods["clientConfig"] == {
        "url": "https://127.0.0.1:9443/pod-images",
        "caBundle": base64.b64encode(b"PEM").decode(),
    }
    assert debug["clientConfig"]["url"] == "https://127.0.0.1:9443/pod-ephemeral-containers"
    assert pods["rules"][0]["resources"] == ["pods"]
    assert pods["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert debug["rules"][0]["resources"] == ["pods/ephemeralcontainers"]
    assert [c["name"] for c in pods["matchConditions"]] == ["images-changed"]
    assert "matchConditions" not in debug
    for hook in (pods, debug):
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 3
        assert hook["sideEffects"] == "None"
        by_name, run_level = hook["namespaceSelector"]["matchExpressions"]
        assert by_name == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "openshift-monitoring", "ops"],
        }
        assert run_level["values"] == ["0", "1"]
    # An explicit caBundle: no request for OpenShift's injection.
    assert "annotations" not in config["metadata"]


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_policy": "Deny"}, {"timeout_seconds": 31}, {"service": None}],
)
def test_builder_rejects_bad_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        webhook_configuration(operator_namespace="ops", **kwargs)


def test_options_reject_unknown_failure_policy() -> None:
    untyped: Any = "fail"  # the type says Fail | Ignore; the check is for untyped callers
    with pytest.raises(ValueError, match="failure_policy"):
        AdmissionOptions("c", "k", failure_policy=untyped)


def test_disabled_admission_still_gives_kopf_a_server() -> None:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    assert configure_admission(settings, memo, AdmissionOptions("c", "k", enabled=False)) is None
    assert settings.admission.server is not None
    assert settings.admission.managed is None
    assert not memo
