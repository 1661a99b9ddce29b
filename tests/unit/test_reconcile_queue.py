"""Queue admission: global and per-policy limits, fairness across policies, restart safety."""

from __future__ import annotations

from scapguard.k8s.api import IMAGESCAN, JOB, SCANPOLICY, Conflict, Kind, Obj
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.queue import Candidate, admit, fair_order, pump_queue
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from tests.harness import (
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


def cand(policy: str, name: str, at: str) -> Candidate:
    return Candidate("ns", name, f"ns/{policy}", at)


def test_fair_order_round_robins_across_policies_oldest_first() -> None:
    order = fair_order(
        [
            cand("a", "a1", "01"),
            cand("a", "a2", "02"),
            cand("a", "a3", "03"),
            cand("b", "b1", "05"),
            cand("b", "b2", "06"),
        ]
    )
    assert [c.name for c in order] == ["a1", "b1", "a2", "b2", "a3"]


def test_admit_respects_both_limits() -> None:
    order = fair_order(
        [cand("a", f"a{i}", f"{i:02}") for i in range(5)]
        + [cand("b", f"b{i}", f"{i:02}") for i in range(5)]
    )
    admitted = admit(order, {"ns/a": 1}, global_limit=4, per_policy_limit=2)
    assert [c.name for c in admitted] == ["a0", "b0", "b1"]
    assert admit(order, {"ns/a": 2, "ns/b": 2}, 4, 3) == []


def queue_twenty(h: Harness) -> None:
    add_policy(h)
    add_stream(h, "app", "apps", {f"t{i}": [digest(100 + i)] for i in range(20)})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    for scan in h.kube.list(IMAGESCAN, "apps"):
        reconcile_imagescan(h.ctx, scan)


def test_twenty_digests_never_more_than_three_jobs() -> None:
    h = harness(SCAPGUARD_MAX_CONCURRENT_SCANS="3", SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY="3")
    queue_twenty(h)
    peak = 0
    for _ in range(40):
        running = jobs(h)
        peak = max(peak, len(running))
        if not running and all(
            (s.get("status") or {}).get("result") for s in h.kube.list(IMAGESCAN, "apps")
        ):
            break
        for job in running:
            scan_digest = job["spec"]["template"]["spec"]["containers"][0]["args"][0].split("@")[1]
            assert post(h, job["metadata"]["name"], scan_result(scan_digest)).status == 200
            name = job["metadata"]["annotations"]["scapguard.io/scan-name"]
            reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
            peak = max(peak, len(jobs(h)))
    assert peak == 3
    results = [s["status"]["result"] for s in h.kube.list(IMAGESCAN, "apps")]
    assert results == ["Pass"] * 20
    assert len(h.kube.created("jobs")) == 20, "exactly one Job per scan"
    policy = h.kube.get(SCANPOLICY, "default", "apps")
    reconcile_scanpolicy(h.ctx, policy)
    status = h.kube.get(SCANPOLICY, "default", "apps")["status"]
    assert status["imagesSelected"] == 20 and status["imagesScanned"] == 20


def test_queue_is_visible_in_status_and_metrics() -> None:
    h = harness(SCAPGUARD_MAX_CONCURRENT_SCANS="2")
    queue_twenty(h)
    states = sorted(s["status"]["state"] for s in h.kube.list(IMAGESCAN, "apps"))
    assert states.count("Running") == 2 and states.count("Queued") == 18
    depth = h.ctx.metrics.registry.get_sample_value(
        "scapguard_scan_queue_depth", {"policy": "apps/default"}
    )
    assert depth == 18
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    status = h.kube.get(SCANPOLICY, "default", "apps")["status"]
    assert status["scansQueued"] == 18 and status["scansRunning"] == 2


def test_crash_between_job_creation_and_status_write_adopts_the_job() -> None:
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [digest(7)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")

    def crash_on_attempt_record(verb: str, kind: Kind, body: Obj) -> None:
        if verb == "patch_status" and (body.get("status") or {}).get("attempts") == 1:
            raise Conflict(409, "Conflict", "simulated crash before the status write")

    h.kube.before_write = crash_on_attempt_record
    reconcile_imagescan(h.ctx, scan)
    assert len(jobs(h)) == 1
    assert h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps")["status"]["attempts"] == 0
    h.kube.before_write = None
    # The operator "restarts": the same reconcile runs again and adopts the existing Job.
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps"))
    pump_queue(h.ctx)
    assert len(h.kube.created("jobs")) == 1
    status = h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps")["status"]
    assert status["attempts"] == 1 and status["state"] == "Running"


def test_result_posted_before_the_restarted_operator_adopts_the_job_is_not_rerun() -> None:
    """Killed after creating the Job, before recording it: the restarted operator's results
    endpoint takes the pod's post first; a queue pump before the scan's reconcile must not
    start a second attempt of a scan that already has its result."""
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [digest(8)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    name = scan["metadata"]["name"]

    def crash_on_attempt_record(verb: str, kind: Kind, body: Obj) -> None:
        if verb == "patch_status" and (body.get("status") or {}).get("attempts") == 1:
            raise Conflict(409, "Conflict", "simulated crash before the status write")

    h.kube.before_write = crash_on_attempt_record
    reconcile_imagescan(h.ctx, scan)
    h.kube.before_write = None
    (job,) = jobs(h)
    assert post(h, job["metadata"]["name"], scan_result(digest(8))).status == 200
    pump_queue(h.ctx)  # another scan's handler, before this scan's reconcile
    assert len(h.kube.created("jobs")) == 1
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    status = h.kube.get(IMAGESCAN, name, "apps")["status"]
    assert status["state"] == "Completed" and status["result"] == "Pass"
    assert len(h.kube.created("jobs")) == 1


def test_failed_attempts_retry_with_backoff_then_error_and_on_error_deny() -> None:
    h = harness()
    add_policy(h, action="Enforce", onError="Deny", scanner={"retries": 2})
    add_stream(h, "app", "apps", {"latest": [digest(9)]})
    h.kube.create(
        Kind("image.openshift.io", "v1", "images", "Image", namespaced=False),
        {"metadata": {"name": digest(9)}},
    )
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    name = scan["metadata"]["name"]
    reconcile_imagescan(h.ctx, scan)
    # Attempt 1: the pull fails and the scanner says so.
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(digest(9), error=("PullFailed", "denied")))
    outcome = reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    assert outcome.retry_after == 10
    assert h.kube.get(IMAGESCAN, name, "apps")["status"]["state"] == "Retrying"
    assert not jobs(h)
    h.clock.advance(11)
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    # Attempt 2: the Job times out without a post.
    (job,) = jobs(h)
    finish_job(h, job["metadata"]["name"], "Failed", "DeadlineExceeded")
    outcome = reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    assert outcome.retry_after == 20, "backoff doubles"
    h.clock.advance(21)
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    (job,) = jobs(h)
    post(h, job["metadata"]["name"], scan_result(digest(9), error=("UnsupportedOS", "alpine")))
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    status = h.kube.get(IMAGESCAN, name, "apps")["status"]
    assert status["result"] == "Error"
    assert status["error"]["reason"] == "UnsupportedOS"
    assert status["attempts"] == 3 and len(h.kube.created("jobs")) == 3
    assert status["denied"] is True
    assert (
        h.ctx.metrics.registry.get_sample_value(
            "scapguard_scan_errors_total", {"reason": "Timeout"}
        )
        == 1
    )
    assert not h.kube.list(JOB)


def test_the_queue_goes_by_status_alone_and_marks_no_scan() -> None:
    """No label or annotation says "queued": a waiting scan costs no write beyond its status,
    and wakes no handler (the queue reads every scan from the operator's cache)."""
    h = harness(SCAPGUARD_MAX_CONCURRENT_SCANS="3", SCAPGUARD_MAX_CONCURRENT_SCANS_PER_POLICY="3")
    queue_twenty(h)
    states = {s["metadata"]["name"]: s["status"]["state"] for s in h.kube.list(IMAGESCAN, "apps")}
    assert sorted(states.values()).count("Running") == 3
    assert sorted(states.values()).count("Queued") == 17
    for scan in h.kube.list(IMAGESCAN, "apps"):
        assert not [k for k in scan["metadata"].get("labels") or {} if "queued" in k]
    while jobs(h):
        for job in jobs(h):
            image = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
            post(h, job["metadata"]["name"], scan_result(image.split("@")[1]))
        for scan in h.kube.list(IMAGESCAN, "apps"):
            reconcile_imagescan(h.ctx, scan)
    assert len(h.kube.created("jobs")) == 20


def test_the_policy_timer_notices_a_scanner_job_that_ended_unseen() -> None:
    """ImageScans have no timer of their own: a Job whose end the watch missed is found by
    the policy's timer, which reconciles its scans under way (and only those)."""
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [digest(11)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    assert h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps")["status"]["state"] == "Running"
    finish_job(h, job["metadata"]["name"], "Failed", "DeadlineExceeded")
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    status = h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps")["status"]
    assert status["state"] == "Retrying"
    assert status["lastAttempt"]["reason"] == "Timeout"


def test_a_start_racing_another_writer_of_the_scan_is_recorded_all_the_same() -> None:
    """kopf writes its annotations on a scan just after the handler asked for admission: the
    admitter's status write, from a cached copy, meets a Conflict. It reads the scan again and
    records the attempt, or the Job would run unrecorded and its end go unnoticed."""
    h = harness()
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [digest(12)]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    raced: list[str] = []

    kopf_note = {"metadata": {"annotations": {"kopf.scapguard.io/x": "y"}}}

    def kopf_annotates_first(verb: str, kind: Kind, body: Obj) -> None:
        starting = verb == "patch_status" and (body.get("status") or {}).get("attempts") == 1
        if starting and not raced:
            raced.append(verb)
            h.kube.patch(IMAGESCAN, scan["metadata"]["name"], "apps", kopf_note)
            raise Conflict(409, "Conflict", "the object has been modified")

    h.kube.before_write = kopf_annotates_first
    reconcile_imagescan(h.ctx, scan)
    status = h.kube.get(IMAGESCAN, scan["metadata"]["name"], "apps")["status"]
    assert raced and status["attempts"] == 1 and status["state"] == "Running"
    assert len(h.kube.created("jobs")) == 1
