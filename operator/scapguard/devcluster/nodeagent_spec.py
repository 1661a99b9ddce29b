"""Pod spec -> process inputs, for the node agent (see ``nodeagent`` for the big picture).

Everything here is a function of the pod object, the objects it references (through an
``ObjectSource``) and a directory: environment variables (``env``/``envFrom``, ``$(VAR)``
expansion), volumes materialised as plain files, the mountPath -> directory rewriting that stands
in for mounts, and the uid/gid/groups a container runs as. Errors a kubelet would report as
``CreateContainerConfigError`` raise ``ConfigError``; volume problems (a kubelet's ``FailedMount``)
raise ``VolumeError``. Nothing here talks to the API server or starts a process.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

JSON = dict[str, Any]

HOST_IP = "127.0.0.1"
DEFAULT_FILE_MODE = 0o644
DEFAULT_TOKEN_SECONDS = 3600
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
# Volumes a kubelet always mounts read-only.
_READ_ONLY_KINDS = ("secret", "configMap", "projected", "downwardAPI")


class ConfigError(Exception):
    """The container cannot be configured (kubelet reason CreateContainerConfigError)."""


class VolumeError(Exception):
    """A volume cannot be materialised yet (a kubelet would report FailedMount)."""


class ObjectSource(Protocol):
    """Read access to what a pod references; objects are API JSON (camelCase) dicts."""

    def get_secret(self, namespace: str, name: str) -> JSON | None: ...

    def get_config_map(self, namespace: str, name: str) -> JSON | None: ...

    def request_token(self, pod: JSON, audiences: list[str], expiration_seconds: int) -> str: ...


def _obj(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[JSON]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def pod_key(pod: JSON) -> str:
    """``<namespace>_<name>_<uid>``: the pod's directory name (like /var/log/pods)."""
    meta = _obj(pod.get("metadata"))
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


# --- $(VAR) expansion, as k8s.io/kubernetes third_party/forked/golang/expansion -------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` from env; ``$$`` is a literal ``$``; unknown names stay as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --- environment ---------------------------------------------------------------------------


def _secret_data(secret: JSON) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in _obj(secret.get("data")).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True)
        except binascii.Error as exc:
            raise ConfigError(f"secret data key {key!r} is not base64: {exc}") from exc
    return data


def _config_map_data(config_map: JSON, *, binary: bool) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in _obj(config_map.get("data")).items()}
    if binary:
        for key, value in _obj(config_map.get("binaryData")).items():
            data[key] = base64.b64decode(str(value))
    return data


def field_ref_value(pod: JSON, field_path: str) -> str:
    """The downward API value of a fieldRef (pod IPs are the node's, 127.0.0.1)."""
    meta = _obj(pod.get("metadata"))
    spec = _obj(pod.get("spec"))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": HOST_IP,
        "status.podIPs": HOST_IP,
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
    }
    if field_path in simple:
        return str(simple[field_path])
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = _obj(meta.get(field_path.split(".")[1]))
        return "".join(f"{k}={_quote(str(v))}\n" for k, v in sorted(items.items()))
    match = _FIELD_KEY.match(field_path)
    if match:
        return str(_obj(meta.get(match.group(1))).get(match.group(2), ""))
    raise ConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _env_value_from(
    pod: JSON, value_from: JSON, source: ObjectSource, namespace: str
) -> str | None:
    """One env var's valueFrom; None when an optional reference is missing."""
    if "fieldRef" in value_from:
        return field_ref_value(pod, str(_obj(value_from["fieldRef"]).get("fieldPath", "")))
    for ref_kind, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
        if ref_kind not in value_from:
            continue
        ref = _obj(value_from[ref_kind])
        name, key, optional = str(ref.get("name", "")), str(ref["key"]), bool(ref.get("optional"))
        if kind == "Secret":
            obj = source.get_secret(namespace, name)
            data = None if obj is None else _secret_data(obj)
        else:
            obj = source.get_config_map(namespace, name)
            data = None if obj is None else _config_map_data(obj, binary=False)
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
        return data[key].decode(errors="replace")
    if "resourceFieldRef" in value_from:
        raise ConfigError("env valueFrom.resourceFieldRef is not supported by the node agent")
    raise ConfigError(f"unsupported env valueFrom {sorted(value_from)}")


def build_env(
    pod: JSON,
    container: JSON,
    source: ObjectSource,
    *,
    base: Mapping[str, str],
    service_env: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment, before path rewriting.

    Order as the kubelet: ``envFrom`` sources, then ``env`` in order (values expanded against
    what is defined so far plus ``service_env``), then ``service_env`` for names still unset;
    all of that over ``base`` (what the image config would give: PATH, HOSTNAME, HOME).
    """
    namespace = str(_obj(pod.get("metadata")).get("namespace", ""))
    env: dict[str, str] = {}
    for env_from in _list(container.get("envFrom")):
        prefix = str(env_from.get("prefix", ""))
        if "configMapRef" in env_from:
            ref, kind = _obj(env_from["configMapRef"]), "configmap"
            obj = source.get_config_map(namespace, str(ref.get("name", "")))
            data = None if obj is None else _config_map_data(obj, binary=False)
        elif "secretRef" in env_from:
            ref, kind = _obj(env_from["secretRef"]), "secret"
            obj = source.get_secret(namespace, str(ref.get("name", "")))
            data = None if obj is None else _secret_data(obj)
        else:
            raise ConfigError(f"unsupported envFrom source {sorted(env_from)}")
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind} "{ref.get("name", "")}" not found')
        for key, raw in data.items():
            name = prefix + key
            if _ENV_NAME.match(name):  # the kubelet skips invalid names too (with an event)
                env[name] = raw.decode(errors="replace")
    for var in _list(container.get("env")):
        name = str(var["name"])
        if "valueFrom" in var:
            found = _env_value_from(pod, _obj(var["valueFrom"]), source, namespace)
            if found is None:
                continue
            env[name] = found
        else:
            env[name] = expand(str(var.get("value", "")), {**service_env, **env})
    for name, text in service_env.items():
        env.setdefault(name, text)
    return {**base, **env}


# --- paths: mountPath -> materialised directory ----------------------------------------------


def _normalise_mount_path(mount_path: str, container: str) -> str:
    if not mount_path.startswith("/"):
        raise ConfigError(f"container {container}: mountPath {mount_path!r} is not absolute")
    normal = str(PurePosixPath(mount_path))
    if normal == "/":
        raise ConfigError(f"container {container}: mountPath / cannot be rewritten")
    return normal


def _safe_relative(path: str, what: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"{what} {path!r} must be a relative path without '..'")
    return rel


@dataclass(frozen=True)
class PathRewriter:
    """Replaces mountPath prefixes by materialised directories in one pass.

    A mountPath matches where it is not preceded by a path character (``[\\w./~-]``) and not
    followed by a name character (``[\\w.-]``): ``/data`` matches in ``/data``, ``/data/x``,
    ``--out=/data/x`` and ``a:/data:b``, not in ``/database`` or ``/srv/data``. Longer mountPaths
    are tried first, and each string is rewritten once, so a replacement is never rewritten again.
    """

    mounts: tuple[tuple[str, str], ...]  # (mountPath, host directory or file), longest first

    @property
    def _pattern(self) -> re.Pattern[str] | None:
        if not self.mounts:
            return None
        alternatives = "|".join(re.escape(mount) for mount, _ in self.mounts)
        return re.compile(rf"(?<![\w./~-])(?:{alternatives})(?![\w.-])")

    def rewrite(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        table = dict(self.mounts)
        return pattern.sub(lambda m: table[m.group(0)], text)


def container_mounts(
    container: JSON, volume_dirs: Mapping[str, Path], env: Mapping[str, str]
) -> PathRewriter:
    """The rewriter for one container's volumeMounts (subPath/subPathExpr resolved, and
    created as a directory when missing, as the kubelet does)."""
    name = str(container.get("name", ""))
    table: dict[str, str] = {}
    for mount in _list(container.get("volumeMounts")):
        volume = str(mount.get("name", ""))
        if volume not in volume_dirs:
            raise ConfigError(f"container {name}: volumeMount {volume!r} names no volume")
        mount_path = _normalise_mount_path(str(mount.get("mountPath", "")), name)
        host = volume_dirs[volume]
        sub = str(mount.get("subPath") or "")
        if mount.get("subPathExpr"):
            sub = expand(str(mount["subPathExpr"]), env)
        if sub:
            host = host / _safe_relative(sub, f"container {name}: subPath")
            if not host.exists() and not host.is_symlink():
                host.mkdir(parents=True)
                shutil.copymode(volume_dirs[volume], host)
                st = volume_dirs[volume].stat()
                os.chown(host, st.st_uid, st.st_gid)
        if mount_path in table:
            raise ConfigError(f"container {name}: mountPath {mount_path} used twice")
        table[mount_path] = str(host)
    ordered = sorted(table.items(), key=lambda item: len(item[0]), reverse=True)
    return PathRewriter(tuple(ordered))


# --- identity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who a container's process runs as; None means "as the node agent itself"."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def resolve_identity(pod: JSON, container: JSON) -> Identity:
    """runAsUser/runAsGroup/runAsNonRoot (container wins over pod), plus fsGroup and
    supplementalGroups as supplementary groups. A numeric user with no group gets gid 0, as
    with a container runtime when the image has no passwd entry for it."""
    pod_sc = _obj(_obj(pod.get("spec")).get("securityContext"))
    sc = _obj(container.get("securityContext"))
    uid = _int_or_none(sc.get("runAsUser", pod_sc.get("runAsUser")))
    gid = _int_or_none(sc.get("runAsGroup", pod_sc.get("runAsGroup")))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    name = container.get("name", "")
    if non_root is True and uid is None:
        raise ConfigError(
            f"container {name} has runAsNonRoot and no runAsUser: there is no image USER to "
            "check here and the node agent would run it as its own user; set runAsUser"
        )
    if non_root is True and uid == 0:
        raise ConfigError(f"container {name}'s runAsUser breaks non-root policy")
    if uid is not None and gid is None:
        gid = 0
    groups = {int(g) for g in pod_sc.get("supplementalGroups") or [] if isinstance(g, int)}
    fs_group = _int_or_none(pod_sc.get("fsGroup"))
    if fs_group is not None:
        groups.add(fs_group)
    return Identity(uid, gid, tuple(sorted(groups)))


def all_containers(pod: JSON) -> list[JSON]:
    spec = _obj(pod.get("spec"))
    return _list(spec.get("initContainers")) + _list(spec.get("containers"))


def _volume_owner(pod: JSON) -> int | None:
    """The uid every container runs as, if they agree (files of read-only volumes get it)."""
    uids: set[int | None] = set()
    for container in all_containers(pod):
        try:
            uids.add(resolve_identity(pod, container).uid)
        except ConfigError:
            continue
    return uids.pop() if len(uids) == 1 else None


# --- volumes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ownership:
    uid: int | None  # owner of read-only volume files (None: the agent's)
    fs_group: int | None


def _chown(path: Path, uid: int | None, gid: int | None) -> None:
    if uid is not None or gid is not None:
        owner, group = -1 if uid is None else uid, -1 if gid is None else gid
        os.chown(path, owner, group, follow_symlinks=False)


def _write_file(root: Path, rel: PurePosixPath, data: bytes, mode: int, own: _Ownership) -> None:
    target = root / rel
    for parent in reversed(target.relative_to(root).parents):
        directory = root / parent
        if not directory.is_dir():
            directory.mkdir()
            directory.chmod(0o2755 if own.fs_group is not None else 0o755)
            _chown(directory, None, own.fs_group)
    target.write_bytes(data)
    if own.fs_group is not None:
        mode |= 0o440  # like the kubelet's fsGroup ownership change on read-only volumes
    _chown(target, own.uid, own.fs_group)
    target.chmod(mode & 0o7777 & ~0o222)  # read-only volume: nobody writes, root aside


def _select_items(
    data: Mapping[str, bytes],
    items: list[JSON],
    default_mode: int,
    what: str,
    optional: bool,
) -> list[tuple[PurePosixPath, bytes, int]]:
    if not items:
        return [(_safe_relative(k, f"{what} key"), v, default_mode) for k, v in data.items()]
    chosen = []
    for item in items:
        key = str(item.get("key", ""))
        if key not in data:
            if optional:
                continue
            raise VolumeError(f"{what}: key {key!r} not found")
        mode = _int_or_none(item.get("mode"))
        path = _safe_relative(str(item.get("path", "")), f"{what} item path")
        chosen.append((path, data[key], default_mode if mode is None else mode))
    return chosen


def _source_files(
    pod: JSON,
    kind: str,
    spec: JSON,
    default_mode: int,
    source: ObjectSource,
    token_mode: int,
) -> list[tuple[PurePosixPath, bytes, int]]:
    """The files one secret/configMap/downwardAPI/serviceAccountToken source contributes."""
    namespace = str(_obj(pod.get("metadata")).get("namespace", ""))
    optional = bool(spec.get("optional"))
    if kind in ("secret", "configMap"):
        name = str(spec.get("secretName" if kind == "secret" else "name") or spec.get("name", ""))
        what = f'{kind} "{name}"'
        if kind == "secret":
            obj = source.get_secret(namespace, name)
            data = None if obj is None else _secret_data(obj)
        else:
            obj = source.get_config_map(namespace, name)
            data = None if obj is None else _config_map_data(obj, binary=True)
        if data is None:
            if optional:
                return []
            raise VolumeError(f"{what} not found")
        return _select_items(data, _list(spec.get("items")), default_mode, what, optional)
    if kind == "downwardAPI":
        files = []
        for item in _list(spec.get("items")):
            if "resourceFieldRef" in item:
                raise VolumeError("downwardAPI resourceFieldRef is not supported by the node agent")
            field_path = str(_obj(item.get("fieldRef")).get("fieldPath", ""))
            try:
                value = field_ref_value(pod, field_path)
            except ConfigError as exc:
                raise VolumeError(str(exc)) from exc
            mode = _int_or_none(item.get("mode"))
            path = _safe_relative(str(item.get("path", "")), "downwardAPI item path")
            files.append((path, value.encode(), default_mode if mode is None else mode))
        return files
    if kind == "serviceAccountToken":
        audience = spec.get("audience")
        seconds = _int_or_none(spec.get("expirationSeconds")) or DEFAULT_TOKEN_SECONDS
        token = source.request_token(pod, [str(audience)] if audience else [], seconds)
        path = _safe_relative(str(spec.get("path", "")), "serviceAccountToken path")
        return [(path, token.encode(), token_mode)]
    raise VolumeError(f"volume source {kind!r} is not supported by the node agent")


def _volume_kind(volume: JSON) -> str:
    kinds = [k for k in volume if k != "name"]
    if len(kinds) != 1:
        raise VolumeError(f"volume {volume.get('name')!r} has sources {kinds}")
    return kinds[0]


def _fresh_dir(path: Path, mode: int, gid: int | None) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    _chown(path, None, gid)
    path.chmod(mode)


def materialise_volumes(pod: JSON, volumes_dir: Path, source: ObjectSource) -> dict[str, Path]:
    """Write every volume of the pod under ``volumes_dir/<name>``; returns name -> path.

    secret, configMap, downwardAPI and projected (those three plus serviceAccountToken via the
    TokenRequest API) become read-only files with the Kubernetes modes (items, defaultMode,
    optional honoured); with fsGroup they are group-owned and group-readable, and when every
    container runs as one runAsUser they are owned by it (the kubelet does this for projected
    tokens). emptyDir is a mode 0777 directory (setgid and group-owned with fsGroup) and is kept
    across calls. hostPath maps to the host path itself. Anything else raises VolumeError.
    """
    spec = _obj(pod.get("spec"))
    pod_sc = _obj(spec.get("securityContext"))
    own = _Ownership(_volume_owner(pod), _int_or_none(pod_sc.get("fsGroup")))
    read_only_everywhere = _read_only_volumes(pod)
    dirs: dict[str, Path] = {}
    for volume in _list(spec.get("volumes")):
        name = str(volume.get("name", ""))
        kind = _volume_kind(volume)
        body = _obj(volume[kind])
        target = volumes_dir / _safe_relative(name, "volume name")
        if kind == "hostPath":
            dirs[name] = Path(str(body.get("path", "")))
            continue
        if kind == "emptyDir":
            if not target.is_dir():
                _fresh_dir(target, 0o2777 if own.fs_group is not None else 0o777, own.fs_group)
            if name in read_only_everywhere:
                target.chmod(target.stat().st_mode & 0o7777 & ~0o222)
            dirs[name] = target
            continue
        if kind not in _READ_ONLY_KINDS:
            raise VolumeError(f"volume {name}: {kind} volumes are not supported by the node agent")
        mode = _int_or_none(body.get("defaultMode"))
        default_mode = DEFAULT_FILE_MODE if mode is None else mode
        sources: Iterable[tuple[str, JSON]]
        if kind == "projected":
            projected = _list(body.get("sources"))
            sources = [(_volume_kind(s), _obj(s[_volume_kind(s)])) for s in projected]
        else:
            sources = [(kind, body)]
        # As the kubelet: a token is 0600 when it has an owner (runAsUser or fsGroup).
        token_mode = default_mode if own.uid is None and own.fs_group is None else 0o600
        files: list[tuple[PurePosixPath, bytes, int]] = []
        for source_kind, source_spec in sources:
            files.extend(
                _source_files(pod, source_kind, source_spec, default_mode, source, token_mode)
            )
        _fresh_dir(target, 0o2755 if own.fs_group is not None else 0o755, own.fs_group)
        for rel, data, file_mode in files:
            _write_file(target, rel, data, file_mode, own)
        dirs[name] = target
    return dirs


def _read_only_volumes(pod: JSON) -> set[str]:
    """Volumes that every mount of every container mounts readOnly."""
    read_only: dict[str, bool] = {}
    for container in all_containers(pod):
        for mount in _list(container.get("volumeMounts")):
            name = str(mount.get("name", ""))
            read_only[name] = read_only.get(name, True) and bool(mount.get("readOnly"))
    return {name for name, ro in read_only.items() if ro}


def remove_tree(path: Path, keep: Sequence[str] = ()) -> None:
    """Remove a directory tree (made writable first: read-only volumes), except ``keep``."""
    if not path.exists():
        return
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            for directory, _, _ in os.walk(entry):
                Path(directory).chmod(0o700)
            shutil.rmtree(entry)
        else:
            entry.unlink()
