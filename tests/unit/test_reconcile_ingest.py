"""The results endpoint: forged, replayed, stale, mismatched and oversized posts change nothing."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from scapguard.k8s.api import (
    CONFIGMAP,
    IMAGESCAN,
    SCANPOLICY,
    SECRET,
    Conflict,
    Kind,
    KubeError,
    Obj,
)
from scapguard.reconcile.imagescan import reconcile_imagescan
from scapguard.reconcile.queue import pump_queue
from scapguard.reconcile.scanpolicy import reconcile_scanpolicy
from scapguard.results import model as m
from scapguard.results_server import build_app
from tests.harness import (
    Harness,
    add_policy,
    add_stream,
    digest,
    harness,
    jobs,
    post,
    scan_result,
    secret_token,
)

D = digest(5)


def started(**env: str) -> tuple[Harness, str, str]:
    h = harness(**env)
    add_policy(h)
    add_stream(h, "app", "apps", {"latest": [D]})
    reconcile_scanpolicy(h.ctx, h.kube.get(SCANPOLICY, "default", "apps"))
    (scan,) = h.kube.list(IMAGESCAN, "apps")
    reconcile_imagescan(h.ctx, scan)
    (job,) = jobs(h)
    return h, job["metadata"]["name"], scan["metadata"]["name"]


def snapshot(h: Harness) -> dict[tuple[str, str, str], Obj]:
    return copy.deepcopy(dict(h.kube.objects))


def test_forged_token_is_refused_and_changes_nothing() -> None:
    h, job, _ = started()
    before = snapshot(h)
    answer = post(h, job, scan_result(D), token="forged-" + secret_token(h, job))
    assert (answer.status, answer.reason) == (401, "Unauthorized")
    assert snapshot(h) == before
    assert (
        h.ctx.metrics.registry.get_sample_value(
            "scapguard_results_rejected_total", {"reason": "Unauthorized"}
        )
        == 1
    )


def test_unknown_job_is_refused_like_a_bad_token() -> None:
    h, job, _ = started()
    other = job[:-1] + "9"
    assert post(h, job, scan_result(D)).status == 200
    before = snapshot(h)
    token = secret_token(h, job)
    from scapguard.reconcile.ingest import ingest

    body = json.dumps(m.encode_handoff(scan_result(D), None)).encode()
    assert ingest(h.ctx, other, token, body).status == 401
    assert ingest(h.ctx, "../../etc", token, body).status == 404
    assert snapshot(h) == before


def test_replay_is_refused() -> None:
    h, job, name = started()
    assert post(h, job, scan_result(D)).status == 200
    before = h.kube.get(IMAGESCAN, name, "apps")
    again = post(h, job, scan_result(D, [("CVE-2", "critical")]))
    assert (again.status, again.reason) == (409, "Replayed")
    assert h.kube.get(IMAGESCAN, name, "apps") == before


def test_a_result_posted_while_the_queue_still_writes_its_secret_is_accepted() -> None:
    """A fast scanner can post between the Secret's creation and the owner reference the
    queue gives it: that change is no use of the credential."""
    h, job, name = started()
    raced: list[str] = []

    def owner_reference_first(verb: str, kind: Kind, body: Obj) -> None:
        if verb == "patch" and kind == SECRET and not raced:
            raced.append(verb)
            (stored,) = [
                o for k, o in h.kube.objects.items() if k[0].startswith("secrets") and k[2] == job
            ]
            stored["metadata"]["resourceVersion"] += "0"
            raise Conflict(409, "Conflict", "the object has been modified")

    h.kube.before_write = owner_reference_first
    assert post(h, job, scan_result(D)).status == 200
    assert raced
    assert h.kube.get(IMAGESCAN, name, "apps")["status"]["lastAttempt"]["outcome"] == "Completed"
    again = post(h, job, scan_result(D))
    assert (again.status, again.reason) == (409, "Replayed")


def test_result_for_another_digest_is_refused() -> None:
    h, job, name = started()
    answer = post(h, job, scan_result(digest(6)))
    assert (answer.status, answer.reason) == (422, "DigestMismatch")
    assert "lastAttempt" not in h.kube.get(IMAGESCAN, name, "apps").get("status", {})


def test_invalid_document_is_refused_naming_the_field() -> None:
    h, job, _ = started()
    from scapguard.reconcile.ingest import ingest

    body = m.encode_handoff(scan_result(D), None)
    body["result"]["outcome"] = "Maybe"
    answer = ingest(h.ctx, job, secret_token(h, job), json.dumps(body).encode())
    assert answer.status == 422 and "outcome" in answer.message


def test_oversized_post_is_refused_by_the_http_server() -> None:
    h, job, name = started(SCAPGUARD_RESULTS_MAX_BYTES="2048")
    token = secret_token(h, job)

    async def exercise() -> tuple[int, int, int]:
        async with TestClient(TestServer(build_app(h.ctx))) as client:
            big = await client.post(
                f"/v1/results/{job}", data=b"x" * 4096, headers={"Authorization": f"Bearer {token}"}
            )
            anonymous = await client.post(f"/v1/results/{job}", data=b"{}")
            small = await client.post(
                f"/v1/results/{job}",
                data=json.dumps(m.encode_handoff(scan_result(D), None)).encode(),
                headers={"Authorization": f"Bearer {token}"},
            )
            return big.status, anonymous.status, small.status

    assert asyncio.run(exercise()) == (413, 401, 200)
    assert h.kube.get(IMAGESCAN, name, "apps")["status"]["lastAttempt"]["outcome"] == "Completed"
    assert h.kube.get(CONFIGMAP, f"{name}-result", "apps")["binaryData"]


def test_an_api_server_that_fails_mid_post_answers_503_for_the_scanner_to_retry() -> None:
    h, job, name = started()
    token = secret_token(h, job)
    body = json.dumps(m.encode_handoff(scan_result(D), None)).encode()
    down: list[str] = []

    def restarting(verb: str, kind: Kind, obj: Obj) -> None:
        if not down:
            down.append(verb)
            raise KubeError(0, "Unreachable", "PATCH: connection refused")

    h.kube.before_write = restarting

    async def exercise() -> list[tuple[int, str]]:
        async with TestClient(TestServer(build_app(h.ctx))) as client:
            answers = []
            for _ in range(2):  # the scanner's retry
                answer = await client.post(
                    f"/v1/results/{job}", data=body, headers={"Authorization": f"Bearer {token}"}
                )
                answers.append((answer.status, (await answer.json())["reason"]))
            return answers

    assert asyncio.run(exercise()) == [(503, "APIUnavailable"), (200, "Accepted")]
    assert h.kube.get(IMAGESCAN, name, "apps")["status"]["lastAttempt"]["outcome"] == "Completed"


def test_a_retry_whose_start_was_never_recorded_is_not_started_twice() -> None:
    """Attempt 2's Job is created but the scan's status write loses a race: its result
    arrives while the scan still reads Retrying. No third attempt may start beside it."""
    h, first, name = started(SCAPGUARD_RETRY_BACKOFF_SECONDS="10")
    h.kube.patch(SCANPOLICY, "default", "apps", {"spec": {"scanner": {"retries": 3}}})
    assert post(h, first, scan_result(D, error=("PullFailed", "refused"))).status == 200
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    assert h.kube.get(IMAGESCAN, name, "apps")["status"]["state"] == "Retrying"
    h.clock.advance(60)

    patch_status = h.kube.patch_status

    def losing(kind: Any, name: str, namespace: str | None, patch: Obj) -> Obj:
        if kind == IMAGESCAN and patch["status"].get("state") == "Running":
            raise Conflict(409, "Conflict", "the object has been modified")
        return patch_status(kind, name, namespace, patch)

    h.kube.patch_status = losing  # type: ignore[method-assign]
    assert pump_queue(h.ctx) == 1  # Job of attempt 2 created, its start not recorded
    h.kube.patch_status = patch_status  # type: ignore[method-assign]
    second = jobs(h)[-1]["metadata"]["name"]
    assert second.endswith("-1-2")

    assert post(h, second, scan_result(D, [("CVE-1", "critical")])).status == 200
    status = h.kube.get(IMAGESCAN, name, "apps")["status"]
    assert (status["state"], status["attempts"], status["job"]) == ("Running", 2, second)
    pump_queue(h.ctx)  # another scan's reconcile, or the policy timer
    assert [j["metadata"]["name"] for j in jobs(h)][-1] == second
    reconcile_imagescan(h.ctx, h.kube.get(IMAGESCAN, name, "apps"))
    status = h.kube.get(IMAGESCAN, name, "apps")["status"]
    assert status["result"] == "Fail" and status["attempts"] == 2
