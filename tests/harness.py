"""Test scaffolding: an operator context over the in-memory FakeKube, a settable clock,
and factories for ScanPolicies, ImageStreams, Images and scan results. No side effects."""

from __future__ import annotations

import base64
import datetime as dt
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry

from scapguard.api import constants as c
from scapguard.config import Settings
from scapguard.k8s.api import IMAGE, IMAGESTREAM, JOB, SCANPOLICY, SECRET, Obj
from scapguard.metrics import Metrics
from scapguard.reconcile.background import in_order, run_task
from scapguard.reconcile.context import OperatorContext, Task, Wakeups
from scapguard.reconcile.ingest import Ingested, ingest
from scapguard.results import model as m
from tests.fakekube import FakeKube

OPERATOR_NS = "scapguard"
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


@dataclass
class Clock:
    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class InlineWakeups(Wakeups):
    """The background loop's work done at once, in the asking thread, and its errors raised:
    a reconcile under test sees the scans it asked for created and admitted when it returns.
    A request made while one runs joins the run (the loop would take it next)."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx: OperatorContext | None = None
        self._running = False

    def request(self, task: Task) -> None:
        super().request(task)
        if self._running or self.ctx is None:
            return
        self._running = True
        try:
            while tasks := self.take(timeout=0):
                for each in in_order(tasks):
                    run_task(self.ctx, each)
        finally:
            self._running = False


@dataclass
class Harness:
    kube: FakeKube
    clock: Clock
    ctx: OperatorContext
    tokens: list[str] = field(default_factory=list)


def settings(**env: str) -> Settings:
    base = {
        "SCAPGUARD_NAMESPACE": OPERATOR_NS,
        "SCAPGUARD_RETRY_BACKOFF_SECONDS": "10",
        # Each harness its own content cache, never the operator's default directory.
        "SCAPGUARD_CONTENT_CACHE_DIR": tempfile.mkdtemp(prefix="scapguard-content-"),
    }
    return Settings.from_env({**base, **env})


def harness(**env: str) -> Harness:
    clock = Clock()
    kube = FakeKube(clock)
    tokens: list[str] = []

    def token() -> str:
        tokens.append(f"token-{len(tokens)}")
        return tokens[-1]

    wakeups = InlineWakeups()
    ctx = OperatorContext(
        kube=kube,
        settings=settings(**env),
        metrics=Metrics(CollectorRegistry()),
        clock=clock,
        token_factory=token,
        wakeups=wakeups,
    )
    wakeups.ctx = ctx
    return Harness(kube=kube, clock=clock, ctx=ctx, tokens=tokens)


def policy_object(name: str = "default", namespace: str = "apps", **spec: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def add_policy(h: Harness, name: str = "default", namespace: str = "apps", **spec: Any) -> Obj:
    return h.kube.create(SCANPOLICY, policy_object(name, namespace, **spec))


def stream_object(
    name: str,
    namespace: str,
    tags: Mapping[str, Sequence[str]],
    labels: Mapping[str, str] | None = None,
    registry: str = "registry.local:5000",
) -> Obj:
    """``tags`` maps a tag to its digests, newest first (status.tags[].items)."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {},
        "status": {
            "tags": [
                {
                    "tag": tag,
                    "items": [
                        {
                            "image": d,
                            "dockerImageReference": f"{registry}/{namespace}/{name}@{d}",
                            "created": "2026-03-01T00:00:00Z",
                            "generation": 1,
                        }
                        for d in digests
                    ],
                }
                for tag, digests in tags.items()
            ]
        },
    }


def add_stream(
    h: Harness,
    name: str,
    namespace: str,
    tags: Mapping[str, Sequence[str]],
    labels: Mapping[str, str] | None = None,
) -> Obj:
    return h.kube.create(IMAGESTREAM, stream_object(name, namespace, tags, labels))


def set_stream_tags(
    h: Harness, name: str, namespace: str, tags: Mapping[str, Sequence[str]]
) -> Obj:
    status = stream_object(name, namespace, tags)["status"]
    body = h.kube.objects[(f"{IMAGESTREAM.plural}.{IMAGESTREAM.group}", namespace, name)]
    body["status"] = status
    return h.kube.get(IMAGESTREAM, name, namespace)


def add_image(h: Harness, image_digest: str, annotations: Mapping[str, str] | None = None) -> Obj:
    return h.kube.create(
        IMAGE, {"metadata": {"name": image_digest, "annotations": dict(annotations or {})}}
    )


def scan_result(
    image_digest: str,
    findings: Sequence[tuple[str, str]] = (),
    rules: Sequence[tuple[str, str, str]] | None = None,
    *,
    error: tuple[str, str] | None = None,
    reference: str = "registry.local:5000/apps/app",
    content: m.ContentInfo | None = None,
) -> m.ScanResult:
    content = content or m.ContentInfo(
        "oval:debian-12", "catalogue", "cd" * 32, "2026-02-28T00:00:00"
    )
    compliance = None
    if rules is not None:
        compliance = m.Compliance(
            content=m.ContentInfo("ssg-debian12-ds.xml", "file", "ef" * 32, "0.1.76"),
            profile="xccdf_org.ssgproject.content_profile_standard",
            score=50.0,
            rules=tuple(
                m.RuleResult(i, cast("m.RuleSeverity", s), f"rule {i}", cast("m.RuleOutcome", r))
                for i, s, r in rules
            ),
        )
    return m.ScanResult(
        image=m.ImageRef(f"{reference}@{image_digest}", image_digest),
        os=m.OSInfo("debian", "12", "Debian GNU/Linux 12 (bookworm)", "debian"),
        outcome="Error" if error else "Completed",
        error=m.ScanError(*error) if error else None,
        vulnerabilities=None
        if error
        else m.Vulnerabilities(
            content=content,
            findings=tuple(
                m.Finding(
                    i,
                    cast("m.Severity", s),
                    f"{i} title",
                    "oval:x:def:1",
                    (m.AffectedPackage("openssl", "3.1"),),
                )
                for i, s in findings
            ),
        ),
        compliance=None if error else compliance,
        scanner=m.ScannerInfo("0.1.0", "1.3.7"),
        started_at=T0,
        finished_at=T0 + dt.timedelta(seconds=20),
    )


def secret_token(h: Harness, job: str) -> str:
    secret = h.kube.get(SECRET, job, OPERATOR_NS)
    return base64.b64decode(secret["data"][c.TOKEN_KEY]).decode()


def post(
    h: Harness,
    job: str,
    result: m.ScanResult,
    *,
    token: str | None = None,
    report: bytes | None = b"<html>report</html>",
) -> Ingested:
    body = json.dumps(m.encode_handoff(result, report)).encode()
    return ingest(h.ctx, job, secret_token(h, job) if token is None else token, body)


def finish_job(h: Harness, job: str, condition: str = "Failed", reason: str = "") -> None:
    """Mark a scanner Job finished as the Job controller would."""
    obj = h.kube.objects[(f"{JOB.plural}.{JOB.group}", OPERATOR_NS, job)]
    obj["status"] = {
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "message": f"{condition} {reason}",
            }
        ]
    }


def jobs(h: Harness) -> list[Obj]:
    return h.kube.list(JOB, OPERATOR_NS)
