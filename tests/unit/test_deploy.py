"""deploy/ manifests and the Helm chart, checked with the real Helm (hack/tools builds it).

``helm lint --strict`` must pass, and ``helm template`` must render what deploy/ holds (the
chart must not drift from the plain manifests); its crds/ is the deploy/crds directory itself.
"""

from __future__ import annotations

import copy
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from scapguard_dev.binaries import tool_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "charts" / "scapguard"
NAMESPACE = "scapguard"


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# Everything the chart installs (deploy/admission/*.yaml and rbac/admission.yaml are the Pod
# admission webhook; deploy/prometheus is optional in the chart and checked on its own).
OPERATOR_FILES = (
    "rbac/00-namespace-serviceaccount.yaml",
    "rbac/clusterrole.yaml",
    "rbac/role.yaml",
    "rbac/admission.yaml",
    "operator.yaml",
    "admission/service.yaml",
    "admission/validatingwebhookconfiguration.yaml",
)


def deploy_objects() -> list[dict[str, Any]]:
    paths = [DEPLOY / name for name in OPERATOR_FILES]
    return [d for p in paths for d in load_all(p.read_text())]


@cache
def helm() -> str:
    return str(tool_binary("helm"))


def run_helm(*args: str) -> str:
    out = subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=120, check=False
    )  # fmt: skip
    assert out.returncode == 0, f"helm {' '.join(args)}: {out.stderr}"
    return out.stdout


def chart_objects(*flags: str, **overrides: Any) -> list[dict[str, Any]]:
    """``helm template`` with ``overrides`` as values (JSON, like ``--set-json``)."""
    sets = [f"--set-json={key}={json.dumps(value)}" for key, value in overrides.items()]
    text = run_helm("template", "scapguard", str(CHART), f"--namespace={NAMESPACE}", *flags, *sets)
    return load_all(text)


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def test_chart_crds_are_deploy_crds() -> None:
    crds = CHART / "crds"
    assert crds.is_symlink() and crds.resolve() == (DEPLOY / "crds").resolve()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"]) == ("v2", "scapguard")
    rendered = [
        o for o in chart_objects("--include-crds") if o["kind"] == "CustomResourceDefinition"
    ]
    expected = [
        d for p in sorted((DEPLOY / "crds").glob("*.yaml")) for d in load_all(p.read_text())
    ]
    assert sorted(rendered, key=key) == sorted(expected, key=key)


def test_helm_lint_strict_passes() -> None:
    out = run_helm("lint", "--strict", str(CHART), f"--namespace={NAMESPACE}")
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out
    for values in ({"admission": {"enabled": False}}, {"prometheusRule": {"enabled": True}}):
        sets = [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]
        run_helm("lint", "--strict", str(CHART), *sets)


def test_chart_renders_what_deploy_holds() -> None:
    rendered = {key(o): o for o in chart_objects()}
    expected = {key(o): o for o in deploy_objects() if o["kind"] != "Namespace"}
    assert set(rendered) == set(expected)
    for k, want in expected.items():
        got = copy.deepcopy(rendered[k])
        if k[0] == "Deployment":
            env = got["spec"]["template"]["spec"]["containers"][0]["env"]
            names = {e["name"] for e in want["spec"]["template"]["spec"]["containers"][0]["env"]}
            got["spec"]["template"]["spec"]["containers"][0]["env"] = [
                e for e in env if e["name"] in names
            ]
        assert got == want, k


def test_chart_admission_webhook_is_optional_and_follows_values() -> None:
    kinds = {
        o["kind"] for o in chart_objects(admission={"enabled": False, "failurePolicy": "Fail"})
    }
    assert "ValidatingWebhookConfiguration" not in kinds
    # Without the webhook the operator neither serves it nor waits for its certificate Secret.
    (dep,) = [
        o
        for o in chart_objects(admission={"enabled": False, "failurePolicy": "Fail"})
        if o["kind"] == "Deployment"
    ]
    pod = dep["spec"]["template"]["spec"]
    assert "webhook-tls" not in {v["name"] for v in pod["volumes"]}
    (container,) = pod["containers"]
    assert "webhook-tls" not in {m["name"] for m in container["volumeMounts"]}
    assert not [e for e in container["env"] if e["name"].startswith("SCAPGUARD_ADMISSION_")]
    assert "webhook" not in {p["name"] for p in container["ports"]}
    (hook,) = [
        o
        for o in chart_objects(admission={"enabled": True, "failurePolicy": "Ignore"})
        if o["kind"] == "ValidatingWebhookConfiguration"
    ]
    assert {w["failurePolicy"] for w in hook["webhooks"]} == {"Ignore"}


def test_chart_prometheus_rule_is_optional_and_identical() -> None:
    assert not [o for o in chart_objects() if o["kind"] == "PrometheusRule"]
    (rule,) = [
        o for o in chart_objects(prometheusRule={"enabled": True}) if o["kind"] == "PrometheusRule"
    ]
    source = yaml.safe_load((DEPLOY / "prometheus" / "scapguard-rules.yaml").read_text())
    assert rule["spec"] == source["spec"]


def test_operator_deployment_is_hardened() -> None:
    (dep,) = [o for o in deploy_objects() if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["kopf", "run", "--log-format=json"]
    assert container["command"][-2:] == ["-m", "scapguard.handlers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sec = container["securityContext"]
    assert sec == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    peering = [o for o in deploy_objects() if o["kind"] == "ClusterKopfPeering"]
    assert [p["metadata"]["name"] for p in peering] == ["scapguard"]
    assert dep["spec"]["replicas"] > 1, "HA: standby replicas behind kopf peering"


def test_rbac_has_no_wildcards_or_broad_verbs() -> None:
    for obj in deploy_objects():
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], obj["kind"]
            assert not {"update", "deletecollection", "escalate", "bind", "impersonate"} & set(
                rule["verbs"]
            )
    secrets = [
        r
        for o in deploy_objects()
        if o["kind"] == "ClusterRole"
        for r in o["rules"]
        if "secrets" in r["resources"]
    ]
    assert [r["verbs"] for r in secrets] == [["get"]], "cluster-wide: read pull secrets only"
