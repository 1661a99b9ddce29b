"""A scanner Job that ends without posting a result pokes its scan, and only then; the
attempt's end names how the scanner container ended (OOMKilled, an exit code)."""

from __future__ import annotations

from scapguard.api import constants as c
from scapguard.builders.job import CONTAINER_NAME
from scapguard.k8s.api import IMAGESCAN, POD, SCANPOLICY, Obj
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.jobs import job_state, nudge_scan_of_ended_job
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.harness import (
    OPERATOR_NS,
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
    return notes.get(c.WAKE_ANNOTATION)


def test_a_job_that_failed_without_a_result_pokes_its_scan_once() -> None:
    h, name, job = started()
    job_name = job["metadata"]["name"]
    assert not nudge_scan_of_ended_job(h.ctx, job), "still running: nothing to do"
    finish_job(h, job_name, "Failed", "BackoffLimitExceeded")
    (ended,) = jobs(h)
    assert nudge_scan_of_ended_job(h.ctx, ended)
    assert poke(h, name) == f"job-ended:{job_name}"
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
    assert poke(h, name) == f"result-received:{job_name}", "woken by the post, not the end"


def test_a_job_of_a_scan_that_is_gone_pokes_nothing() -> None:
    h, name, job = started()
    finish_job(h, job["metadata"]["name"], "Failed")
    (ended,) = jobs(h)
    h.kube.delete(IMAGESCAN, name, "apps")
    assert not nudge_scan_of_ended_job(h.ctx, ended)


def scanner_pod(job_name: str, terminated: dict[str, object], memory: str = "64Mi") -> Obj:
    """The pod the Job controller made for ``job_name``, its scanner container ended."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job_name}-x1", "namespace": OPERATOR_NS,
                     "labels": {"job-name": job_name}},
        "spec": {"containers": [{"name": CONTAINER_NAME,
                                 "resources": {"limits": {"memory": memory}}}]},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": CONTAINER_NAME, "state": {"terminated": terminated}}]},
    }  # fmt: skip


def test_an_oom_killed_scanner_is_named_in_the_attempts_end_not_the_backoff_limit() -> None:
    h, name, job = started()
    job_name = job["metadata"]["name"]
    h.kube.create(POD, scanner_pod(job_name, {"reason": "OOMKilled", "exitCode": 137}))
    finish_job(h, job_name, "Failed", "BackoffLimitExceeded")
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    last = h.kube.get(IMAGESCAN, name, "apps")["status"]["lastAttempt"]
    assert last["reason"] == "ScannerFailed"
    assert last["message"] == (
        "the scanner container was OOMKilled (exit code 137): it needs more than the memory "
        "limit of 64Mi (spec.scanner.resources.limits.memory)"
    )


def test_a_scanner_that_exited_with_an_error_quotes_its_termination_message() -> None:
    backoff = "Job has reached the specified backoff limit"
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    job = {"status": {"conditions": [{**failed, "message": backoff}]}}
    ended = {"reason": "Error", "exitCode": 2, "message": "x" * 600 + "\nno space left on device\n"}
    state = job_state(job, [scanner_pod("j", ended)])
    assert (state.active, state.reason) == (False, "ScannerFailed")
    assert state.message.startswith("the scanner container ended without a result (Error, exit")
    assert state.message.endswith("no space left on device")
    assert len(state.message) < 600
    # Without its pod (deleted with the Job, or never scheduled) the Job's words stay.
    assert job_state(job).message == backoff


def test_a_deadline_stays_a_timeout_whatever_the_pod_says() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                      "reason": "DeadlineExceeded"}]}}  # fmt: skip
    pod = scanner_pod("j", {"reason": "OOMKilled", "exitCode": 137})
    assert job_state(job, [pod]).reason == "Timeout"
