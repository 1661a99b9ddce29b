"""A throwaway OCI registry for tests and the demo: Debian's ``docker-registry`` on loopback.

The registry listens on ``127.0.0.1`` on a free port, keeps its blobs under the given work
directory (filesystem storage, deletes enabled) and serves plain HTTP. Clients must therefore
skip TLS: ``skopeo copy --dest-tls-verify=false`` / ``--src-tls-verify=false``,
``skopeo inspect --tls-verify=false``.

    with Registry(workdir) as reg:
        reg.host  # "127.0.0.1:PORT"

``Registry(workdir, netns=ns)`` runs it inside a real-node cluster's network namespace, on the
namespace's loopback and node address: pods pull from ``reg.cluster_host`` (``NODE_IP:PORT``),
the node's containerd and the host (through a forward) from ``reg.host``.

``Registry(workdir, auth=BasicAuth("user", "secret"))`` requires HTTP basic auth (an htpasswd
file with a bcrypt entry made by ``htpasswd`` from apache2-utils); ``reg.dockerconfigjson()``
gives the matching ``.dockerconfigjson`` document for a pull secret.

``Registry(workdir, notifications=[NotificationEndpoint("scapguard", url, headers=...)])``
posts the registry's push/pull notifications there (config.yml ``notifications.endpoints``).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scapguard_dev.forward import start_forward
from scapguard_dev.netns import NODE_IP, NetworkNamespace
from scapguard_dev.ports import free_port

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
HTPASSWD_BINARY = "htpasswd"
_LOOPBACK = "127.0.0.1"
# Every address of the cluster's own network namespace (its loopback and the node address).
_ANY = "0.0.0.0"  # noqa: S104 - only ever bound inside that namespace
_PORT_ATTEMPTS = 3


class RegistryError(RuntimeError):
    """The registry could not be configured, started or stopped."""


@dataclass(frozen=True)
class BasicAuth:
    """Credentials for a registry that requires HTTP basic auth."""

    username: str
    password: str

    def skopeo_creds(self) -> str:
        """The ``USER:PASSWORD`` value for skopeo's ``--creds``/``--src-creds``/``--dest-creds``."""
        return f"{self.username}:{self.password}"


@dataclass(frozen=True)
class NotificationEndpoint:
    """A ``notifications.endpoints`` entry: where the registry posts its event envelopes.

    ``timeout``/``backoff`` are Go durations; after ``threshold`` failures in a row the
    registry waits ``backoff`` before it tries again (it retries each event until a 2xx).
    """

    name: str
    url: str
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: str = "5s"
    threshold: int = 3
    backoff: str = "1s"

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "headers": {key: list(values) for key, values in self.headers.items()},
            "timeout": self.timeout,
            "threshold": self.threshold,
            "backoff": self.backoff,
        }


def _htpasswd_line(auth: BasicAuth) -> str:
    binary = shutil.which(HTPASSWD_BINARY)
    if binary is None:
        raise RegistryError(
            f"{HTPASSWD_BINARY} not found on PATH "
            "(install apache2-utils, see hack/apt-packages.txt)"
        )
    # -i reads the password from stdin so it never shows in the process list.
    cmd = [binary, "-niB", auth.username]
    proc = subprocess.run(
        cmd, input=auth.password, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RegistryError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip() + "\n"


class Registry:
    """Debian's ``docker-registry`` on 127.0.0.1 with storage under ``workdir``.

    Plain HTTP: pass ``--tls-verify=false`` (skopeo inspect), ``--src-tls-verify=false`` /
    ``--dest-tls-verify=false`` (skopeo copy) when talking to it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: BasicAuth | None = None,
        start_timeout: float = 30.0,
        binary: str = REGISTRY_BINARY,
        netns: NetworkNamespace | None = None,
        notifications: Sequence[NotificationEndpoint] = (),
    ) -> None:
        self.workdir = workdir
        self.netns = netns
        self.notifications = tuple(notifications)
        self._forwards: list[subprocess.Popen[bytes]] = []
        self.auth = auth
        self.start_timeout = start_timeout
        self.binary = binary
        self.config_path = workdir / "config.yml"
        self.storage_dir = workdir / "storage"
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RegistryError("registry not started")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def cluster_host(self) -> str:
        """The registry part of an image reference that pods use (``host`` without a netns)."""
        return f"{NODE_IP}:{self.port}" if self.netns is not None else self.host

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def dockerconfigjson(self) -> dict[str, Any]:
        """The ``.dockerconfigjson`` content of a pull secret for this registry."""
        if self.auth is None:
            raise RegistryError("registry runs without auth; there is nothing to put in a secret")
        token = base64.b64encode(self.auth.skopeo_creds().encode()).decode()
        return {
            "auths": {
                self.host: {
                    "username": self.auth.username,
                    "password": self.auth.password,
                    "auth": token,
                }
            }
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def _write_config(self, port: int) -> None:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
            },
            "http": {
                # In a netns: its loopback (the node's containerd, the forward) and node address.
                "addr": f"{_ANY if self.netns is not None else _LOOPBACK}:{port}",
                # A fixed secret avoids the per-start random one (and its warning).
                "secret": "scapguard-devcluster-registry",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(_htpasswd_line(self.auth), encoding="utf-8")
            htpasswd.chmod(0o600)
            config["auth"] = {"htpasswd": {"realm": "scapguard-registry", "path": str(htpasswd)}}
        if self.notifications:
            config["notifications"] = {"endpoints": [e.config() for e in self.notifications]}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")

    def start(self) -> Registry:
        if self._proc is not None:
            raise RegistryError("registry already started")
        binary = shutil.which(self.binary)
        if binary is None:
            raise RegistryError(
                f"{self.binary} not found on PATH (install docker-registry, "
                "see hack/apt-packages.txt)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        last_error = ""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            self._write_config(port)
            prefix = self.netns.enter() if self.netns is not None else []
            with self.log_path.open("ab") as logf:
                self._proc = subprocess.Popen(
                    [*prefix, binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._port = port
            if self.netns is not None:
                start_forward(self.netns, port, self.workdir / "forward", self._spawn_forward, "")
            log.info(
                "registry starting on %s (pid %s, attempt %s, log %s)",
                self.host,
                self._proc.pid,
                attempt,
                self.log_path,
            )
            try:
                self._wait_ready(self._proc)
            except _ExitedEarly as exc:
                last_error = str(exc)
                self._stop_forwards()
                self._proc = None
                self._port = None
                if "address already in use" in last_error:
                    log.warning("registry port %s was taken, retrying: %s", port, last_error)
                    continue
                raise RegistryError(last_error) from exc
            except BaseException:
                self.stop()
                raise
            return self
        raise RegistryError(f"registry did not start after {_PORT_ATTEMPTS} attempts: {last_error}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        probe = f"{self.url}/v2/"
        last = "no answer yet"
        while True:
            code = proc.poll()
            if code is not None:
                raise _ExitedEarly(
                    f"{self.binary} serve {self.config_path} exited with {code}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=2) as resp:  # noqa: S310 - http on loopback
                    status = int(resp.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                status = 0
                last = str(exc)
            # 401 is "up, wants credentials" for the auth variant.
            if status == 200 or (status == 401 and self.auth is not None):
                log.info("registry ready on %s", self.host)
                return
            if status:
                last = f"HTTP {status}"
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryError(
                    f"registry at {probe} not ready within {self.start_timeout}s ({last}); "
                    f"log {self.log_path}: {self._log_tail()}"
                )
            time.sleep(0.1)

    def _stop_forwards(self) -> None:
        for forward in self._forwards:
            forward.kill()
            forward.wait(timeout=15)
        self._forwards.clear()

    def _spawn_forward(self, _name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._forwards.append(proc)
        return proc

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the registry by its pid: SIGTERM, then SIGKILL after ``timeout``."""
        self._stop_forwards()
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            log.info("stopping registry pid %s", proc.pid)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("registry pid %s ignored SIGTERM for %ss, killing", proc.pid, timeout)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class _ExitedEarly(Exception):
    """The registry process exited before answering (internal; turned into RegistryError)."""
