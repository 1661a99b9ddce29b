"""Debian's docker-registry, configured with a notification endpoint, posting to the operator's
real aiohttp apps (the plain listener and the results app's route) on 127.0.0.1 over a fake API.

This proves the payload a real registry sends is understood: docker-registry 2.8 posts one
event per request (``application/vnd.docker.distribution.events.v1+json``): blob pushes as
``application/octet-stream``, manifest pushes with the manifest's media type and tag, and the
HEAD requests of a push as ``pull`` events; it retries each until it gets a 2xx.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from scapguard.api import constants as c
from scapguard.api.imagescan import parse_imagescan_spec
from scapguard.api.naming import scan_name
from scapguard.k8s.api import IMAGESCAN, SECRET
from scapguard.reconcile.context import OperatorContext
from scapguard.reconcile.registryevents import TOKEN_SECRET
from scapguard.results_server import REGISTRY_EVENTS_PATH, build_app, build_registry_events_app
from scapguard_dev.registry import NotificationEndpoint, Registry
from tests.aioserve import serving
from tests.harness import OPERATOR_NS, Harness, add_policy, harness
from tests.ociartifacts import push_image, push_index

TOKEN = "registry-notification-token"  # noqa: S105 -- a test credential
APPS: dict[str, Callable[[OperatorContext], web.Application]] = {
    "plain-listener": build_registry_events_app,
    "results-app": build_app,
}


def eventually(condition: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for: {condition}")
        time.sleep(0.05)


def metric(h: Harness, result: str) -> float:
    value = h.ctx.metrics.registry.get_sample_value(
        "scapguard_registry_events_total", {"result": result}
    )
    return value or 0.0


def created(h: Harness, namespace: str, name: str) -> bool:
    # The fake API's action log only grows: safe to read while the server thread writes.
    return ("create", IMAGESCAN.plural, namespace, name) in list(h.kube.actions)


@pytest.mark.parametrize("app", sorted(APPS))
def test_docker_registry_push_notifications_become_imagescans(tmp_path: Path, app: str) -> None:
    h = harness()
    h.kube.create(
        SECRET,
        {
            "metadata": {"name": TOKEN_SECRET, "namespace": OPERATOR_NS},
            "data": {c.TOKEN_KEY: base64.b64encode(TOKEN.encode()).decode()},
        },
    )
    with serving(APPS[app](h.ctx)) as base:
        endpoint = NotificationEndpoint(
            "scapguard",
            f"{base}{REGISTRY_EVENTS_PATH}",
            headers={"Authorization": [f"Bearer {TOKEN}"]},
            timeout="5s",
            threshold=3,
            backoff="1s",
        )
        with Registry(tmp_path / "registry", notifications=[endpoint]) as reg:
            pushes = {"registry": reg.host, "repositories": ["team/*"]}
            add_policy(h, "team", "apps", registryPushes=pushes)
            add_policy(h, "infra", "ops", registryPushes={**pushes, "repositories": ["infra/*"]})
            layer = {"etc/os-release": b"ID=debian\nVERSION_ID=12\n"}
            image = push_image(reg.host, "team/app", "v1", [layer])
            docker = push_image(reg.host, "team/app", "v2", [layer], docker=True)
            index = push_index(
                reg.host, "team/app", "multi", [(image, {"os": "linux", "architecture": "amd64"})]
            )
            push_image(reg.host, "elsewhere/app", "v1", [layer])  # no policy matches
            expected = {d: scan_name(d, "apps", "team") for d in (image, docker, index)}
            for pushed, name in expected.items():
                eventually(
                    f"ImageScan apps/{name} for {pushed}",
                    functools.partial(created, h, "apps", name),
                )
            # The last push's events (blobs, then its manifest) are answered too.
            eventually("the push to elsewhere/app to be ignored", lambda: metric(h, "ignored") >= 8)
            log = reg.log_path.read_text(encoding="utf-8", errors="replace")
    assert metric(h, "refused") == 0
    assert "error writing events" not in log and "retrying" not in log
    made = {s["metadata"]["name"]: s for s in h.kube.all(IMAGESCAN)}
    assert set(made) == set(expected.values()), "one scan per pushed manifest, in apps only"
    for pushed, name in expected.items():
        spec = parse_imagescan_spec(made[name]["spec"])
        assert spec.image == f"{reg.host}/team/app@{pushed}"
        assert (spec.policy, spec.trigger) == ("team", "NewImage")
        assert made[name]["metadata"]["labels"][c.ORIGIN_LABEL] == c.ORIGIN_REGISTRY_PUSH
    assert metric(h, "scanned") == 3
