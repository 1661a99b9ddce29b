"""The informer cache: listings from memory once synced, the process's writes seen at once,
stale watch events and late writes never winning, and the API server as the fallback."""

from __future__ import annotations

import pytest

from scapguard.k8s.api import IMAGESCAN, JOB, SCANPOLICY, Kube, NotFound, Obj
from scapguard.k8s.cache import CachedKube, Store, feed, parse_selector
from tests.fakekube import FakeKube


def scan(name: str, namespace: str = "apps", version: str = "1", **labels: str) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": version,
            "labels": labels,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"image": name},
    }


class CountingKube(FakeKube):
    """FakeKube counting the listings that reach "the API server"."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(
        self,
        kind: object,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        self.lists += 1
        return super().list(
            kind,  # type: ignore[arg-type]
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
        )


def cached(scopes: list[str | None] | None = None) -> tuple[CountingKube, Store, Kube]:
    api = CountingKube()
    store = Store(IMAGESCAN, scopes or [None])
    return api, store, CachedKube(api, [store])


def test_selectors_equality_and_existence_terms() -> None:
    (a, b, c, d) = parse_selector("app=web, tier!=test,owner,!skip")
    labels = {"app": "web", "owner": "x"}
    assert a.matches(labels) and b.matches(labels) and c.matches(labels) and d.matches(labels)
    assert not a.matches({"app": "db"}) and not d.matches({"skip": ""})
    assert parse_selector("app==web")[0].matches({"app": "web"})
    with pytest.raises(ValueError, match="set-based"):
        parse_selector("tier in (a,b)")


def test_lists_come_from_the_store_once_it_has_its_first_listing() -> None:
    api, store, kube = cached()
    api.create(IMAGESCAN, scan("from-api"))
    assert [o["metadata"]["name"] for o in kube.list(IMAGESCAN, "apps")] == ["from-api"]
    assert api.lists == 1  # not synced yet: the API answered
    store.replace(
        None, [scan("b", policy="p"), scan("a", policy="q"), scan("c", "ops", policy="p")]
    )
    assert [o["metadata"]["name"] for o in kube.list(IMAGESCAN, "apps")] == ["a", "b"]
    assert [
        o["metadata"]["name"] for o in kube.list(IMAGESCAN, None, label_selector="policy=p")
    ] == [
        "b",
        "c",
    ]
    assert api.lists == 1
    kube.list(IMAGESCAN, "apps", field_selector="metadata.name=a")  # the API's business
    assert api.lists == 2


def test_stored_objects_lack_managed_fields_and_listings_are_copies() -> None:
    _, store, kube = cached()
    bulky = scan("a")
    bulky["metadata"]["annotations"] = {
        "kopf.scapguard.io/last-handled-configuration": "{...}",
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "scapguard.io/rescan": "OnDemand:1",
    }
    store.replace(None, [bulky])
    (listed,) = kube.list(IMAGESCAN, "apps")
    assert "managedFields" not in listed["metadata"]
    assert listed["metadata"]["annotations"] == {"scapguard.io/rescan": "OnDemand:1"}
    assert listed["apiVersion"] == "scapguard.io/v1alpha1" and listed["kind"] == "ImageScan"
    listed.clear()  # what write_change does to the object it was given
    listed.update({"metadata": {"name": "a", "namespace": "apps"}, "status": {"x": 1}})
    (again,) = kube.list(IMAGESCAN, "apps")
    assert again["spec"] == {"image": "a"} and "status" not in again


def test_own_writes_are_seen_at_once_and_stale_events_never_win() -> None:
    api, store, kube = cached()
    store.replace(None, [])
    created = kube.create(IMAGESCAN, scan("a", version=""))
    assert [o["metadata"]["name"] for o in kube.list(IMAGESCAN, "apps")] == ["a"]
    patched = kube.patch(IMAGESCAN, "a", "apps", {"metadata": {"labels": {"queued": "true"}}})
    store.apply("MODIFIED", created)  # the watch reports the create only now
    (listed,) = kube.list(IMAGESCAN, "apps", label_selector="queued=true")
    assert listed["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    store.apply(
        "DELETED", {**patched, "metadata": {**patched["metadata"], "resourceVersion": "99"}}
    )
    store.written(patched)  # a write-through that lost the race with the deletion
    assert kube.list(IMAGESCAN, "apps") == []
    assert api.lists == 0


def test_a_failed_informer_sends_listings_back_to_the_api() -> None:
    api, store, kube = cached(["apps"])
    replace, event, failed = feed(store, "apps")
    replace([scan("a")])
    event("ADDED", scan("b", version="2"))
    assert len(kube.list(IMAGESCAN, "apps")) == 2 and api.lists == 0
    kube.list(IMAGESCAN, None)  # outside the store's scopes
    kube.list(IMAGESCAN, "ops")
    assert api.lists == 2
    failed("watch broke")
    assert kube.list(IMAGESCAN, "apps") == [] and api.lists == 3
    assert store.wait_synced(0)


def test_a_store_keeps_only_what_its_informers_would_see() -> None:
    api = FakeKube()
    store = Store(JOB, ["scapguard"], "app=scanner")
    kube = CachedKube(api, [store])
    store.replace("scapguard", [])
    job = {"metadata": {"name": "j", "namespace": "scapguard", "labels": {"app": "scanner"}}}
    other = {"metadata": {"name": "p", "namespace": "scapguard", "labels": {"app": "promote"}}}
    kube.create(JOB, job)
    kube.create(JOB, other)
    kube.create(JOB, {**job, "metadata": {**job["metadata"], "namespace": "apps"}})
    assert [o["metadata"]["name"] for o in kube.list(JOB, "scapguard")] == ["j"]
    kube.delete(JOB, "j", "scapguard")
    assert kube.list(JOB, "scapguard") == []
    assert not store.wait_synced(0) or store.serves("scapguard")


def test_gets_from_memory_only_where_the_store_says_so() -> None:
    api = CountingKube()
    policies = Store(SCANPOLICY, ["apps"], gets=True)
    scans = Store(IMAGESCAN, ["apps"])
    kube = CachedKube(api, [policies, scans])
    api.create(SCANPOLICY, {"metadata": {"name": "p", "namespace": "apps"}, "spec": {"a": 1}})
    api.create(IMAGESCAN, scan("s", version=""))
    policies.replace("apps", [{"metadata": {"name": "p", "namespace": "apps"}, "spec": {"a": 0}}])
    scans.replace("apps", [scan("s")])
    assert kube.get(SCANPOLICY, "p", "apps")["spec"] == {"a": 0}  # the cache's (stale) copy
    assert kube.get(IMAGESCAN, "s", "apps")["metadata"]["resourceVersion"] != "1"  # the API's
    with pytest.raises(NotFound):
        kube.get(SCANPOLICY, "gone", "apps")  # not in memory: the API answers
