"""Scan on push: registry notifications (Docker distribution, Harbor, Quay) become ImageScans.

Payload examples follow the registries' own documentation: distribution's notifications page
(the event envelope; what Debian's docker-registry 2.8 really sends is in
test_registry_events_real.py), Harbor's "Configure Webhook Notifications" (Default and
CloudEvents formats) and Red Hat Quay's "Repository Notifications" (repository push).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import random
import socket
import urllib.error
import urllib.request
from typing import Any

import kopf
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scapguard.api import constants as c
from scapguard.api.imagescan import parse_imagescan_spec
from scapguard.api.naming import scan_name
from scapguard.config import Settings, SettingsError
from scapguard.handlers import startup
from scapguard.handlers.cache import Cache
from scapguard.k8s.api import IMAGESCAN, SCANPOLICY, SECRET, Forbidden, Kind, KubeError, Obj
from scapguard.reconcile.registryevents import (
    MAX_BODY,
    MAX_EVENTS,
    TOKEN_SECRET,
    MalformedNotification,
    Received,
    parse_notification,
    receive,
)
from scapguard.results_server import build_app, build_registry_events_app
from tests.fakekube import FakeKube
from tests.harness import OPERATOR_NS, Harness, add_policy, digest, harness
from tests.unit.test_deploy import chart_objects

TOKEN = "s3cret-token"  # noqa: S105 -- a test credential
REGISTRY = "10.0.0.5:5000"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
D1, D2, D3 = digest(1), digest(2), digest(3)


# -- helpers ---------------------------------------------------------------------------------


def configured(token: str = TOKEN, **env: str) -> Harness:
    h = harness(**env)
    set_token(h, token)
    return h


def set_token(h: Harness, token: str) -> None:
    h.kube.create(
        SECRET,
        {
            "metadata": {"name": TOKEN_SECRET, "namespace": OPERATOR_NS},
            "data": {c.TOKEN_KEY: base64.b64encode(token.encode()).decode()},
        },
    )


def push_policy(
    h: Harness, name: str, namespace: str, repositories: list[str] | None = None
) -> Obj:
    pushes: dict[str, Any] = {"registry": REGISTRY}
    if repositories is not None:
        pushes["repositories"] = repositories
    return add_policy(h, name, namespace, registryPushes=pushes)


def event(
    repository: str,
    target_digest: str,
    *,
    action: str = "push",
    media_type: str = OCI_MANIFEST,
    tag: str | None = "v1",
) -> dict[str, Any]:
    """One event as docker-registry 2.8 sends it (see test_registry_events_real.py)."""
    target: dict[str, Any] = {
        "mediaType": media_type,
        "size": 476,
        "digest": target_digest,
        "length": 476,
        "repository": repository,
        "url": f"http://{REGISTRY}/v2/{repository}/manifests/{target_digest}",
    }
    if tag is not None:
        target["tag"] = tag
    return {
        "id": "3c7bc9f5-3174-43db-ba82-8b45ffaa092b",
        "timestamp": "2026-03-01T12:00:00.0Z",
        "action": action,
        "target": target,
        "request": {
            "id": "9c177868-6c2a-4c27-a1e3-4719ecc15a84",
            "addr": "10.0.0.9:48288",
            "host": REGISTRY,
            "method": "PUT",
            "useragent": "containers/5.0",
        },
        "actor": {},
        "source": {"addr": "registry-0:5000", "instanceID": "b49d60f9"},
    }


def envelope(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def harbor(repo_full_name: str, *resources: tuple[str, str]) -> dict[str, Any]:
    """Harbor's Default payload for PUSH_ARTIFACT (goharbor.io, configure-webhooks)."""
    namespace, _, name = repo_full_name.rpartition("/")
    return {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1586922308,
        "operator": "admin",
        "event_data": {
            "resources": [
                {
                    "digest": d,
                    "tag": tag,
                    "resource_url": f"hub.harbor.com/{repo_full_name}:{tag}",
                }
                for d, tag in resources
            ],
            "repository": {
                "date_created": 1586922308,
                "name": name,
                "namespace": namespace,
                "repo_full_name": repo_full_name,
                "repo_type": "private",
            },
        },
    }


def harbor_cloudevent(repo_full_name: str, *resources: tuple[str, str]) -> dict[str, Any]:
    """Harbor's CloudEvents payload for an artifact push (same data as event_data)."""
    return {
        "specversion": "1.0",
        "id": "66e18103-09c1-41f6-982f-37df223f3eeb",
        "requestid": "51c0b694-0168-4f3c-b0db-282565455d7b",
        "source": "/projects/2/webhook/policies/15",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "time": "2023-04-03T06:04:46Z",
        "data": harbor(repo_full_name, *resources)["event_data"],
        "operator": "harbor-jobservice",
    }


QUAY_PUSH = {
    "name": "repository",
    "repository": "dgangaia/test",
    "namespace": "dgangaia",
    "docker_url": "quay.io/dgangaia/test",
    "homepage": "https://quay.io/repository/dgangaia/repository",
    "updated_tags": ["latest"],
}


def scans(h: Harness) -> dict[tuple[str, str], Obj]:
    return {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in h.kube.all(IMAGESCAN)}


def metric(h: Harness, result: str) -> float:
    value = h.ctx.metrics.registry.get_sample_value(
        "scapguard_registry_events_total", {"result": result}
    )
    return value or 0.0


# -- creating scans --------------------------------------------------------------------------


def test_a_manifest_push_creates_one_scan_per_matching_policy_in_watched_namespaces() -> None:
    h = configured(SCAPGUARD_WATCH_NAMESPACES="apps,team")
    team = push_policy(h, "team-pushes", "apps", ["team/*"])
    everything = push_policy(h, "all", "team")  # repositories default ["*"]
    push_policy(h, "infra", "apps", ["infra/*"])
    push_policy(h, "unwatched", "elsewhere")
    add_policy(h, "streams-only", "apps")  # no registryPushes
    add_policy(h, "broken", "apps", registryPushes={"registry": "not a host"})

    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))

    assert (answer.status, answer.reason, answer.created, answer.existing) == (
        200,
        "Scanned",
        2,
        0,
    )
    made = scans(h)
    assert set(made) == {
        ("apps", scan_name(D1, "apps", "team-pushes")),
        ("team", scan_name(D1, "team", "all")),
    }
    for (namespace, name), policy in zip(sorted(made), (team, everything), strict=True):
        scan = made[(namespace, name)]
        spec = parse_imagescan_spec(scan["spec"])
        assert spec.image == f"{REGISTRY}/team/app@{D1}"
        assert (spec.digest, spec.policy, spec.trigger, spec.tags) == (
            D1,
            policy["metadata"]["name"],
            "NewImage",
            (),
        )
        labels = scan["metadata"]["labels"]
        assert labels[c.ORIGIN_LABEL] == c.ORIGIN_REGISTRY_PUSH
        assert labels[c.POLICY_LABEL] == policy["metadata"]["name"]
        (owner,) = scan["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("ScanPolicy", policy["metadata"]["uid"])
    assert metric(h, "scanned") == 1
    # The policies were listed once, across all namespaces.
    assert [r for r in h.kube.reads if r[1] == "scanpolicies"] == [("list", "scanpolicies", "", "")]


def test_globs_match_repository_paths_with_fnmatch() -> None:
    h = configured()
    push_policy(h, "team", "apps", ["team/*"])
    push_policy(h, "exact", "apps", ["base/debian"])
    push_policy(h, "suffix", "apps", ["*-ubi?"])
    pushes = [
        ("team/app", D1),  # team
        ("team/sub/app", D2),  # team: fnmatch's * also crosses "/"
        ("base/debian", D3),  # exact
        ("base/debian-slim", digest(4)),  # nothing
        ("tools/java-ubi9", digest(5)),  # suffix
        ("teams/app", digest(6)),  # nothing
    ]
    answer = receive(h.ctx, TOKEN, envelope(*(event(r, d) for r, d in pushes)))
    assert (answer.created, answer.ignored) == (4, 2)
    assert sorted(s["spec"]["image"].split("/", 1)[1] for s in scans(h).values()) == sorted(
        [
            f"team/app@{D1}",
            f"team/sub/app@{D2}",
            f"base/debian@{D3}",
            f"tools/java-ubi9@{digest(5)}",
        ]
    )
    assert "no ScanPolicy's registryPushes.repositories match base/debian-slim" in answer.message
    assert (metric(h, "scanned"), metric(h, "ignored")) == (4, 2)


def test_the_same_notification_twice_creates_nothing_new() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    body = envelope(event("team/app", D1), event("team/app", D1, tag="latest"))
    first = receive(h.ctx, TOKEN, body)
    creates = [a for a in h.kube.actions if a[0] == "create"]
    second = receive(h.ctx, TOKEN, body)
    assert (first.created, first.existing) == (1, 0)  # one digest, two tags: one scan
    assert (second.status, second.created, second.existing) == (200, 0, 1)
    assert [a for a in h.kube.actions if a[0] == "create"] == creates
    assert len(scans(h)) == 1


def test_a_digest_an_imagestream_scan_has_already_is_not_scanned_again() -> None:
    h = configured()
    policy = push_policy(h, "default", "apps")
    name = scan_name(D1, "apps", "default")
    h.kube.create(
        IMAGESCAN,
        {
            "metadata": {"name": name, "namespace": "apps", "labels": {c.ORIGIN_LABEL: "x"}},
            "spec": {"image": f"other/app@{D1}", "policy": policy["metadata"]["name"]},
        },
    )
    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))
    assert (answer.created, answer.existing) == (0, 1)
    assert scans(h)[("apps", name)]["spec"]["image"] == f"other/app@{D1}"


def test_policies_being_deleted_get_no_new_scans() -> None:
    h = configured()
    push_policy(h, "going", "apps")
    key = (f"{SCANPOLICY.plural}.{SCANPOLICY.group}", "apps", "going")
    h.kube.objects[key]["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))
    assert (answer.status, answer.reason, answer.created, answer.ignored) == (200, "Ignored", 0, 1)


def test_manifest_lists_and_indexes_are_scanned_by_their_digest() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    kinds = [
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
        f"{OCI_MANIFEST}; charset=utf-8",
    ]
    answer = receive(
        h.ctx,
        TOKEN,
        envelope(*(event("a/b", digest(i), media_type=k) for i, k in enumerate(kinds))),
    )
    assert answer.created == len(kinds)


# -- what is ignored -------------------------------------------------------------------------


def test_blob_pushes_pulls_and_other_events_are_ignored_and_counted() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    ignored = [
        event("team/app", D1, media_type="application/octet-stream", tag=None),  # a blob push
        event("team/app", D1, action="pull"),
        event("team/app", D1, action="delete"),
        event("team/app", D1, action="mount", media_type="application/octet-stream"),
        event("team/app", D1, media_type="application/vnd.cncf.helm.config.v1+json"),
        event("team/app", "sha512:" + "ab" * 64),  # not what scans are named by
        event("team/app", D2, tag=f"sha256-{'0' * 64}.sig"),  # a cosign signature
    ]
    answer = receive(h.ctx, TOKEN, envelope(*ignored, event("team/app", D3)))
    assert (answer.status, answer.created, answer.ignored) == (200, 1, len(ignored))
    assert [parse_imagescan_spec(s["spec"]).digest for s in scans(h).values()] == [D3]
    assert "blob pushes" in answer.message and "pull events are not pushes" in answer.message
    assert metric(h, "ignored") == len(ignored)

    only_blobs = receive(h.ctx, TOKEN, envelope(ignored[0]))
    assert (only_blobs.status, only_blobs.reason, only_blobs.created) == (200, "Ignored", 0)
    # Nothing to create: no ScanPolicy list either.
    assert len([r for r in h.kube.reads if r[1] == "scanpolicies"]) == 1


def test_an_empty_envelope_is_answered_ok() -> None:
    h = configured()
    assert receive(h.ctx, TOKEN, b'{"events": []}').status == 200


# -- Harbor and Quay -------------------------------------------------------------------------


def test_harbor_default_payload_creates_scans() -> None:
    h = configured()
    push_policy(h, "default", "apps", ["test-webhook/*"])
    body = harbor("test-webhook/debian", (D1, "latest"), (D2, "v2"))
    answer = receive(h.ctx, TOKEN, json.dumps(body).encode())
    assert (answer.status, answer.created) == (200, 2)
    images = sorted(s["spec"]["image"] for s in scans(h).values())
    assert images == [f"{REGISTRY}/test-webhook/debian@{d}" for d in (D1, D2)]


def test_harbor_cloudevents_payload_creates_scans() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    # Pushed by digest: Harbor then puts the digest in "tag".
    body = harbor_cloudevent("harbor/alpine", (D1, D1))
    answer = receive(h.ctx, TOKEN, json.dumps(body).encode())
    assert (answer.status, answer.created) == (200, 1)
    (scan,) = scans(h).values()
    assert scan["spec"]["image"] == f"{REGISTRY}/harbor/alpine@{D1}"


def test_harbor_events_other_than_pushes_are_ignored() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    pulled = {**harbor("library/nginx", (D1, "latest")), "type": "PULL_ARTIFACT"}
    deleted = {**harbor_cloudevent("library/nginx", (D1, "x")), "type": "harbor.artifact.deleted"}
    for body in (pulled, deleted):
        answer = receive(h.ctx, TOKEN, json.dumps(body).encode())
        assert (answer.status, answer.reason, answer.ignored) == (200, "Ignored", 1), answer
    assert not scans(h)


def test_quay_push_notifications_have_no_digest_and_are_accepted_without_action() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    answer = receive(h.ctx, TOKEN, json.dumps(QUAY_PUSH).encode())
    assert (answer.status, answer.reason, answer.created, answer.ignored) == (
        202,
        "NoDigest",
        0,
        1,
    )
    assert "no manifest digest" in answer.message and "dgangaia/test" in answer.message
    assert not scans(h)


# -- authentication --------------------------------------------------------------------------


def test_without_the_token_secret_the_endpoint_is_not_configured() -> None:
    h = harness()
    push_policy(h, "default", "apps")
    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))
    assert (answer.status, answer.reason) == (503, "NotConfigured")
    assert TOKEN_SECRET in answer.message
    assert not scans(h) and metric(h, "refused") == 1


def test_a_token_secret_without_a_token_is_not_configured() -> None:
    h = harness()
    h.kube.create(SECRET, {"metadata": {"name": TOKEN_SECRET, "namespace": OPERATOR_NS}})
    assert receive(h.ctx, TOKEN, b"{}").reason == "NotConfigured"
    set_token_data(h, "%%% not base64")
    assert receive(h.ctx, TOKEN, b"{}").reason == "NotConfigured"
    set_token_data(h, base64.b64encode(b"\n").decode())  # blank: never authenticates
    assert receive(h.ctx, "", b"{}").status == 401
    assert receive(h.ctx, TOKEN, b"{}").reason == "NotConfigured"


def set_token_data(h: Harness, value: str) -> None:
    h.kube.patch(SECRET, TOKEN_SECRET, OPERATOR_NS, {"data": {c.TOKEN_KEY: value}})


@pytest.mark.parametrize(
    "token", ["", "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "\udcff", "t\u00e9"]
)
def test_a_missing_or_wrong_token_is_refused(token: str) -> None:
    h = configured()
    push_policy(h, "default", "apps")
    answer = receive(h.ctx, token, envelope(event("team/app", D1)))
    assert (answer.status, answer.reason) == (401, "Unauthorized")
    assert not scans(h) and metric(h, "refused") == 1
    assert not [r for r in h.kube.reads if r[1] == "scanpolicies"]


def test_a_token_written_with_a_trailing_newline_still_matches() -> None:
    h = configured(TOKEN + "\n")  # kubectl create secret --from-file of an echoed token
    assert receive(h.ctx, TOKEN, b'{"events": []}').status == 200


def test_the_token_is_read_on_every_notification_so_rotation_needs_no_restart() -> None:
    h = configured()
    assert receive(h.ctx, TOKEN, b'{"events": []}').status == 200
    set_token_data(h, base64.b64encode(b"rotated").decode())
    assert receive(h.ctx, TOKEN, b'{"events": []}').status == 401
    assert receive(h.ctx, "rotated", b'{"events": []}').status == 200


# -- bounds and malformed bodies -------------------------------------------------------------


def test_bodies_over_one_mebibyte_are_refused() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    padding = " " * (MAX_BODY + 1 - len(envelope(event("team/app", D1))))
    body = envelope(event("team/app", D1)) + padding.encode()
    assert len(body) == MAX_BODY + 1
    answer = receive(h.ctx, TOKEN, body)
    assert (answer.status, answer.reason) == (413, "TooLarge")
    assert receive(h.ctx, TOKEN, body[:-1]).status == 200  # exactly the limit


def test_too_many_events_are_refused_and_nothing_is_created() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    events = [{"action": "pull"}] * MAX_EVENTS
    assert receive(h.ctx, TOKEN, envelope(*events)).status == 200
    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1), *events))
    assert (answer.status, answer.reason) == (413, "TooManyEvents")
    assert str(MAX_EVENTS) in answer.message
    resources = [(digest(i), "t") for i in range(MAX_EVENTS + 1)]
    answer = receive(h.ctx, TOKEN, json.dumps(harbor("a/b", *resources)).encode())
    assert (answer.status, answer.reason) == (413, "TooManyEvents")
    assert "event_data.resources" in answer.message
    assert not scans(h)


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    (b"{'events': []}", "not JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # nested past the parser's recursion
    (b"[]", "must be a JSON object"),
    (b'"events"', "must be a JSON object"),
    (b'{"hello": "world"}', "not a registry notification"),
    (b'{"events": {}}', "events: must be a list"),
    (b'{"events": [1]}', "events[0]: must be an object"),
    (b'{"events": [{"action": 1}]}', "events[0].action: must be a string"),
    (b'{"events": [{"action": "push", "target": []}]}', "events[0].target: must be an object"),
    (
        envelope(event("team/app", D1), {"action": "push", "target": {"mediaType": OCI_MANIFEST}}),
        "events[1].target.repository: is required",
    ),
    (envelope(event("team/app", "sha256:abc")), "events[0].target.digest: 'sha256:abc'"),
    (envelope(event("team/app", "latest")), "is not a digest"),
    (envelope(event("Team/App", D1)), "events[0].target.repository: 'Team/App' is not a rep"),
    (envelope(event("../etc", D1)), "is not a repository name"),
    (envelope(event("a//b", D1)), "is not a repository name"),
    (envelope(event("a" * 256, D1)), "is not a repository name"),
    (envelope({**event("a/b", D1), "target": {**event("a/b", D1)["target"], "tag": 7}}), "tag"),
    (b'{"type": "PUSH_ARTIFACT", "event_data": []}', "event_data: must be an object"),
    (
        json.dumps({**harbor("a/b", (D1, "t")), "event_data": {"resources": []}}).encode(),
        "event_data.repository: must be an object",
    ),
    (
        json.dumps(
            {"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "a/b"}}}
        ).encode(),
        "event_data.resources: must be a list",
    ),
    (
        json.dumps(harbor("a/b", ("nope", "t"))).encode(),
        "event_data.resources[0].digest: 'nope' is not a digest",
    ),
    (b'{"type": 3, "event_data": {}}', "webhook.type: must be a string"),
    (b'{"specversion": "1.0", "type": "harbor.artifact.pushed"}', "data: must be an object"),
    (b'{"updated_tags": "latest", "repository": "a/b"}', "updated_tags: must be a list"),
    (b'{"updated_tags": []}', "notification.repository: is required"),
]


@pytest.mark.parametrize(("body", "problem"), MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_bodies_are_refused_naming_the_problem(body: bytes, problem: str) -> None:
    h = configured()
    push_policy(h, "default", "apps")
    answer = receive(h.ctx, TOKEN, body)
    assert answer.status == 422, answer
    assert answer.reason in ("InvalidJSON", "Malformed")
    assert problem in answer.message
    assert not scans(h), "a refused notification creates nothing, not even its valid events"
    assert metric(h, "refused") == 1


def test_no_exception_escapes_whatever_the_payload() -> None:
    """Valid payloads with values swapped for others of any type, at any depth."""
    rng = random.Random(20260301)  # noqa: S311 -- reproducible test data
    odd: list[object] = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"a": None}, "😀"]
    seeds: list[object] = [
        json.loads(envelope(event("team/app", D1), event("t/b", D2, media_type=DOCKER_MANIFEST))),
        harbor("a/b", (D1, "v1")),
        harbor_cloudevent("a/b", (D1, "v1")),
        dict(QUAY_PUSH),
    ]

    def paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        out = [prefix]
        if isinstance(doc, dict):
            for key, value in doc.items():
                out += paths(value, (*prefix, key))
        elif isinstance(doc, list):
            for index, value in enumerate(doc):
                out += paths(value, (*prefix, index))
        return out

    def replaced(doc: object, path: tuple[object, ...], value: object) -> object:
        if not path:
            return value
        head, rest = path[0], path[1:]
        if isinstance(doc, dict):
            return {k: (replaced(v, rest, value) if k == head else v) for k, v in doc.items()}
        assert isinstance(doc, list)
        return [replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]

    h = configured()
    push_policy(h, "default", "apps")
    statuses: set[int] = set()
    for seed in seeds:
        for path in paths(seed):
            for value in rng.sample(odd, 4):
                answer = receive(h.ctx, TOKEN, json.dumps(replaced(seed, path, value)).encode())
                assert isinstance(answer, Received)
                statuses.add(answer.status)
    assert statuses <= {200, 202, 422}
    assert {200, 422} <= statuses


def test_the_parser_alone_names_each_format() -> None:
    assert parse_notification(json.loads(envelope(event("a/b", D1)))).pushes[0].digest == D1
    assert parse_notification(harbor("a/b", (D1, "t"))).pushes[0].repository == "a/b"
    assert parse_notification(QUAY_PUSH).status == 202
    with pytest.raises(MalformedNotification, match="not a registry notification"):
        parse_notification({"push_data": {"tag": "latest"}})  # Docker Hub's webhook


# -- API errors ------------------------------------------------------------------------------


def failing_creates(h: Harness, error: KubeError, *, on_call: int) -> None:
    """The ``on_call``-th ImageScan create fails with ``error``."""
    calls = [0]

    def hook(verb: str, kind: Kind, _obj: Obj) -> None:
        if verb == "create" and kind == IMAGESCAN:
            calls[0] += 1
            if calls[0] == on_call:
                raise error

    h.kube.before_write = hook


def test_a_transient_api_error_asks_the_registry_to_deliver_again() -> None:
    h = configured()
    push_policy(h, "a", "apps")
    push_policy(h, "b", "apps")
    body = envelope(event("team/app", D1))
    failing_creates(h, KubeError(500, "InternalError", "etcd leader changed"), on_call=2)
    answer = receive(h.ctx, TOKEN, body)
    assert (answer.status, answer.reason, answer.created) == (503, "Unavailable", 1)
    assert metric(h, "refused") == 1
    again = receive(h.ctx, TOKEN, body)
    assert (again.status, again.created, again.existing) == (200, 1, 1)
    assert len(scans(h)) == 2


def test_a_permanent_api_error_is_reported_and_the_rest_goes_on() -> None:
    h = configured()
    push_policy(h, "a", "apps")
    push_policy(h, "b", "other")
    failing_creates(h, Forbidden(403, "Forbidden", "namespace apps is being terminated"), on_call=1)
    answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))
    assert (answer.status, answer.created, answer.failed) == (200, 1, 1)
    assert "being terminated" in answer.message
    assert len(scans(h)) == 1


def test_an_unreadable_token_secret_or_policy_list_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = configured()
    push_policy(h, "default", "apps")

    def broken(*_args: object, **_kwargs: object) -> Obj:
        raise KubeError(0, "ConnectionError", "connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(h.kube, "get", broken)
        assert receive(h.ctx, TOKEN, b"{}").reason == "Unavailable"
    with monkeypatch.context() as patched:
        patched.setattr(h.kube, "list", broken)
        answer = receive(h.ctx, TOKEN, envelope(event("team/app", D1)))
        assert (answer.status, answer.reason) == (503, "Unavailable")
    assert receive(h.ctx, TOKEN, envelope(event("team/app", D1))).created == 1


# -- over HTTP -------------------------------------------------------------------------------


def test_the_http_routes_read_the_bearer_token_and_bound_the_body() -> None:
    h = configured()
    push_policy(h, "default", "apps")
    body = envelope(event("team/app", D1))
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def exercise() -> list[tuple[int, dict[str, Any]]]:
        out = []
        for app in (build_app(h.ctx), build_registry_events_app(h.ctx)):
            async with TestClient(TestServer(app)) as client:
                for headers, data in (
                    ({}, body),
                    ({"Authorization": TOKEN}, body),  # no "Bearer "
                    ({"Authorization": f"Basic {TOKEN}"}, body),
                    (auth, io.BytesIO(b"x" * (MAX_BODY + 1))),
                    (auth, body),
                ):
                    answer = await client.post("/v1/registry-events", data=data, headers=headers)
                    out.append((answer.status, await answer.json()))

                async def chunks() -> Any:
                    for _ in range(20):
                        yield b" " * (64 * 1024)

                # Chunked, no Content-Length: the stream is cut at the limit, not read whole.
                chunked = await client.post("/v1/registry-events", data=chunks(), headers=auth)
                out.append((chunked.status, await chunked.json()))
        return out

    answers = asyncio.run(exercise())
    statuses = [status for status, _ in answers]
    assert statuses == [401, 401, 401, 413, 200, 413] * 2
    assert answers[4][1] == {
        "reason": "Scanned",
        "message": "1 ImageScans created, 0 already there, 0 ignored",
        "created": 1,
        "existing": 0,
        "ignored": 0,
        "failed": 0,
    }
    assert answers[10][1]["existing"] == 1


def test_the_plain_listener_serves_registry_events_and_health_only() -> None:
    h = configured()

    async def exercise() -> tuple[int, int, int]:
        async with TestClient(TestServer(build_registry_events_app(h.ctx))) as client:
            health = await client.get("/healthz")
            results = await client.post("/v1/results/scapguard-scan-000000000000-1-1", data=b"{}")
            content = await client.get("/v1/content/scapguard-scan-000000000000-1-1/oval")
            return health.status, results.status, content.status

    assert asyncio.run(exercise()) == (200, 404, 404)


# -- settings, start-up, chart ---------------------------------------------------------------


def test_registry_events_settings() -> None:
    default = Settings.from_env({"SCAPGUARD_NAMESPACE": "scapguard"})
    everywhere = "0.0.0.0"  # noqa: S104 -- the in-pod default under test
    assert (default.registry_events_port, default.registry_events_bind) == (0, everywhere)
    set_ = Settings.from_env(
        {
            "SCAPGUARD_NAMESPACE": "scapguard",
            "SCAPGUARD_REGISTRY_EVENTS_PORT": "8088",
            "SCAPGUARD_REGISTRY_EVENTS_BIND": "127.0.0.1",
        }
    )
    assert (set_.registry_events_port, set_.registry_events_bind) == (8088, "127.0.0.1")
    for value, message in (
        ("http", "not an integer"),
        ("70000", "not between"),
        ("8443", "SCAPGUARD_RESULTS_PORT already"),
        ("9090", "SCAPGUARD_METRICS_PORT already"),
    ):
        with pytest.raises(SettingsError, match=message) as info:
            Settings.from_env(
                {"SCAPGUARD_NAMESPACE": "scapguard", "SCAPGUARD_REGISTRY_EVENTS_PORT": value}
            )
        assert info.value.variable == "SCAPGUARD_REGISTRY_EVENTS_PORT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_startup_starts_the_plain_listener_only_when_a_port_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setattr(startup, "load_client", FakeKube)
    monkeypatch.setattr(startup, "start_cache", lambda _cache, _ctx: None)
    monkeypatch.setattr(Cache, "wait_synced", lambda _self: True)
    logger = logging.getLogger("test")

    def post(url: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(  # noqa: S310 -- local
            url, data=b"{}", headers={"Authorization": f"Bearer {TOKEN}"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 -- local
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    answers: list[tuple[int, dict[str, Any]]] = []

    async def run(env: dict[str, str]) -> bool:
        """Whether the operator started the listener (posting to it if so)."""
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        memo = kopf.Memo()
        await startup.start_operator(kopf.OperatorSettings(), memo, logger)
        try:
            started = memo["scapguard_registry_events_runner"] is not None
            if started:
                url = f"http://127.0.0.1:{port}/v1/registry-events"
                answers.append(await asyncio.to_thread(post, url))
        finally:
            await startup.stop_operator(memo, logger)
        return started

    base = {
        "SCAPGUARD_NAMESPACE": "scapguard",
        "SCAPGUARD_RESULTS_BIND": "127.0.0.1",
        "SCAPGUARD_RESULTS_PORT": str(free_port()),
        "SCAPGUARD_METRICS_PORT": "0",
        "SCAPGUARD_PEERING": "",
    }
    assert not asyncio.run(run(base))
    listener = {
        "SCAPGUARD_REGISTRY_EVENTS_BIND": "127.0.0.1",
        "SCAPGUARD_REGISTRY_EVENTS_PORT": str(port),
    }
    assert asyncio.run(run({**base, **listener}))
    ((status, answer),) = answers
    # The operator's (fake) API holds no token Secret yet.
    assert (status, answer["reason"]) == (503, "NotConfigured")
    with pytest.raises(ConnectionRefusedError):  # stopped with the operator
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_chart_renders_the_plain_listener_only_when_a_port_is_set() -> None:
    def parts(objects: list[dict[str, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
        (dep,) = [o for o in objects if o["kind"] == "Deployment"]
        (svc,) = [
            o
            for o in objects
            if o["kind"] == "Service" and o["metadata"]["name"] == "scapguard-results"
        ]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = [e for e in container["env"] if e["name"].startswith("SCAPGUARD_REGISTRY_EVENTS")]
        ports = [p for p in container["ports"] if p["name"] == "registry-events"]
        return env, ports, [p for p in svc["spec"]["ports"] if p["name"] == "registry-events"]

    assert parts(chart_objects()) == ([], [], [])
    env, ports, service = parts(chart_objects(registryEvents={"port": 8088}))
    assert env == [{"name": "SCAPGUARD_REGISTRY_EVENTS_PORT", "value": "8088"}]
    assert ports == [{"name": "registry-events", "containerPort": 8088, "protocol": "TCP"}]
    assert service == [{"name": "registry-events", "port": 8088, "targetPort": "registry-events"}]
