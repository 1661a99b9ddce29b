"""The informer's list/watch loop against a scripted API: relist on 410, resume, stop, fail;
cluster-wide or in one namespace with a label selector."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from scapguard.k8s import informer as informer_module
from scapguard.k8s.api import IMAGE, JOB, Obj
from scapguard.k8s.informer import Informer


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


class Script:
    """Listings and watch streams handed out in order; records the watch resourceVersions."""

    def __init__(self, listings: list[tuple[list[Obj], str]], watches: list[Any]) -> None:
        self.listings = listings
        self.watches = watches
        self.watched_from: list[str] = []
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.last_started = threading.Event()

    def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("cluster", args, kwargs))
        items, version = self.listings.pop(0)
        return {"items": items, "metadata": {"resourceVersion": version}}

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("namespaced", args, kwargs))
        items, version = self.listings.pop(0)
        return {"items": items, "metadata": {"resourceVersion": version}}


class FakeWatch:
    script: Script

    def __init__(self) -> None:
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.script.watched_from.append(str(kwargs["resource_version"]))
        self.script.calls.append((f"watch:{func.__name__}", args, kwargs))
        step = self.script.watches.pop(0)
        if isinstance(step, BaseException):
            raise step
        yield from step
        if not self.script.watches:  # the last stream stays open until stop()
            self.script.last_started.set()
            self._stopped.wait(10)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    def start(script: Script, **callbacks: Any) -> Informer:
        FakeWatch.script = script
        monkeypatch.setattr(
            informer_module, "k8s_client", SimpleNamespace(CustomObjectsApi=lambda api: script)
        )
        monkeypatch.setattr(informer_module, "k8s_watch", SimpleNamespace(Watch=FakeWatch))
        inf = Informer(object(), callbacks.pop("kind", IMAGE), **callbacks)
        inf.start()
        return inf

    return start


def test_lists_watches_resumes_and_relists_after_410(run: Any) -> None:
    log: list[tuple[str, str]] = []
    script = Script(
        listings=[([obj("a", "1")], "1"), ([obj("b", "5")], "5")],
        watches=[
            [
                {"type": "MODIFIED", "object": obj("a", "2")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
            ],
            ApiException(status=410, reason="Gone"),
            [{"type": "ADDED", "object": obj("c", "6")}],
        ],
    )
    inf = run(
        script,
        on_replace=lambda items: log.append(
            ("replace", ",".join(i["metadata"]["name"] for i in items))
        ),
        on_event=lambda kind, o: log.append((kind, o["metadata"]["name"])),
        on_failure=lambda reason: log.append(("failure", reason)),
    )
    assert script.last_started.wait(10)
    inf.stop()
    assert log == [("replace", "a"), ("MODIFIED", "a"), ("replace", "b"), ("ADDED", "c")]
    # Resumed from the bookmark after a normal end; relisted after 410 and watched from there.
    assert script.watched_from == ["1", "3", "5"]


def test_a_bug_in_the_sink_marks_failure_and_stops(run: Any) -> None:
    failures: list[str] = []
    done = threading.Event()

    def broken(kind: str, o: Obj) -> None:
        raise KeyError("metadata")

    def failed(reason: str) -> None:
        failures.append(reason)
        done.set()

    script = Script(listings=[([], "1")], watches=[[{"type": "ADDED", "object": obj("a", "2")}]])
    inf = run(script, on_replace=lambda items: None, on_event=broken, on_failure=failed)
    assert done.wait(10)
    inf.stop()
    assert failures == ["KeyError: 'metadata'"]


def test_one_namespace_with_a_label_selector(run: Any) -> None:
    seen: list[str] = []
    script = Script(
        listings=[([obj("j1", "1")], "1")],
        watches=[[{"type": "MODIFIED", "object": obj("j1", "2")}]],
    )
    inf = run(
        script,
        kind=JOB,
        namespace="scapguard",
        label_selector="app.kubernetes.io/managed-by=scapguard",
        on_replace=lambda items: seen.extend(i["metadata"]["name"] for i in items),
        on_event=lambda kind, o: seen.append(f"{kind}:{o['metadata']['name']}"),
        on_failure=lambda reason: seen.append(reason),
    )
    assert script.last_started.wait(10)
    inf.stop()
    assert seen == ["j1", "MODIFIED:j1"]
    where = ("batch", "v1", "scapguard", "jobs")
    (listed, args, kwargs), (watched, wargs, wkwargs) = script.calls
    assert (listed, args, watched, wargs) == (
        "namespaced",
        where,
        "watch:list_namespaced_custom_object",
        where,
    )
    for options in (kwargs, wkwargs):
        assert options["label_selector"] == "app.kubernetes.io/managed-by=scapguard"


def test_a_cluster_scoped_kind_has_no_namespace() -> None:
    with pytest.raises(ValueError, match="cluster-scoped"):
        Informer(object(), IMAGE, namespace="x", on_replace=print, on_event=print, on_failure=print)
