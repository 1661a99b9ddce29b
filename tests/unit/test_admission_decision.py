"""The Pod admission decision, on dicts: references, resolution, refusals, warnings."""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf
import pytest

from scapguard.api import constants as c
from scapguard.api.naming import scan_name
from scapguard.handlers.admission import MEMO_KEY, AdmissionRuntime, review_admission
from scapguard.reconcile.admission import (
    DENIED_CODE,
    NOT_READY_CODE,
    ImageReference,
    parse_reference,
    pod_template,
    review_pod,
    review_workload,
)
from scapguard.reconcile.imageindex import ImageIndex

BAD = "sha256:" + "b" * 64
GOOD = "sha256:" + "a" * 64
REGISTRY = "image-registry.openshift-image-registry.svc:5000"
PUBLIC = "default-route-openshift-image-registry.apps.example.com"


def image(digest: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": digest, "annotations": annotations or {}}}


def denied_by_scapguard(digest: str) -> dict[str, Any]:
    quality = {
        "name": "scapguard (OpenSCAP)",
        "description": "Fail under ScanPolicy apps/strict: 1 critical",
        "reference": "https://console.example.com/scan",
        "compliant": False,
        "summary": [
            {"label": "critical", "data": "1", "severityIndex": 3},
            {"label": "high", "data": "2", "severityIndex": 2},
        ],
    }
    return image(
        digest,
        {
            c.OPENSHIFT_DENY_ANNOTATION: "true",
            c.DENY_MARKER_ANNOTATION: "true",
            c.DENIED_BY_ANNOTATION: "apps/strict",
            c.QUALITY_ANNOTATION: json.dumps(quality),
        },
    )


def stream(
    namespace: str, name: str, tags: dict[str, str], *, local: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"lookupPolicy": {"local": local}},
        "status": {
            "dockerImageRepository": f"{REGISTRY}/{namespace}/{name}",
            "publicDockerImageRepository": f"{PUBLIC}/{namespace}/{name}",
            "tags": [
                {"tag": tag, "items": [{"image": digest, "dockerImageReference": "x"}]}
                for tag, digest in tags.items()
            ],
        },
    }


def pod(
    *images: str, init: tuple[str, ...] = (), ephemeral: tuple[str, ...] = ()
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": img} for i, img in enumerate(images)]
    }
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": img} for i, img in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {"name": f"e{i}", "image": img} for i, img in enumerate(ephemeral)
        ]
    return {"metadata": {"name": "web", "namespace": "apps"}, "spec": spec}


@pytest.fixture
def index() -> ImageIndex:
    idx = ImageIndex()
    idx.replace_images([denied_by_scapguard(BAD), image(GOOD)])
    idx.replace_streams([stream("apps", "app", {"latest": BAD, "stable": GOOD})])
    return idx


# -- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app", ImageReference(None, "app", None, None)),
        ("app:v1", ImageReference(None, "app", "v1", None)),
        ("library/nginx:1.25", ImageReference(None, "library/nginx", "1.25", None)),
        ("localhost/app", ImageReference("localhost", "app", None, None)),
        ("127.0.0.1:5000/ns/app:t", ImageReference("127.0.0.1:5000", "ns/app", "t", None)),
        (f"quay.io/x/y@{BAD}", ImageReference("quay.io", "x/y", None, BAD)),
        (f"quay.io/x/y:1@{BAD}", ImageReference("quay.io", "x/y", "1", BAD)),
        ("[::1]:5000/app:1", ImageReference("[::1]:5000", "app", "1", None)),
    ],
)
def test_parse_reference(text: str, expected: ImageReference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text", ["", "App:1", "app@sha256:xyz", "app:", "quay.io/", "a b", "app:" + "t" * 200]
)
def test_parse_reference_rejects_invalid(text: str) -> None:
    assert parse_reference(text) is None


# -- refusals -----------------------------------------------------------------------------


def test_denied_digest_is_refused_with_container_image_digest_and_summary(
    index: ImageIndex,
) -> None:
    ref = f"quay.io/acme/web@{BAD}"
    review = review_pod(pod(ref), None, namespace="apps", index=index, fail_closed=True)
    assert not review.allowed
    assert review.code == DENIED_CODE
    assert BAD in review.message
    msg = review.message
    assert msg.startswith("Pod apps/web refused by scapguard: ")
    assert f'container "c0" image "{ref}" resolves to {BAD}' in msg
    assert (
        "images.openshift.io/deny-execution=true, set by scapguard for ScanPolicy apps/strict"
        in (msg)
    )
    assert f"ImageScan apps/{scan_name(BAD, 'apps', 'strict')}" in msg
    assert "critical=1 high=2 (Fail under ScanPolicy apps/strict: 1 critical)" in msg


def test_deny_set_by_a_person_counts(index: ImageIndex) -> None:
    other = "sha256:" + "c" * 64
    index.apply_image("ADDED", image(other, {c.OPENSHIFT_DENY_ANNOTATION: "true"}))
    review = review_pod(pod(f"x/y@{other}"), None, namespace="apps", index=index, fail_closed=True)
    assert not review.allowed
    assert "set by a person, not by scapguard" in review.message


def test_imagestream_short_name_resolves_in_the_pods_namespace(index: ImageIndex) -> None:
    review = review_pod(pod("app"), None, namespace="apps", index=index, fail_closed=True)
    assert not review.allowed
    assert 'image "app" via ImageStream apps/app:latest resolves to ' + BAD in review.message
    # Another namespace has no such stream: a Docker Hub short name, unresolvable.
    elsewhere = review_pod(pod("app"), None, namespace="other", index=index, fail_closed=True)
    assert elsewhere.allowed
    assert "cannot resolve it to a digest" in elsewhere.warnings[0]


def test_clean_tag_and_digest_are_admitted_silently(index: ImageIndex) -> None:
    review = review_pod(
        pod("app:stable", f"quay.io/x@{GOOD}"),
        None,
        namespace="apps",
        index=index,
        fail_closed=True,
    )
    assert review.allowed
    assert review.warnings == ()


@pytest.mark.parametrize(
    "ref",
    [
        f"{REGISTRY}/apps/app:latest",
        f"{REGISTRY}/apps/app",
        f"{PUBLIC.upper()}/apps/app:latest",
    ],
)
def test_registry_pull_spec_of_an_imagestream_resolves_from_any_namespace(
    index: ImageIndex, ref: str
) -> None:
    review = review_pod(pod(ref), None, namespace="elsewhere", index=index, fail_closed=True)
    assert not review.allowed
    assert "via ImageStream apps/app:latest" in review.message


def test_external_tag_is_admitted_with_a_warning(index: ImageIndex) -> None:
    review = review_pod(
        pod("docker.io/library/nginx:1.25", "nginx:1.25"),
        None,
        namespace="apps",
        index=index,
        fail_closed=True,
    )
    assert review.allowed
    assert len(review.warnings) == 2
    assert all("tag reference to a registry image" in w for w in review.warnings)


def test_stream_tag_without_image_warns(index: ImageIndex) -> None:
    review = review_pod(pod("app:missing"), None, namespace="apps", index=index, fail_closed=True)
    assert review.allowed
    assert review.warnings == (
        'container "c0" image "app:missing": ImageStream apps/app:missing has no image yet, so '
        "scapguard could not check whether it is denied",
    )


def test_invalid_reference_warns(index: ImageIndex) -> None:
    review = review_pod(pod("Not Valid"), None, namespace="apps", index=index, fail_closed=True)
    assert review.allowed
    assert "not a valid image reference" in review.warnings[0]


def test_init_and_ephemeral_containers_are_checked(index: ImageIndex) -> None:
    review = review_pod(
        pod(f"x@{GOOD}", init=(f"x@{BAD}",), ephemeral=("app",)),
        None,
        namespace="apps",
        index=index,
        fail_closed=True,
    )
    assert not review.allowed
    assert 'init container "i0"' in review.message
    assert 'ephemeral container "e0"' in review.message
    assert BAD in review.message


def test_update_checks_only_new_or_changed_images(index: ImageIndex) -> None:
    old = pod(f"x@{BAD}")
    # An unrelated update of a Pod whose image was denied after it started: allowed.
    assert review_pod(old, old, namespace="apps", index=index, fail_closed=True).allowed
    # Switching a container to a denied image: refused.
    changed = review_pod(
        pod(f"x@{BAD}"), pod(f"x@{GOOD}"), namespace="apps", index=index, fail_closed=True
    )
    assert not changed.allowed
    # kubectl debug adds an ephemeral container with a denied image: refused.
    debug = review_pod(
        pod(f"x@{BAD}", ephemeral=(f"x@{BAD}",)),
        old,
        namespace="apps",
        index=index,
        fail_closed=True,
    )
    assert not debug.allowed
    assert 'ephemeral container "e0"' in debug.message
    assert 'container "c0"' not in debug.message.replace('ephemeral container "e0"', "")


def test_lifting_the_deny_admits(index: ImageIndex) -> None:
    index.apply_image("MODIFIED", image(BAD))
    assert review_pod(
        pod(f"x@{BAD}", "app"), None, namespace="apps", index=index, fail_closed=True
    ).allowed


# -- not ready ----------------------------------------------------------------------------


def test_not_ready_refuses_when_fail_closed_and_warns_when_open() -> None:
    idx = ImageIndex()
    idx.replace_images([])
    closed = review_pod(pod("x@" + GOOD), None, namespace="apps", index=idx, fail_closed=True)
    assert not closed.allowed
    assert closed.code == NOT_READY_CODE
    assert "initial listing of imagestreams not finished" in closed.message
    opened = review_pod(pod("x@" + GOOD), None, namespace="apps", index=idx, fail_closed=False)
    assert opened.allowed
    assert "failurePolicy Ignore" in opened.warnings[0]
    # Nothing to check (an UPDATE without image changes) does not depend on the index.
    same = pod("x@" + GOOD)
    assert review_pod(same, same, namespace="apps", index=idx, fail_closed=True).allowed


# -- the kopf handlers map a review to kopf's terms ---------------------------------------


def _memo(index: ImageIndex) -> kopf.Memo:
    memo = kopf.Memo()
    memo[MEMO_KEY] = AdmissionRuntime(index=index, fail_closed=True, informers=())
    return memo


LOGGER = logging.getLogger(__name__)


def test_refusal_raises_admission_error_with_code_and_keeps_warnings(index: ImageIndex) -> None:
    warnings: list[str] = []
    with pytest.raises(kopf.AdmissionError) as caught:
        review_admission(pod(f"x@{BAD}", "nginx:1"), None, "apps", _memo(index), warnings, LOGGER)
    assert caught.value.code == DENIED_CODE
    assert BAD in str(caught.value)
    assert len(warnings) == 1


def test_admission_passes_warnings_on(index: ImageIndex) -> None:
    warnings: list[str] = []
    review_admission(
        pod(f"x@{GOOD}", ephemeral=("busybox",)),
        pod(f"x@{GOOD}"),
        "apps",
        _memo(index),
        warnings,
        LOGGER,
    )
    assert len(warnings) == 1
    assert 'ephemeral container "e0" image "busybox"' in warnings[0]


def test_unconfigured_admission_refuses() -> None:
    with pytest.raises(kopf.AdmissionError, match="not configured"):
        review_admission(pod(f"x@{GOOD}"), None, "apps", kopf.Memo(), [], LOGGER)


# -- workloads: warned, never refused ---------------------------------------------------------


def workload(kind: str, *images: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": pod(*images)["spec"]}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"kind": kind, "metadata": {"name": "web", "namespace": "apps"}, "spec": spec}


@pytest.mark.parametrize(
    "kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]
)
def test_a_workload_naming_a_denied_image_is_warned_about(index: ImageIndex, kind: str) -> None:
    bad = workload(kind, f"quay.io/acme/web@{BAD}", f"quay.io/acme/ok@{GOOD}")
    (warning,) = review_workload(bad, None, namespace="apps", index=index)
    assert warning.startswith(f"{kind} apps/web: its Pods will be refused by scapguard: ")
    assert BAD in warning and "ScanPolicy apps/strict" in warning
    good = workload(kind, f"quay.io/acme/ok@{GOOD}")
    assert review_workload(good, None, namespace="apps", index=index) == ()


def test_a_workload_update_warns_only_about_changed_images(index: ImageIndex) -> None:
    old = workload("Deployment", f"quay.io/acme/web@{BAD}")
    scaled = workload("Deployment", f"quay.io/acme/web@{BAD}")
    scaled["spec"]["replicas"] = 3
    assert review_workload(scaled, old, namespace="apps", index=index) == ()
    assert review_workload(old, workload("Deployment", "x@" + GOOD), namespace="apps",
                           index=index)  # fmt: skip


def test_no_template_or_no_index_no_warning(index: ImageIndex) -> None:
    assert pod_template({"kind": "Service", "spec": {"template": {}}}) is None
    assert review_workload({"kind": "ConfigMap"}, None, namespace="apps", index=index) == ()
    assert review_workload(workload("Job", f"x@{BAD}"), None, namespace="apps",
                           index=ImageIndex()) == ()  # fmt: skip
