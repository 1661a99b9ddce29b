"""Names of the scapguard API: group, version, plurals, annotation and label keys."""

from __future__ import annotations

from typing import Final

GROUP: Final = "scapguard.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

SCANPOLICY_KIND: Final = "ScanPolicy"
SCANPOLICY_PLURAL: Final = "scanpolicies"
IMAGESCAN_KIND: Final = "ImageScan"
IMAGESCAN_PLURAL: Final = "imagescans"

# OpenShift image API (ImageStreams are namespaced, Images are cluster-scoped, named by digest).
IMAGE_GROUP: Final = "image.openshift.io"
IMAGE_VERSION: Final = "v1"
IMAGESTREAM_PLURAL: Final = "imagestreams"
IMAGE_PLURAL: Final = "images"

PREFIX: Final = "scapguard.io"
# kopf's own annotations (progress, last-handled configuration, its "kopf-managed" marker).
# Not PREFIX: kopf drops every annotation under a prefix that carries its marker from the diff
# it runs update handlers on, so scapguard.io/rescan and scapguard.io/wake would go unnoticed.
KOPF_STORAGE_PREFIX: Final = f"kopf.{PREFIX}"

# Annotations a person (or the operator) sets to ask for a rescan; any new value rescans.
RESCAN_ANNOTATION: Final = f"{PREFIX}/rescan"
# On ImageScans the operator created from an ImageStream: since when no tag of any stream
# points at the digest any more (RFC 3339); cleared when a tag points at it again.
UNTAGGED_SINCE_ANNOTATION: Final = f"{PREFIX}/untagged-since"
# The one internal wake-up of an ImageScan's reconcile (docs/operator.md, "Wake-up
# annotation"): a new value is an update event, so the active replica's handler runs at once.
# Written only by the operator, never read for a decision: ``<cause>:<scanner Job name>``
# (api.imagescan.format_wake/parse_wake), the cause ``result-received`` (the results endpoint
# recorded the Job's post) or ``job-ended`` (the Job watch saw the Job end without one).
WAKE_ANNOTATION: Final = f"{PREFIX}/wake"

# On the Image: scapguard set the deny (a deny without this marker belongs to a person).
DENY_MARKER_ANNOTATION: Final = f"{PREFIX}/deny-execution"
DENIED_BY_ANNOTATION: Final = f"{PREFIX}/denied-by"
OPENSHIFT_DENY_ANNOTATION: Final = "images.openshift.io/deny-execution"
QUALITY_ANNOTATION: Final = "quality.images.openshift.io/vulnerability.scapguard"

# Labels.
ORIGIN_LABEL: Final = f"{PREFIX}/origin"  # "imagestream" on ImageScans the operator created
ORIGIN_IMAGESTREAM: Final = "imagestream"
ORIGIN_WORKLOAD: Final = "workload"  # a Pod the policy selects runs the digest
ORIGIN_REGISTRY_PUSH: Final = "registry-push"  # a registry notified a push of the digest
DIGEST_LABEL: Final = f"{PREFIX}/digest"  # first 63 hex chars of the sha256 digest
POLICY_LABEL: Final = f"{PREFIX}/policy"  # policy name on ImageScans (same namespace)
SCAN_UID_LABEL: Final = f"{PREFIX}/scan-uid"  # on Jobs and Secrets: the ImageScan's uid
POLICY_UID_LABEL: Final = f"{PREFIX}/policy-uid"  # on Jobs: the ScanPolicy's uid
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
SCANNER_COMPONENT: Final = "scanner"
PROMOTER_COMPONENT: Final = "promoter"  # the promotion gate's copy Jobs
MANAGED_BY: Final = "scapguard"

# Annotations on scanner Jobs and their Secrets naming the scan they serve.
SCAN_NAMESPACE_ANNOTATION: Final = f"{PREFIX}/scan-namespace"
SCAN_NAME_ANNOTATION: Final = f"{PREFIX}/scan-name"
REQUEST_ANNOTATION: Final = f"{PREFIX}/request"
ATTEMPT_ANNOTATION: Final = f"{PREFIX}/attempt"
CONSUMED_ANNOTATION: Final = f"{PREFIX}/consumed"

# Keys in the per-scan Secret and the result ConfigMap.
TOKEN_KEY: Final = "token"  # noqa: S105 -- a Secret key name, not a secret
POLICY_KEY: Final = "policy.json"
AUTH_KEY: Final = "auth.json"
#: The per-scan Secret's record of the policy content the operator read for the scan (JSON).
CONTENT_KEY: Final = "content.json"
RESULT_KEY: Final = "result.json.gz"
REPORT_KEY: Final = "report.html.gz"
