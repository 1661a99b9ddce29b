"""ImageScan spec and the parts of its status the operator reads back."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from scapguard.api import fields as f
from scapguard.api.errors import SpecError

TRIGGERS: Final = ("NewImage", "Scheduled", "OnDemand", "ContentUpdate", "PolicyChange")
RESULTS: Final = ("Pass", "Fail", "Error")
# Display states (status.state); the reconcile decides from the fields below, not from edges.
QUEUED: Final = "Queued"
RUNNING: Final = "Running"
RETRYING: Final = "Retrying"
COMPLETED: Final = "Completed"

IMAGE_BY_DIGEST = re.compile(r"[^@\s]+@(sha256:[0-9a-f]{64})")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
class AttemptOutcome:
    """What the results endpoint recorded for one attempt (status.lastAttempt)."""

    request: int
    attempt: int
    outcome: str  # Completed | Error
    reason: str | None
    message: str | None
    finished_at: str | None


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


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def trigger_of(rescan: str) -> str:
    """The trigger an operator-written rescan value names (``Scheduled:...``); else OnDemand."""
    prefix = rescan.split(":", 1)[0]
    return prefix if prefix in TRIGGERS and ":" in rescan else "OnDemand"


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
