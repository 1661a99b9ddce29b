"""``scapguard``: what kubectl does badly for scapguard's objects.

    scapguard report NAME [-o FILE]        the OpenSCAP HTML report of an ImageScan
    scapguard result NAME [-o FILE]        its full result document (JSON)
    scapguard rescan NAME                  rescan an ImageScan now
    scapguard rescan --policy NAME         rescan every image of a ScanPolicy
    scapguard affected CVE-ID [-o table|wide|json|yaml]
                                           every image (ImageScan) with that CVE among its
                                           findings, the ones the status cut included

Every subcommand takes kubectl's --kubeconfig FILE, --context NAME, -n/--namespace NS and
-A/--all-namespaces. Without --kubeconfig it uses $KUBECONFIG (or ~/.kube/config); the
namespace defaults to the context's. With -A, ``affected`` searches every namespace and the
others find NAME in whichever namespace holds it (an error if several do).
Exit codes: 0 done (``affected`` also when no image matched: it says so on stderr),
1 not available (no report yet), 2 usage/API error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from scapguard.api import constants as c
from scapguard.api.affected import (
    AffectedImage,
    affected_image,
    findings_cut,
    ordered,
    parse_query,
)
from scapguard.k8s.api import (
    CONFIGMAP,
    IMAGESCAN,
    SCANPOLICY,
    Kind,
    KubeError,
    Obj,
    name_of,
    namespace_of,
)
from scapguard.k8s.client import KubeClient, current_namespace, load_client
from scapguard.results.model import ScanResult, ScanResultError

# Reports are bounded by the ConfigMap they live in; a decompressed copy is too.
_MAX_REPORT_BYTES = 64 * 1024 * 1024


class CliError(Exception):
    """A user-facing failure: ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _stored(kube: KubeClient, name: str, namespace: str, key_field: str) -> bytes:
    return _stored_for(kube, kube.get(IMAGESCAN, name, namespace), key_field)


def _stored_for(kube: KubeClient, scan: Obj, key_field: str) -> bytes:
    """A blob of the scan's result ConfigMap, inflated. The full result is trusted only when it
    has the sha256 the operator recorded in the status (namespace users may edit ConfigMaps)."""
    name, namespace = name_of(scan), namespace_of(scan) or ""
    report = (scan.get("status") or {}).get("report") or {}
    config_map, key = report.get("configMap"), report.get(key_field)
    if not config_map or not key:
        state = (scan.get("status") or {}).get("state") or "not scanned yet"
        message = report.get("message") or f"no stored result ({state})"
        raise CliError(f"imagescan {namespace}/{name}: {message}", code=1)
    data: Obj = kube.get(CONFIGMAP, config_map, namespace).get("binaryData") or {}
    if key not in data:
        raise CliError(f"configmap {namespace}/{config_map} has no {key}", code=1)
    try:
        packed = base64.b64decode(data[key], validate=True)
    except (binascii.Error, TypeError) as exc:
        raise CliError(f"configmap {namespace}/{config_map}: {key} is not base64") from exc
    recorded = report.get("resultSha256")
    if key_field == "resultKey" and recorded and hashlib.sha256(packed).hexdigest() != recorded:
        raise CliError(
            f"configmap {namespace}/{config_map}: {key} is not the result the operator stored "
            f"(its sha256 differs from imagescan {name}'s status.report.resultSha256)"
        )
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as gz:
            raw = gz.read(_MAX_REPORT_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise CliError(f"configmap {namespace}/{config_map}: {key}: {exc}") from exc
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


def _warn(message: str) -> None:
    sys.stderr.write(f"scapguard: warning: {message}\n")


def _locate(kube: KubeClient, kind: Kind, name: str) -> str:
    """The namespace of the one ``kind`` named ``name`` (``-A`` with a NAME)."""
    found = sorted(
        namespace_of(obj) or ""
        for obj in kube.list(kind, None, field_selector=f"metadata.name={name}")
    )
    if not found:
        raise CliError(f"{kind.kind.lower()} {name} not found in any namespace")
    if len(found) > 1:
        raise CliError(
            f"{kind.kind.lower()} {name} exists in several namespaces "
            f"({', '.join(found)}): choose one with -n"
        )
    return found[0]


def _full_result(kube: KubeClient, scan: Obj) -> ScanResult:
    return ScanResult.from_json(_stored_for(kube, scan, "resultKey"))


def find_affected(kube: KubeClient, query: str, namespace: str | None) -> list[AffectedImage]:
    """The rows of ``scapguard affected`` (``namespace`` None: all namespaces).

    A scan whose status cut its findings is searched in its stored full result too, unless
    the status already lists the CVE itself; a stored result that cannot be read or trusted
    leaves the status's findings, with a warning.
    """
    rows: list[AffectedImage] = []
    for scan in kube.list(IMAGESCAN, namespace):
        row = affected_image(scan, query)
        if (row is None or row.matched_by != "id") and findings_cut(scan):
            where = f"imagescan {namespace_of(scan)}/{name_of(scan)}"
            try:
                result = _full_result(kube, scan)
            except (CliError, KubeError, ScanResultError) as exc:
                _warn(f"{where}: only the findings in its status were searched: {exc}")
            else:
                row = affected_image(scan, query, result) or row
                if result.vulnerabilities is not None and result.vulnerabilities.truncated:
                    _warn(f"{where}: the scanner itself kept only part of the findings")
        if row is not None:
            rows.append(row)
    return ordered(rows)


def _short_digest(digest: str) -> str:
    return digest[: len("sha256:") + 12]


def format_table(rows: Sequence[AffectedImage], *, all_namespaces: bool, wide: bool) -> str:
    """A kubectl-like table: upper-case headers, columns three spaces apart."""
    header = ["IMAGESCAN", "TAGS", "IMAGE", "DIGEST", "POLICY", "SEVERITY", "RESULT"]
    if wide:
        header += ["DENIED", "FINDING", "PACKAGES"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    table = [header]
    for row in rows:
        cells = [
            row.scan,
            ",".join(row.tag_names()) or "<none>",
            row.repository,
            row.digest if wide else _short_digest(row.digest),
            row.policy,
            row.finding.severity,
            row.result or "<none>",
        ]
        if wide:
            packages = [f"{n}<{f}" if f else n for n, f in row.finding.packages]
            cells += [str(row.denied).lower(), row.finding.id, ",".join(packages) or "<none>"]
        if all_namespaces:
            cells.insert(0, row.namespace)
        table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in table
    )


def format_rows(rows: Sequence[AffectedImage], output: str, *, all_namespaces: bool) -> str:
    """``affected``'s stdout: a table (``table``, ``wide``) or a list (``json``, ``yaml``)."""
    if output == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump([r.to_dict() for r in rows], sort_keys=False)
    if not rows:
        return ""
    return format_table(rows, all_namespaces=all_namespaces, wide=output == "wide")


def _affected(kube: KubeClient, args: argparse.Namespace, namespace: str | None) -> None:
    try:
        query = parse_query(args.cve)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    rows = find_affected(kube, query, namespace)
    sys.stdout.write(format_rows(rows, args.output, all_namespaces=namespace is None))
    if not rows:
        where = f"in namespace {namespace}" if namespace else "in any namespace"
        sys.stderr.write(f"No images affected by {query} {where}.\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's own default must not overwrite "scapguard -n NS report X".
    common.add_argument(
        "-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)"
    )
    common.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=argparse.SUPPRESS,
        help="every namespace (ignores -n); with a NAME: wherever it is",
    )
    common.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG)"
    )
    common.add_argument(
        "--context", default=argparse.SUPPRESS, help="kubeconfig context (default: the current)"
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
    affected = sub.add_parser(
        "affected", parents=[common], help="the images (ImageScans) that have a CVE"
    )
    affected.add_argument("cve", metavar="CVE-ID", help="e.g. CVE-2024-3094 (any letter case)")
    affected.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json", "yaml"),
        default="table",
        help="output format (default: table)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    all_namespaces = bool(getattr(args, "all_namespaces", False))
    config = {
        "kubeconfig": getattr(args, "kubeconfig", None),
        "context": getattr(args, "context", None),
    }
    try:
        kube = load_client(**config)
        namespace: str | None = None
        if not all_namespaces:
            namespace = getattr(args, "namespace", None) or current_namespace(**config)
        if args.command == "affected":
            _affected(kube, args, namespace)
            return 0
        kind = SCANPOLICY if args.command == "rescan" and args.policy else IMAGESCAN
        if namespace is None:
            namespace = _locate(kube, kind, args.name)
        if args.command == "report":
            _write(_stored(kube, args.name, namespace, "reportKey"), args.output)
        elif args.command == "result":
            _write(_stored(kube, args.name, namespace, "resultKey"), args.output)
        else:
            value = _rescan(kube, args.name, namespace, policy=args.policy)
            sys.stdout.write(f"{kind.kind.lower()}/{args.name} rescan requested ({value})\n")
    except CliError as exc:
        sys.stderr.write(f"scapguard: {exc}\n")
        return exc.code
    except KubeError as exc:
        sys.stderr.write(f"scapguard: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
