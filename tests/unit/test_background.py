"""The background loop: requests coalesce, one thread creates scans and admits them, and a
task that failed is asked for again."""

from __future__ import annotations

import threading
import time

import pytest

from scapguard.k8s.api import IMAGESCAN, JOB, Kind, KubeError, Obj
from scapguard.reconcile import background
from scapguard.reconcile.background import BackgroundLoop
from scapguard.reconcile.context import ADMIT, ALL_TASKS, SELECT, Task, Wakeups
from tests.harness import Harness, add_policy, add_stream, digest, harness


def test_a_burst_of_requests_is_one_task_each() -> None:
    wakeups = Wakeups()
    for _ in range(100):
        wakeups.request(Task(SELECT, "apps/default"))
        wakeups.request(Task(ADMIT))
    assert sorted(wakeups.take(timeout=0), key=str) == [Task(ADMIT), Task(SELECT, "apps/default")]
    assert wakeups.take(timeout=0) == []


def test_each_lane_takes_only_its_own_tasks() -> None:
    wakeups = Wakeups()
    wakeups.request(Task(SELECT, "apps/default"))
    assert wakeups.take(timeout=0, kinds=frozenset({ADMIT})) == []
    wakeups.request(Task(ADMIT))
    assert wakeups.take(timeout=0, kinds=frozenset({ADMIT})) == [Task(ADMIT)]
    assert wakeups.take(timeout=0, kinds=frozenset({SELECT})) == [Task(SELECT, "apps/default")]


def test_take_waits_for_a_request_from_another_thread() -> None:
    wakeups = Wakeups()
    threading.Timer(0.05, wakeups.request, (Task(ADMIT),)).start()
    assert wakeups.take(timeout=10) == [Task(ADMIT)]


def threaded(h: Harness) -> Harness:
    """The harness with the production wake-ups: nothing runs until the loop takes it."""
    h.ctx.wakeups = Wakeups()
    return h


def tags_of(scan: Obj) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = scan["spec"]["tags"]
    return tags


def until(what: str, check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def test_the_loop_creates_the_selected_scans_each_with_every_tag_of_its_digest() -> None:
    h = threaded(harness())
    add_policy(h)
    for n in range(3):
        add_stream(h, f"s{n}", "apps", {"latest": [digest(n)], "v1": [digest(n % 2)]})
    loop = BackgroundLoop(h.ctx, ALL_TASKS)
    loop.start()
    try:
        h.ctx.select("apps", "default")
        until("three ImageScans", lambda: len(h.kube.list(IMAGESCAN, "apps")) == 3)
        tags = {  # from every stream at once: no scan is created with some and patched later
            s["spec"]["image"].split("@")[1]: {
                (t["imageStream"], t["tag"]) for t in s["spec"]["tags"]
            }
            for s in h.kube.list(IMAGESCAN, "apps")
        }
        assert tags[digest(0)] == {("s0", "latest"), ("s0", "v1"), ("s2", "v1")}
        assert tags[digest(1)] == {("s1", "latest"), ("s1", "v1")}
        assert len(h.ctx.wakeups) == 0
    finally:
        loop.stop()


def test_a_failed_task_is_asked_for_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "RETRY_SECONDS", 0.05)
    h = threaded(harness())
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [digest(1)]})
    failures: list[str] = []

    def flaky_api(verb: str, kind: Kind, body: Obj) -> None:
        if verb == "create" and kind == IMAGESCAN and not failures:
            failures.append(verb)
            raise KubeError(503, "ServiceUnavailable", "etcd is busy")

    h.kube.before_write = flaky_api
    loop = BackgroundLoop(h.ctx, ALL_TASKS)
    loop.start()
    try:
        h.ctx.select("apps", "default")
        until("the ImageScan, on the second try", lambda: len(h.kube.list(IMAGESCAN, "apps")) == 1)
        assert failures == ["create"]
    finally:
        loop.stop()
    assert h.kube.list(JOB, h.ctx.settings.namespace) == []  # nothing queued it: no handler ran
