"""ImageScan: its spec, the parts of its status the operator reads back, and the named
transitions that are the only way the operator changes that status."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from scapguard.api import constants as c
from scapguard.api import fields as f
from scapguard.api.conditions import (
    ENFORCED,
    FALSE,
    READY,
    SCANNED,
    TRUE,
    Condition,
    Reason,
    status_patch,
)
from scapguard.api.errors import SpecError
from scapguard.api.evaluation import Verdict

TRIGGERS: Final = ("NewImage", "Scheduled", "OnDemand", "ContentUpdate", "PolicyChange")
RESULTS: Final = ("Pass", "Fail", "Error")
# Display states (status.state); the reconcile decides from the fields below, not from edges.
QUEUED: Final = "Queued"
RUNNING: Final = "Running"
RETRYING: Final = "Retrying"
COMPLETED: Final = "Completed"
# Promotion gate states (status.promotion.state).
PROMOTION_PENDING: Final = "Pending"
PROMOTED: Final = "Promoted"
NOT_PROMOTED: Final = "NotPromoted"
PROMOTION_FAILED: Final = "Failed"

IMAGE_BY_DIGEST = re.compile(r"[^@\s]+@(sha256:[0-9a-f]{64})")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class TagRef:
    namespace: str
    image_stream: str
    tag: str

    def display(self) -> str:
        return f"{self.image_stream}:{self.tag}"

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "imageStream": self.image_stream, "tag": self.tag}


@dataclass(frozen=True)
class ImageScanSpec:
    image: str
    policy: str
    trigger: str = "OnDemand"
    tags: tuple[TagRef, ...] = ()

    @property
    def digest(self) -> str:
        match = IMAGE_BY_DIGEST.fullmatch(self.image)
        if match is None:  # parse() guarantees the shape
            raise SpecError("spec.image", "must be a pull spec by digest")
        return match.group(1)

    def display_image(self) -> str:
        if self.tags:
            return self.tags[0].display()
        repo = self.image.split("@", 1)[0].rsplit("/", 1)[-1]
        return f"{repo}@{self.digest[7:19]}"


def parse_imagescan_spec(spec: object) -> ImageScanSpec:
    """Parse an ImageScan ``spec``; raises SpecError naming the first bad field."""
    data = f.mapping(spec, "spec")
    image = f.matching(
        f.req_str(data, "image", "spec"),
        IMAGE_BY_DIGEST,
        "spec.image",
        "an image pull spec by digest (repo@sha256:<64 hex>)",
    )
    policy = f.matching(f.req_str(data, "policy", "spec"), _NAME, "spec.policy", "a name")
    tags: list[TagRef] = []
    for index, item in enumerate(f.items(data.get("tags"), "spec.tags")):
        where = f"spec.tags[{index}]"
        tag = f.mapping(item, where)
        tags.append(
            TagRef(
                namespace=f.req_str(tag, "namespace", where),
                image_stream=f.req_str(tag, "imageStream", where),
                tag=f.req_str(tag, "tag", where),
            )
        )
    return ImageScanSpec(
        image=image,
        policy=policy,
        trigger=f.enum(data, "trigger", "spec", TRIGGERS, "OnDemand"),
        tags=tuple(tags),
    )


@dataclass(frozen=True)
class ScanRequest:
    """One request to scan (first scan or a rescan); attempts are counted per request."""

    number: int
    trigger: str
    rescan: str | None  # the rescan annotation value this request answers
    content_hash: str
    requested_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "trigger": self.trigger,
            "rescan": self.rescan,
            "contentHash": self.content_hash,
            "requestedAt": self.requested_at,
        }


@dataclass(frozen=True)
class AttemptRef:
    """Which attempt of which request a scanner Job, its Secret or a result belongs to."""

    request: int
    attempt: int


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt ended (status.lastAttempt): posted by its scanner, or recorded by the
    operator when the Job ended without a usable result."""

    request: int
    attempt: int
    outcome: str  # Completed | Error
    reason: str | None
    message: str | None
    finished_at: str | None

    @property
    def ref(self) -> AttemptRef:
        return AttemptRef(self.request, self.attempt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "finishedAt": self.finished_at,
        }


@dataclass(frozen=True)
class ScanProgress:
    """The status fields the reconcile reads back (written only by the operator)."""

    request: ScanRequest | None
    attempts: int
    job: str | None
    next_attempt_at: dt.datetime | None
    last_attempt: AttemptOutcome | None
    result: str | None
    result_request: int | None
    evaluation_hash: str | None
    denied: bool
    finished_at: dt.datetime | None
    state: str | None = None
    # sha256 (hex) of the stored result's gzip blob, recorded at ingest: the ConfigMap it lives
    # in is editable by namespace users, the status is not.
    result_sha256: str | None = None

    @property
    def finished(self) -> bool:
        """The current request has its result (Pass, Fail or a final Error)."""
        return self.request is not None and self.result_request == self.request.number

    def current_outcome(self) -> AttemptOutcome | None:
        """The recorded outcome of the current attempt, if there is one."""
        last = self.last_attempt
        if self.request is None or last is None:
            return None
        if last.request != self.request.number or last.attempt != self.attempts:
            return None
        return last

    def rescan_pending(self, rescan: str | None) -> bool:
        """``rescan`` (the scan's rescan annotation) asks for a request other than this one."""
        return self.request is not None and rescan is not None and rescan != self.request.rescan

    def new_request_due(self, rescan: str | None) -> bool:
        """No request yet, or the current one has its result and a rescan is asked for."""
        return self.request is None or (self.finished and self.rescan_pending(rescan))

    def verdict_outdated(self, evaluation_hash: str) -> bool:
        """The scan has a result judged under other rules than ``evaluation_hash`` (the
        policy's failure rule, exceptions, action or onError changed, or an exception expired):
        it is judged again, without a rescan, also while a rescan waits or runs."""
        return self.result is not None and self.evaluation_hash != evaluation_hash


class Standing(enum.Enum):
    """Where an attempt (of a Job, its Secret or a posted result) stands to the scan's status."""

    CURRENT = "the scan's current attempt"
    UNRECORDED = "the next attempt: its Job was created, its start is not recorded yet"
    OTHER_ATTEMPT = "not the scan's current attempt"
    OTHER_REQUEST = "not of the scan's current request"
    FINISHED = "the scan's current request has its result"


def standing(progress: ScanProgress, ref: AttemptRef) -> Standing:
    """Whether ``ref`` is the attempt the scan waits for: the one decision the Job watch and
    sweep, the results endpoint and the queue's recording of a start all make."""
    request = progress.request
    if request is None or ref.request != request.number:
        return Standing.OTHER_REQUEST
    if progress.finished:
        return Standing.FINISHED
    if ref.attempt == progress.attempts:
        return Standing.CURRENT
    if ref.attempt == progress.attempts + 1:
        return Standing.UNRECORDED
    return Standing.OTHER_ATTEMPT


def attempt_of(annotations: Mapping[str, str]) -> AttemptRef | None:
    """The attempt a scanner Job or its Secret names; None if it names none."""
    request = annotations.get(c.REQUEST_ANNOTATION, "")
    attempt = annotations.get(c.ATTEMPT_ANNOTATION, "")
    if not (_NUMBER.fullmatch(request) and _NUMBER.fullmatch(attempt)):
        return None
    return AttemptRef(int(request), int(attempt))


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# Causes of a wake-up (c.WAKE_ANNOTATION).
WAKE_RESULT_RECEIVED: Final = "result-received"
WAKE_JOB_ENDED: Final = "job-ended"
_WAKE_CAUSES: Final = (WAKE_RESULT_RECEIVED, WAKE_JOB_ENDED)


@dataclass(frozen=True)
class Wake:
    """Why an ImageScan's reconcile was woken, and by which scanner Job."""

    cause: str  # WAKE_RESULT_RECEIVED | WAKE_JOB_ENDED
    job: str


def format_wake(cause: str, job: str) -> str:
    """The wake annotation's value: ``<cause>:<job name>``."""
    if cause not in _WAKE_CAUSES or not job:
        raise ValueError(f"not a wake-up: {cause!r} for {job!r}")
    return f"{cause}:{job}"


def parse_wake(value: str | None) -> Wake | None:
    """The wake-up a wake annotation value names; None for anything else."""
    cause, sep, job = (value or "").partition(":")
    return Wake(cause, job) if sep and cause in _WAKE_CAUSES and job else None


def rescan_value(trigger: str, detail: str) -> str:
    """The rescan annotation value the operator writes: ``<trigger>:<detail>``. The detail
    (a content hash, a cron fire time...) makes the value new exactly when the cause is."""
    if trigger not in TRIGGERS:
        raise ValueError(f"not a trigger: {trigger!r}")
    return f"{trigger}:{detail}"


def parse_rescan(value: str) -> tuple[str, str]:
    """(trigger, detail) of a rescan annotation value; any other value (a person's) is an
    OnDemand rescan whose detail is the whole value."""
    trigger, sep, detail = value.partition(":")
    return (trigger, detail) if sep and trigger in TRIGGERS else ("OnDemand", value)


def trigger_of(rescan: str) -> str:
    """The trigger an operator-written rescan value names (``Scheduled:...``); else OnDemand."""
    return parse_rescan(rescan)[0]


def parse_time(value: object) -> dt.datetime | None:
    text = _str(value)
    if text is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_progress(status: Mapping[str, Any] | None) -> ScanProgress:
    data = status or {}
    req = data.get("request")
    request = None
    if isinstance(req, Mapping) and _int(req.get("number")) > 0:
        request = ScanRequest(
            number=_int(req.get("number")),
            trigger=_str(req.get("trigger")) or "OnDemand",
            rescan=_str(req.get("rescan")),
            content_hash=_str(req.get("contentHash")) or "",
            requested_at=_str(req.get("requestedAt")) or "",
        )
    last = data.get("lastAttempt")
    outcome = None
    if isinstance(last, Mapping) and _int(last.get("request")) > 0:
        outcome = AttemptOutcome(
            request=_int(last.get("request")),
            attempt=_int(last.get("attempt")),
            outcome=_str(last.get("outcome")) or "Error",
            reason=_str(last.get("reason")),
            message=_str(last.get("message")),
            finished_at=_str(last.get("finishedAt")),
        )
    result = _str(data.get("result"))
    report = data.get("report")
    sha = _str(report.get("resultSha256")) if isinstance(report, Mapping) else None
    return ScanProgress(
        request=request,
        attempts=_int(data.get("attempts")),
        job=_str(data.get("job")),
        next_attempt_at=parse_time(data.get("nextAttemptAt")),
        last_attempt=outcome,
        result=result if result in RESULTS else None,
        result_request=_int(data.get("resultRequest")) or None,
        evaluation_hash=_str(data.get("evaluationHash")),
        denied=data.get("denied") is True,
        finished_at=parse_time(data.get("finishedAt")),
        state=_str(data.get("state")),
        result_sha256=sha if sha is not None and _SHA256.fullmatch(sha) else None,
    )


# Status writes. Every change the operator makes to an ImageScan's status is one of the named
# transitions below; reconcile.status writes them (write_change, write_if_changed).

#: How many failing and excepted ids the status lists (the ConfigMap keeps the full result).
MAX_FAILING_IDS: Final = 100


@dataclass(frozen=True)
class StatusPatch:
    """One named change of an ImageScan's status: the fields it merge-patches (None removes
    one) and the conditions it sets. ``merge_patch`` renders it against the current status."""

    fields: Mapping[str, Any]
    conditions: tuple[Condition, ...] = ()

    def __or__(self, other: StatusPatch) -> StatusPatch:
        """Both changes in one write: ``other``'s fields win, its conditions are set last."""
        return _patch({**self.fields, **other.fields}, self.conditions + other.conditions)

    def without(self, type_: str) -> StatusPatch:
        """This change leaving the ``type_`` condition as it is."""
        return _patch(self.fields, tuple(x for x in self.conditions if x.type != type_))

    def merge_patch(
        self, status: Mapping[str, Any] | None, *, generation: int | None, now: str
    ) -> dict[str, Any]:
        """The ``status`` of a merge patch (``conditions.status_patch``)."""
        return status_patch(
            status, self.fields, self.conditions, observed_generation=generation, now=now
        )


def _patch(fields: Mapping[str, Any], conditions: tuple[Condition, ...] = ()) -> StatusPatch:
    return StatusPatch(MappingProxyType(dict(fields)), conditions)


@dataclass(frozen=True)
class StoredResult:
    """Where the results endpoint put an attempt's full result and report (status.report)."""

    config_map: str
    result_sha256: str  # of the result's gzip blob: the ConfigMap is editable, the status not
    report_kept: bool
    message: str = ""  # why the report is not kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "configMap": self.config_map,
            "resultKey": c.RESULT_KEY,
            "resultSha256": self.result_sha256,
            "reportKey": c.REPORT_KEY,
            "available": self.report_kept,
            "message": self.message,
        }


@dataclass(frozen=True)
class PromotionRecord:
    """The promotion gate's state for one request (status.promotion, without its time)."""

    state: str  # PROMOTION_PENDING | PROMOTED | NOT_PROMOTED | PROMOTION_FAILED
    target: str
    request: int
    job: str | None = None
    reason: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "target": self.target,
            "request": self.request,
            "job": self.job,
            "reason": self.reason,
            "message": self.message,
        }


def _scanned(progress: ScanProgress, reason: str, message: str) -> Condition:
    """Scanned while a request waits or runs: True as long as an earlier result stands."""
    return Condition(SCANNED, TRUE if progress.result is not None else FALSE, reason, message)


def _waiting(now: dt.datetime) -> dict[str, Any]:
    return {"state": QUEUED, "queuedAt": format_time(now)}


def _running(attempt: int, job: str) -> dict[str, Any]:
    return {"attempts": attempt, "job": job, "state": RUNNING, "nextAttemptAt": None}


def _settled(request: ScanRequest) -> dict[str, Any]:
    return {"state": COMPLETED, "resultRequest": request.number, "job": None, "nextAttemptAt": None}


def queued(
    progress: ScanProgress, request: ScanRequest, display_image: str, now: dt.datetime
) -> StatusPatch:
    """A new request (the first scan or a rescan) waits in the queue for its first attempt."""
    message = f"{request.trigger} scan queued"
    scanned = _scanned(progress, Reason.QUEUED, message)
    ready = Condition(READY, FALSE, Reason.QUEUED, message)
    fields = {
        "request": request.to_dict(),
        "trigger": request.trigger,
        "attempts": 0,
        "job": None,
        "nextAttemptAt": None,
        "displayImage": display_image,
        **_waiting(now),
    }
    return _patch(fields, (scanned,) if scanned.true else (scanned, ready))


def requeued(now: dt.datetime) -> StatusPatch:
    """A request with no attempt whose state does not say it waits goes back in the queue."""
    return _patch(_waiting(now))


def attempt_started(
    progress: ScanProgress, attempt: int, job: str, job_namespace: str
) -> StatusPatch:
    """The queue started ``attempt`` of the current request in Job ``job``."""
    message = f"attempt {attempt} running in Job {job_namespace}/{job}"
    return _patch(_running(attempt, job), (_scanned(progress, Reason.RUNNING, message),))


def result_received(
    progress: ScanProgress, outcome: AttemptOutcome, job: str, stored: StoredResult | None
) -> StatusPatch:
    """The results endpoint recorded the outcome Job ``job`` posted (and where it stored it).

    An attempt whose start is not recorded yet (the operator crashed or lost a write race
    right after creating the Job) gets ``attempt_started``'s fields too, or the queue would
    still see the scan waiting and start the next attempt beside it. Not its condition: this
    write has no resourceVersion guard (the credential is spent, the result must land), and
    conditions are only written under one.
    """
    fields: dict[str, Any] = {"attempts": max(progress.attempts, outcome.attempt)}
    if standing(progress, outcome.ref) is Standing.UNRECORDED:
        fields.update(_running(outcome.attempt, job))
    if stored is not None:
        fields["report"] = stored.to_dict()
    fields["lastAttempt"] = outcome.to_dict()
    return _patch(fields)


def attempt_ended(outcome: AttemptOutcome) -> StatusPatch:
    """The operator recorded how an attempt ended without a usable result: its Job failed or
    disappeared, or the stored result is missing or not the one stored."""
    return _patch({"lastAttempt": outcome.to_dict()})


def retry_message(outcome: AttemptOutcome) -> str:
    reason = outcome.reason or Reason.SCAN_FAILED
    return f"attempt {outcome.attempt} failed ({reason}: {outcome.message}); retrying"


def retry_scheduled(
    progress: ScanProgress, outcome: AttemptOutcome, due: dt.datetime, now: dt.datetime
) -> StatusPatch:
    """A failed attempt with retries left: the scan waits in the queue until ``due``."""
    fields = {
        "state": RETRYING,
        "nextAttemptAt": format_time(due),
        "job": None,
        "queuedAt": format_time(now),
    }
    return _patch(fields, (_scanned(progress, Reason.RETRYING, retry_message(outcome)),))


def completed(request: ScanRequest, found: Mapping[str, Any]) -> StatusPatch:
    """The request's attempt completed; ``found`` is what it found (api.summary's status
    fields). Written with its verdict: ``completed(...) | judged(...)``."""
    return _patch({**found, **_settled(request), "error": None})


def gave_up(request: ScanRequest, reason: str, message: str) -> StatusPatch:
    """The request's last attempt failed with no retries left: its result is Error.
    Written with its verdict: ``gave_up(...) | judged(...)``."""
    return _patch({**_settled(request), "error": {"reason": reason, "message": message}})


def judged(
    verdict: Verdict,
    *,
    denied: bool,
    evaluation_hash: str,
    now: dt.datetime,
    display_image: str,
) -> StatusPatch:
    """A verdict on the scan's findings under the rules whose hash is ``evaluation_hash``;
    its conditions (which depend on the Image) follow with ``verdict_conditions``."""
    failing = [*verdict.failing_vulnerabilities, *verdict.failing_rules]
    return _patch(
        {
            "result": verdict.result,
            "reason": verdict.reason,
            "message": verdict.message,
            "denied": denied,
            "failing": failing[:MAX_FAILING_IDS],
            "excepted": list(verdict.excepted[:MAX_FAILING_IDS]),
            "evaluationHash": evaluation_hash,
            "evaluatedAt": format_time(now),
            "displayImage": display_image,
        }
    )


def verdict_conditions(conditions: Iterable[Condition]) -> StatusPatch:
    """The conditions a verdict and the Image's enforcement come to (Scanned, Compliant,
    Enforced, Ready): written with the verdict, or alone when only the Image drifted."""
    return _patch({}, tuple(conditions))


def job_released() -> StatusPatch:
    """A settled request's Job was deleted: the status names it no more."""
    return _patch({"job": None})


def not_ready(reason: str, message: str) -> StatusPatch:
    """The scan cannot proceed (its spec or its policy is invalid, or the policy is gone)."""
    return _patch({}, (Condition(READY, FALSE, reason, message),))


def deny_released(why: str) -> StatusPatch:
    """The scan's policy is gone: it denies nothing, and its evaluation is forgotten so that
    a policy of that name, if it comes back, judges the stored result again."""
    enforced = Condition(
        ENFORCED, FALSE, Reason.POLICY_NOT_FOUND, f"{why}: this scan denies nothing"
    )
    return _patch({"denied": False, "evaluationHash": None}, (enforced,))


def promotion_changed(promotion: PromotionRecord, now: dt.datetime) -> StatusPatch:
    """The promotion gate moved on (pending, promoted, failed or not promoted)."""
    return _patch({"promotion": {**promotion.to_dict(), "time": format_time(now)}})
