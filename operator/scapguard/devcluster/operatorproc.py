"""Run the operator on the local control plane as a process, under its real RBAC.

``OperatorProcess(cluster, workdir).install()`` applies what an admin applies
(deploy/crds, deploy/rbac); ``start()`` runs ``kopf run -m scapguard.handlers``
with a kubeconfig for the operator's ServiceAccount (not admin), the results
endpoint on 127.0.0.1 over TLS (certificate from the cluster's CA, whose bundle
scanner pods get from a ConfigMap), and metrics on a free port. ``kill()``
sends SIGKILL, for restart-safety tests; ``stop()`` stops it gracefully.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from scapguard.builders.admission import NAMESPACE_NAME_LABEL, webhook_configuration
from scapguard.builders.job import CA_KEY
from scapguard.devcluster.binaries import repo_root
from scapguard.devcluster.cluster import ClusterError, DevCluster, free_port

NAMESPACE = "scapguard"
SERVICE_ACCOUNT = "scapguard"
RESULTS_CA_CONFIGMAP = "scapguard-results-ca"
# The scanner image's USER; the node agent cannot read images, so it is set explicitly.
SCANNER_UID = 65532
_HANDLERS = "scapguard.handlers"
CRDS = ("scanpolicies.scapguard.io", "imagescans.scapguard.io")


@dataclass
class OperatorProcess:
    cluster: DevCluster
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE
    # Serve the Pod admission webhook for these namespaces only (None: no webhook).
    admission_namespaces: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "operator.log"
        self.results_port = free_port()
        self.metrics_port = free_port()
        self.admission_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def _kubectl(self, *args: str, input_text: str | None = None) -> str:
        out = self.cluster.kubectl(*args, input_text=input_text)
        if out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def install(self) -> None:
        """Apply the CRDs and RBAC from deploy/, as an admin would, and the results CA."""
        deploy = repo_root() / "deploy"
        self._kubectl("apply", "-f", str(deploy / "crds"))
        # Polled: ``kubectl wait`` gives up at once while a new CRD's conditions are null.
        self.cluster.wait_crds_established(CRDS)
        # Exactly the documented install: deploy/rbac creates the namespace itself.
        self._kubectl("apply", "-f", str(deploy / "rbac"))
        ca_file = f"--from-file={CA_KEY}={self.cluster.ca.cert_path}"
        cm = self.cluster.kubectl(
            "-n", self.namespace, "create", "configmap", RESULTS_CA_CONFIGMAP, ca_file,
            "--dry-run=client", "-o", "yaml",
        )  # fmt: skip
        self._kubectl("apply", "-f", "-", input_text=cm.stdout)
        self.results_cert = self.cluster.ca.issue(
            "scapguard-results", "scapguard-results", ips=("127.0.0.1",), server=True
        )
        if self.admission_namespaces is not None:
            self._install_webhook(self.admission_namespaces)

    def _install_webhook(self, namespaces: tuple[str, ...]) -> None:
        self.admission_cert = self.cluster.ca.issue(
            "scapguard-admission", "scapguard-admission", ips=("127.0.0.1",), server=True
        )
        config = webhook_configuration(
            operator_namespace=self.namespace,
            url=f"https://127.0.0.1:{self.admission_port}",
            ca_bundle=self.cluster.ca.pem,
        )
        # Only the given namespaces: the local cluster also runs other tests' Pods.
        for hook in config["webhooks"]:
            hook["namespaceSelector"]["matchExpressions"].append(
                {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(namespaces)}
            )
        self._kubectl("apply", "-f", "-", input_text=json.dumps(config))

    def environment(self) -> dict[str, str]:
        kubeconfig = self.cluster.kubeconfig_for_serviceaccount(self.namespace, SERVICE_ACCOUNT)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SCAPGUARD_") and k != "KUBECONFIG"
        }
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "SCAPGUARD_NAMESPACE": self.namespace,
                "SCAPGUARD_PEERING": "",
                "SCAPGUARD_RESULTS_BIND": "127.0.0.1",
                "SCAPGUARD_RESULTS_PORT": str(self.results_port),
                "SCAPGUARD_RESULTS_URL": f"https://127.0.0.1:{self.results_port}",
                "SCAPGUARD_RESULTS_TLS_CERT_FILE": str(self.results_cert.cert),
                "SCAPGUARD_RESULTS_TLS_KEY_FILE": str(self.results_cert.key),
                "SCAPGUARD_RESULTS_CA_CONFIGMAP": RESULTS_CA_CONFIGMAP,
                "SCAPGUARD_METRICS_BIND": "127.0.0.1",
                "SCAPGUARD_METRICS_PORT": str(self.metrics_port),
                "SCAPGUARD_SCANNER_IMAGE": "localhost/scapguard/scanner:dev",
                "SCAPGUARD_SCANNER_RUN_AS_USER": str(SCANNER_UID),
                "SCAPGUARD_RETRY_BACKOFF_SECONDS": "1",
                "SCAPGUARD_RETRY_BACKOFF_MAX_SECONDS": "5",
            }
        )
        if self.admission_namespaces is not None:
            env.update(
                {
                    "SCAPGUARD_ADMISSION_ENABLED": "true",
                    "SCAPGUARD_ADMISSION_BIND": "127.0.0.1",
                    "SCAPGUARD_ADMISSION_PORT": str(self.admission_port),
                    "SCAPGUARD_ADMISSION_TLS_CERT_FILE": str(self.admission_cert.cert),
                    "SCAPGUARD_ADMISSION_TLS_KEY_FILE": str(self.admission_cert.key),
                }
            )
        env.update(self.env)
        return env

    def start(self) -> None:
        """Start ``kopf run`` for the operator; returns at once (poll the cluster for effects)."""
        if self.running:
            raise ClusterError("the operator is already running")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-A", "--log-format=json", "-m", _HANDLERS],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
            cwd=self.workdir,
            start_new_session=True,
        )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up handlers run (a crash)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        self._close()

    def stop(self, timeout: float = 20.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
