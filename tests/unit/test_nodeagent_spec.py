"""Pod spec -> process inputs: env, $(VAR) expansion, path rewriting, identity, volumes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from scapguard.devcluster.nodeagent_spec import (
    JSON,
    ConfigError,
    Identity,
    PathRewriter,
    VolumeError,
    build_env,
    container_mounts,
    expand,
    materialise_volumes,
    resolve_identity,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Objects:
    """An ObjectSource over a dict of API objects (the real one reads the API server)."""

    def __init__(self, secrets: dict[str, JSON] | None = None, maps: dict[str, JSON] | None = None):
        self.secrets = secrets or {}
        self.maps = maps or {}
        self.token_requests: list[tuple[str, list[str], int]] = []

    def get_secret(self, namespace: str, name: str) -> JSON | None:
        return self.secrets.get(f"{namespace}/{name}")

    def get_config_map(self, namespace: str, name: str) -> JSON | None:
        return self.maps.get(f"{namespace}/{name}")

    def request_token(self, pod: JSON, audiences: list[str], expiration_seconds: int) -> str:
        self.token_requests.append((pod["metadata"]["name"], audiences, expiration_seconds))
        return f"token-for-{pod['metadata']['name']}"


def make_pod(containers: list[JSON], **spec: Any) -> JSON:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "a", "tier": "x"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": containers, **spec},
    }


OBJECTS = Objects(
    secrets={"ns/s": {"data": {"user": b64("alice"), "pass": b64("pw"), "bad-name!": b64("x")}}},
    maps={"ns/cm": {"data": {"mode": "fast", "level": "3"}, "binaryData": {"blob": b64("\x00")}}},
)


# --- $(VAR) expansion -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(A", "$(A"),
        ("$x $", "$x $"),
        ("no vars", "no vars"),
        ("$()", "$()"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


# --- env -----------------------------------------------------------------------------------


def test_env_precedence_and_sources() -> None:
    container = {
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "s"}},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "user", "value": "overridden"},
            {"name": "GREETING", "value": "hi $(user) on $(KUBERNETES_SERVICE_HOST) $(LATER)"},
            {"name": "LATER", "value": "late"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pass"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope", "optional": True}},
            },
            {"name": "PATH", "value": "/custom"},
        ],
    }
    env = build_env(
        make_pod([container]),
        container,
        OBJECTS,
        base={"PATH": "/usr/bin", "HOME": "/"},
        service_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "user": "svc"},
    )
    assert env == {
        "PATH": "/custom",
        "HOME": "/",
        "CM_mode": "fast",
        "CM_level": "3",
        "pass": "pw",
        "user": "overridden",
        "GREETING": "hi overridden on 127.0.0.1 $(LATER)",
        "LATER": "late",
        "PASS": "pw",
        "MODE": "fast",
        "POD": "p",
        "NS": "ns",
        "UID": "u-1",
        "IP": "127.0.0.1",
        "APP": "a",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
    }


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"secretKeyRef": {"name": "absent", "key": "k"}}, 'secret "absent" not found'),
        ({"secretKeyRef": {"name": "s", "key": "k"}}, "couldn't find key k in Secret ns/s"),
        ({"configMapKeyRef": {"name": "cm", "key": "blob"}}, "couldn't find key blob"),
        ({"fieldRef": {"fieldPath": "spec.containers"}}, "unsupported fieldRef"),
        ({"resourceFieldRef": {"resource": "limits.cpu"}}, "resourceFieldRef is not supported"),
    ],
)
def test_env_errors_name_the_problem(var: JSON, message: str) -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": var}]}
    with pytest.raises(ConfigError, match=message):
        build_env(make_pod([container]), container, OBJECTS, base={}, service_env={})


def test_env_from_missing_config_map_is_an_error_unless_optional() -> None:
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]}
    with pytest.raises(ConfigError, match='configmap "gone" not found'):
        build_env(make_pod([container]), container, OBJECTS, base={}, service_env={})


# --- path rewriting ----------------------------------------------------------------------------


def test_rewriter_matches_whole_path_components_longest_first() -> None:
    rw = PathRewriter((("/data/sub", "/H2"), ("/data", "/H1"), ("/tmp", "/tmp/node/pods/x")))
    assert rw.rewrite("/data") == "/H1"
    assert rw.rewrite("/data/file") == "/H1/file"
    assert rw.rewrite("/data/sub/file") == "/H2/file"
    assert rw.rewrite("--out=/data/x,/data/sub") == "--out=/H1/x,/H2"
    assert rw.rewrite("a:/data:b") == "a:/H1:b"
    untouched = "/database /srv/data /data.json data"
    assert rw.rewrite(untouched) == untouched
    # one pass: a replacement containing a mountPath is not rewritten again
    assert rw.rewrite("/tmp/f") == "/tmp/node/pods/x/f"
    assert rw.rewrite("sh -c 'cat /data/a > /tmp/b'") == "sh -c 'cat /H1/a > /tmp/node/pods/x/b'"


def test_container_mounts_resolve_sub_paths(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    volume.mkdir()
    volume.chmod(0o777)
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "v", "mountPath": "/work/"},
            {"name": "v", "mountPath": "/cache", "subPath": "cache/a"},
            {"name": "v", "mountPath": "/per-pod", "subPathExpr": "$(POD)"},
        ],
    }
    rw = container_mounts(container, {"v": volume}, {"POD": "p1"})
    assert rw.rewrite("/work/x /cache/y /per-pod") == (f"{volume}/x {volume}/cache/a/y {volume}/p1")
    assert (volume / "cache" / "a").is_dir()
    assert stat.S_IMODE((volume / "p1").stat().st_mode) == 0o777


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"name": "nope", "mountPath": "/x"}, "names no volume"),
        ({"name": "v", "mountPath": "/"}, "cannot be rewritten"),
        ({"name": "v", "mountPath": "rel"}, "not absolute"),
        ({"name": "v", "mountPath": "/x", "subPath": "../up"}, "without '..'"),
    ],
)
def test_container_mounts_reject_what_cannot_be_rewritten(
    tmp_path: Path, mount: JSON, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        container_mounts({"name": "c", "volumeMounts": [mount]}, {"v": tmp_path}, {})


# --- identity -----------------------------------------------------------------------------------


def test_identity_container_wins_and_groups_collect() -> None:
    pod = make_pod(
        [],
        securityContext={
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 2000,
            "supplementalGroups": [3000, 2000],
        },
    )
    assert resolve_identity(pod, {"name": "c"}) == Identity(1000, 1000, (2000, 3000))
    assert resolve_identity(pod, {"name": "c", "securityContext": {"runAsUser": 7}}) == Identity(
        7, 1000, (2000, 3000)
    )
    # a uid alone runs with gid 0, as a runtime does for a uid without a passwd entry
    assert resolve_identity(make_pod([]), {"name": "c", "securityContext": {"runAsUser": 5}}) == (
        Identity(5, 0, ())
    )
    assert resolve_identity(make_pod([]), {"name": "c"}) == Identity(None, None, ())


def test_run_as_non_root_is_refused_without_a_user_or_with_root() -> None:
    pod = make_pod([], securityContext={"runAsNonRoot": True})
    with pytest.raises(ConfigError, match="runAsNonRoot and no runAsUser"):
        resolve_identity(pod, {"name": "c"})
    with pytest.raises(ConfigError, match="breaks non-root policy"):
        resolve_identity(pod, {"name": "c", "securityContext": {"runAsUser": 0}})
    assert resolve_identity(pod, {"name": "c", "securityContext": {"runAsUser": 1}}).uid == 1


# --- volumes -------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_and_config_map_volumes_honour_items_modes_optional(tmp_path: Path) -> None:
    pod = make_pod(
        [],
        volumes=[
            {"name": "all", "secret": {"secretName": "s"}},
            {
                "name": "some",
                "secret": {
                    "secretName": "s",
                    "defaultMode": 0o400,
                    "items": [
                        {"key": "user", "path": "deep/u.txt"},
                        {"key": "pass", "path": "p", "mode": 0o640},
                    ],
                },
            },
            {"name": "cm", "configMap": {"name": "cm"}},
            {"name": "maybe", "configMap": {"name": "absent", "optional": True}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    dirs = materialise_volumes(pod, tmp_path, OBJECTS)
    assert set(dirs) == {"all", "some", "cm", "maybe", "scratch"}
    assert (dirs["all"] / "user").read_text() == "alice"
    assert mode(dirs["all"] / "user") == 0o444  # 0644 without write bits: read-only volume
    assert sorted(p.name for p in dirs["some"].rglob("*")) == ["deep", "p", "u.txt"]
    assert (dirs["some"] / "deep" / "u.txt").read_text() == "alice"
    assert mode(dirs["some"] / "deep" / "u.txt") == 0o400
    assert mode(dirs["some"] / "p") == 0o440
    assert (dirs["cm"] / "mode").read_text() == "fast"
    assert (dirs["cm"] / "blob").read_bytes() == b"\x00"  # binaryData too
    assert list(dirs["maybe"].iterdir()) == []
    assert mode(dirs["scratch"]) == 0o777


def test_projected_volume_with_downward_api_and_token(tmp_path: Path) -> None:
    objects = Objects(maps={"ns/kube-root-ca.crt": {"data": {"ca.crt": "CA"}}})
    pod = make_pod(
        [],
        volumes=[
            {
                "name": "api",
                "projected": {
                    "defaultMode": 0o644,
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"serviceAccountToken": {"path": "vault", "audience": "vault"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    },
                                    {
                                        "path": "labels",
                                        "fieldRef": {"fieldPath": "metadata.labels"},
                                    },
                                    {
                                        "path": "annotations",
                                        "fieldRef": {"fieldPath": "metadata.annotations"},
                                    },
                                ]
                            }
                        },
                    ],
                },
            }
        ],
    )
    api = materialise_volumes(pod, tmp_path, objects)["api"]
    assert (api / "token").read_text() == "token-for-p"
    assert objects.token_requests == [("p", [], 3607), ("p", ["vault"], 3600)]
    assert (api / "ca.crt").read_text() == "CA"
    assert (api / "namespace").read_text() == "ns"
    assert (api / "labels").read_text() == 'app="a"\ntier="x"\n'
    assert (api / "annotations").read_text() == 'note="say \\"hi\\""\n'


@pytest.mark.skipif(os.getuid() != 0, reason="changing file owners needs root")
def test_fs_group_and_common_run_as_user_own_the_files(tmp_path: Path) -> None:
    pod = make_pod(
        [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 4242}}],
        securityContext={"runAsUser": 4242, "fsGroup": 5353},
        volumes=[
            {"name": "s", "secret": {"secretName": "s", "defaultMode": 0o400}},
            {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
            {"name": "e", "emptyDir": {}},
        ],
    )
    dirs = materialise_volumes(pod, tmp_path, OBJECTS)
    user = (dirs["s"] / "user").stat()
    assert (user.st_uid, user.st_gid, mode(dirs["s"] / "user")) == (4242, 5353, 0o440)
    token = dirs["t"] / "t"
    assert (token.stat().st_uid, mode(token)) == (4242, 0o440)  # 0600 + group read, no write
    scratch = dirs["e"].stat()
    assert (scratch.st_gid, mode(dirs["e"])) == (5353, 0o2777)


def test_missing_secret_and_key_are_volume_errors(tmp_path: Path) -> None:
    missing = make_pod([], volumes=[{"name": "v", "secret": {"secretName": "absent"}}])
    with pytest.raises(VolumeError, match='secret "absent" not found'):
        materialise_volumes(missing, tmp_path, OBJECTS)
    items = [{"key": "k", "path": "k"}]
    bad_key = make_pod([], volumes=[{"name": "v", "secret": {"secretName": "s", "items": items}}])
    with pytest.raises(VolumeError, match="key 'k' not found"):
        materialise_volumes(bad_key, tmp_path, OBJECTS)
    unsupported = make_pod([], volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}])
    with pytest.raises(VolumeError, match="persistentVolumeClaim volumes are not supported"):
        materialise_volumes(unsupported, tmp_path, OBJECTS)


def test_empty_dir_survives_and_read_only_everywhere_loses_write_bits(tmp_path: Path) -> None:
    pod = make_pod(
        [{"name": "c", "volumeMounts": [{"name": "ro", "mountPath": "/ro", "readOnly": True}]}],
        volumes=[{"name": "ro", "emptyDir": {}}, {"name": "rw", "emptyDir": {}}],
    )
    dirs = materialise_volumes(pod, tmp_path, OBJECTS)
    (dirs["rw"] / "kept").write_text("x")
    again = materialise_volumes(pod, tmp_path, OBJECTS)
    assert (again["rw"] / "kept").read_text() == "x"
    assert mode(again["ro"]) == 0o555
