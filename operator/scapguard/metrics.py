"""Prometheus metrics (``scapguard_`` prefix); built at start-up into their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
WAIT_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """All metric objects; per-CVE/per-image series only when ``per_cve`` is on."""

    def __init__(self, registry: CollectorRegistry | None = None, *, per_cve: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.per_cve = per_cve
        # Registered in this order, which is the order of the exposition.
        self._register_scans()
        self._register_queue()
        self._register_verdicts()
        self._register_problems()
        self._register_inputs()
        self.vulnerabilities = Gauge(
            "scapguard_image_vulnerabilities",
            "Vulnerabilities per image and severity (only with SCAPGUARD_PER_CVE_METRICS).",
            ["namespace", "imagescan", "severity"],
            registry=self.registry,
        )

    def _register_scans(self) -> None:
        """Scan requests and the scanner Jobs that serve them."""
        r = self.registry
        self.scans = Counter(
            "scapguard_scans",
            "Completed scan requests by result and trigger.",
            ["result", "trigger"],
            registry=r,
        )
        self.scan_attempts = Counter(
            "scapguard_scan_attempts", "Scanner Jobs started.", ["policy"], registry=r
        )
        self.scan_duration = Histogram(
            "scapguard_scan_duration_seconds",
            "Scanner run time per attempt.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )

    def _register_queue(self) -> None:
        """Scans waiting for, and holding, a scanner slot."""
        r = self.registry
        self.queue_wait = Histogram(
            "scapguard_scan_queue_wait_seconds",
            "Time from a scan request to its first scanner Job.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "scapguard_scan_queue_depth",
            "Scans waiting for a scanner slot.",
            ["policy"],
            registry=r,
        )
        self.oldest_queued = Gauge(
            "scapguard_oldest_queued_scan_seconds", "Age of the oldest waiting scan.", registry=r
        )
        self.running = Gauge(
            "scapguard_scans_running", "Scanner Jobs running.", ["policy"], registry=r
        )

    def _register_verdicts(self) -> None:
        """What the policies decided about the images they select."""
        r = self.registry
        self.images_failing = Gauge(
            "scapguard_images_failing",
            "Selected images whose latest scan fails.",
            ["policy"],
            registry=r,
        )
        self.images_denied = Gauge(
            "scapguard_images_denied",
            "Selected images the policy denies.",
            ["policy"],
            registry=r,
        )
        self.images_critical = Gauge(
            "scapguard_images_with_critical_vulnerabilities",
            "Selected images with at least one critical vulnerability, by whether denied.",
            ["policy", "denied"],
            registry=r,
        )
        self.denials = Counter(
            "scapguard_denials", "Images scapguard started denying.", ["policy"], registry=r
        )

    def _register_problems(self) -> None:
        """Scans that failed or lost file owners, and refused result posts."""
        r = self.registry
        self.errors = Counter(
            "scapguard_scan_errors", "Failed scan attempts by reason.", ["reason"], registry=r
        )
        self.owners_not_preserved = Counter(
            "scapguard_scans_owners_not_preserved",
            "Completed scans that ran rootless although a user namespace was configured "
            "(file owners lost; ownership rules notchecked).",
            registry=r,
        )
        self.results_rejected = Counter(
            "scapguard_results_rejected",
            "Result posts refused by the results endpoint.",
            ["reason"],
            registry=r,
        )

    def _register_inputs(self) -> None:
        """Registry push notifications and the scan content served from the cache."""
        r = self.registry
        self.registry_events = Counter(
            "scapguard_registry_events",
            "Registry push notifications: pushed manifests that got ImageScans (scanned), "
            "events not acted on (ignored: pulls, blobs, no matching policy, no digest) and "
            "notifications refused (bad token, too large, malformed, API unavailable).",
            ["result"],
            registry=r,
        )
        self.content_fetches = Counter(
            "scapguard_content_requests",
            "Scanner requests for content served from the operator's cache, by source "
            "(url, catalogue, oci, configMap; policy or catalogue on error) and result.",
            ["source", "result"],
            registry=r,
        )
        self.content_age = Gauge(
            "scapguard_content_age_seconds",
            "Age of the scan content (feed or datastream) used by the latest scan.",
            ["kind", "name"],
            registry=r,
        )

    def set_image_vulnerabilities(
        self, namespace: str, imagescan: str, counts: dict[str, int]
    ) -> None:
        if not self.per_cve:
            return
        for severity, count in counts.items():
            self.vulnerabilities.labels(namespace, imagescan, severity).set(count)

    def forget_image(self, namespace: str, imagescan: str, severities: tuple[str, ...]) -> None:
        if not self.per_cve:
            return
        for severity in severities:
            try:
                self.vulnerabilities.remove(namespace, imagescan, severity)
            except KeyError:
                continue
