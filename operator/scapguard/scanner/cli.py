"""``scapguard-scan IMAGE [--policy-file p.yaml]``: scan one image by digest.

Or a local directory instead of IMAGE: ``--oci-layout DIR [--oci-ref NAME]`` (an OCI image
layout: copied, checked and unpacked like a pulled image) or ``--rootfs DIR`` (an unpacked root
filesystem, scanned in place and never written to); see :mod:`scapguard.scanner.local`.

Standalone (no ``SCAPGUARD_RESULTS_URL``): writes ``result.json`` and ``report.html`` to
``--output-dir`` and exits 0 (pass), 1 (fail) or 2 (error), the verdict coming from
``scapguard.api.evaluation.evaluate`` with the policy's failOn/failOnRules/exceptions.

In a scanner Job (``SCAPGUARD_RESULTS_URL`` set): POSTs the result with the bearer token from
``SCAPGUARD_RESULTS_TOKEN_FILE`` (CA bundle ``SCAPGUARD_RESULTS_CA_FILE``) and exits 0 once it
is delivered (whatever the verdict: the operator decides), 2 if it could not be delivered.

Other environment: ``REGISTRY_AUTH_FILE`` (a ``.dockerconfigjson``; same as ``--authfile``),
``SCAPGUARD_WORK_DIR`` (scratch space; default ``$TMPDIR``), ``SCAPGUARD_CONTENT_DIR`` (where
ConfigMaps named by ``configMapRef`` are mounted: ``DIR/<name>/<key>``; default
``/var/run/scapguard-content``), ``SCAPGUARD_SSG_DIR`` (SSG datastreams).

``SCAPGUARD_CONTENT_URL`` (set in scanner Jobs): the operator's content endpoint for this scan.
The policy's feed, datastream and tailoring file, and catalogue feeds, then come from the
operator's content cache (same bearer token and CA as the results), never from their source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import yaml

from scapguard.api.errors import SpecError
from scapguard.api.evaluation import FAIL, PASS, evaluate
from scapguard.api.policy import ConfigMapRef, ContentSource, ScanPolicySpec, parse_policy_spec
from scapguard.scanner import content, sandbox
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.handoff import Endpoint, HandoffError, post, write_output_dir
from scapguard.scanner.pipeline import DEFAULT_PROFILE, ScanRequest, scan
from scapguard.scanner.pull import PullOptions, split_reference
from scapguard.scanner.unpack import UnpackLimits

log = logging.getLogger(__name__)

EXIT_PASS: Final = 0
EXIT_FAIL: Final = 1
EXIT_ERROR: Final = 2
DEFAULT_CONTENT_DIR: Final = "/var/run/scapguard-content"
_MAX_POLICY: Final = 1024 * 1024
POLICY_TIMEOUT_SHARE: Final = 0.85


class UsageError(ValueError):
    """Bad command line or policy file; the message names the option or field."""


def load_policy(path: Path | None) -> ScanPolicySpec:
    if path is None:
        return parse_policy_spec({})
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--policy-file {path}: {exc.strerror or exc}") from exc
    if len(text) > _MAX_POLICY:
        raise UsageError(f"--policy-file {path}: larger than 1 MiB")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"--policy-file {path}: not YAML: {exc}") from exc
    if isinstance(doc, Mapping) and ("kind" in doc or "spec" in doc):
        if doc.get("kind", "ScanPolicy") != "ScanPolicy":
            raise UsageError(f"--policy-file {path}: kind {doc.get('kind')!r} is not ScanPolicy")
        doc = doc.get("spec") or {}
    try:
        return parse_policy_spec(doc if doc is not None else {})
    except SpecError as exc:
        raise UsageError(f"--policy-file {path}: {exc}") from exc


def _config_map_file(ref: ConfigMapRef, content_dir: Path) -> Path:
    return content_dir / ref.name / ref.key


def _override(source: ContentSource | None, content_dir: Path) -> content.ContentOverride | None:
    if source is None:
        return None
    if source.config_map is not None:
        return content.ContentOverride(
            file=_config_map_file(source.config_map, content_dir), sha256=source.sha256
        )
    return content.ContentOverride(url=source.url, sha256=source.sha256)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scapguard-scan", description=__doc__.splitlines()[0] if __doc__ else None
    )
    _add_image_arguments(p)
    _add_io_arguments(p)
    _add_content_arguments(p)
    _add_run_arguments(p)
    return p


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    """What to scan: an image by digest, an OCI layout or a root filesystem."""
    p.add_argument(
        "image", nargs="?", help="HOST/REPO@sha256:<digest> (or --oci-layout / --rootfs)"
    )
    p.add_argument(
        "--oci-layout",
        type=Path,
        metavar="DIR",
        help="scan the image in this OCI image layout (oci-layout + index.json) instead",
    )
    p.add_argument(
        "--oci-ref",
        metavar="NAME",
        help="with --oci-layout: the image whose org.opencontainers.image.ref.name is NAME",
    )
    p.add_argument(
        "--rootfs",
        type=Path,
        metavar="DIR",
        help="scan this unpacked root filesystem in place (read only) instead",
    )


def _add_io_arguments(p: argparse.ArgumentParser) -> None:
    """Where things are: the policy, the output, registry access, scratch space, content."""
    p.add_argument("--policy-file", type=Path, help="a ScanPolicy object or its spec (YAML)")
    p.add_argument("--output-dir", type=Path, help="write result.json and report.html here")
    p.add_argument("--authfile", type=Path, default=_env_path("REGISTRY_AUTH_FILE"))
    p.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        help="HOST[:PORT] to reach without TLS verification (repeatable)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("SCAPGUARD_WORK_DIR") or tempfile.gettempdir()),
    )
    p.add_argument(
        "--content-dir",
        type=Path,
        default=Path(os.environ.get("SCAPGUARD_CONTENT_DIR", DEFAULT_CONTENT_DIR)),
    )
    p.add_argument(
        "--ssg-dir",
        type=Path,
        default=Path(os.environ.get("SCAPGUARD_SSG_DIR", str(content.DEFAULT_SSG_DIR))),
    )


def _add_content_arguments(p: argparse.ArgumentParser) -> None:
    """Which scans run, with which content (overriding the policy's)."""
    p.add_argument("--feed-file", type=Path, help="OVAL feed file (overrides the policy)")
    p.add_argument("--feed-url", help="OVAL feed URL (with --feed-sha256)")
    p.add_argument("--feed-sha256")
    p.add_argument("--datastream-file", type=Path)
    p.add_argument("--tailoring-file", type=Path)
    p.add_argument("--profile")
    p.add_argument("--compliance", action="store_true", help="also run the compliance scan")
    p.add_argument("--no-vulnerabilities", action="store_true")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How the scan runs: id mapping, platform, limits, time, logging."""
    p.add_argument(
        "--id-mapping", choices=["auto", "userns", "inherited", "rootless"], default="auto"
    )
    p.add_argument("--arch", default="amd64", help="platform to pick from an image index")
    p.add_argument("--max-compressed-bytes", type=int, default=PullOptions.max_compressed_bytes)
    p.add_argument("--max-unpacked-bytes", type=int)
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds for the whole scan (default: 85%% of the policy's timeoutSeconds)",
    )
    p.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="debugging: leave the pulled image, tree and oscap files in --work-dir",
    )
    p.add_argument("--log-level", default="INFO")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def check_source(args: argparse.Namespace) -> None:
    """Exactly one of IMAGE, ``--oci-layout`` and ``--rootfs``; errors name the path."""
    given = [
        name
        for name, value in (
            ("IMAGE", args.image),
            ("--oci-layout", args.oci_layout),
            ("--rootfs", args.rootfs),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise UsageError(
            "give one of IMAGE, --oci-layout DIR or --rootfs DIR"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if args.oci_ref is not None and args.oci_layout is None:
        raise UsageError("--oci-ref needs --oci-layout")
    if args.image is not None:
        try:
            split_reference(args.image)
        except ScanFailure as exc:
            raise UsageError(exc.message) from exc
    elif args.rootfs is not None:
        if not args.rootfs.is_dir():
            raise UsageError(f"--rootfs {args.rootfs}: not a directory")
    else:
        layout: Path = args.oci_layout
        if not layout.is_dir():
            raise UsageError(f"--oci-layout {layout}: not a directory")
        for name in ("oci-layout", "index.json"):
            if not (layout / name).is_file():
                raise UsageError(
                    f"--oci-layout {layout}: no {name} (not an OCI image layout; "
                    "an unpacked tree is --rootfs)"
                )


def content_server() -> content.ContentServer | None:
    """The operator's content endpoint when the environment names one (a scan Job)."""
    url = os.environ.get("SCAPGUARD_CONTENT_URL")
    if not url:
        return None
    token = os.environ.get("SCAPGUARD_RESULTS_TOKEN_FILE")
    if not token:
        raise UsageError("SCAPGUARD_CONTENT_URL needs SCAPGUARD_RESULTS_TOKEN_FILE")
    return content.ContentServer(url, Path(token), _env_path("SCAPGUARD_RESULTS_CA_FILE"))


def _served(
    source: ContentSource | ConfigMapRef | None, what: str
) -> content.ContentOverride | None:
    if source is None:
        return None
    pinned = source.sha256 if isinstance(source, ContentSource) else None
    return content.ContentOverride(served=what, sha256=pinned)


def build_request(args: argparse.Namespace, spec: ScanPolicySpec) -> ScanRequest:
    check_source(args)
    content_dir: Path = args.content_dir
    server = content_server()
    feed = _override(spec.vulnerabilities.feed, content_dir)
    if server is not None:
        feed = _served(spec.vulnerabilities.feed, "feed")
    if args.feed_file is not None:
        feed = content.ContentOverride(file=args.feed_file, sha256=args.feed_sha256)
    elif args.feed_url is not None:
        if not args.feed_sha256:
            raise UsageError("--feed-url needs --feed-sha256")
        feed = content.ContentOverride(url=args.feed_url, sha256=args.feed_sha256)
    datastream = _override(spec.compliance.datastream, content_dir)
    if server is not None:
        datastream = _served(spec.compliance.datastream, "datastream")
    if args.datastream_file is not None:
        datastream = content.ContentOverride(file=args.datastream_file)
    tailoring: content.ContentOverride | None = None
    if args.tailoring_file is not None:
        tailoring = content.ContentOverride(file=args.tailoring_file)
    elif server is not None:
        tailoring = _served(spec.compliance.tailoring, "tailoring")
    elif spec.compliance.tailoring is not None:
        tailoring = content.ContentOverride(
            file=_config_map_file(spec.compliance.tailoring, content_dir)
        )
    limits_kw: dict[str, Any] = {}
    if args.max_unpacked_bytes is not None:
        limits_kw["max_unpacked_bytes"] = args.max_unpacked_bytes
    # The Job's activeDeadlineSeconds is the policy's timeoutSeconds: keep 15% of it to report.
    timeout = float(args.timeout or spec.scanner.timeout_seconds * POLICY_TIMEOUT_SHARE)
    return ScanRequest(
        reference=args.image or "",
        oci_layout=args.oci_layout,
        oci_ref=args.oci_ref,
        rootfs=args.rootfs,
        workdir=args.work_dir,
        pull=PullOptions(
            authfile=args.authfile,
            insecure_registries=frozenset(
                [*spec.scanner.insecure_registries, *args.insecure_registry]
            ),
            max_compressed_bytes=args.max_compressed_bytes,
            arch=args.arch,
            timeout=timeout,
        ),
        limits=UnpackLimits(**limits_kw),
        vulnerabilities=spec.vulnerabilities.enabled and not args.no_vulnerabilities,
        feed=feed,
        compliance=spec.compliance.enabled or args.compliance,
        datastream=datastream,
        profile=args.profile or spec.compliance.profile or DEFAULT_PROFILE,
        tailoring=tailoring,
        ssg_dir=args.ssg_dir,
        content_server=server,
        id_mapping=cast(sandbox.Requested, args.id_mapping),
        timeout=timeout,
        keep_workdir=args.keep_work_dir,
    )


def _summary(verdict_result: str, doc: Mapping[str, Any], message: str) -> str:
    lines = [f"{doc['image']['reference']}: {verdict_result} ({message})"]
    if doc.get("os"):
        lines.append(f"  os: {doc['os']['prettyName']}")
    vul = doc.get("vulnerabilities")
    if vul:
        counts: dict[str, int] = {}
        for f in vul["findings"]:
            counts[f["severity"]] = counts.get(f["severity"], 0) + 1
        lines.append(
            "  vulnerabilities: "
            + ", ".join(
                f"{k}={counts.get(k, 0)}" for k in ("critical", "high", "medium", "low", "unknown")
            )
        )
    com = doc.get("compliance")
    if com:
        failed = sum(1 for r in com["rules"] if r["result"] == "fail")
        lines.append(
            f"  compliance: {failed} failed rules of {len(com['rules'])}, score {com['score']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        spec = load_policy(args.policy_file)
        request = build_request(args, spec)
    except UsageError as exc:
        sys.stderr.write(f"scapguard-scan: {exc}\n")
        return EXIT_ERROR
    output = scan(request)
    result = output.result
    url = os.environ.get("SCAPGUARD_RESULTS_URL")
    if args.output_dir is not None:
        write_output_dir(result, output.report_html, args.output_dir)
    if url:
        token = os.environ.get("SCAPGUARD_RESULTS_TOKEN_FILE")
        if not token:
            sys.stderr.write(
                "scapguard-scan: SCAPGUARD_RESULTS_URL needs SCAPGUARD_RESULTS_TOKEN_FILE\n"
            )
            return EXIT_ERROR
        endpoint = Endpoint(url, Path(token), _env_path("SCAPGUARD_RESULTS_CA_FILE"))
        try:
            post(result, output.report_html, endpoint)
        except HandoffError as exc:
            log.error("%s", exc)
            return EXIT_ERROR
        return EXIT_PASS
    if args.output_dir is None:
        sys.stderr.write("scapguard-scan: no --output-dir: result not written\n")
    verdict = evaluate(result, spec, dt.datetime.now(dt.UTC))
    sys.stdout.write(_summary(verdict.result, result.to_dict(), verdict.message))
    if verdict.result == PASS:
        return EXIT_PASS
    if verdict.result == FAIL:
        return EXIT_FAIL
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
