"""The scan result hand-off (scanner -> operator): the one owner of its shape.

The JSON document is described by ``scan-result.schema.json`` in this package and is built and
parsed only here: ``ScanResult.to_dict()`` and ``ScanResult.from_dict()`` both validate, and
every problem is reported as one :class:`ScanResultError` whose ``field`` is the JSON path of the
offending value (``vulnerabilities.findings[3].severity``).

Pass/Fail is deliberately not part of the result: ``scapguard.api.evaluation.evaluate()``
decides it from a result and a policy, so a policy change re-evaluates stored findings.

The transport envelope (``{"result": ..., "reportGzipBase64": ...}``) is encoded and decoded by
:func:`encode_handoff` / :func:`decode_handoff`, so both sides bound the report size the same way.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final, Literal, cast, get_args

import jsonschema
import jsonschema.exceptions

SCHEMA_VERSION: Final = "scapguard.io/scan-result/v1"
SCHEMA_RESOURCE: Final = "scan-result.schema.json"

#: Findings kept in one result; the rest are dropped and ``truncated`` is set.
MAX_FINDINGS: Final = 5000
#: Bounds of the HTML report carried in the hand-off envelope.
MAX_REPORT_GZIP_BYTES: Final = 16 * 1024 * 1024
MAX_REPORT_HTML_BYTES: Final = 128 * 1024 * 1024

Severity = Literal["critical", "high", "medium", "low", "unknown"]
RuleSeverity = Literal["high", "medium", "low", "unknown"]
RuleOutcome = Literal[
    "pass",
    "fail",
    "notapplicable",
    "notchecked",
    "error",
    "unknown",
    "informational",
    "notselected",
    "fixed",
]
Outcome = Literal["Completed", "Error"]
ContentSource = Literal["url", "file", "catalogue", "configMap", "oci"]
OSFamily = Literal["debian", "rhel", "fedora"]

SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
RULE_OUTCOMES: Final[tuple[RuleOutcome, ...]] = get_args(RuleOutcome)


class ErrorReason:
    """``error.reason`` values the scanner emits (CamelCase, like condition reasons)."""

    UNSUPPORTED_OS: Final = "UnsupportedOS"
    PULL_FAILED: Final = "PullFailed"
    DIGEST_MISMATCH: Final = "DigestMismatch"
    IMAGE_TOO_LARGE: Final = "ImageTooLarge"
    UNPACK_FAILED: Final = "UnpackFailed"
    HOSTILE_IMAGE: Final = "HostileImage"
    CONTENT_UNAVAILABLE: Final = "ContentUnavailable"
    CONTENT_INVALID: Final = "ContentInvalid"
    PROBE_FAILED: Final = "ProbeFailed"
    OSCAP_FAILED: Final = "OscapFailed"
    RESULTS_INVALID: Final = "ResultsInvalid"
    TIMEOUT: Final = "Timeout"
    INSECURE_ENVIRONMENT: Final = "InsecureEnvironment"
    #: An exception no step turned into a reason (a scanner bug): still a result, never a crash.
    SCANNER_ERROR: Final = "ScannerError"


class ScanResultError(ValueError):
    """A scan result (or hand-off envelope) that does not follow the contract.

    ``field`` is the JSON path of the offending value, ``"$"`` for the document itself.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


ImageSource = Literal["registry", "ociLayout", "rootfs"]


@dataclass(frozen=True)
class ImageRef:
    """What was scanned. ``registry`` (what the operator runs): ``reference`` is
    ``HOST/REPO@DIGEST``. ``ociLayout`` and ``rootfs`` (``scapguard-scan --oci-layout`` /
    ``--rootfs``): ``path`` is the directory; ``digest`` is the OCI manifest's for a layout and
    None for a root filesystem (``reference`` reads ``oci:PATH@DIGEST`` / ``rootfs:PATH``)."""

    reference: str
    digest: str | None
    source: ImageSource = "registry"
    path: str | None = None


@dataclass(frozen=True)
class OSInfo:
    id: str
    version_id: str
    pretty_name: str
    family: OSFamily


@dataclass(frozen=True)
class ScanError:
    reason: str
    message: str


@dataclass(frozen=True)
class ContentInfo:
    """Identity of the SCAP content used: a feed or a datastream."""

    name: str
    source: ContentSource
    sha256: str
    version: str | None
    #: Where the bytes came from: the URL, an OCI reference with its manifest digest, a
    #: ConfigMap (namespace/name/key) or a file.
    origin: str | None = None


@dataclass(frozen=True)
class AffectedPackage:
    name: str
    fixed_version: str | None


@dataclass(frozen=True)
class Finding:
    """One vulnerability (one per CVE id; the advisory id when a definition names no CVE)."""

    id: str
    severity: Severity
    title: str
    definition: str
    packages: tuple[AffectedPackage, ...] = ()


@dataclass(frozen=True)
class Vulnerabilities:
    content: ContentInfo
    findings: tuple[Finding, ...]
    truncated: bool = False

    def counts(self) -> dict[Severity, int]:
        """Findings per severity, every severity present (zero when none)."""
        out: dict[Severity, int] = dict.fromkeys(SEVERITIES, 0)
        for finding in self.findings:
            out[finding.severity] += 1
        return out


@dataclass(frozen=True)
class RuleResult:
    id: str
    severity: RuleSeverity
    title: str
    result: RuleOutcome


@dataclass(frozen=True)
class Compliance:
    content: ContentInfo
    profile: str
    score: float | None
    rules: tuple[RuleResult, ...]
    not_checked_reason: str | None = None

    def counts(self) -> dict[RuleOutcome, int]:
        """Rules per result, every result value present (zero when none)."""
        out: dict[RuleOutcome, int] = dict.fromkeys(RULE_OUTCOMES, 0)
        for rule in self.rules:
            out[rule.result] += 1
        return out

    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if r.result == "fail")


@dataclass(frozen=True)
class ScannerInfo:
    version: str
    oscap_version: str | None
    #: userns | inherited | rootless (scapguard.scanner.sandbox); None before unpacking.
    id_mapping: str | None = None
    #: Why a configured user namespace was not usable, so owners were lost.
    id_mapping_fallback: str | None = None


@dataclass(frozen=True)
class ScanResult:
    image: ImageRef
    os: OSInfo | None
    outcome: Outcome
    error: ScanError | None
    vulnerabilities: Vulnerabilities | None
    compliance: Compliance | None
    scanner: ScannerInfo
    started_at: dt.datetime
    finished_at: dt.datetime
    timings: Mapping[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready document; raises :class:`ScanResultError` if it breaks the contract."""
        doc: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "image": _image_to_dict(self.image),
            "os": None if self.os is None else _os_to_dict(self.os),
            "outcome": self.outcome,
            "error": None
            if self.error is None
            else {"reason": self.error.reason, "message": self.error.message},
            "vulnerabilities": None
            if self.vulnerabilities is None
            else _vulnerabilities_to_dict(self.vulnerabilities),
            "compliance": None if self.compliance is None else _compliance_to_dict(self.compliance),
            "scanner": _scanner_to_dict(self.scanner),
            "startedAt": _format_time(self.started_at, "startedAt"),
            "finishedAt": _format_time(self.finished_at, "finishedAt"),
            "timings": {k: float(v) for k, v in self.timings.items()},
        }
        validate_document(doc)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    # ---------------------------------------------------------------- parse
    @classmethod
    def from_dict(cls, doc: object) -> ScanResult:
        """Validate ``doc`` against the schema and the contract's rules, then build the result."""
        validate_document(doc)
        d = cast(dict[str, Any], doc)
        err_d = d["error"]
        return cls(
            image=_image_from_dict(d["image"]),
            os=None if d["os"] is None else _os_from_dict(d["os"]),
            outcome=d["outcome"],
            error=None if err_d is None else ScanError(err_d["reason"], err_d["message"]),
            vulnerabilities=None
            if d["vulnerabilities"] is None
            else _vulnerabilities_from_dict(d["vulnerabilities"]),
            compliance=None if d["compliance"] is None else _compliance_from_dict(d["compliance"]),
            scanner=_scanner_from_dict(d["scanner"]),
            started_at=_parse_time(d["startedAt"], "startedAt"),
            finished_at=_parse_time(d["finishedAt"], "finishedAt"),
            timings={k: float(v) for k, v in d["timings"].items()},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ScanResult:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ScanResultError("$", f"not valid JSON: {exc}") from exc
        return cls.from_dict(doc)


# -------------------------------------------------------------------- validation
@cache
def schema() -> dict[str, Any]:
    """The JSON schema shipped in the package."""
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ScanResultError("$", f"{SCHEMA_RESOURCE} is not a JSON object")
    return cast(dict[str, Any], loaded)


@cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


def _json_path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "$"


def validate_document(doc: object) -> None:
    """Raise :class:`ScanResultError` naming the first bad field of ``doc``, if any."""
    err = jsonschema.exceptions.best_match(_validator().iter_errors(cast(Any, doc)))
    if err is not None:
        raise ScanResultError(_json_path(list(err.absolute_path)), err.message)
    d = cast(dict[str, Any], doc)
    if d["outcome"] == "Error" and d["error"] is None:
        raise ScanResultError("error", "must be set when outcome is Error")
    if d["outcome"] == "Completed":
        if d["error"] is not None:
            raise ScanResultError("error", "must be null when outcome is Completed")
        if d["os"] is None:
            raise ScanResultError("os", "must be set when outcome is Completed")
        if d["vulnerabilities"] is None and d["compliance"] is None:
            raise ScanResultError(
                "vulnerabilities", "a Completed scan has vulnerabilities, compliance or both"
            )
    _check_image(d["image"])
    vul = d["vulnerabilities"]
    if vul is not None:
        seen: set[str] = set()
        for i, finding in enumerate(vul["findings"]):
            if finding["id"] in seen:
                raise ScanResultError(
                    f"vulnerabilities.findings[{i}].id", f"duplicate finding {finding['id']!r}"
                )
            seen.add(finding["id"])
    com = d["compliance"]
    if com is not None:
        rule_ids: set[str] = set()
        for i, rule in enumerate(com["rules"]):
            if rule["id"] in rule_ids:
                raise ScanResultError(f"compliance.rules[{i}].id", f"duplicate rule {rule['id']!r}")
            rule_ids.add(rule["id"])
    started = _parse_time(d["startedAt"], "startedAt")
    finished = _parse_time(d["finishedAt"], "finishedAt")
    if finished < started:
        raise ScanResultError("finishedAt", "is before startedAt")


def _image_to_dict(image: ImageRef) -> dict[str, Any]:
    doc: dict[str, Any] = {"reference": image.reference, "digest": image.digest}
    if image.source != "registry":  # registry documents stay as they always were
        doc["source"] = image.source
        doc["path"] = image.path
    return doc


def _check_image(image: Mapping[str, Any]) -> None:
    source, digest, path = image.get("source", "registry"), image["digest"], image.get("path")
    if source == "registry":
        if digest is None:
            raise ScanResultError("image.digest", "must be set for an image from a registry")
        if path is not None:
            raise ScanResultError("image.path", "only for an OCI layout or a root filesystem")
        if not image["reference"].endswith("@" + digest):
            raise ScanResultError("image.reference", "must end with @<image.digest>")
        return
    if path is None:
        raise ScanResultError("image.path", f"must be set for source {source}")
    if source == "ociLayout" and digest is None:
        raise ScanResultError("image.digest", "must be the manifest's digest for an OCI layout")
    if source == "rootfs" and digest is not None:
        raise ScanResultError("image.digest", "must be null for a root filesystem")


def _content_to_dict(c: ContentInfo) -> dict[str, Any]:
    out = {"name": c.name, "source": c.source, "sha256": c.sha256, "version": c.version}
    if c.origin is not None:
        out["origin"] = c.origin
    return out


def _content_from_dict(d: Mapping[str, Any]) -> ContentInfo:
    return ContentInfo(
        name=d["name"],
        source=d["source"],
        sha256=d["sha256"],
        version=d["version"],
        origin=d.get("origin"),
    )


def _image_from_dict(d: Mapping[str, Any]) -> ImageRef:
    return ImageRef(
        reference=d["reference"],
        digest=d["digest"],
        source=d.get("source", "registry"),
        path=d.get("path"),
    )


def _os_to_dict(info: OSInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "versionId": info.version_id,
        "prettyName": info.pretty_name,
        "family": info.family,
    }


def _os_from_dict(d: Mapping[str, Any]) -> OSInfo:
    return OSInfo(
        id=d["id"],
        version_id=d["versionId"],
        pretty_name=d["prettyName"],
        family=d["family"],
    )


def _vulnerabilities_to_dict(v: Vulnerabilities) -> dict[str, Any]:
    return {
        "content": _content_to_dict(v.content),
        "findings": [
            {
                "id": f.id,
                "severity": f.severity,
                "title": f.title,
                "definition": f.definition,
                "packages": [{"name": p.name, "fixedVersion": p.fixed_version} for p in f.packages],
            }
            for f in v.findings
        ],
        "truncated": v.truncated,
    }


def _vulnerabilities_from_dict(d: Mapping[str, Any]) -> Vulnerabilities:
    return Vulnerabilities(
        content=_content_from_dict(d["content"]),
        findings=tuple(
            Finding(
                id=f["id"],
                severity=f["severity"],
                title=f["title"],
                definition=f["definition"],
                packages=tuple(
                    AffectedPackage(p["name"], p["fixedVersion"]) for p in f["packages"]
                ),
            )
            for f in d["findings"]
        ),
        truncated=d["truncated"],
    )


def _compliance_to_dict(c: Compliance) -> dict[str, Any]:
    return {
        "content": _content_to_dict(c.content),
        "profile": c.profile,
        "score": c.score,
        "rules": [
            {"id": r.id, "severity": r.severity, "title": r.title, "result": r.result}
            for r in c.rules
        ],
        "notCheckedReason": c.not_checked_reason,
    }


def _compliance_from_dict(d: Mapping[str, Any]) -> Compliance:
    return Compliance(
        content=_content_from_dict(d["content"]),
        profile=d["profile"],
        score=None if d["score"] is None else float(d["score"]),
        rules=tuple(
            RuleResult(r["id"], r["severity"], r["title"], r["result"]) for r in d["rules"]
        ),
        not_checked_reason=d["notCheckedReason"],
    )


def _scanner_to_dict(scanner: ScannerInfo) -> dict[str, Any]:
    return {
        "version": scanner.version,
        "oscapVersion": scanner.oscap_version,
        "idMapping": scanner.id_mapping,
        "idMappingFallback": scanner.id_mapping_fallback,
    }


def _scanner_from_dict(d: Mapping[str, Any]) -> ScannerInfo:
    return ScannerInfo(
        d["version"], d["oscapVersion"], d.get("idMapping"), d.get("idMappingFallback")
    )


def _format_time(value: dt.datetime, name: str) -> str:
    if value.tzinfo is None:
        raise ScanResultError(name, "must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ScanResultError(name, f"not an RFC 3339 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise ScanResultError(name, "must carry a time zone")
    return parsed


# -------------------------------------------------------------------- envelope
def encode_handoff(result: ScanResult, report_html: bytes | None) -> dict[str, Any]:
    """The body the scanner POSTs to the operator's results endpoint."""
    body: dict[str, Any] = {"result": result.to_dict(), "reportGzipBase64": None}
    if report_html is not None:
        if len(report_html) > MAX_REPORT_HTML_BYTES:
            raise ScanResultError("reportGzipBase64", "report larger than the limit")
        packed = gzip.compress(report_html, mtime=0)
        if len(packed) > MAX_REPORT_GZIP_BYTES:
            raise ScanResultError("reportGzipBase64", "compressed report larger than the limit")
        body["reportGzipBase64"] = base64.b64encode(packed).decode("ascii")
    return body


def decode_handoff(body: object) -> tuple[ScanResult, bytes | None]:
    """Parse a hand-off body: the validated result and the (bounded) HTML report, if any."""
    if not isinstance(body, dict):
        raise ScanResultError("$", "hand-off body must be a JSON object")
    unknown = set(body) - {"result", "reportGzipBase64"}
    if unknown:
        raise ScanResultError(sorted(unknown)[0], "unknown field in hand-off body")
    if "result" not in body:
        raise ScanResultError("result", "missing")
    try:
        result = ScanResult.from_dict(body["result"])
    except ScanResultError as exc:
        path = "result" if exc.field == "$" else f"result.{exc.field}"
        raise ScanResultError(path, exc.message) from exc
    encoded = body.get("reportGzipBase64")
    if encoded is None:
        return result, None
    if not isinstance(encoded, str):
        raise ScanResultError("reportGzipBase64", "must be a base64 string or null")
    if len(encoded) > (MAX_REPORT_GZIP_BYTES * 4) // 3 + 4:
        raise ScanResultError("reportGzipBase64", "compressed report larger than the limit")
    try:
        packed = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ScanResultError("reportGzipBase64", f"not base64: {exc}") from exc
    return result, _gunzip_bounded(packed, MAX_REPORT_HTML_BYTES, "reportGzipBase64")


def _gunzip_bounded(packed: bytes, limit: int, name: str) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(packed, limit + 1)
    except zlib.error as exc:
        raise ScanResultError(name, f"not gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise ScanResultError(name, "report larger than the limit once decompressed")
    if not inflater.eof:
        raise ScanResultError(name, "truncated gzip stream")
    return out
