"""One scan, end to end: pull -> inspect + unpack -> detect OS -> content -> oscap -> parse.

Every failure becomes a result with ``outcome: Error`` and the step's reason, and an exception
no step foresaw (a scanner bug) one with reason ``ScannerError`` naming it, so the operator
always gets a result; the work directory (OCI layout, unpacked tree, oscap scratch) is removed
in all cases.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from scapguard import __version__
from scapguard.results.model import (
    Compliance,
    ErrorReason,
    ImageRef,
    ImageSource,
    OSInfo,
    RuleResult,
    ScanError,
    ScannerInfo,
    ScanResult,
    Vulnerabilities,
)
from scapguard.results.oval import OvalResults, parse_oval_results
from scapguard.results.xccdf import parse_xccdf_results
from scapguard.results.xmlsafe import XMLContentError
from scapguard.scanner import (
    content,
    feedfilter,
    inventory,
    local,
    ocifeed,
    oscap,
    osdetect,
    sandbox,
    unpack,
)
from scapguard.scanner.errors import ScanFailure
from scapguard.scanner.pull import PullOptions, pull, split_reference

log = logging.getLogger(__name__)

DEFAULT_PROFILE: Final = "xccdf_org.ssgproject.content_profile_standard"
#: Rules whose result depends on file owners or modes: not judgeable after a rootless unpack.
OWNERSHIP_RULE: Final = re.compile(
    r"(file_owner|file_groupowner|file_permissions|dir_perms|dir_owner|dir_groupowner|"
    r"_ownership|permissions_|_perms_|unowned|world_writable|sticky|_suid|_sgid|setuid|setgid)"
)
#: Definition ids named in a ProbeFailed message; the rest are counted.
MAX_NAMED_DEFINITIONS: Final = 3
ROOTFS_REASON: Final = (
    "root filesystem scanned in place: files have the owners the scanning user sees, not "
    "necessarily the image's, so rules on ownership and permissions are reported notchecked "
    "(scan the image or an OCI layout to judge them)"
)
ROOTLESS_REASON: Final = (
    "rootless unpack: file owners were not preserved, so rules on ownership and permissions "
    "are reported notchecked (run with a subordinate id range for --id-mapping=userns)"
)


@dataclass(frozen=True)
class ScanRequest:
    """One scan. The image is ``reference`` (``HOST/REPO@DIGEST``, pulled), or a local
    directory: ``oci_layout`` (the image ``oci_ref`` or its only one, copied and unpacked like
    a pulled image) or ``rootfs`` (scanned in place, never written to); see
    :mod:`scapguard.scanner.local`."""

    reference: str
    workdir: Path
    pull: PullOptions = field(default_factory=PullOptions)
    limits: unpack.UnpackLimits = field(default_factory=unpack.UnpackLimits)
    vulnerabilities: bool = True
    feed: content.ContentOverride | None = None
    compliance: bool = False
    datastream: content.ContentOverride | None = None
    profile: str = DEFAULT_PROFILE
    tailoring: content.ContentOverride | None = None
    ssg_dir: Path = content.DEFAULT_SSG_DIR
    #: The operator's content endpoint (scan Jobs): policy content and catalogue feeds from
    #: its cache instead of their sources.
    content_server: content.ContentServer | None = None
    id_mapping: sandbox.Requested = "auto"
    timeout: float = 1800.0  # the whole scan's budget; each step gets what is left of it
    keep_workdir: bool = False
    oci_layout: Path | None = None
    oci_ref: str | None = None
    rootfs: Path | None = None

    @property
    def source(self) -> ImageSource:
        if self.rootfs is not None:
            return "rootfs"
        return "ociLayout" if self.oci_layout is not None else "registry"

    def image_ref(self, digest: str | None) -> ImageRef:
        """What the result says was scanned (``digest``: the image's, once known)."""
        if self.rootfs is not None:
            path = str(self.rootfs.absolute())
            return ImageRef(f"rootfs:{path}", None, "rootfs", path)
        zero = "sha256:" + "0" * 64
        if self.oci_layout is not None:
            path = str(self.oci_layout.absolute())
            return ImageRef(f"oci:{path}@{digest or zero}", digest or zero, "ociLayout", path)
        digest = digest or zero
        ref = self.reference
        return ImageRef(ref if digest in ref else f"{ref}@{digest}", digest)


@dataclass(frozen=True)
class ScanOutput:
    result: ScanResult
    report_html: bytes | None


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - start, 3)


class _Budget:
    """What is left of the scan's time budget; a step never gets more than that."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ScanFailure(ErrorReason.TIMEOUT, f"scan exceeded its {self.seconds:.0f}s budget")
        return remaining


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _combined_report(parts: list[tuple[str, bytes]]) -> bytes | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0][1]
    frames = "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<iframe style="width:100%;height:80vh" '
        f'sandbox srcdoc="{html.escape(body.decode("utf-8", errors="replace"))}"></iframe>'
        for title, body in parts
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>scapguard report</title>'
        f"</head><body>{frames}</body></html>"
    ).encode()


def _scanner_info(oscap_version: str | None, box: sandbox.Sandbox | None) -> ScannerInfo:
    return ScannerInfo(
        __version__,
        oscap_version,
        box.mode if box else None,
        box.fallback if box else None,
    )


def _mark_rootless(rules: tuple[RuleResult, ...]) -> tuple[RuleResult, ...]:
    return tuple(
        replace(r, result="notchecked")
        if OWNERSHIP_RULE.search(r.id) and r.result in {"pass", "fail"}
        else r
        for r in rules
    )


@dataclass
class _Progress:
    """What the scan knows so far: enough for a result whichever step fails."""

    started: dt.datetime
    clock: _Clock
    budget: _Budget
    digest: str | None = None
    os: OSInfo | None = None
    box: sandbox.Sandbox | None = None
    oscap_version: str | None = None

    def result(
        self,
        req: ScanRequest,
        *,
        error: ScanError | None = None,
        vulnerabilities: Vulnerabilities | None = None,
        compliance: Compliance | None = None,
    ) -> ScanResult:
        """Completed, or Error when ``error`` is given."""
        return ScanResult(
            image=req.image_ref(self.digest),
            os=self.os,
            outcome="Completed" if error is None else "Error",
            error=error,
            vulnerabilities=vulnerabilities,
            compliance=compliance,
            scanner=_scanner_info(self.oscap_version, self.box),
            started_at=self.started,
            finished_at=_now(),
            timings=self.clock.timings,
        )


@dataclass(frozen=True)
class _Tree:
    """The root filesystem to scan, its OS and its architecture."""

    rootfs: Path
    found: osdetect.DetectedOS
    arch: str


@dataclass(frozen=True)
class _Content:
    feed: content.ResolvedContent | None
    datastream: content.ResolvedContent | None
    tailoring: content.ResolvedContent | None


def scan(req: ScanRequest) -> ScanOutput:
    progress = _Progress(started=_now(), clock=_Clock(), budget=_Budget(req.timeout))
    work: Path | None = None
    try:
        if req.source == "registry":
            progress.digest = split_reference(req.reference)[2]
        box = progress.box = sandbox.select(req.id_mapping)
        progress.oscap_version = oscap.version()
        req.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="scan-", dir=req.workdir))
        if req.rootfs is not None:
            tree = _rootfs_in_place(req.rootfs, req.pull.arch, progress)
        else:
            tree = _unpacked_image(req, work, box, progress)
        result, reports = _scan_tree(req, tree, work / "oscap", box, progress)
    except (ScanFailure, XMLContentError) as exc:
        reason = exc.reason if isinstance(exc, ScanFailure) else ErrorReason.RESULTS_INVALID
        message = exc.message if isinstance(exc, ScanFailure) else str(exc)
        scanned = req.image_ref(progress.digest).reference
        log.error("scan of %s failed (%s): %s", scanned, reason, message)
        error = ScanError(reason, message[:4096])
    except Exception as exc:  # a bug: reported as a result, not a crash without one
        log.exception("scan of %s failed unexpectedly", req.image_ref(progress.digest).reference)
        message = f"unexpected {type(exc).__name__} in the scanner: {exc}"
        error = ScanError(ErrorReason.SCANNER_ERROR, message[:4096])
    else:
        return ScanOutput(result, _combined_report(reports))
    finally:
        if work is not None and progress.box is not None and not req.keep_workdir:
            progress.box.remove_tree(work)
    return ScanOutput(progress.result(req, error=error), None)


def _rootfs_in_place(rootfs: Path, arch: str, progress: _Progress) -> _Tree:
    """A root filesystem given as such: checked and scanned where it is, never written to."""
    with progress.clock.phase("detect"):
        rootfs = local.check_rootfs(rootfs)
        escaping = local.escaping_symlinks(rootfs)
        if escaping:
            log.warning(
                "%s: %d symlinks are absolute or climb out of the tree; a root "
                "filesystem is scanned in place, so they are not contained",
                rootfs,
                escaping,
            )
        found = osdetect.detect(rootfs)
        progress.os = found.info
    return _Tree(rootfs, found, arch)


def _unpacked_image(
    req: ScanRequest, work: Path, box: sandbox.Sandbox, progress: _Progress
) -> _Tree:
    """The image pulled (or copied from an OCI layout), checked and unpacked under ``work``."""
    with progress.clock.phase("pull"):
        if req.oci_layout is not None:
            image = local.copy_layout(
                req.oci_layout,
                work / "oci",
                ref=req.oci_ref,
                arch=req.pull.arch,
                max_compressed_bytes=req.pull.max_compressed_bytes,
            )
            progress.digest = image.digest
        else:
            pull_options = replace(req.pull, timeout=progress.budget.left())
            image = pull(req.reference, work / "oci", pull_options)
    with progress.clock.phase("unpack"):
        unpack.inspect_layers(image, req.limits)
        rootfs = unpack.unpack(image, work / "bundle", box, timeout=progress.budget.left())
        found = osdetect.detect(rootfs)
        progress.os = found.info
    return _Tree(rootfs, found, image.architecture or req.pull.arch)


def _scan_tree(
    req: ScanRequest, tree: _Tree, scratch: Path, box: sandbox.Sandbox, progress: _Progress
) -> tuple[ScanResult, list[tuple[str, bytes]]]:
    """Content, oscap and the parsed results: the Completed result and its reports."""
    budget = progress.budget
    oscap.ensure_writable_by_sandbox(scratch)
    with progress.clock.phase("content"):
        feed = (
            vuln_content(req, tree.found, scratch, budget.left()) if req.vulnerabilities else None
        )
        ds, tailoring = (
            compliance_content(req, tree.found, scratch, budget.left())
            if req.compliance
            else (None, None)
        )
    chosen = _Content(feed, ds, tailoring)
    env = oscap.environment(tree.rootfs, scratch, tree.found, tree.arch)
    with progress.clock.phase("oscap"):
        _run_oscap(req, box, env, tree, chosen, scratch, budget)
    reports: list[tuple[str, bytes]] = []
    with progress.clock.phase("parse"):
        vulnerabilities = _vulnerabilities(feed, scratch, reports)
        compliance = _compliance(req, ds, scratch, reports, tree.found, box)
    return progress.result(req, vulnerabilities=vulnerabilities, compliance=compliance), reports


def _run_oscap(
    req: ScanRequest,
    box: sandbox.Sandbox,
    env: dict[str, str],
    tree: _Tree,
    chosen: _Content,
    scratch: Path,
    budget: _Budget,
) -> None:
    """The canary (is the package database readable?), then the feed and the profile."""
    canary = oscap.run_canary(box, env, scratch, tree.found.info.family, timeout=budget.left())
    if chosen.feed is not None:
        evaluate_feed(
            box,
            env,
            chosen.feed,
            installed_packages(tree.found, tree.rootfs, canary),
            scratch,
            timeout=budget.left(),
            rootfs=tree.rootfs,
            arch=tree.arch,
        )
    if chosen.datastream is not None:
        oscap.xccdf_eval(
            box,
            env,
            chosen.datastream.path,
            req.profile,
            scratch / "xccdf-results.xml",
            scratch / "xccdf-report.html",
            tailoring=chosen.tailoring.path if chosen.tailoring else None,
            timeout=budget.left(),
        )


def installed_packages(
    found: osdetect.DetectedOS, rootfs: Path, canary: oscap.Canary
) -> frozenset[str] | None:
    """Every installed package name, or None when unknown (then nothing is pre-filtered)."""
    if canary.packages is not None:
        return canary.packages
    if found.info.family == "debian":
        return inventory.dpkg_packages(rootfs)
    return None


def evaluate_feed(
    box: sandbox.Sandbox,
    env: dict[str, str],
    feed: content.ResolvedContent,
    installed: frozenset[str] | None,
    scratch: Path,
    *,
    timeout: float,
    rootfs: Path,
    arch: str,
) -> feedfilter.Filtered | None:
    """``oscap oval eval`` of the feed, cut to what can be true on the image when ``installed``
    is known (:mod:`scapguard.scanner.feedfilter`): writes ``oval-results.xml`` and
    ``oval-report.html`` in ``scratch``.

    A feed of Canonical's OCI flavour (:mod:`scapguard.scanner.ocifeed`) is evaluated with a
    probe root holding only the ``manifest`` written from the image's dpkg database (``arch``,
    the image's architecture, decides which names get ``:ARCH``), not the image tree."""
    index = feedfilter.load(feed.path, feed.info.sha256)
    if ocifeed.is_manifest_feed(index):
        lines = inventory.dpkg_manifest(rootfs, oscap.debian_arch(arch))
        if lines is None:
            raise ScanFailure(
                ErrorReason.CONTENT_INVALID,
                f"{feed.info.name} reads a dpkg manifest (Canonical's OCI OVAL), but the "
                f"image has no readable {inventory.DPKG_STATUS}: wrong feed for this OS?",
            )
        manifest_dir = scratch / "oci-manifest"
        ocifeed.write_manifest(lines, manifest_dir)
        env = oscap.manifest_root(env, manifest_dir)
    definitions = feed.path
    filtered = None
    if installed is not None:
        filtered = feedfilter.prefilter(index, installed, scratch / "oval-filtered.xml")
        definitions = filtered.path
    oscap.oval_eval(
        box,
        env,
        definitions,
        scratch / "oval-results.xml",
        scratch / "oval-report.html",
        timeout=timeout,
        content=f"{feed.info.name} (sha256 {feed.info.sha256})",
    )
    return filtered


def _vulnerabilities(
    feed: content.ResolvedContent | None, scratch: Path, reports: list[tuple[str, bytes]]
) -> Vulnerabilities | None:
    if feed is None:
        return None
    parsed = parse_oval_results(scratch / "oval-results.xml")
    failure = oval_failure(parsed)
    if failure is not None:
        raise failure
    reports.append(("Vulnerabilities (OVAL)", (scratch / "oval-report.html").read_bytes()))
    return Vulnerabilities(feed.info, parsed.findings, parsed.truncated)


def oval_failure(parsed: OvalResults) -> ScanFailure | None:
    """``ProbeFailed`` when the OVAL results cannot be trusted as findings.

    A package database oscap could not read (an ``*info_object`` error) or a vulnerability/patch
    definition that evaluated to ``error``: that definition is neither a finding nor a clean
    bill, so the scan is an Error naming it (and the first probe error behind it), never
    "no finding".
    """
    package_errors = [e for e in parsed.errors if e.kind.endswith("info_object")]
    if package_errors:
        first = package_errors[0]
        return ScanFailure(ErrorReason.PROBE_FAILED, f"{first.kind} {first.id}: {first.message}")
    definitions = [e.id for e in parsed.errors if e.finding_definition]
    if not definitions:
        return None
    shown = ", ".join(definitions[:MAX_NAMED_DEFINITIONS])
    if len(definitions) > MAX_NAMED_DEFINITIONS:
        shown += f" and {len(definitions) - MAX_NAMED_DEFINITIONS} more"
    message = f"{len(definitions)} OVAL vulnerability definitions evaluated to error: {shown}"
    cause = next((e for e in parsed.errors if e.kind != "definition"), None)
    if cause is not None:
        message += f" (first probe error: {cause.kind} {cause.id}: {cause.message})"
    return ScanFailure(ErrorReason.PROBE_FAILED, message)


def _compliance(
    req: ScanRequest,
    ds: content.ResolvedContent | None,
    scratch: Path,
    reports: list[tuple[str, bytes]],
    found: osdetect.DetectedOS,
    box: sandbox.Sandbox,
) -> Compliance | None:
    if ds is None:
        return None
    xr = parse_xccdf_results(scratch / "xccdf-results.xml")
    rules = xr.rules
    if not any(r.result in {"pass", "fail"} for r in rules):
        raise ScanFailure(
            ErrorReason.CONTENT_INVALID,
            f"profile {req.profile} judged no rule on {found.info.pretty_name}: "
            "wrong datastream for this OS?",
        )
    reason = None
    if req.rootfs is not None:
        rules, reason = _mark_rootless(rules), ROOTFS_REASON
    elif not box.owners_preserved:
        rules, reason = _mark_rootless(rules), ROOTLESS_REASON
    reports.append(("Compliance (XCCDF)", (scratch / "xccdf-report.html").read_bytes()))
    return Compliance(ds.info, xr.profile or req.profile, xr.score, rules, reason)


def vuln_content(
    req: ScanRequest, found: osdetect.DetectedOS, scratch: Path, timeout: float
) -> content.ResolvedContent:
    return content.resolve(
        "oval",
        content.feed_name(found),
        scratch / "feed",
        override=req.feed,
        catalogue_url=content.catalogue_feed_url(found),
        catalogue_key=content.catalogue_key(found),
        server=req.content_server,
        timeout=timeout,
    )


def compliance_content(
    req: ScanRequest, found: osdetect.DetectedOS, scratch: Path, timeout: float
) -> tuple[content.ResolvedContent, content.ResolvedContent | None]:
    ds_file = content.datastream_file(found, req.ssg_dir)
    ds = content.resolve(
        "datastream",
        ds_file.name if ds_file else f"ssg-{found.info.id}{found.major}",
        scratch / "datastream",
        override=req.datastream,
        catalogue_file=ds_file,
        server=req.content_server,
        timeout=timeout,
    )
    tailoring = None
    if req.tailoring is not None:
        tailoring = content.resolve(
            "tailoring",
            req.tailoring.file.name if req.tailoring.file else "tailoring",
            scratch / "tailoring",
            override=req.tailoring,
            server=req.content_server,
            timeout=timeout,
        )
    return ds, tailoring
