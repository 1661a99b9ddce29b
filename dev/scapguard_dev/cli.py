"""``scapguard-devcluster``: the local environment for the demo and for trying things by hand.

``scapguard-devcluster up`` starts a real single-node cluster in a network namespace of its
own (etcd, kube-apiserver, controller-manager, scheduler, the OpenShift image API, kubelet,
kube-proxy, containerd + runc, CoreDNS) and its registry, reachable on the host's 127.0.0.1,
prints how to reach them, and stops everything on Ctrl-C or SIGTERM.

``scapguard-devcluster demo`` does the same, then builds scapguard's operator and scanner
images with buildah, pushes them to the cluster's registry and installs charts/scapguard with
``helm install``; it pushes a vulnerable and a patched Ubuntu 22.04 image, tags them into an
ImageStream watched by an enforcing ScanPolicy, and shows ``kubectl get imagescans``, the deny
annotation on the failing Image, the admission webhook refusing a Pod that runs it and the
patched image running as a pod.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import FrameType

from kubernetes import client as kube_client

from scapguard.results.model import Severity
from scapguard_dev.cluster import ClusterError, DevCluster, wait_for
from scapguard_dev.fixtureimages import webapp_images
from scapguard_dev.helminstall import ChartInstall, install_scapguard
from scapguard_dev.images import PushedImage
from scapguard_dev.imagestreams import tag_image
from scapguard_dev.node import remove_tree
from scapguard_dev.ovalgen import ubuntu_oval
from scapguard_dev.registry import Registry

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _workdir(arg: str | None) -> Iterator[Path]:
    """``--workdir`` (kept afterwards), or a temporary directory removed once the cluster has
    stopped (a real node leaves about 2 GB there)."""
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="scapguard-dev-"))
    # The kubelet's and pods' state lives below it.
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not arg:
            remove_tree(path)


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _wait_for_signal() -> None:
    """Until Ctrl-C or SIGTERM (both raise KeyboardInterrupt, see main)."""
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def cmd_up(args: argparse.Namespace) -> int:
    with (
        _workdir(args.workdir) as workdir,
        DevCluster(workdir / "cluster", real_node=True) as cluster,
    ):
        registry = _registry(cluster)
        kubectl = f"{cluster.binary} kubectl --kubeconfig={cluster.kubeconfig}"
        sys.stdout.write(
            "\nscapguard local environment is up "
            f"(control plane ready in {cluster.started_seconds:.1f}s)\n\n"
            f"  kubeconfig:   {cluster.kubeconfig}\n"
            f"  API server:   {cluster.server}\n"
            f"  registry:     {registry.host} from the host, {registry.cluster_host} in pods "
            "(plain HTTP)\n"
            f"  logs:         {cluster.logs_dir}\n\n"
            f"  export KUBECONFIG={cluster.kubeconfig}\n"
            f"  alias kubectl='{kubectl}'\n"
            "  kubectl get nodes\n"
            "  kubectl api-resources --api-group=image.openshift.io\n\n"
            "Ctrl-C stops everything.\n"
        )
        sys.stdout.flush()
        if not args.no_wait:
            _wait_for_signal()
    return 0


DEMO_NAMESPACE = "demo"
DEMO_PRIORITIES: list[tuple[str, Severity]] = [
    ("high", "high"),
    ("medium", "medium"),
    ("low", "low"),
    ("critical", "critical"),
]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _kubectl(cluster: DevCluster, *args: str, input_text: str | None = None) -> str:
    out = cluster.kubectl(*args, input_text=input_text)
    if out.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _show(cluster: DevCluster, *args: str) -> None:
    _say(f"\n$ kubectl {' '.join(args)}")
    _say(_kubectl(cluster, *args).rstrip())


def demo_policy(registry: Registry, namespace: str = DEMO_NAMESPACE) -> dict[str, object]:
    """The demo's enforcing policy: every tag, the ConfigMap feed, fail on high."""
    return {
        "apiVersion": "scapguard.io/v1alpha1",
        "kind": "ScanPolicy",
        "metadata": {"name": "cve-gate", "namespace": namespace},
        "spec": {
            "tags": ["*"],
            "vulnerabilities": {
                "enabled": True,
                "feed": {"configMapRef": {"name": "oval-feed", "key": "ubuntu-jammy.oval.xml"}},
            },
            "failOn": "high",
            "action": "Enforce",
            "onError": "Allow",
            "scanner": {"insecureRegistries": [registry.cluster_host], "retries": 1},
        },
    }


def _scan_settled(cluster: DevCluster, digest: str) -> bool:
    out = cluster.kubectl(
        "-n", DEMO_NAMESPACE, "get", "imagescans", "-o",
        "jsonpath={range .items[*]}{.spec.image}={.status.state}{\"\\n\"}{end}",
    )  # fmt: skip
    return any(line.endswith("=Completed") and digest in line for line in out.stdout.splitlines())


def _registry(cluster: DevCluster) -> Registry:
    if cluster.registry is None:
        raise ClusterError("the cluster has no registry (real_node=False)")
    return cluster.registry


def run_demo(workdir: Path, cluster: DevCluster) -> ChartInstall:
    """Install scapguard on the running cluster and walk through one failing, one passing image."""
    registry = _registry(cluster)
    _say("building scapguard's images (buildah) and installing the chart (helm install) ...")
    release = install_scapguard(cluster, replicas="1")
    _kubectl(cluster, "create", "namespace", DEMO_NAMESPACE)
    images = webapp_images(workdir / "images", registry)
    vulnerable, patched = images["vulnerable"], images["patched"]
    feed, _ = ubuntu_oval(DEMO_PRIORITIES)
    (workdir / "ubuntu-jammy.oval.xml").write_text(feed)
    _kubectl(
        cluster, "-n", DEMO_NAMESPACE, "create", "configmap", "oval-feed",
        f"--from-file=ubuntu-jammy.oval.xml={workdir / 'ubuntu-jammy.oval.xml'}",
    )  # fmt: skip
    _kubectl(cluster, "apply", "-f", "-", input_text=json.dumps(demo_policy(registry)))
    _say(f"pushed {vulnerable.by_digest} (vulnerable) and {patched.by_digest} (patched)")
    api = kube_client.ApiClient(cluster.admin_configuration())
    repository = f"{registry.cluster_host}/{vulnerable.repository}"
    tag_image(api, DEMO_NAMESPACE, "webapp", "1.0", repository, vulnerable.digest)
    tag_image(api, DEMO_NAMESPACE, "webapp", "1.1", repository, patched.digest)
    api.close()
    _say("tagged webapp:1.0 (vulnerable) and webapp:1.1 (patched); scanning ...")
    for digest in (vulnerable.digest, patched.digest):
        wait_for(f"the scan of {digest[:19]}", partial(_scan_settled, cluster, digest), 300, 1.0)
    _show(cluster, "-n", DEMO_NAMESPACE, "get", "imagescans")
    _show(
        cluster, "get", "images.image.openshift.io", vulnerable.digest, "-o",
        "jsonpath={.metadata.annotations.images\\.openshift\\.io/deny-execution}",
    )  # fmt: skip
    _show(
        cluster, "get", "images.image.openshift.io", vulnerable.digest, "-o",
        "jsonpath={.metadata.annotations.quality\\.images\\.openshift\\.io/"
        "vulnerability\\.scapguard}",
    )  # fmt: skip
    _say(f"\n$ kubectl -n {DEMO_NAMESPACE} run webapp --image={vulnerable.by_digest}")
    refused = _run_webapp(cluster, "webapp", vulnerable)
    _say((refused.stdout + refused.stderr).strip())
    if refused.returncode == 0:
        raise ClusterError("the admission webhook admitted a Pod running a denied image")
    _say(f"\n$ kubectl -n {DEMO_NAMESPACE} run webapp-patched --image={patched.by_digest}")
    admitted = _run_webapp(cluster, "webapp-patched", patched)
    _say((admitted.stdout + admitted.stderr).strip())
    if admitted.returncode != 0:
        raise ClusterError(f"the patched image was refused: {admitted.stderr.strip()}")
    wait_for("the patched image's pod to finish", partial(_pod_done, cluster, "webapp-patched"),
             120, 0.5)  # fmt: skip
    _show(cluster, "-n", DEMO_NAMESPACE, "logs", "webapp-patched")
    return release


def _run_webapp(
    cluster: DevCluster, name: str, image: PushedImage
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "-n", DEMO_NAMESPACE, "run", name, f"--image={image.by_digest}", "--restart=Never",
        "--command", "--", "/bin/sh", "-c", "echo webapp running as uid $(id -u)",
    )  # fmt: skip


def _pod_done(cluster: DevCluster, name: str) -> bool:
    out = cluster.kubectl(
        "-n", DEMO_NAMESPACE, "get", "pod", name, "-o", "jsonpath={.status.phase}"
    )
    return out.stdout in ("Succeeded", "Failed")


def cmd_demo(args: argparse.Namespace) -> int:
    with (
        _workdir(args.workdir) as workdir,
        DevCluster(workdir / "cluster", real_node=True) as cluster,
    ):
        release = run_demo(workdir, cluster)
        _say(
            f"\nexport KUBECONFIG={cluster.kubeconfig}\n"
            f"alias kubectl='{cluster.binary} kubectl'\n"
            f"kubectl -n {DEMO_NAMESPACE} get imagescans -o yaml    # findings, conditions\n"
            f"kubectl -n {release.namespace} logs deploy/scapguard-operator   # the operator\n"
        )
        if not args.no_wait:
            _say("Ctrl-C stops everything.")
            _wait_for_signal()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scapguard-devcluster", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and a registry, wait for Ctrl-C")
    up.add_argument("--workdir", help="state directory (default: a new temporary directory)")
    up.add_argument("--no-wait", action="store_true", help="stop right after start (a smoke test)")
    up.set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="the local demo: up, then scan and deny a vulnerable image")
    demo.add_argument("--workdir", help="state directory (default: a new temporary directory)")
    demo.add_argument("--no-wait", action="store_true", help="stop once the demo has run")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    # SIGTERM (a test's timeout, kill) stops like Ctrl-C: the clusters' context managers stop
    # every process and give the host back its settings.
    signal.signal(signal.SIGTERM, _interrupted)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
