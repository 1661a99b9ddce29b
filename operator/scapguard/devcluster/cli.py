"""``scapguard-devcluster``: the local environment for the demo and for trying things by hand.

``scapguard-devcluster up`` starts the control plane (etcd, kube-apiserver,
controller-manager, scheduler, the OpenShift image API, the node agent) and a
registry on 127.0.0.1, prints how to reach them, and stops everything on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from scapguard.devcluster.cluster import DevCluster
from scapguard.devcluster.registry import Registry

log = logging.getLogger(__name__)


def _workdir(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="scapguard-dev-"))
    # Pods run as non-root local processes and must reach their own directories.
    path.chmod(0o755)
    return path


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    stop.wait()


def cmd_up(args: argparse.Namespace) -> int:
    workdir = _workdir(args.workdir)
    with DevCluster(workdir / "cluster") as cluster, Registry(workdir / "registry") as registry:
        kubectl = f"{cluster.binary} kubectl --kubeconfig={cluster.kubeconfig}"
        sys.stdout.write(
            "\nscapguard local environment is up "
            f"(control plane ready in {cluster.started_seconds:.1f}s)\n\n"
            f"  kubeconfig:   {cluster.kubeconfig}\n"
            f"  API server:   {cluster.server}\n"
            f"  registry:     {registry.host} (plain HTTP on loopback)\n"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scapguard-devcluster", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and a registry, wait for Ctrl-C")
    up.add_argument("--workdir", help="state directory (default: a new temporary directory)")
    up.add_argument("--no-wait", action="store_true", help="stop right after start (a smoke test)")
    up.set_defaults(func=cmd_up)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
