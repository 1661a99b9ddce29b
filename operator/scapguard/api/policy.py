"""ScanPolicy spec: typed, frozen, parsed from the object's ``spec`` (docs/api-contracts.md)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from croniter import croniter

from scapguard.api import fields as f
from scapguard.api.errors import SpecError

SEVERITIES: Final = ("critical", "high", "medium", "low")
FAIL_ON: Final = (*SEVERITIES, "none")
FAIL_ON_RULES: Final = ("high", "medium", "low", "none")
ACTIONS: Final = ("Enforce", "Report")
ON_ERROR: Final = ("Allow", "Deny")
SELECTOR_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")

DEFAULT_TIMEOUT_SECONDS: Final = 900
DEFAULT_RETRIES: Final = 2
DEFAULT_KEEP: Final = 3

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OCI_REFERENCE: Final = re.compile(
    r"[A-Za-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(@sha256:[0-9a-f]{64})?"
)
_REGISTRY: Final = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")
_REPOSITORY: Final = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+")
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_OCI_FILE: Final = re.compile(r"/?[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")
_CVE_OR_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


@dataclass(frozen=True)
class SelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes label-selector semantics; an empty selector matches everything."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class ConfigMapRef:
    name: str
    key: str


@dataclass(frozen=True)
class OciSource:
    """Content in a registry: an OCI artifact (``file``: a layer's title, optional when it has
    one layer) or an image (``file``: the path of the file inside it)."""

    reference: str
    file: str | None = None


@dataclass(frozen=True)
class ContentSource:
    url: str | None = None
    sha256: str | None = None
    config_map: ConfigMapRef | None = None
    oci: OciSource | None = None


@dataclass(frozen=True)
class Vulnerabilities:
    enabled: bool = True
    feed: ContentSource | None = None


@dataclass(frozen=True)
class Compliance:
    enabled: bool = False
    datastream: ContentSource | None = None
    profile: str | None = None
    tailoring: ConfigMapRef | None = None


@dataclass(frozen=True)
class PolicyException:
    id: str
    reason: str
    expires: dt.date | None = None

    def active(self, now: dt.datetime) -> bool:
        """An exception is in force through the whole of its expiry day (UTC)."""
        return self.expires is None or now.astimezone(dt.UTC).date() <= self.expires


@dataclass(frozen=True)
class ScannerSettings:
    image: str | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    retries: int = DEFAULT_RETRIES
    resources: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    insecure_registries: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workloads:
    """Scan what runs: the images of Pods matching ``pod_selector`` (in the policy's namespace,
    or the namespaces of its ``namespaceSelector`` for a cluster-wide policy)."""

    pod_selector: LabelSelector = field(default_factory=LabelSelector)


@dataclass(frozen=True)
class RegistryPushes:
    """Scan on push: digests a registry notifies pushes of, in ``repositories`` (fnmatch globs
    over the repository path), pulled as ``registry/repository@digest``."""

    registry: str
    repositories: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Promotion:
    """The promotion gate: a digest that passes is copied (skopeo, digest preserved) to
    ``repository:tag``; one that does not is recorded as not promoted, with the reason.
    ``tag`` unset: the scan's first ImageStream tag, else ``sha256-<hex>``."""

    repository: str
    tag: str | None = None


@dataclass(frozen=True)
class ScanPolicySpec:
    selector: LabelSelector = field(default_factory=LabelSelector)
    namespace_selector: LabelSelector | None = None
    tags: tuple[str, ...] = ("*",)
    vulnerabilities: Vulnerabilities = field(default_factory=Vulnerabilities)
    compliance: Compliance = field(default_factory=Compliance)
    fail_on: str = "high"
    fail_on_rules: str = "high"
    # Findings whose severity the feed does not give (all of Debian's) fail unless this is False.
    fail_on_unknown: bool = True
    exceptions: tuple[PolicyException, ...] = ()
    action: str = "Report"
    on_error: str = "Allow"
    schedule: str | None = None
    scanner: ScannerSettings = field(default_factory=ScannerSettings)
    keep: int = DEFAULT_KEEP
    workloads: Workloads | None = None
    registry_pushes: RegistryPushes | None = None
    promotion: Promotion | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def enforcing(self) -> bool:
        return self.action == "Enforce"

    def active_exceptions(self, now: dt.datetime) -> tuple[PolicyException, ...]:
        return tuple(e for e in self.exceptions if e.active(now))

    def config_map_refs(self) -> tuple[ConfigMapRef, ...]:
        """The ConfigMap content the scans use: feed, datastream, tailoring (in that order)."""
        refs: list[ConfigMapRef] = []
        feed = self.vulnerabilities.feed
        if self.vulnerabilities.enabled and feed is not None and feed.config_map is not None:
            refs.append(feed.config_map)
        ds = self.compliance.datastream
        if self.compliance.enabled and ds is not None and ds.config_map is not None:
            refs.append(ds.config_map)
        if self.compliance.enabled and self.compliance.tailoring is not None:
            refs.append(self.compliance.tailoring)
        return tuple(dict.fromkeys(refs))

    def content_hash(self) -> str:
        """Identity of what a scan looks for: a change here needs a rescan."""
        return fingerprint({"v": self.raw.get("vulnerabilities"), "c": self.raw.get("compliance")})

    def evaluation_hash(self, now: dt.datetime) -> str:
        """Identity of how stored findings are judged: a change here only re-evaluates."""
        active = sorted(e.id for e in self.active_exceptions(now))
        return fingerprint(
            {
                "failOn": self.fail_on,
                "failOnRules": self.fail_on_rules,
                "failOnUnknown": self.fail_on_unknown,
                "exceptions": active,
                "action": self.action,
                "onError": self.on_error,
            }
        )


def fingerprint(data: object) -> str:
    """A short, stable hash of JSON-able data (16 hex digits)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_policy_spec(spec: object) -> ScanPolicySpec:
    """Parse a ScanPolicy ``spec``; raises SpecError naming the first bad field."""
    data = f.mapping(spec, "spec")
    ns_selector = data.get("namespaceSelector")
    schedule = f.opt_str(data, "schedule", "spec")
    if schedule is not None and not croniter.is_valid(schedule):
        raise SpecError("spec.schedule", f"{schedule!r} is not a valid cron expression")
    retention = f.mapping(data.get("retention"), "spec.retention")
    return ScanPolicySpec(
        selector=_selector(data.get("selector"), "spec.selector"),
        namespace_selector=(
            None if ns_selector is None else _selector(ns_selector, "spec.namespaceSelector")
        ),
        tags=f.str_list(data.get("tags", ["*"]), "spec.tags") or ("*",),
        vulnerabilities=_vulnerabilities(data.get("vulnerabilities")),
        compliance=_compliance(data.get("compliance")),
        fail_on=f.enum(data, "failOn", "spec", FAIL_ON, "high"),
        fail_on_rules=f.enum(data, "failOnRules", "spec", FAIL_ON_RULES, "high"),
        fail_on_unknown=f.opt_bool(data, "failOnUnknown", "spec", True),
        exceptions=_exceptions(data.get("exceptions")),
        action=f.enum(data, "action", "spec", ACTIONS, "Report"),
        on_error=f.enum(data, "onError", "spec", ON_ERROR, "Allow"),
        schedule=schedule,
        scanner=_scanner(data.get("scanner")),
        keep=f.opt_int(retention, "keep", "spec.retention", DEFAULT_KEEP),
        workloads=_workloads(data.get("workloads")),
        registry_pushes=_registry_pushes(data.get("registryPushes")),
        promotion=_promotion(data.get("promotion")),
        raw=dict(data),
    )


def _promotion(value: object) -> Promotion | None:
    if value is None:
        return None
    data = f.mapping(value, "spec.promotion")
    repository = f.req_str(data, "repository", "spec.promotion")
    f.matching(repository, _REPOSITORY, "spec.promotion.repository", "registry/repository")
    tag = f.opt_str(data, "tag", "spec.promotion")
    if tag is not None:
        f.matching(tag, _TAG, "spec.promotion.tag", "a tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
    return Promotion(repository=repository, tag=tag)


def _workloads(value: object) -> Workloads | None:
    if value is None:
        return None
    data = f.mapping(value, "spec.workloads")
    return Workloads(pod_selector=_selector(data.get("podSelector"), "spec.workloads.podSelector"))


def _registry_pushes(value: object) -> RegistryPushes | None:
    if value is None:
        return None
    data = f.mapping(value, "spec.registryPushes")
    registry = f.req_str(data, "registry", "spec.registryPushes")
    f.matching(registry, _REGISTRY, "spec.registryPushes.registry", "a registry host[:port]")
    repositories = f.str_list(data.get("repositories", ["*"]), "spec.registryPushes.repositories")
    return RegistryPushes(registry=registry, repositories=repositories or ("*",))


def _selector(value: object, path: str) -> LabelSelector:
    data = f.mapping(value, path)
    exprs: list[SelectorRequirement] = []
    for index, item in enumerate(f.items(data.get("matchExpressions"), f"{path}.matchExpressions")):
        where = f"{path}.matchExpressions[{index}]"
        req = f.mapping(item, where)
        exprs.append(
            SelectorRequirement(
                key=f.req_str(req, "key", where),
                operator=f.enum(req, "operator", where, SELECTOR_OPERATORS, "In"),
                values=f.str_list(req.get("values"), f"{where}.values"),
            )
        )
    return LabelSelector(
        match_labels=f.str_map(data.get("matchLabels"), f"{path}.matchLabels"),
        match_expressions=tuple(exprs),
    )


def _config_map_ref(value: object, path: str) -> ConfigMapRef | None:
    if value is None:
        return None
    data = f.mapping(value, path)
    return ConfigMapRef(name=f.req_str(data, "name", path), key=f.req_str(data, "key", path))


def _source(value: object, path: str) -> ContentSource | None:
    if value is None:
        return None
    data = f.mapping(value, path)
    url = f.opt_str(data, "url", path)
    sha = f.opt_str(data, "sha256", path)
    if url is not None and sha is None:
        raise SpecError(f"{path}.sha256", "is required with url")
    if sha is not None:
        f.matching(sha, _SHA256, f"{path}.sha256", "64 lowercase hex digits")
    cm = _config_map_ref(data.get("configMapRef"), f"{path}.configMapRef")
    oci = _oci_source(data.get("oci"), f"{path}.oci")
    if url is None and cm is None and oci is None:
        raise SpecError(path, "needs url (with sha256), configMapRef or oci")
    if oci is not None and (url is not None or cm is not None):
        raise SpecError(f"{path}.oci", "excludes url and configMapRef")
    return ContentSource(url=url, sha256=sha, config_map=cm, oci=oci)


def _oci_source(value: object, path: str) -> OciSource | None:
    if value is None:
        return None
    data = f.mapping(value, path)
    reference = f.req_str(data, "reference", path)
    f.matching(reference, _OCI_REFERENCE, f"{path}.reference", "registry/repository:tag or @sha256")
    if ":" not in reference.rsplit("/", 1)[-1]:
        raise SpecError(f"{path}.reference", "needs a :tag or an @sha256: digest")
    file = f.opt_str(data, "file", path)
    if file is not None:
        f.matching(file, _OCI_FILE, f"{path}.file", "a file name or an absolute path")
    return OciSource(reference=reference, file=file)


def _vulnerabilities(value: object) -> Vulnerabilities:
    data = f.mapping(value, "spec.vulnerabilities")
    return Vulnerabilities(
        enabled=f.opt_bool(data, "enabled", "spec.vulnerabilities", True),
        feed=_source(data.get("feed"), "spec.vulnerabilities.feed"),
    )


def _compliance(value: object) -> Compliance:
    data = f.mapping(value, "spec.compliance")
    tailoring = f.mapping(data.get("tailoring"), "spec.compliance.tailoring")
    return Compliance(
        enabled=f.opt_bool(data, "enabled", "spec.compliance", False),
        datastream=_source(data.get("datastream"), "spec.compliance.datastream"),
        profile=f.opt_str(data, "profile", "spec.compliance"),
        tailoring=_config_map_ref(
            tailoring.get("configMapRef"), "spec.compliance.tailoring.configMapRef"
        ),
    )


def _exceptions(value: object) -> tuple[PolicyException, ...]:
    out: list[PolicyException] = []
    for index, item in enumerate(f.items(value, "spec.exceptions")):
        where = f"spec.exceptions[{index}]"
        data = f.mapping(item, where)
        ident = f.matching(f.req_str(data, "id", where), _CVE_OR_RULE, f"{where}.id", "an id")
        expires_text = f.opt_str(data, "expires", where)
        expires: dt.date | None = None
        if expires_text is not None:
            try:
                expires = dt.date.fromisoformat(expires_text)
            except ValueError:
                raise SpecError(f"{where}.expires", "must be a date (YYYY-MM-DD)") from None
        out.append(
            PolicyException(id=ident, reason=f.req_str(data, "reason", where), expires=expires)
        )
    return tuple(out)


def _scanner(value: object) -> ScannerSettings:
    path = "spec.scanner"
    data = f.mapping(value, path)
    secrets: list[str] = []
    for index, item in enumerate(f.items(data.get("imagePullSecrets"), f"{path}.imagePullSecrets")):
        where = f"{path}.imagePullSecrets[{index}]"
        secrets.append(f.req_str(f.mapping(item, where), "name", where))
    tolerations: Sequence[Any] = f.items(data.get("tolerations"), f"{path}.tolerations")
    return ScannerSettings(
        image=f.opt_str(data, "image", path),
        timeout_seconds=f.opt_int(data, "timeoutSeconds", path, DEFAULT_TIMEOUT_SECONDS, 1),
        retries=f.opt_int(data, "retries", path, DEFAULT_RETRIES),
        resources=dict(f.mapping(data.get("resources"), f"{path}.resources")),
        image_pull_secrets=tuple(secrets),
        node_selector=f.str_map(data.get("nodeSelector"), f"{path}.nodeSelector"),
        tolerations=tuple(
            dict(f.mapping(t, f"{path}.tolerations[{i}]")) for i, t in enumerate(tolerations)
        ),
        insecure_registries=f.str_list(
            data.get("insecureRegistries"), f"{path}.insecureRegistries"
        ),
    )
