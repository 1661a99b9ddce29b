"""The fault matrix: a registry that answers 503, is slow or serves an untrusted certificate;
an image deleted between its tag and its scan; a scanner OOM-killed or never started before
its deadline; kube-apiserver restarted mid-scan (its watch cache gone: 410 Gone on resume).

Each fault ends as the policy says, with a reason or message naming the cause: `Error` after
the policy's retries (one Job per attempt, never a crash loop), onError deciding the deny, or
`Pass` where the fault is transient. The faulty registry is a real HTTP(S) proxy inside the
cluster's network namespace in front of the session registry, where scanner pods reach it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from scapguard.api import constants as c
from scapguard.api.naming import scan_name
from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.helminstall import NAMESPACE, ChartInstall, install_scapguard
from scapguard_dev.images import PushedImage
from scapguard_dev.netns import NODE_IP, NetworkNamespace
from scapguard_dev.ovalgen import ubuntu_oval
from scapguard_dev.pki import CertificateAuthority
from scapguard_dev.registry import Registry
from tests.conftest import admin_client
from tests.e2e.conftest import E2E, JobRecord

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DENY = "images.openshift.io/deny-execution"

# A reverse proxy in front of the session registry: serves GET/HEAD through to it, except that
# it answers ``status`` to every request (``fail_all``) or to those that come while the file
# ``fail_while`` exists, waits ``delay`` seconds before each answer, and speaks TLS with
# ``tls`` (cert, key). One line per request ("STATUS METHOD PATH") goes to ``log``.
_PROXY = r"""
import http.client, http.server, json, os, ssl, sys, time
cfg = json.loads(sys.argv[1])
log = open(cfg["log"], "a", buffering=1)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer",
       "upgrade", "content-length"}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def serve(self, with_body):
        time.sleep(cfg.get("delay", 0))
        flag = cfg.get("fail_while")
        if cfg.get("fail_all") or (flag and os.path.exists(flag)):
            data = b"upstream unavailable (injected fault)\n"
            self.send_response(cfg["status"])
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data)
            log.write(f"{cfg['status']} {self.command} {self.path}\n")
            return
        up = http.client.HTTPConnection("127.0.0.1", cfg["upstream"], timeout=60)
        # Every header line as sent: clients repeat Accept once per manifest type.
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP:
                up.putheader(key, value)
        up.endheaders()
        resp = up.getresponse()
        data = resp.read()
        length = resp.getheader("Content-Length") if not with_body else str(len(data))
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if with_body:
            self.wfile.write(data)
        up.close()
        log.write(f"{resp.status} {self.command} {self.path}\n")

    def do_GET(self):
        self.serve(True)

    def do_HEAD(self):
        self.serve(False)

    def log_message(self, *_):
        pass

server = http.server.ThreadingHTTPServer((cfg["bind"], 0), Handler)
server.daemon_threads = True
if cfg.get("tls"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cfg["tls"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class FaultyRegistry:
    """A proxy on the node's address (where scanner pods reach it) in front of the registry."""

    host: str  # NODE_IP:PORT
    log: Path

    def served(self) -> list[tuple[int, str, str]]:
        """(status, method, path) of every request it answered, in order."""
        lines = self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []
        out = []
        for line in lines:
            status, method, path = line.split(" ", 2)
            out.append((int(status), method, path))
        return out


FaultyFactory = Callable[..., FaultyRegistry]


class FaultyProxies:
    """Faulty registries started in one cluster's network namespace; all killed by close()."""

    def __init__(self, netns: NetworkNamespace, upstream: Registry, workdir: Path) -> None:
        self.netns = netns
        self.upstream = upstream
        self.workdir = workdir
        self.started: list[subprocess.Popen[str]] = []

    def start(self, **fault: Any) -> FaultyRegistry:
        log = self.workdir / f"proxy-{len(self.started)}.log"
        cfg = {"bind": NODE_IP, "upstream": self.upstream.port, "log": str(log),
               "status": 503, **fault}  # fmt: skip
        argv = [*self.netns.enter(), sys.executable, "-c", _PROXY, json.dumps(cfg)]
        proxy = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.started.append(proxy)
        port = proxy.stdout.readline().strip() if proxy.stdout is not None else ""
        assert port.isdigit(), "the faulty registry did not start"
        return FaultyRegistry(f"{NODE_IP}:{port}", log)

    def close(self) -> None:
        for proxy in self.started:
            proxy.kill()
            proxy.wait(10)
            if proxy.stdout is not None:
                proxy.stdout.close()


@pytest.fixture
def faulty_registry(
    cluster: DevCluster, cluster_registry: Registry, tmp_path: Path
) -> Iterator[FaultyFactory]:
    """``faulty_registry(**fault)`` starts one in front of the session registry."""
    assert cluster.netns is not None
    proxies = FaultyProxies(cluster.netns, cluster_registry, tmp_path)
    try:
        yield proxies.start
    finally:
        proxies.close()


# -- helpers ----------------------------------------------------------------------------------


def assert_error(
    e2e: E2E, jobs: JobRecord, scan: dict[str, Any], reason: str, retries: int
) -> dict[str, Any]:
    """``Error`` with ``reason`` after exactly ``retries + 1`` attempts, one Job each."""
    status: dict[str, Any] = scan["status"]
    assert status["result"] == "Error", status
    assert (status["reason"], status["error"]["reason"]) == (reason, reason), status
    assert status["attempts"] == retries + 1, status
    assert f"after {retries + 1} attempts" in status["error"]["message"], status["error"]
    expected = [(1, n) for n in range(1, retries + 2)]
    assert jobs.attempts_of(e2e.namespace, scan["metadata"]["name"]) == expected
    scanned = {x["type"]: x for x in status["conditions"]}["Scanned"]
    assert (scanned["status"], scanned["reason"]) == ("False", reason), scanned
    return status


def through(e2e: E2E, proxy: FaultyRegistry, image: PushedImage) -> str:
    """Tag ``app:v1`` as the image's pull spec through ``proxy``; returns the digest."""
    return e2e.tag_pull_spec("app", "v1", f"{proxy.host}/{image.repository}", image.digest)


def denied_mark(e2e: E2E, digest: str) -> str | None:
    annotations = e2e.image_object(digest)["metadata"].get("annotations") or {}
    mark = annotations.get(DENY)
    return str(mark) if mark is not None else None


# -- registry faults --------------------------------------------------------------------------


def test_registry_answering_503_is_an_error_naming_the_status_and_denied(
    e2e: E2E, jobs: JobRecord, faulty_registry: FaultyFactory
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    proxy = faulty_registry(fail_all=True, status=503)
    e2e.policy(onError="Deny", scanner={"insecureRegistries": [proxy.host], "retries": 1})
    digest = through(e2e, proxy, image)

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=240), "PullFailed", 1)
    print(status["error"]["message"])
    assert "503" in status["error"]["message"], status["error"]
    assert status["denied"] is True
    assert denied_mark(e2e, digest) == "true"
    served = proxy.served()
    assert served and {s for s, _, _ in served} == {503}, served


def test_registry_answering_503_until_it_recovers_is_retried_and_the_scan_passes(
    e2e: E2E, jobs: JobRecord, faulty_registry: FaultyFactory, tmp_path: Path
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    outage = tmp_path / "outage"
    outage.touch()
    proxy = faulty_registry(fail_while=str(outage), status=503)
    e2e.policy(onError="Deny", scanner={"insecureRegistries": [proxy.host], "retries": 3})
    digest = through(e2e, proxy, image)
    name = scan_name(digest, e2e.namespace, "policy")

    def first_attempt_failed() -> bool:
        try:
            scan = e2e.scan(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        last = (scan.get("status") or {}).get("lastAttempt") or {}
        return last.get("attempt", 0) >= 1 and last.get("outcome") == "Error"

    wait_for("the first attempt to fail on the 503s", first_attempt_failed, 180, 0.2)
    failed = e2e.scan(name)["status"]["lastAttempt"]
    assert failed["reason"] == "PullFailed" and "503" in failed["message"], failed
    outage.unlink()  # the registry recovers; the operator's next retry pulls

    scan = e2e.wait_result(digest, timeout=240)
    status = scan["status"]
    assert status["result"] == "Pass", (status.get("error"), proxy.served())
    assert 2 <= status["attempts"] <= 4, status
    assert status["denied"] is False
    assert denied_mark(e2e, digest) is None
    attempts = jobs.attempts_of(e2e.namespace, name)
    assert attempts == [(1, n) for n in range(1, status["attempts"] + 1)]
    served = [s for s, _, _ in proxy.served()]
    assert 503 in served and served[-1] == 200, served
    assert served.index(200) > served.index(503), served
    e2e.wait_events("ImageScan", name, "Retrying")


def test_slow_registry_within_the_scan_timeout_completes(
    e2e: E2E, jobs: JobRecord, faulty_registry: FaultyFactory
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    proxy = faulty_registry(delay=2)
    e2e.policy(scanner={"insecureRegistries": [proxy.host], "retries": 0, "timeoutSeconds": 300})
    digest = through(e2e, proxy, image)

    scan = e2e.wait_result(digest, timeout=300)
    assert scan["status"]["result"] == "Pass", scan["status"]
    assert scan["status"]["attempts"] == 1
    assert any("/blobs/" in p for _, _, p in proxy.served())


def test_registry_slower_than_the_scan_timeout_is_a_timeout_error(
    e2e: E2E, jobs: JobRecord, faulty_registry: FaultyFactory
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    # Each answer takes 300 s; the scan has 60 s.
    proxy = faulty_registry(delay=300)
    e2e.policy(
        onError="Allow",
        scanner={"insecureRegistries": [proxy.host], "retries": 0, "timeoutSeconds": 60},
    )
    digest = through(e2e, proxy, image)

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=240), "Timeout", 0)
    message = status["error"]["message"]
    print(message)
    # The scanner's own budget is 85% of timeoutSeconds from its start, so it says which step
    # timed out; a pod slow to start may leave the Job's activeDeadlineSeconds to fire first.
    assert "skopeo timed out" in message or "exceeded the policy's timeoutSeconds" in message
    assert status["denied"] is False
    assert denied_mark(e2e, digest) is None


def test_registry_with_a_certificate_the_scanner_does_not_trust_is_an_x509_error(
    e2e: E2E, jobs: JobRecord, faulty_registry: FaultyFactory, tmp_path: Path
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    (tmp_path / "untrusted-ca").mkdir()
    ca = CertificateAuthority(tmp_path / "untrusted-ca", "untrusted-registry-ca")
    pair = ca.issue("registry", "registry", ips=(NODE_IP,), server=True)
    proxy = faulty_registry(tls=[str(pair.cert), str(pair.key)])
    # TLS is verified: the proxy is not among the policy's insecure registries.
    e2e.policy(onError="Deny", scanner={"retries": 1})
    digest = through(e2e, proxy, image)

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=240), "PullFailed", 1)
    message = status["error"]["message"]
    print(message)
    assert "x509" in message and "unknown authority" in message, status["error"]
    assert status["denied"] is True
    assert proxy.served() == [], "a request got past the TLS handshake"


def test_image_deleted_between_tag_and_scan_is_a_manifest_unknown_error(
    e2e: E2E, jobs: JobRecord
) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image,) = e2e.distinct_images(1)
    digest = e2e.tag("app", "v1", image)  # no policy yet: nothing scans it
    url = f"{e2e.registry.url}/v2/{image.repository}/manifests/{image.digest}"
    request = urllib.request.Request(url, method="DELETE")  # noqa: S310 - our registry on loopback
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
        assert reply.status == 202
    e2e.policy(onError="Deny")  # retries: 1

    status = assert_error(e2e, jobs, e2e.wait_result(digest, timeout=180), "PullFailed", 1)
    assert "manifest unknown" in status["error"]["message"], status["error"]
    assert status["denied"] is True


# -- scanner faults (scanner resources and placement: honoured for admin policies only) -------


@contextlib.contextmanager
def admin_namespace(e2e: E2E) -> Iterator[E2E]:
    """The operator's own namespace, where a policy's scanner resources and nodeSelector are
    honoured; what the test made there is deleted afterwards."""
    admin = E2E(e2e.api, e2e.cluster, NAMESPACE, e2e.registry, e2e.images, e2e.workdir)
    suffix = e2e.namespace
    try:
        yield admin
    finally:
        with contextlib.suppress(ApiException):
            admin.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, "imagescans", f"fault-{suffix}"[:63]
            )
        with contextlib.suppress(ApiException):
            admin.custom.delete_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, "scanpolicies", f"policy-{suffix}"
            )
        with contextlib.suppress(ApiException):
            admin.core.delete_namespaced_config_map(f"feed-{suffix}", NAMESPACE)


def admin_scan(e2e: E2E, admin: E2E, scanner: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A hand-made ImageScan in the operator's namespace under a policy with ``scanner``."""
    xml, _ = ubuntu_oval()
    suffix = e2e.namespace
    admin.feed(xml, name=f"feed-{suffix}")
    policy = f"policy-{suffix}"
    admin.policy(
        policy,
        vulnerabilities={
            "enabled": True,
            "feed": {"configMapRef": {"name": f"feed-{suffix}", "key": "oval.xml"}},
        },
        scanner={"insecureRegistries": [e2e.registry.cluster_host], **scanner},
    )
    (image,) = e2e.distinct_images(1)
    name = f"fault-{suffix}"[:63]
    admin.make_scan(name, f"{e2e.registry.cluster_host}/{image.repository}@{image.digest}", policy)
    return name, admin.wait_settled(name, timeout=240)


def test_scanner_oom_killed_is_an_error_naming_oomkilled(e2e: E2E, jobs: JobRecord) -> None:
    resources = {"requests": {"memory": "40Mi"}, "limits": {"memory": "40Mi"}}
    with admin_namespace(e2e) as admin:
        name, scan = admin_scan(e2e, admin, {"retries": 1, "resources": resources})
        status = scan["status"]
        assert status["result"] == "Error", status
        assert status["error"]["reason"] == "ScannerFailed", status["error"]
        message = status["error"]["message"]
        assert "OOMKilled" in message and "memory limit of 40Mi" in message, status["error"]
        assert "after 2 attempts" in status["error"]["message"], status["error"]
        assert status["attempts"] == 2
        assert jobs.attempts_of(NAMESPACE, name) == [(1, 1), (1, 2)]


def test_scanner_pod_not_started_before_the_policy_timeout_is_a_timeout_error(
    e2e: E2E, jobs: JobRecord
) -> None:
    # No node has this label: the pod stays Pending until the Job's activeDeadlineSeconds.
    selector = {"scapguard.io/e2e-no-such-node": "true"}
    with admin_namespace(e2e) as admin:
        name, scan = admin_scan(
            e2e, admin, {"retries": 0, "timeoutSeconds": 30, "nodeSelector": selector}
        )
        status = scan["status"]
        assert (status["result"], status["error"]["reason"]) == ("Error", "Timeout"), status
        assert "timeoutSeconds" in status["error"]["message"], status["error"]
        assert len(jobs.for_scan(NAMESPACE, name)) == 1


# -- control plane faults ---------------------------------------------------------------------


def watch_from(api: client.ApiClient, namespace: str, version: str) -> int:
    """The status a watch of ImageScans from ``version`` gets: 410 when it is too old."""
    custom = client.CustomObjectsApi(api)
    stream = watch.Watch()
    try:
        for event in stream.stream(
            custom.list_namespaced_custom_object, c.GROUP, c.VERSION, namespace, "imagescans",
            resource_version=version, timeout_seconds=5,
        ):  # fmt: skip
            if event["type"] == "ERROR":
                return int(event["raw_object"]["code"])
    except ApiException as e:
        return int(e.status)
    finally:
        stream.stop()
    return 200


def relists(log: str) -> int:
    """How often the operator's informers (scanner Jobs, admission indexes) listed afresh."""
    return sum(1 for line in log.splitlines() if '"message": "listed ' in line)


@pytest.fixture(scope="module")
def own_install(real_cluster: DevCluster) -> ChartInstall:
    """scapguard on a cluster of this module's own: the apiserver restart below must not
    disturb the session's cluster, and the operator's log it checks is this one's."""
    return install_scapguard(
        real_cluster, replicas="1", peering="", retryBackoffSeconds="1",
        retryBackoffMaxSeconds="5",
    )  # fmt: skip


def tracebacks(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Traceback" in line]


def test_apiserver_restart_mid_scan_completes_once_and_watches_resume_after_410(
    real_cluster: DevCluster, own_install: ChartInstall, tmp_path: Path
) -> None:
    cluster = real_cluster
    assert cluster.netns is not None and cluster.registry is not None
    assert own_install.ready(), own_install.logs()[-3000:]
    with admin_client(cluster) as api:
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        images = FixtureImages(cluster.registry.host, tmp_path / "images")
        e2e = E2E(api, cluster, namespace, cluster.registry, images, tmp_path)
        proxies = FaultyProxies(cluster.netns, cluster.registry, tmp_path)
        try:
            restart_mid_scan(e2e, own_install, proxies.start(delay=1))
        finally:
            proxies.close()


def restart_mid_scan(e2e: E2E, operator: ChartInstall, proxy: FaultyRegistry) -> None:
    xml, _ = ubuntu_oval()
    e2e.feed(xml)
    (image, later) = e2e.distinct_images(2)
    # Slow answers (1 s each) keep the scanner in its pull while the apiserver restarts.
    e2e.policy(
        action="Report",
        scanner={"insecureRegistries": [proxy.host], "retries": 0, "timeoutSeconds": 300},
    )
    restarts = operator.restarts()
    listed_before = relists(operator.logs())
    digest = through(e2e, proxy, image)
    name = scan_name(digest, e2e.namespace, "policy")

    def pulling() -> bool:
        return bool(proxy.served())

    wait_for("the scanner to start pulling", pulling, 120, 0.2)
    listing = e2e.custom.list_namespaced_custom_object(
        c.GROUP, c.VERSION, e2e.namespace, "imagescans"
    )
    before = str(cast(dict[str, Any], listing)["metadata"]["resourceVersion"])

    e2e.cluster.restart_apiserver()

    # The restarted apiserver's watch cache starts at etcd's current revision: a watch that
    # resumes from before the restart (as kopf's do after a dropped stream) gets 410 Gone.
    assert watch_from(e2e.api, e2e.namespace, before) == 410
    scan = e2e.wait_result(digest, timeout=300)
    status = scan["status"]
    assert (status["result"], status["attempts"]) == ("Pass", 1), status
    assert status["request"]["number"] == 1, status
    assert any("/blobs/" in p for _, _, p in proxy.served())

    # Work after the restart flows through the operator's new watches.
    second = e2e.tag_pull_spec("app", "v2", f"{proxy.host}/{later.repository}", later.digest)
    assert e2e.wait_result(second, timeout=300)["status"]["result"] == "Pass"
    assert operator.restarts() == restarts, "the operator's container restarted"
    log = operator.logs()
    # One result accepted per scan: nothing was scanned twice across the restart.
    for scanned in (name, scan_name(second, e2e.namespace, "policy")):
        accepted = f"result for ImageScan {e2e.namespace}/{scanned} (request 1, attempt 1)"
        assert log.count(accepted) == 1, accepted
    # The informers list afresh after their streams broke (rather than resume into a 410).
    assert relists(log) > listed_before
    # The outage is "try again later" everywhere: handlers retry (TemporaryError), the
    # results and content endpoints answer 503 (the scanner retries), with no traceback.
    assert not tracebacks(log), "\n".join(tracebacks(log))[-8000:]
