"""The PrometheusRule: its spec loads in promtool, its alerts pass `promtool test rules`,
and every scapguard metric it uses is one the operator exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from scapguard.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "scapguard-rules.yaml"
TESTS = ROOT / "tests" / "promtool" / "scapguard-rules.test.yaml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package")
    return found


def test_prometheus_rule_object_shape() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = {r["alert"] for g in doc["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "ScapguardCriticalVulnerabilityAllowed",
        "ScapguardImageDenied",
        "ScapguardScanErrorsRising",
        "ScapguardScansStuck",
        "ScapguardContentStale",
        "ScapguardScansLosingFileOwners",
        "ScapguardOperatorDown",
    }


def test_rules_use_only_exported_metrics() -> None:
    text = RULES.read_text()
    used = set(re.findall(r"\b(scapguard_[a-z_]+)", text))
    registry = CollectorRegistry()
    Metrics(registry, per_cve=True)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f"{fam.name}{sfx}" for fam in registry.collect() for sfx in suffixes[fam.type]}
    assert used <= exported, used - exported


def test_promtool_check_and_test_rules(tmp_path: Path) -> None:
    tool = promtool()
    spec = yaml.safe_load(RULES.read_text())["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    check = subprocess.run(
        [tool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = yaml.safe_load(TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    test_file = tmp_path / "rules.test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [tool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
