"""The ImageScan status as the operator writes it: each named transition's exact patch, the
Condition rule, which attempt a Job or a post stands for, and the wake-up annotation's value."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from scapguard.api import constants as c
from scapguard.api.conditions import Condition, set_conditions
from scapguard.api.evaluation import Verdict
from scapguard.api.imagescan import (
    MAX_FAILING_IDS,
    AttemptOutcome,
    AttemptRef,
    PromotionRecord,
    ScanRequest,
    Standing,
    StoredResult,
    Wake,
    attempt_ended,
    attempt_of,
    attempt_started,
    completed,
    deny_released,
    format_wake,
    gave_up,
    job_released,
    judged,
    not_ready,
    parse_wake,
    promotion_changed,
    queued,
    read_progress,
    requeued,
    result_received,
    retry_scheduled,
    standing,
    verdict_conditions,
)
from scapguard.k8s.api import IMAGESCAN, Conflict, Obj
from scapguard.reconcile.status import write_change, write_if_changed
from tests.harness import Harness, harness

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(seconds=30)
JOB = "scapguard-scan-0123456789ab-2-1"
REQUEST = ScanRequest(2, "OnDemand", "by-hand", "c0ffee", "2026-03-01T11:00:00Z")


def progress(**status: Any) -> Any:
    """A ScanProgress read back from status fields (request 2 unless ``request`` is given)."""
    return read_progress({"request": REQUEST.to_dict(), **status})


def cond(type_: str, status: str, reason: str, message: str, since: str = "T") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 4,
        "lastTransitionTime": since,
    }


# Transitions: each one's exact merge patch against a status without conditions.


def test_queued_without_a_result_is_not_scanned_and_not_ready() -> None:
    patch = queued(read_progress({}), REQUEST, "app:v1", NOW)
    assert patch.merge_patch({}, generation=4, now="T") == {
        "request": {
            "number": 2,
            "trigger": "OnDemand",
            "rescan": "by-hand",
            "contentHash": "c0ffee",
            "requestedAt": "2026-03-01T11:00:00Z",
        },
        "trigger": "OnDemand",
        "attempts": 0,
        "job": None,
        "nextAttemptAt": None,
        "displayImage": "app:v1",
        "state": "Queued",
        "queuedAt": "2026-03-01T12:00:00Z",
        "conditions": [
            cond("Scanned", "False", "Queued", "OnDemand scan queued"),
            cond("Ready", "False", "Queued", "OnDemand scan queued"),
        ],
        "observedGeneration": 4,
    }


def test_queued_rescan_keeps_scanned_true_and_ready_alone_while_a_result_stands() -> None:
    patch = queued(progress(result="Pass"), REQUEST, "app:v1", NOW)
    assert patch.conditions == (Condition("Scanned", "True", "Queued", "OnDemand scan queued"),)


def test_requeued_sets_only_the_queue_fields_and_no_generation() -> None:
    assert requeued(NOW).merge_patch({}, generation=4, now="T") == {
        "state": "Queued",
        "queuedAt": "2026-03-01T12:00:00Z",
    }


def test_attempt_started() -> None:
    patch = attempt_started(progress(attempts=0), 1, JOB, "scapguard")
    assert patch.merge_patch({}, generation=4, now="T") == {
        "attempts": 1,
        "job": JOB,
        "state": "Running",
        "nextAttemptAt": None,
        "conditions": [
            cond("Scanned", "False", "Running", f"attempt 1 running in Job scapguard/{JOB}")
        ],
        "observedGeneration": 4,
    }


FAILED = AttemptOutcome(2, 1, "Error", "PullFailed", "refused", "2026-03-01T12:00:05Z")
LAST_ATTEMPT = {
    "request": 2,
    "attempt": 1,
    "outcome": "Error",
    "reason": "PullFailed",
    "message": "refused",
    "finishedAt": "2026-03-01T12:00:05Z",
}


def test_attempt_outcome_to_dict_is_status_last_attempt() -> None:
    assert FAILED.to_dict() == LAST_ATTEMPT
    assert read_progress({"lastAttempt": LAST_ATTEMPT}).last_attempt == FAILED


def test_result_received_for_a_recorded_attempt_writes_only_its_outcome() -> None:
    patch = result_received(progress(attempts=1, state="Running"), FAILED, JOB, None)
    assert patch.merge_patch({}, generation=4, now="T") == {
        "attempts": 1,
        "lastAttempt": LAST_ATTEMPT,
    }


def test_result_received_records_a_start_that_was_never_recorded_without_its_condition() -> None:
    stored = StoredResult("s-result", "ab" * 32, report_kept=False, message="no report")
    done = AttemptOutcome(2, 1, "Completed", None, None, "2026-03-01T12:00:05Z")
    patch = result_received(progress(attempts=0, state="Queued"), done, JOB, stored)
    assert patch.conditions == ()
    assert patch.merge_patch({}, generation=4, now="T") == {
        "attempts": 1,
        "job": JOB,
        "state": "Running",
        "nextAttemptAt": None,
        "report": {
            "configMap": "s-result",
            "resultKey": "result.json.gz",
            "resultSha256": "ab" * 32,
            "reportKey": "report.html.gz",
            "available": False,
            "message": "no report",
        },
        "lastAttempt": {**LAST_ATTEMPT, "outcome": "Completed", "reason": None, "message": None},
    }


def test_attempt_ended() -> None:
    assert attempt_ended(FAILED).merge_patch({}, generation=4, now="T") == {
        "lastAttempt": LAST_ATTEMPT
    }


def test_retry_scheduled() -> None:
    patch = retry_scheduled(progress(attempts=1, result="Fail"), FAILED, LATER, NOW)
    message = "attempt 1 failed (PullFailed: refused); retrying"
    assert patch.merge_patch({}, generation=4, now="T") == {
        "state": "Retrying",
        "nextAttemptAt": "2026-03-01T12:00:30Z",
        "job": None,
        "queuedAt": "2026-03-01T12:00:00Z",
        "conditions": [cond("Scanned", "True", "Retrying", message)],
        "observedGeneration": 4,
    }


VERDICT = Verdict(
    result="Fail",
    reason="VulnerabilitiesFound",
    message="1 failing",
    failing_vulnerabilities=("CVE-1",),
    failing_rules=("rule-1",),
    excepted=("CVE-2",),
)
JUDGED = {
    "result": "Fail",
    "reason": "VulnerabilitiesFound",
    "message": "1 failing",
    "denied": True,
    "failing": ["CVE-1", "rule-1"],
    "excepted": ["CVE-2"],
    "evaluationHash": "e1",
    "evaluatedAt": "2026-03-01T12:00:00Z",
    "displayImage": "app:v1",
}


def judge(verdict: Verdict = VERDICT) -> Any:
    return judged(verdict, denied=True, evaluation_hash="e1", now=NOW, display_image="app:v1")


def test_completed_with_its_verdict_the_verdict_winning_a_shared_field() -> None:
    found = {"os": {"id": "ubuntu"}, "message": "what the summary says"}
    patch = completed(REQUEST, found) | judge()
    assert patch.merge_patch({}, generation=4, now="T") == {
        "os": {"id": "ubuntu"},
        "state": "Completed",
        "resultRequest": 2,
        "job": None,
        "nextAttemptAt": None,
        "error": None,
        **JUDGED,
    }


def test_gave_up_with_its_verdict() -> None:
    patch = gave_up(REQUEST, "PullFailed", "refused (after 3 attempts)")
    assert patch.merge_patch({}, generation=4, now="T") == {
        "state": "Completed",
        "resultRequest": 2,
        "job": None,
        "nextAttemptAt": None,
        "error": {"reason": "PullFailed", "message": "refused (after 3 attempts)"},
    }


def test_judged_lists_at_most_max_failing_ids() -> None:
    many = tuple(f"CVE-{n}" for n in range(MAX_FAILING_IDS + 5))
    fields = judge(Verdict("Fail", "R", "m", failing_vulnerabilities=many, excepted=many)).fields
    assert fields["failing"] == list(many[:MAX_FAILING_IDS])
    assert fields["excepted"] == list(many[:MAX_FAILING_IDS])


def test_verdict_conditions_without_scanned_leave_a_running_rescans_scanned_alone() -> None:
    scanned = Condition("Scanned", "True", "ScanCompleted", "scan completed")
    ready = Condition("Ready", "True", "NoFailingFindings", "Pass: ok")
    patch = (judge() | verdict_conditions([scanned, ready])).without("Scanned")
    assert patch.conditions == (ready,)
    assert patch.fields == JUDGED


def test_job_released_not_ready_and_deny_released() -> None:
    assert job_released().merge_patch({}, generation=4, now="T") == {"job": None}
    assert not_ready("PolicyNotFound", "gone").merge_patch({}, generation=4, now="T") == {
        "conditions": [cond("Ready", "False", "PolicyNotFound", "gone")],
        "observedGeneration": 4,
    }
    assert deny_released("gone").merge_patch({}, generation=4, now="T") == {
        "denied": False,
        "evaluationHash": None,
        "conditions": [
            cond("Enforced", "False", "PolicyNotFound", "gone: this scan denies nothing")
        ],
        "observedGeneration": 4,
    }


def test_promotion_changed() -> None:
    record = PromotionRecord("Pending", "reg/app:v1", 2, JOB, message="copying")
    assert promotion_changed(record, NOW).merge_patch({}, generation=4, now="T") == {
        "promotion": {
            "state": "Pending",
            "target": "reg/app:v1",
            "request": 2,
            "job": JOB,
            "reason": None,
            "message": "copying",
            "time": "2026-03-01T12:00:00Z",
        }
    }


# Conditions: lastTransitionTime moves only with the status; no change, no conditions patch.


def test_a_repeated_judgement_patches_no_conditions_but_still_the_generation() -> None:
    status = {"conditions": [cond("Ready", "False", "PolicyNotFound", "gone", since="T0")]}
    patch = not_ready("PolicyNotFound", "gone").merge_patch(status, generation=4, now="T1")
    assert patch == {"observedGeneration": 4}


def test_a_new_reason_keeps_the_transition_time_a_new_status_moves_it() -> None:
    old = [cond("Scanned", "False", "Queued", "q", since="T0"), cond("Ready", "False", "Q", "q")]
    reworded, changed = set_conditions(
        old, [Condition("Scanned", "False", "Running", "r")], observed_generation=5, now="T1"
    )
    assert changed
    assert reworded == [
        {**cond("Scanned", "False", "Running", "r", since="T0"), "observedGeneration": 5},
        cond("Ready", "False", "Q", "q"),
    ]
    flipped, changed = set_conditions(
        reworded,
        [
            Condition("Scanned", "True", "ScanCompleted", "done"),
            Condition("Ready", "True", "A", ""),
        ],
        observed_generation=5,
        now="T2",
    )
    assert changed
    assert [(x["status"], x["lastTransitionTime"]) for x in flipped] == [
        ("True", "T2"),
        ("True", "T2"),
    ]
    assert Condition("Ready", "True", "A", "").true and not Condition("R", "False", "A", "").true


# Which attempt a Job, its Secret or a post stands for.


@pytest.mark.parametrize(
    ("status", "ref", "expected"),
    [
        ({"attempts": 1}, AttemptRef(2, 1), Standing.CURRENT),
        ({"attempts": 1}, AttemptRef(2, 2), Standing.UNRECORDED),
        ({"attempts": 3}, AttemptRef(2, 1), Standing.OTHER_ATTEMPT),
        ({"attempts": 1}, AttemptRef(2, 3), Standing.OTHER_ATTEMPT),
        ({"attempts": 1}, AttemptRef(1, 1), Standing.OTHER_REQUEST),
        (
            {"attempts": 1, "resultRequest": 2, "result": "Pass"},
            AttemptRef(2, 1),
            Standing.FINISHED,
        ),
        ({"attempts": 1, "resultRequest": 1, "result": "Pass"}, AttemptRef(2, 1), Standing.CURRENT),
    ],
)
def test_standing(status: dict[str, Any], ref: AttemptRef, expected: Standing) -> None:
    assert standing(progress(**status), ref) is expected


def test_standing_without_a_request_is_another_request() -> None:
    assert standing(read_progress({}), AttemptRef(1, 1)) is Standing.OTHER_REQUEST


def test_attempt_of_reads_the_request_and_attempt_annotations() -> None:
    notes = {c.REQUEST_ANNOTATION: "2", c.ATTEMPT_ANNOTATION: "13"}
    assert attempt_of(notes) == AttemptRef(2, 13)
    assert attempt_of({c.REQUEST_ANNOTATION: "2"}) is None
    assert attempt_of({**notes, c.ATTEMPT_ANNOTATION: "-1"}) is None
    assert attempt_of({**notes, c.ATTEMPT_ANNOTATION: "²"}) is None


def test_progress_decides_new_requests_and_re_evaluation() -> None:
    running = progress(attempts=1, result="Fail", evaluationHash="e1")
    assert not running.new_request_due("other") and running.rescan_pending("other")
    assert not running.rescan_pending("by-hand") and not running.rescan_pending(None)
    finished = progress(attempts=1, result="Fail", resultRequest=2, evaluationHash="e1")
    assert finished.new_request_due("other") and not finished.new_request_due("by-hand")
    assert read_progress({}).new_request_due(None)
    assert not finished.verdict_outdated("e1") and finished.verdict_outdated("e2")
    assert not progress(attempts=1).verdict_outdated("e2"), "no result: nothing to re-judge"


# The wake-up annotation's value.


def test_wake_values_format_and_parse_back() -> None:
    assert format_wake("result-received", JOB) == f"result-received:{JOB}"
    assert format_wake("job-ended", JOB) == f"job-ended:{JOB}"
    assert parse_wake(f"job-ended:{JOB}") == Wake("job-ended", JOB)
    assert parse_wake(format_wake("result-received", JOB)) == Wake("result-received", JOB)
    for other in (None, "", JOB, "1.1", "job-ended:", "woken:x", f"result-received{JOB}"):
        assert parse_wake(other) is None, other
    with pytest.raises(ValueError):
        format_wake("poked", JOB)


# Writing: guarded by resourceVersion, and no write when nothing would change.


def scan_object(h: Harness) -> Obj:
    return h.kube.create(
        IMAGESCAN,
        {
            "apiVersion": c.API_VERSION,
            "kind": c.IMAGESCAN_KIND,
            "metadata": {"name": "s", "namespace": "apps"},
            "spec": {"image": "r/a@sha256:" + "0" * 64, "policy": "p"},
        },
    )


def test_write_if_changed_writes_once() -> None:
    h = harness()
    scan = scan_object(h)
    assert write_if_changed(h.ctx, scan, not_ready("PolicyNotFound", "gone"))
    version = scan["metadata"]["resourceVersion"]
    assert not write_if_changed(h.ctx, scan, not_ready("PolicyNotFound", "gone"))
    assert scan["metadata"]["resourceVersion"] == version
    ready = h.kube.get(IMAGESCAN, "s", "apps")["status"]["conditions"][0]
    generation = scan["metadata"]["generation"]
    assert (ready["type"], ready["status"], ready["observedGeneration"]) == (
        "Ready",
        "False",
        generation,
    )


def test_write_change_refuses_a_scan_changed_since_it_was_read_unless_unguarded() -> None:
    h = harness()
    stale = scan_object(h)
    h.kube.patch(IMAGESCAN, "s", "apps", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(Conflict):
        write_change(h.ctx, dict(stale), job_released())
    write_change(h.ctx, stale, attempt_ended(FAILED), guarded=False)
    assert h.kube.get(IMAGESCAN, "s", "apps")["status"]["lastAttempt"] == LAST_ATTEMPT
    assert stale["metadata"]["labels"] == {"x": "y"}, "the scan is updated in place"
