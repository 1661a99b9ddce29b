"""The results endpoint refuses forged and replayed posts, and they change nothing.

The scan's scanner pod hangs on a registry that accepts connections and never answers, so its
Job and per-scan Secret stay in place while the test posts to the endpoint itself.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scapguard.api.constants import KOPF_STORAGE_PREFIX, TOKEN_KEY
from scapguard.results.model import encode_handoff
from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.helminstall import NAMESPACE, ChartInstall
from scapguard_dev.ovalgen import ubuntu_oval
from tests.e2e.conftest import E2E, JobRecord
from tests.harness import scan_result

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DIGEST = "sha256:" + "5e" * 32


RESULTS_PORT = 8443  # the operator container's results port (Service scapguard-results)


def post(
    cluster: DevCluster, operator: ChartInstall, job: str, token: str | None, body: bytes
) -> tuple[int, dict[str, Any]]:
    """POST to the operator pod's results endpoint, through ``kubectl port-forward``, over TLS
    verified against the cluster CA (which issued its serving certificate for the Service
    name, not 127.0.0.1); returns (status, answer)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    tls = ssl.create_default_context(cafile=str(cluster.ca.cert_path))
    tls.check_hostname = False
    with operator.port_forward(RESULTS_PORT) as port:
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/v1/results/{job}", data=body, method="POST",
            headers=headers,
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30, context=tls) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())


def rejected(operator: ChartInstall, reason: str) -> float:
    pattern = rf'^scapguard_results_rejected_total\{{reason="{reason}"\}} (\S+)$'
    found = re.search(pattern, operator.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def snapshot(e2e: E2E, name: str) -> dict[str, Any]:
    """What a result could change: the status and every annotation but kopf's bookkeeping.

    kopf writes its last-handled annotation when its handlers finish, on its own schedule,
    whatever reaches the results endpoint.
    """
    scan = e2e.scan(name)
    annotations = {
        key: value
        for key, value in (scan["metadata"].get("annotations") or {}).items()
        if not key.startswith(f"{KOPF_STORAGE_PREFIX}/")
    }
    return {"status": scan.get("status"), "annotations": annotations}


def result_config_map_exists(e2e: E2E, name: str) -> bool:
    try:
        e2e.core.read_namespaced_config_map(f"{name}-result", e2e.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_forged_and_replayed_results_are_refused_and_change_nothing(
    e2e: E2E,
    jobs: JobRecord,
    operator: ChartInstall,
    cluster: DevCluster,
    silent_registry: str,
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    e2e.policy(
        action="Report",
        scanner={"insecureRegistries": [silent_registry], "retries": 0, "timeoutSeconds": 300},
    )
    repository = f"{silent_registry}/quiet/app"
    e2e.tag_pull_spec("app", "v1", repository, DIGEST)
    scan: dict[str, Any] = {}

    def running() -> bool:
        try:
            scan.update(e2e.scan_for(DIGEST))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        status = scan.get("status") or {}
        return status.get("state") == "Running" and bool(status.get("job"))

    wait_for("the scan's Job to be running", running, 60, 0.2)
    name = scan["metadata"]["name"]
    job = scan["status"]["job"]
    assert jobs.for_scan(e2e.namespace, name) == [job]
    # A complete, valid result for the right digest: only the credential is wrong.
    body = json.dumps(encode_handoff(scan_result(DIGEST, reference=repository), None)).encode()
    before = snapshot(e2e, name)
    unauthorized = rejected(operator, "Unauthorized")

    for token in ("forged-" + "0" * 40, None, ""):
        code, answer = post(cluster, operator, job, token, body)
        assert code == 401, (token, code, answer)
    assert snapshot(e2e, name) == before
    assert not result_config_map_exists(e2e, name)
    assert rejected(operator, "Unauthorized") == unauthorized + 3

    # The pod's real token, read from its Secret, works once; a replay is refused.
    secret = client.CoreV1Api(e2e.api).read_namespaced_secret(job, NAMESPACE)
    assert secret.data is not None
    token = base64.b64decode(secret.data[TOKEN_KEY]).decode()
    assert post(cluster, operator, job, token, body)[0] == 200
    replay_code, _ = post(cluster, operator, job, token, body)
    assert replay_code in (401, 409), replay_code  # 409 consumed, 401 once the Secret is gone
    settled = e2e.wait_result(DIGEST, timeout=60)
    assert settled["status"]["result"] == "Pass"
    after = snapshot(e2e, name)
    code, answer = post(cluster, operator, job, token, body)
    assert code in (401, 409), (code, answer)
    assert snapshot(e2e, name) == after
    assert jobs.for_scan(e2e.namespace, name) == [job], "no second attempt"
    print(f"\nimmediate replay answered {replay_code}, replay after settling {code}")
