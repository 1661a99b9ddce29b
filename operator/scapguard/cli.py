"""``scapguard``: what kubectl does badly for scapguard's objects.

    scapguard report NAME [-n NS] [-o FILE]    the OpenSCAP HTML report of an ImageScan
    scapguard result NAME [-n NS]              its full result document (JSON)
    scapguard rescan NAME [-n NS]              rescan an ImageScan now
    scapguard rescan --policy NAME [-n NS]     rescan every image of a ScanPolicy

Uses $KUBECONFIG (or ~/.kube/config) like kubectl; the namespace defaults to the
kubeconfig context's. Exit codes: 0 done, 1 not available (no report yet), 2 usage/API error.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import io
import sys
from pathlib import Path

from scapguard.api import constants as c
from scapguard.k8s.api import CONFIGMAP, IMAGESCAN, SCANPOLICY, KubeError, Obj
from scapguard.k8s.client import KubeClient, current_namespace, load_client

# Reports are bounded by the ConfigMap they live in; a decompressed copy is too.
_MAX_REPORT_BYTES = 64 * 1024 * 1024


class CliError(Exception):
    """A user-facing failure: ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _stored(kube: KubeClient, name: str, namespace: str, key_field: str) -> bytes:
    scan = kube.get(IMAGESCAN, name, namespace)
    report = (scan.get("status") or {}).get("report") or {}
    config_map, key = report.get("configMap"), report.get(key_field)
    if not config_map or not key:
        state = (scan.get("status") or {}).get("state") or "not scanned yet"
        message = report.get("message") or f"no stored result ({state})"
        raise CliError(f"imagescan {namespace}/{name}: {message}", code=1)
    data: Obj = kube.get(CONFIGMAP, config_map, namespace).get("binaryData") or {}
    if key not in data:
        raise CliError(f"configmap {namespace}/{config_map} has no {key}", code=1)
    with gzip.GzipFile(fileobj=io.BytesIO(base64.b64decode(data[key]))) as gz:
        raw = gz.read(_MAX_REPORT_BYTES + 1)
    if len(raw) > _MAX_REPORT_BYTES:
        raise CliError(f"{key} decompresses to more than {_MAX_REPORT_BYTES} bytes")
    return raw


def _write(raw: bytes, output: str | None) -> None:
    if output and output != "-":
        Path(output).write_bytes(raw)
    else:
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()


def _rescan(kube: KubeClient, name: str, namespace: str, *, policy: bool) -> str:
    value = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    kind = SCANPOLICY if policy else IMAGESCAN
    kube.patch(kind, name, namespace, {"metadata": {"annotations": {c.RESCAN_ANNOTATION: value}}})
    return value


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not overwrite "scapguard -n NS report X".
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)"
    )
    parser = argparse.ArgumentParser(
        prog="scapguard", description=__doc__.split("\n\n")[0], parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser(
        "report", parents=[common], help="the OpenSCAP HTML report of an ImageScan"
    )
    report.add_argument("name")
    report.add_argument("-o", "--output", help="file to write (default: stdout)")
    result = sub.add_parser(
        "result", parents=[common], help="the full result document of an ImageScan (JSON)"
    )
    result.add_argument("name")
    result.add_argument("-o", "--output", help="file to write (default: stdout)")
    rescan = sub.add_parser(
        "rescan", parents=[common], help="rescan an ImageScan, or every image of a policy"
    )
    rescan.add_argument("name")
    rescan.add_argument("--policy", action="store_true", help="NAME is a ScanPolicy")
    args = parser.parse_args(argv)
    try:
        kube = load_client()
        namespace = getattr(args, "namespace", None) or current_namespace()
        if args.command == "report":
            _write(_stored(kube, args.name, namespace, "reportKey"), args.output)
        elif args.command == "result":
            _write(_stored(kube, args.name, namespace, "resultKey"), args.output)
        else:
            value = _rescan(kube, args.name, namespace, policy=args.policy)
            kind = "scanpolicy" if args.policy else "imagescan"
            sys.stdout.write(f"{kind}/{args.name} rescan requested ({value})\n")
    except CliError as exc:
        sys.stderr.write(f"scapguard: {exc}\n")
        return exc.code
    except KubeError as exc:
        sys.stderr.write(f"scapguard: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
