"""Settings.from_env: defaults, and one error naming the bad variable."""

from __future__ import annotations

import dataclasses

import pytest

from scapguard.config import Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({"SCAPGUARD_NAMESPACE": "scapguard"})
    assert s.results_url == "http://scapguard-results.scapguard.svc:8443"
    assert (s.max_concurrent_scans, s.max_concurrent_scans_per_policy) == (4, 2)
    assert s.watch_namespaces == frozenset() and s.watches("anything")
    assert s.per_cve_metrics is False and s.peering_name == "scapguard"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.namespace = "x"  # type: ignore[misc]


def test_watched_namespaces_always_include_the_operators_own() -> None:
    s = Settings.from_env({"SCAPGUARD_NAMESPACE": "op", "SCAPGUARD_WATCH_NAMESPACES": "a, b"})
    assert s.watch_namespaces == {"a", "b"}
    assert s.watches("a") and s.watches("op") and not s.watches("c")


def test_tls_switches_the_default_url() -> None:
    s = Settings.from_env(
        {
            "SCAPGUARD_NAMESPACE": "op",
            "SCAPGUARD_RESULTS_TLS_CERT_FILE": "/c",
            "SCAPGUARD_RESULTS_TLS_KEY_FILE": "/k",
        }
    )
    assert s.results_url.startswith("https://")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "SCAPGUARD_NAMESPACE"),
        ({"SCAPGUARD_MAX_CONCURRENT_SCANS": "0"}, "SCAPGUARD_MAX_CONCURRENT_SCANS"),
        (
            {"SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY": "two"},
            "SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY",
        ),
        ({"SCAPGUARD_RESULTS_URL": "ftp://x"}, "SCAPGUARD_RESULTS_URL"),
        ({"SCAPGUARD_PER_CVE_METRICS": "maybe"}, "SCAPGUARD_PER_CVE_METRICS"),
        ({"SCAPGUARD_WATCH_NAMESPACES": "ok,Not_OK"}, "SCAPGUARD_WATCH_NAMESPACES"),
        ({"SCAPGUARD_RESULTS_TLS_CERT_FILE": "/c"}, "SCAPGUARD_RESULTS_TLS_KEY_FILE"),
        ({"SCAPGUARD_METRICS_PORT": "70000"}, "SCAPGUARD_METRICS_PORT"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    base = {} if variable == "SCAPGUARD_NAMESPACE" else {"SCAPGUARD_NAMESPACE": "op"}
    with pytest.raises(SettingsError) as err:
        Settings.from_env({**base, **env})
    assert err.value.variable == variable
    assert str(err.value).startswith(variable)


def test_admission_webhook_follows_its_certificate() -> None:
    off = Settings.from_env({"SCAPGUARD_NAMESPACE": "op"})
    assert not off.admission_enabled and off.admission_failure_policy == "Fail"
    on = Settings.from_env(
        {
            "SCAPGUARD_NAMESPACE": "op",
            "SCAPGUARD_ADMISSION_TLS_CERT_FILE": "/w/tls.crt",
            "SCAPGUARD_ADMISSION_TLS_KEY_FILE": "/w/tls.key",
        }
    )
    assert on.admission_enabled and on.admission_port == 9443
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SCAPGUARD_NAMESPACE": "op", "SCAPGUARD_ADMISSION_ENABLED": "true"})
    assert err.value.variable == "SCAPGUARD_ADMISSION_TLS_CERT_FILE"
    with pytest.raises(SettingsError) as err:
        Settings.from_env(
            {"SCAPGUARD_NAMESPACE": "op", "SCAPGUARD_ADMISSION_FAILURE_POLICY": "Maybe"}
        )
    assert err.value.variable == "SCAPGUARD_ADMISSION_FAILURE_POLICY"


def test_a_service_link_in_the_environment_is_named_as_such() -> None:
    """A Service scapguard-results gives pods SCAPGUARD_RESULTS_PORT=tcp://... unless
    enableServiceLinks is false (the chart and the scanner Jobs set it)."""
    env = {"SCAPGUARD_NAMESPACE": "op", "SCAPGUARD_RESULTS_PORT": "tcp://10.0.0.23:8443"}
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert "SCAPGUARD_RESULTS_PORT" in str(err.value)
    assert "enableServiceLinks: false" in str(err.value)
