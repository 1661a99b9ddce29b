"""A scanner Job that ends without posting a result pokes its scan, and only then."""

from __future__ import annotations

from scapguard.api import constants as c
from scapguard.k8s.api import IMAGESCAN, SCANPOLICY, Obj
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.jobs import nudge_scan_of_ended_job
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.testing import (
    Harness,
    add_policy,
    add_stream,
    digest,
    finish_job,
    harness,
    jobs,
    post,
    scan_result,
)


def started() -> tuple[Harness, str, Obj]:
    """A policy, one image, its scan's first attempt running: (harness, scan name, Job)."""
    h = harness()
    add_policy(h, scanner={"retries": 1})
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    return h, scan["metadata"]["name"], job


def poke(h: Harness, name: str) -> str | None:
    notes = h.kube.get(IMAGESCAN, name, "apps")["metadata"].get("annotations") or {}
    return notes.get(c.JOB_ENDED_ANNOTATION)


def test_a_job_that_failed_without_a_result_pokes_its_scan_once() -> None:
    h, name, job = started()
    job_name = job["metadata"]["name"]
    assert not nudge_scan_of_ended_job(h.ctx, job), "still running: nothing to do"
    finish_job(h, job_name, "Failed", "BackoffLimitExceeded")
    (ended,) = jobs(h)
    assert nudge_scan_of_ended_job(h.ctx, ended)
    assert poke(h, name) == job_name
    assert not nudge_scan_of_ended_job(h.ctx, ended), "the same Job pokes once"
    # The reconcile the poke causes records the attempt's end and schedules the retry.
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    status = h.kube.get(IMAGESCAN, name, "apps")["status"]
    assert status["state"] == "Retrying"
    assert status["lastAttempt"]["reason"] == "ScannerFailed"


def test_a_job_that_posted_its_result_or_was_superseded_pokes_nothing() -> None:
    h, name, job = started()
    job_name = job["metadata"]["name"]
    assert post(h, job_name, scan_result(digest(1))).status == 200
    finish_job(h, job_name, "Complete")
    (ended,) = jobs(h)
    assert not nudge_scan_of_ended_job(h.ctx, ended), "the result is recorded already"
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    assert not nudge_scan_of_ended_job(h.ctx, ended), "the scan has its result"
    assert poke(h, name) is None


def test_a_job_of_a_scan_that_is_gone_pokes_nothing() -> None:
    h, name, job = started()
    finish_job(h, job["metadata"]["name"], "Failed")
    (ended,) = jobs(h)
    h.kube.delete(IMAGESCAN, name, "apps")
    assert not nudge_scan_of_ended_job(h.ctx, ended)
