"""The start-up decision whether scanner pods get a user namespace (hostUsers: false)."""

from __future__ import annotations

import pytest

from scapguard.config import Settings, SettingsError
from scapguard.k8s.api import Forbidden, Kind, Obj
from scapguard.reconcile.runtime import scanner_user_namespace
from tests.fakekube import FakeKube


def settings(mode: str = "auto") -> Settings:
    return Settings.from_env(
        {"SCAPGUARD_NAMESPACE": "scapguard", "SCAPGUARD_SCANNER_USER_NAMESPACE": mode}
    )


def test_auto_uses_a_user_namespace_when_the_api_server_admits_the_probe() -> None:
    kube = FakeKube()
    use, why = scanner_user_namespace(kube, settings())
    assert use is True, why
    # A dry run in the operator's namespace: nothing is created.
    assert kube.actions == [("dry-run-create", "pods", "scapguard", "scapguard-userns-probe")]
    assert kube.objects == {}


def test_auto_falls_back_when_pod_security_refuses_the_probe() -> None:
    kube = FakeKube()

    def refuse(verb: str, kind: Kind, obj: Obj) -> None:
        raise Forbidden(403, "Forbidden", 'violates PodSecurity "restricted:latest"')

    kube.before_write = refuse
    use, why = scanner_user_namespace(kube, settings())
    assert use is False
    assert "PodSecurity" in why and "scapguard" in why


def test_auto_falls_back_when_the_api_server_drops_host_users() -> None:
    kube = FakeKube()

    def drop(verb: str, kind: Kind, obj: Obj) -> None:
        obj["spec"].pop("hostUsers")  # an API server without user namespaces

    kube.before_write = drop
    use, why = scanner_user_namespace(kube, settings())
    assert use is False
    assert "hostUsers" in why


@pytest.mark.parametrize(("mode", "expected"), [("pod", True), ("off", False)])
def test_explicit_modes_ask_nothing(mode: str, expected: bool) -> None:
    kube = FakeKube()
    assert scanner_user_namespace(kube, settings(mode))[0] is expected
    assert kube.actions == []


def test_an_unknown_mode_is_refused_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="SCAPGUARD_SCANNER_USER_NAMESPACE"):
        settings("always")
