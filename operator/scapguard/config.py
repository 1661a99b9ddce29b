"""Operator settings: one frozen object built from the environment at start-up."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypedDict, TypeVar

from scapguard.api.admission import DEFAULT_FAILURE_POLICY, FailurePolicy, parse_failure_policy
from scapguard.api.errors import SpecError
from scapguard.contentcache import catalogue

T = TypeVar("T")

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
DEFAULT_SCANNER_IMAGE: Final = "quay.io/scapguard/scanner:0.1.0"
USER_NAMESPACE_MODES: Final = ("auto", "pod", "off")


class SettingsError(ValueError):
    """A setting is missing or invalid; ``variable`` names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    namespace: str
    watch_namespaces: frozenset[str]
    max_concurrent_scans: int
    max_concurrent_scans_per_policy: int
    results_bind: str
    results_port: int
    results_url: str
    results_tls_cert_file: str | None
    results_tls_key_file: str | None
    results_ca_config_map: str | None
    results_max_bytes: int
    metrics_bind: str
    metrics_port: int
    scanner_image: str
    scanner_image_pull_secrets: tuple[str, ...]
    scanner_service_account: str | None
    scanner_run_as_user: int | None
    #: Scanner pods in a user namespace of their own (``hostUsers: false``): "auto" (when the
    #: API server admits such a pod in the operator's namespace), "pod" (always) or "off".
    scanner_user_namespace: str
    cleanup_grace_seconds: int
    job_ttl_seconds: int
    retry_backoff_seconds: int
    retry_backoff_max_seconds: int
    per_cve_metrics: bool
    peering_name: str
    max_workers: int
    reference_url: str
    admission_enabled: bool
    admission_tls_cert_file: str | None
    admission_tls_key_file: str | None
    admission_bind: str
    admission_port: int
    admission_failure_policy: FailurePolicy
    #: The content cache: where (a volume), how big, how often upstream feeds are checked,
    #: the largest download, and catalogue keys the admin added or pointed at a mirror.
    content_cache_dir: str = "/var/cache/scapguard"
    content_cache_max_bytes: int = 4 * 1024**3
    content_poll_seconds: int = 21600
    content_max_download: int = 512 * 1024**2
    content_catalogue: Mapping[str, str] = field(default_factory=dict)
    #: A plain-HTTP listener serving only the registry push notifications (0: off), for
    #: registries that cannot be given a CA (docs/operator.md, "Scan on push").
    registry_events_bind: str = "0.0.0.0"  # noqa: S104 -- in-pod
    registry_events_port: int = 0

    def watches(self, namespace: str | None) -> bool:
        """Whether objects in ``namespace`` are ours (the operator's own is always watched)."""
        if not self.watch_namespaces or namespace is None:
            return True
        return namespace in self.watch_namespaces or namespace == self.namespace

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        reader = _Reader(os.environ if environ is None else environ)
        namespace = reader.name("SCAPGUARD_NAMESPACE", required=True)
        results = _results_server(reader, namespace)
        backoff = reader.integer("SCAPGUARD_RETRY_BACKOFF_SECONDS", 30, 0, 86400)
        admission = _admission(reader)
        metrics_port = reader.integer("SCAPGUARD_METRICS_PORT", 9090, 0, 65535)
        taken = {results["results_port"]: "SCAPGUARD_RESULTS_PORT"}
        taken[metrics_port] = "SCAPGUARD_METRICS_PORT"
        if admission["admission_enabled"]:
            taken[admission["admission_port"]] = "SCAPGUARD_ADMISSION_PORT"
        return cls(
            namespace=namespace,
            watch_namespaces=frozenset(reader.names("SCAPGUARD_WATCH_NAMESPACES")),
            max_concurrent_scans=reader.integer("SCAPGUARD_MAX_CONCURRENT_SCANS", 4, 1, 1000),
            max_concurrent_scans_per_policy=reader.integer(
                "SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY", 2, 1, 1000
            ),
            **results,
            metrics_bind=reader.text("SCAPGUARD_METRICS_BIND", "0.0.0.0"),  # noqa: S104 -- in-pod
            metrics_port=metrics_port,
            **_scanner_jobs(reader),
            retry_backoff_seconds=backoff,
            retry_backoff_max_seconds=reader.integer(
                "SCAPGUARD_RETRY_BACKOFF_MAX_SECONDS", max(600, backoff), backoff, 7 * 86400
            ),
            per_cve_metrics=reader.boolean("SCAPGUARD_PER_CVE_METRICS", False),
            peering_name=reader.name("SCAPGUARD_PEERING", default="scapguard"),
            max_workers=reader.integer("SCAPGUARD_MAX_WORKERS", 8, 1, 256),
            reference_url=reader.text("SCAPGUARD_REFERENCE_URL", "").rstrip("/"),
            **admission,
            **_content_cache(reader),
            registry_events_bind=reader.text(
                "SCAPGUARD_REGISTRY_EVENTS_BIND",
                "0.0.0.0",  # noqa: S104 -- in-pod
            ),
            registry_events_port=_registry_events_port(reader, taken),
        )


# The settings of one concern each, read and checked together (typed keyword arguments of
# Settings).


class _ResultsServer(TypedDict):
    results_bind: str
    results_port: int
    results_url: str
    results_tls_cert_file: str | None
    results_tls_key_file: str | None
    results_ca_config_map: str | None
    results_max_bytes: int


def _results_server(reader: _Reader, namespace: str) -> _ResultsServer:
    """The results endpoint; TLS files both or neither, and the default URL follows TLS."""
    port = reader.integer("SCAPGUARD_RESULTS_PORT", 8443, 1, 65535)
    cert = reader.text("SCAPGUARD_RESULTS_TLS_CERT_FILE", "") or None
    key = reader.text("SCAPGUARD_RESULTS_TLS_KEY_FILE", "") or None
    if (cert is None) != (key is None):
        missing = (
            "SCAPGUARD_RESULTS_TLS_KEY_FILE" if key is None else "SCAPGUARD_RESULTS_TLS_CERT_FILE"
        )
        raise SettingsError(missing, "set both the TLS certificate and key files, or neither")
    scheme = "https" if cert else "http"
    default_url = f"{scheme}://scapguard-results.{namespace}.svc:{port}"
    return _ResultsServer(
        results_bind=reader.text("SCAPGUARD_RESULTS_BIND", "0.0.0.0"),  # noqa: S104 -- in-pod
        results_port=port,
        results_url=reader.url("SCAPGUARD_RESULTS_URL", default_url),
        results_tls_cert_file=cert,
        results_tls_key_file=key,
        results_ca_config_map=reader.text("SCAPGUARD_RESULTS_CA_CONFIGMAP", "") or None,
        results_max_bytes=reader.integer(
            "SCAPGUARD_RESULTS_MAX_BYTES", 16 * 1024 * 1024, 1024, 256 * 1024 * 1024
        ),
    )


class _Admission(TypedDict):
    admission_enabled: bool
    admission_tls_cert_file: str | None
    admission_tls_key_file: str | None
    admission_bind: str
    admission_port: int
    admission_failure_policy: FailurePolicy


def _admission(reader: _Reader) -> _Admission:
    """The webhook: on by default when its serving certificate is configured, and never
    without one."""
    cert = reader.text("SCAPGUARD_ADMISSION_TLS_CERT_FILE", "") or None
    key = reader.text("SCAPGUARD_ADMISSION_TLS_KEY_FILE", "") or None
    enabled = reader.boolean("SCAPGUARD_ADMISSION_ENABLED", cert is not None)
    if enabled and (cert is None or key is None):
        missing = (
            "SCAPGUARD_ADMISSION_TLS_CERT_FILE"
            if cert is None
            else "SCAPGUARD_ADMISSION_TLS_KEY_FILE"
        )
        raise SettingsError(missing, "the admission webhook needs a certificate and key")
    return _Admission(
        admission_enabled=enabled,
        admission_tls_cert_file=cert,
        admission_tls_key_file=key,
        admission_bind=reader.text("SCAPGUARD_ADMISSION_BIND", "0.0.0.0"),  # noqa: S104
        admission_port=reader.integer("SCAPGUARD_ADMISSION_PORT", 9443, 1, 65535),
        admission_failure_policy=reader.failure_policy("SCAPGUARD_ADMISSION_FAILURE_POLICY"),
    )


def _registry_events_port(reader: _Reader, taken: Mapping[int, str]) -> int:
    """The push-notification listener's port (0: off), not one of the ``taken`` ones."""
    port = reader.integer("SCAPGUARD_REGISTRY_EVENTS_PORT", 0, 0, 65535)
    if port and port in taken:
        raise SettingsError("SCAPGUARD_REGISTRY_EVENTS_PORT", f"{port} is {taken[port]} already")
    return port


class _ScannerJobs(TypedDict):
    scanner_image: str
    scanner_image_pull_secrets: tuple[str, ...]
    scanner_service_account: str | None
    scanner_run_as_user: int | None
    scanner_user_namespace: str
    cleanup_grace_seconds: int
    job_ttl_seconds: int


def _scanner_jobs(reader: _Reader) -> _ScannerJobs:
    return _ScannerJobs(
        scanner_image=reader.text("SCAPGUARD_SCANNER_IMAGE", DEFAULT_SCANNER_IMAGE),
        scanner_image_pull_secrets=reader.names("SCAPGUARD_SCANNER_IMAGE_PULL_SECRETS"),
        scanner_service_account=reader.name("SCAPGUARD_SCANNER_SERVICE_ACCOUNT") or None,
        scanner_run_as_user=reader.optional_integer("SCAPGUARD_SCANNER_RUN_AS_USER", 1, 2**31 - 1),
        scanner_user_namespace=reader.one_of(
            "SCAPGUARD_SCANNER_USER_NAMESPACE", "auto", USER_NAMESPACE_MODES
        ),
        cleanup_grace_seconds=reader.integer(
            "SCAPGUARD_CLEANUP_GRACE_SECONDS", 86400, 0, 365 * 86400
        ),
        job_ttl_seconds=reader.integer("SCAPGUARD_JOB_TTL_SECONDS", 3600, 60, 30 * 86400),
    )


class _ContentCache(TypedDict):
    content_cache_dir: str
    content_cache_max_bytes: int
    content_poll_seconds: int
    content_max_download: int
    content_catalogue: Mapping[str, str]


def _content_cache(reader: _Reader) -> _ContentCache:
    return _ContentCache(
        content_cache_dir=reader.text("SCAPGUARD_CONTENT_CACHE_DIR", "/var/cache/scapguard"),
        content_cache_max_bytes=reader.integer(
            "SCAPGUARD_CONTENT_CACHE_MAX_BYTES", 4 * 1024**3, 256 * 1024**2, 1024**4
        ),
        content_poll_seconds=reader.integer("SCAPGUARD_CONTENT_POLL_SECONDS", 21600, 1, 30 * 86400),
        content_max_download=reader.integer(
            "SCAPGUARD_CONTENT_MAX_DOWNLOAD_BYTES", 512 * 1024**2, 1024**2, 16 * 1024**3
        ),
        content_catalogue=reader.catalogue("SCAPGUARD_CONTENT_CATALOGUE"),
    )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, var: str, default: str) -> str:
        return self._env.get(var, default).strip()

    def _parsed(self, var: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._env.get(var, "").strip()
        return default if raw == "" else parse(raw)

    def name(self, var: str, *, required: bool = False, default: str = "") -> str:
        value = self.text(var, default)
        if required and not value:
            raise SettingsError(var, "is required")
        if value and (len(value) > 63 or not _NAME.fullmatch(value)):
            raise SettingsError(var, f"{value!r} is not a DNS label")
        return value

    def names(self, var: str) -> tuple[str, ...]:
        values = [v.strip() for v in self.text(var, "").split(",") if v.strip()]
        for value in values:
            if len(value) > 63 or not _NAME.fullmatch(value):
                raise SettingsError(var, f"{value!r} is not a DNS label")
        return tuple(values)

    def integer(self, var: str, default: int, minimum: int, maximum: int) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw)
            except ValueError:
                hint = ""
                if raw.startswith(("tcp://", "udp://")):
                    # Set by the kubelet for a Service named like the variable's prefix.
                    hint = " (a Service link: set enableServiceLinks: false in the pod spec)"
                raise SettingsError(var, f"{raw!r} is not an integer{hint}") from None
            if not minimum <= value <= maximum:
                raise SettingsError(var, f"{value} is not between {minimum} and {maximum}")
            return value

        return self._parsed(var, default, parse)

    def optional_integer(self, var: str, minimum: int, maximum: int) -> int | None:
        if not self.text(var, ""):
            return None
        return self.integer(var, minimum, minimum, maximum)

    def one_of(self, var: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(var, default)
        if value not in allowed:
            raise SettingsError(var, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def failure_policy(self, var: str) -> FailurePolicy:
        try:
            return parse_failure_policy(self.text(var, DEFAULT_FAILURE_POLICY), var)
        except SpecError as exc:
            raise SettingsError(var, exc.message) from None

    def boolean(self, var: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise SettingsError(var, f"{raw!r} is not a boolean (true/false)")

        return self._parsed(var, default, parse)

    def catalogue(self, var: str) -> dict[str, str]:
        """A JSON object of catalogue key (``debian-bookworm``) to feed URL."""
        raw = self.text(var, "")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise SettingsError(var, f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise SettingsError(var, "must be a JSON object of feed key to URL")
        for key, url in doc.items():
            if not catalogue.KEY.fullmatch(key):
                raise SettingsError(var, f"{key!r} is not a feed key like debian-bookworm")
            if not isinstance(url, str) or not _URL.fullmatch(url):
                raise SettingsError(var, f"{key}: {url!r} is not an http(s) URL")
        return {str(k): str(v) for k, v in doc.items()}

    def url(self, var: str, default: str) -> str:
        value = self.text(var, default).rstrip("/")
        if not _URL.fullmatch(value):
            raise SettingsError(var, f"{value!r} is not an http(s) URL")
        return value
