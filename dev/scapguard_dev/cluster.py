"""A real, local Kubernetes control plane for scapguard's demo and tests.

``DevCluster(workdir).start()`` runs, as local processes from the
``scapguard-cluster`` binary (hack/cluster): etcd, kube-apiserver (RBAC,
service accounts, aggregation, secure port on 127.0.0.1),
kube-controller-manager, kube-scheduler and the image.openshift.io/v1
aggregated API server: a control plane without a node (Pods stay Pending). It waits for each
to be ready with a deadline, writes an admin kubeconfig, mints kubeconfigs for
ServiceAccounts, and stops every process it started, by pid.

``DevCluster(workdir, real_node=True)`` adds a real node: every component, the registry and
the node (containerd + runc, CNI, kubelet, kube-proxy, CoreDNS, see
``scapguard_dev.node``) run inside a network namespace of its own. The host reaches
the API server and the registry at ``127.0.0.1`` on the same port numbers through
``scapguard_dev.forward``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client

from scapguard_dev import nodeconfig, pki
from scapguard_dev.binaries import cluster_binary
from scapguard_dev.forward import start_forward
from scapguard_dev.netns import NODE_IP, SERVICE_CIDR, NetworkNamespace
from scapguard_dev.node import RealNode, pause_image
from scapguard_dev.nodeconfig import NodeLayout
from scapguard_dev.ports import free_port
from scapguard_dev.registry import Registry

__all__ = ["ClusterError", "DevCluster", "free_port", "running_cluster", "wait_for"]

log = logging.getLogger(__name__)

NODE_NAME = "scapguard-dev-node"
IMAGE_API_SERVICE = ("kube-system", "image-apiserver")
_STOP_GRACE = 10.0


class ClusterError(RuntimeError):
    """The local control plane could not be started or used."""


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class DevCluster:
    """The local control plane. Use as a context manager or call start()/stop()."""

    workdir: Path
    #: A real node (kubelet, containerd) and a registry, all in a network namespace.
    real_node: bool = False
    procs: list[_Proc] = field(default_factory=list)
    started_seconds: float = 0.0
    # Seconds from each component's launch to its readiness check passing.
    ready_seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.etcd_port = 0
        self.api_port = 0
        self.image_api_port = 0
        self.binary = Path()
        name = "sg-" + hashlib.sha256(str(self.workdir).encode()).hexdigest()[:10]
        self.netns = NetworkNamespace(name) if self.real_node else None
        self.node: RealNode | None = None
        self.registry: Registry | None = None
        self._node_launched = 0.0

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start every component and wait until the cluster is usable."""
        self.binary = cluster_binary()
        begin = time.monotonic()
        for d in (self.pki_dir, self.logs_dir, self.workdir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        try:
            if self.netns is not None:
                self.netns.create()
            self._make_pki()
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controllers()
            self._start_image_apiserver(timeout)
            if self.real_node:
                self._start_real_node(timeout)
            self._wait_usable(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - begin
        log.info("local control plane ready in %.1fs at %s", self.started_seconds, self.server)

    def stop(self) -> None:
        """Stop every process this cluster started, newest first, by pid.

        One at a time: kube-apiserver drains its requests only while etcd still answers.
        """
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %d) ignored SIGTERM; killing it", proc.name, proc.popen.pid
                    )
                    proc.popen.kill()
                    proc.popen.wait(5)
            proc.log_file.close()
        self.procs.clear()
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        if self.node is not None:
            self.node.cleanup()
            self.node = None
        elif self.netns is not None:
            self.netns.delete()

    def pids(self) -> dict[str, int]:
        """The pids of the running components, by name."""
        return {p.name: p.popen.pid for p in self.procs if p.popen.poll() is None}

    def component_rss_kib(self) -> dict[str, int]:
        """Resident memory of each running component (from /proc)."""
        out: dict[str, int] = {}
        for name, pid in self.pids().items():
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1])
        return out

    # -- pki and kubeconfigs ---------------------------------------------------

    def _make_pki(self) -> None:
        d = self.pki_dir
        self.ca = pki.CertificateAuthority(d, "ca")
        self.front_proxy_ca = pki.CertificateAuthority(d, "front-proxy-ca")
        self.sa_keys = pki.service_account_keys(d)
        self.apiserver_cert = self.ca.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1", "10.0.0.1", NODE_IP),
            server=True,
        )
        ns, name = IMAGE_API_SERVICE
        self.image_api_cert = self.ca.issue(
            "image-apiserver",
            "image-apiserver",
            dns_names=(f"{name}.{ns}.svc", "localhost"),
            ips=("127.0.0.1",),
            server=True,
        )
        self.front_proxy_client = self.front_proxy_ca.issue(
            "front-proxy-client", "front-proxy-client", client=True
        )
        clients = {
            "admin": ("kubernetes-admin", "system:masters"),
            "controller-manager": ("system:kube-controller-manager", None),
            "scheduler": ("system:kube-scheduler", None),
        }
        if self.real_node:
            clients |= {
                "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
                "kube-proxy": ("system:kube-proxy", None),
                "coredns": (nodeconfig.COREDNS_USER, None),
            }
            self.kubelet_client = self.ca.issue(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                organization="system:masters",
                client=True,
            )
            self.kubelet_serving = self.ca.issue(
                "kubelet-serving", NODE_NAME, dns_names=(NODE_NAME,), ips=(NODE_IP,), server=True
            )
        for file_name, (user, group) in clients.items():
            pair = self.ca.issue(file_name, user, organization=group, client=True)
            self._write_kubeconfig(
                self.workdir / f"{file_name}.kubeconfig",
                user,
                {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            )

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "scapguard-dev",
                    "cluster": {
                        "server": self.server if self.api_port else "https://127.0.0.1:0",
                        "certificate-authority": str(self.ca.cert_path),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {"name": "scapguard-dev", "context": {"cluster": "scapguard-dev", "user": user}}
            ],
            "current-context": "scapguard-dev",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _rewrite_kubeconfig_servers(self) -> None:
        for path in self.workdir.glob("*.kubeconfig"):
            config = yaml.safe_load(path.read_text())
            config["clusters"][0]["cluster"]["server"] = self.server
            path.write_text(yaml.safe_dump(config))

    def kubeconfig_for_serviceaccount(
        self, namespace: str, name: str, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (a bound token)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        reply = self.api_request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            request,
        )
        token = reply["status"]["token"]
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, f"system:serviceaccount:{namespace}:{name}", {"token": token})
        return path

    # -- a tiny admin client (no dependency on the kubernetes package) ---------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        admin = self.pki_dir / "admin"
        ctx.load_cert_chain(str(admin.with_suffix(".crt")), str(admin.with_suffix(".key")))
        return ctx

    def raw_request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> bytes:
        """One request to kube-apiserver as the cluster admin; raises ClusterError."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - https to our own apiserver only
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as r:  # noqa: S310
                raw: bytes = r.read()
        except urllib.error.HTTPError as e:
            raise ClusterError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from e
        except OSError as e:
            raise ClusterError(f"{method} {path}: {e}") from e
        return raw

    def api_request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Like raw_request, for JSON objects."""
        raw = self.raw_request(method, path, body, timeout)
        try:
            result = json.loads(raw)
        except ValueError as e:
            raise ClusterError(f"{method} {path}: not JSON: {raw[:200]!r}") from e
        if not isinstance(result, dict):
            raise ClusterError(f"{method} {path}: not a JSON object")
        return result

    def admin_configuration(self) -> client.Configuration:
        """A ``kubernetes.client.Configuration`` for the cluster admin (client certificate)."""
        cfg = client.Configuration(host=self.server)
        cfg.ssl_ca_cert = str(self.ca.cert_path)
        cfg.cert_file = str(self.pki_dir / "admin.crt")
        cfg.key_file = str(self.pki_dir / "admin.key")
        return cfg

    def wait_crds_established(self, names: Iterable[str], timeout: float = 60.0) -> None:
        """Poll until every named CRD is Established (a new CRD's conditions start out null)."""
        for name in names:

            def established(crd: str = name) -> bool:
                try:
                    got = self.api_request(
                        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
                    )
                except ClusterError:
                    return False
                conditions = (got.get("status") or {}).get("conditions") or []
                return any(
                    c.get("type") == "Established" and c.get("status") == "True" for c in conditions
                )

            wait_for(f"CustomResourceDefinition {name} Established", established, timeout)

    def _http_ok(self, path: str) -> bool:
        try:
            self.raw_request("GET", path, timeout=2.0)
        except ClusterError:
            return False
        return True

    # -- components --------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        in_netns: bool = True,
    ) -> _Proc:
        """Start one component (inside the cluster's network namespace, when it has one)."""
        log_path = self.logs_dir / f"{name}.log"
        log_file = log_path.open("ab")
        if self.netns is not None and in_netns:
            argv = [*self.netns.enter(), *argv]
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )
        proc = _Proc(name, popen, log_path, log_file)
        self.procs.append(proc)
        return proc

    def _check_alive(self, proc: _Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-3000:]
            raise ClusterError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")

    def _wait_alive(
        self, proc: _Proc, what: str, check: Callable[[], bool], timeout: float
    ) -> None:
        def probe() -> bool:
            self._check_alive(proc)
            return check()

        begin = time.monotonic()
        wait_for(what, probe, timeout)
        self.ready_seconds[proc.name] = time.monotonic() - begin

    def _start_etcd(self, timeout: float) -> None:
        self.etcd_port = free_port()
        peer_port = free_port()
        proc = self._spawn(
            "etcd",
            [
                str(self.binary),
                "etcd",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-url=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-url=http://127.0.0.1:{peer_port}",
            ],
        )
        self._forward("etcd", self.etcd_port)

        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{self.etcd_port}/health"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        self._wait_alive(proc, "etcd /health", healthy, timeout)

    def _forward(self, name: str, port: int) -> None:
        """In a real-node cluster, reach ``port`` of the namespace from the host's loopback."""
        if self.netns is not None:
            start_forward(self.netns, port, self.workdir / "forward", self._spawn_popen, name)

    def _spawn_popen(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # A forward's argv says itself which half runs inside the namespace.
        return self._spawn(name, argv, in_netns=False).popen

    def _apiserver_node_flags(self) -> list[str]:
        if not self.real_node:
            # A loopback advertise address cannot go into Endpoints.
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
            ]
        return [
            # Inside the namespace: its loopback and the node address only.
            "--bind-address=0.0.0.0",
            f"--advertise-address={NODE_IP}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={self.kubelet_client.cert}",
            f"--kubelet-client-key={self.kubelet_client.key}",
            f"--kubelet-certificate-authority={self.ca.cert_path}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _start_apiserver(self, timeout: float) -> None:
        self.api_port = free_port()
        self._rewrite_kubeconfig_servers()
        proc = self._spawn("kube-apiserver", self._apiserver_argv())
        self._forward("kube-apiserver", self.api_port)
        self._wait_alive(proc, "kube-apiserver /readyz", lambda: self._http_ok("/readyz"), timeout)
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop kube-apiserver (SIGTERM: it drains, as in a rolling restart of a control plane)
        and start it again on the same port with the same flags; return once it is ready.

        Every client sees its connections and watches end; etcd, and with it every object and
        resourceVersion, stays. The forward from the host and the Service endpoint stay valid
        (same address and port).
        """
        index = next((i for i, p in enumerate(self.procs) if p.name == "kube-apiserver"), None)
        if index is None:
            raise ClusterError("kube-apiserver is not running")
        old = self.procs[index]
        old.popen.send_signal(signal.SIGTERM)
        try:
            old.popen.wait(_STOP_GRACE * 6)
        except subprocess.TimeoutExpired:
            log.warning("kube-apiserver (pid %d) ignored SIGTERM; killing it", old.popen.pid)
            old.popen.kill()
            old.popen.wait(5)
        old.log_file.close()
        proc = self._spawn("kube-apiserver", self._apiserver_argv())
        # _spawn appended it: keep the start order, which stop() unwinds.
        self.procs.pop()
        self.procs[index] = proc
        self._wait_alive(proc, "kube-apiserver /readyz", lambda: self._http_ok("/readyz"), timeout)
        log.info("kube-apiserver restarted (pid %d)", proc.popen.pid)

    def _apiserver_argv(self) -> list[str]:
        return [
            str(self.binary),
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            *self._apiserver_node_flags(),
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={self.apiserver_cert.cert}",
            f"--tls-private-key-file={self.apiserver_cert.key}",
            f"--client-ca-file={self.ca.cert_path}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.sa_keys.cert}",
            f"--service-account-signing-key-file={self.sa_keys.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--requestheader-client-ca-file={self.front_proxy_ca.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.front_proxy_client.cert}",
            f"--proxy-client-key-file={self.front_proxy_client.key}",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]

    def _start_controllers(self) -> None:
        cm = self.workdir / "controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binary),
                "kube-controller-manager",
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa_keys.key}",
                f"--root-ca-file={self.ca.cert_path}",
                f"--cluster-signing-cert-file={self.ca.cert_path}",
                f"--cluster-signing-key-file={self.ca.key_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Short backoffs: a test cluster should react in seconds.
                "--node-monitor-grace-period=40s",
                "--profiling=false",
            ],
        )
        sched = self.workdir / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                str(self.binary),
                "kube-scheduler",
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_image_apiserver(self, timeout: float) -> None:
        self.image_api_port = free_port()
        admin = self.workdir / "admin.kubeconfig"
        proc = self._spawn(
            "image-apiserver",
            [
                str(self.binary),
                "image-apiserver",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.image_api_port}",
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--tls-cert-file={self.image_api_cert.cert}",
                f"--tls-private-key-file={self.image_api_cert.key}",
                f"--kubeconfig={admin}",
                f"--authentication-kubeconfig={admin}",
                f"--authorization-kubeconfig={admin}",
                "--profiling=false",
            ],
        )
        ns, name = IMAGE_API_SERVICE
        # The aggregator reaches an ExternalName service at <externalName>:<port>;
        # Endpoints may not hold loopback addresses, so this is the way to 127.0.0.1.
        self.api_request(
            "POST",
            f"/api/v1/namespaces/{ns}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ExternalName", "externalName": "localhost"},
            },
        )
        self.api_request(
            "POST",
            "/apis/apiregistration.k8s.io/v1/apiservices",
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": "v1.image.openshift.io"},
                "spec": {
                    "group": "image.openshift.io",
                    "version": "v1",
                    "groupPriorityMinimum": 9900,
                    "versionPriority": 15,
                    "caBundle": base64.b64encode(self.ca.pem).decode(),
                    "service": {"namespace": ns, "name": name, "port": self.image_api_port},
                },
            },
        )

        def available() -> bool:
            try:
                svc = self.api_request(
                    "GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1.image.openshift.io"
                )
            except ClusterError:
                return False
            conditions = (svc.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        self._wait_alive(proc, "APIService v1.image.openshift.io Available", available, timeout)

    def _start_real_node(self, timeout: float) -> None:
        """The registry, then containerd, the kubelet, kube-proxy and CoreDNS, in the netns."""
        if self.netns is None:
            raise ClusterError("a real node needs the cluster's network namespace")
        self.registry = Registry(self.workdir / "registry", netns=self.netns).start()
        pause = pause_image(self.registry.host, self.workdir / "images")
        cgroup_root = "/" + self.netns.name
        self.node = node = RealNode(NodeLayout(self.workdir / "node", NODE_NAME, cgroup_root),
                                    self.netns)  # fmt: skip
        node.write_configs(
            ca=self.ca.cert_path,
            serving=(self.kubelet_serving.cert, self.kubelet_serving.key),
            sandbox_image=pause.by_digest,
            registries=(self.registry.host, self.registry.cluster_host),
            kube_proxy_kubeconfig=self.workdir / "kube-proxy.kubeconfig",
            coredns_kubeconfig=self.workdir / "coredns.kubeconfig",
        )
        node.save_host_settings()
        containerd = self._spawn("containerd", node.containerd_argv(), env=node.containerd_env())
        self._wait_alive(
            containerd,
            "containerd socket",
            lambda: node.layout.containerd_socket.is_socket(),
            timeout,
        )
        self._node_launched = time.monotonic()
        self._spawn("kubelet", node.kubelet_argv(self.binary, self.workdir / "kubelet.kubeconfig"))
        self._spawn("kube-proxy", node.kube_proxy_argv(self.binary))
        self._install_dns()
        self._spawn("coredns", node.coredns_argv())

    def _install_dns(self) -> None:
        """RBAC for CoreDNS and the kube-dns Service, whose endpoint is CoreDNS on the node."""
        name = "scapguard-dev:coredns"
        self.api_request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {"metadata": {"name": name}, "rules": nodeconfig.COREDNS_RULES},
        )
        self.api_request(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": name},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": nodeconfig.COREDNS_USER}],
            },
        )  # fmt: skip
        ports = [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]
        self.api_request(
            "POST",
            "/api/v1/namespaces/kube-system/services",
            {
                "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
                "spec": {"clusterIP": nodeconfig.DNS_SERVICE_IP, "ports": ports},
            },
        )
        self.api_request(
            "POST",
            "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices",
            {
                "metadata": {
                    "name": "kube-dns-node",
                    "labels": {"kubernetes.io/service-name": "kube-dns"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True},
                               "nodeName": NODE_NAME}],
                "ports": ports,
            },
        )  # fmt: skip

    def node_exec(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's network namespace (real node only)."""
        if self.netns is None:
            raise ClusterError("this cluster has no node namespace (real_node=False)")
        return subprocess.run(
            [*self.netns.enter(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _wait_usable(self, timeout: float) -> None:
        def default_sa() -> bool:
            return self._http_ok("/api/v1/namespaces/default/serviceaccounts/default")

        wait_for("ServiceAccount default/default (token controller)", default_sa, timeout)
        if self.real_node:
            kubelet = next(p for p in self.procs if p.name == "kubelet")

            def node_ready() -> bool:
                self._check_alive(kubelet)
                try:
                    node = self.api_request("GET", f"/api/v1/nodes/{NODE_NAME}")
                except ClusterError:
                    return False
                conditions = (node.get("status") or {}).get("conditions") or []
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

            wait_for(f"Node {NODE_NAME} Ready", node_ready, timeout)
            self.ready_seconds["node Ready"] = time.monotonic() - self._node_launched

    # -- kubectl -----------------------------------------------------------------

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl; never raises on a non-zero exit."""
        return subprocess.run(
            [str(self.binary), "kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@contextlib.contextmanager
def running_cluster(workdir: Path, **kwargs: Any) -> Iterator[DevCluster]:
    """``with running_cluster(tmp) as c:`` — start, yield, always stop."""
    cluster = DevCluster(workdir, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
