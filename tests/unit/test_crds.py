"""The CRDs: names, printer columns, structural schemas, and that every field the operator
writes survives the API server's pruning (checked by validating real reconcile output)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scapguard.api import constants as c
from scapguard.k8s.api import IMAGESCAN, SCANPOLICY
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.harness import add_image, add_policy, add_stream, digest, harness, jobs, post
from tests.harness import scan_result as make_result

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"


def crd(plural: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / f"{plural}.{c.GROUP}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def version(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["versions"]
    assert isinstance(only, dict)
    return only


def as_json_schema(node: Any) -> Any:
    """openAPIV3Schema -> JSON Schema that, like pruning, rejects unknown fields."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.get("nullable"):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found.extend(walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(walk(value, f"{path}[{i}]"))
    return found


@pytest.mark.parametrize(
    ("plural", "kind", "short"),
    [("scanpolicies", "ScanPolicy", "scanpol"), ("imagescans", "ImageScan", "isc")],
)
def test_names_scope_and_subresources(plural: str, kind: str, short: str) -> None:
    doc = crd(plural)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"{plural}.{c.GROUP}"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        kind,
        plural,
        [short],
        ["scapguard"],
    )
    assert doc["spec"]["scope"] == "Namespaced"
    ver = version(doc)
    assert ver["name"] == c.VERSION and ver["served"] and ver["storage"]
    assert ver["subresources"] == {"status": {}}
    spec = ver["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert not [p for p, n in walk(spec) if n.get("x-kubernetes-preserve-unknown-fields")]


def test_imagescan_printer_columns_are_visible_without_wide() -> None:
    columns = version(crd("imagescans"))["additionalPrinterColumns"]
    default = [col["name"] for col in columns if not col.get("priority")]
    assert default == [
        "Image",
        "Result",
        "Critical",
        "High",
        "Medium",
        "Low",
        "Failed Rules",
        "Denied",
        "Age",
    ]


def test_policy_schema_validates_and_defaults() -> None:
    spec = version(crd("scanpolicies"))["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert props["failOn"]["enum"] == ["critical", "high", "medium", "low", "none"]
    assert props["action"]["default"] == "Report" and props["onError"]["default"] == "Allow"
    rules = [r["rule"] for _, n in walk(spec) for r in n.get("x-kubernetes-validations", [])]
    assert "!has(self.url) || has(self.sha256)" in rules
    schema = as_json_schema(spec)
    jsonschema.validate(
        {
            "selector": {"matchLabels": {"a": "b"}},
            "failOn": "critical",
            "exceptions": [{"id": "CVE-2024-1", "reason": "ok", "expires": "2027-01-31"}],
            "scanner": {
                "timeoutSeconds": 600,
                "resources": {"limits": {"memory": "1Gi", "cpu": 1}},
            },
            "schedule": "0 3 * * *",
            "retention": {"keep": 2},
        },
        schema,
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"failOn": "severe"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"unknownField": 1}, schema)


def test_imagescan_spec_is_immutable_where_it_matters() -> None:
    spec = version(crd("imagescans"))["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert rules == {"self.image == oldSelf.image", "self.policy == oldSelf.policy"}


def test_everything_the_operator_writes_is_in_the_schema() -> None:
    h = harness()
    add_policy(
        h,
        action="Enforce",
        schedule="0 3 * * *",
        compliance={"enabled": True, "profile": "xccdf_org.ssgproject.content_profile_standard"},
    )
    add_image(h, digest(1))
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    post(
        h,
        job["metadata"]["name"],
        make_result(digest(1), [("CVE-1", "critical")], [("rule_a", "high", "fail")]),
    )
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps"))
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    for plural, obj in (
        ("imagescans", h.kube.list(IMAGESCAN, "apps")[0]),
        ("scanpolicies", h.kube.get(SCANPOLICY, "default", "apps")),
    ):
        schema = as_json_schema(version(crd(plural))["schema"]["openAPIV3Schema"])
        body = copy.deepcopy(obj)
        assert body["status"]
        jsonschema.validate(body, schema)
    assert h.kube.list(IMAGESCAN, "apps")[0]["status"]["result"] == "Fail"
