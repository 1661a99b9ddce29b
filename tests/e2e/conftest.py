"""End-to-end fixtures: scapguard installed with Helm from its images on the session's real
node (the operator as the chart's Deployment, scanner Jobs from the scanner image), a watcher
of its scanner Jobs, and one namespace per test."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from scapguard.api import constants as c
from scapguard.api.naming import parse_job_name, scan_name
from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.fixtureimages import Distro, FixtureImages, Variant, make_fixture_rootfs
from scapguard_dev.helminstall import NAMESPACE, ChartInstall, install_scapguard
from scapguard_dev.images import PushedImage, build_and_push
from scapguard_dev.imagestreams import GROUP as IMAGE_GROUP
from scapguard_dev.imagestreams import VERSION as IMAGE_VERSION
from scapguard_dev.imagestreams import tag_image
from scapguard_dev.netns import NODE_IP
from scapguard_dev.registry import Registry

# The e2e suite shares one operator; its global limit is what scenario 6 checks.
MAX_CONCURRENT = 3


@pytest.fixture(scope="session")
def operator(cluster: DevCluster, feed_server: FeedServer) -> Iterator[ChartInstall]:
    """scapguard installed with ``helm install`` from its images: one replica, standalone
    (a test SIGKILLs it: a dead peer's record would pause the restarted one for up to 60 s),
    a limit of 3 concurrent scans, and retries after 1 s rather than 30 s."""
    release = install_scapguard(
        cluster,
        replicas="1",
        peering="",
        maxConcurrentScans=str(MAX_CONCURRENT),
        maxConcurrentScansPerPolicy=str(MAX_CONCURRENT),
        retryBackoffSeconds="1",
        retryBackoffMaxSeconds="5",
        # The plain-HTTP registry notification listener (tests/e2e/test_registry_push.py).
        **{"registryEvents.port": str(REGISTRY_EVENTS_PORT)},
        # Catalogue feeds and OCI tags checked every 5 s (ContentUpdate within a policy timer),
        # and the fixtures' Ubuntu feed from the session's feed server instead of Canonical.
        **{
            "contentCache.pollSeconds": "5",
            f"contentCache.catalogue.{CATALOGUE_KEY}": feed_server.url(CATALOGUE_FILE),
        },
    )
    yield release
    log = release.logs()
    assert "Traceback" not in log, log[-5000:]


CATALOGUE_KEY = "ubuntu-jammy"
REGISTRY_EVENTS_PORT = 8090
CATALOGUE_FILE = "com.ubuntu.jammy.cve.oval.xml"


class FeedServer:
    """A vendor's feed server as the operator sees it: Python's http.server (Last-Modified,
    304 to If-Modified-Since) on the node's address in its network namespace."""

    def __init__(self, root: Path, address: str) -> None:
        self.root = root
        self.address = address

    def url(self, name: str) -> str:
        return f"http://{self.address}/{name}"

    def put(self, name: str, data: bytes) -> None:
        """Publish ``data``; its Last-Modified moves a minute on from the last version's."""
        path = self.root / name
        before = path.stat().st_mtime if path.exists() else time.time()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.utime(tmp, (before + 60, before + 60))
        tmp.replace(path)


@contextlib.contextmanager
def serving_feeds(cluster: DevCluster, root: Path) -> Iterator[FeedServer]:
    """A FeedServer of the files in ``root`` while the block runs."""
    assert cluster.netns is not None
    argv = [*cluster.netns.enter(), sys.executable, "-u", "-m", "http.server", "0",
            "--bind", NODE_IP, "--directory", str(root)]  # fmt: skip
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            line = server.stdout.readline() if server.stdout is not None else ""
            match = re.search(r" port (\d+) ", line)
            assert match, f"the feed server did not start: {line!r}"
            yield FeedServer(root, f"{NODE_IP}:{match.group(1)}")
        finally:
            server.kill()


@pytest.fixture(scope="session")
def feed_server(
    cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeedServer]:
    with serving_feeds(cluster, tmp_path_factory.mktemp("feeds")) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_registry(cluster: DevCluster) -> Registry:
    """The session cluster's registry: pushed to at ``.host``, pulled by pods at
    ``.cluster_host``."""
    assert cluster.registry is not None
    return cluster.registry


@pytest.fixture(scope="session")
def cluster_images(
    cluster_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> FixtureImages:
    """The fixture images, built on first use and pushed to the session cluster's registry."""
    return FixtureImages(cluster_registry.host, tmp_path_factory.mktemp("cluster-images"))


def job_finished(job: Any) -> bool:
    """Whether a Job's pod is done. Since Kubernetes 1.31 the Job controller says so with
    SuccessCriteriaMet / FailureTarget first and Complete / Failed only after the pod's
    tracking finalizer is gone; a failed Job's pod may still be terminating."""
    true = {c.type for c in (job.status.conditions or []) if c.status == "True"}
    if true & {"Complete", "Failed", "SuccessCriteriaMet"}:
        return True
    pods = (job.status.active or 0) + (job.status.terminating or 0)
    return "FailureTarget" in true and pods == 0


@dataclass
class JobRecord:
    """Every scanner Job the operator created, seen through a watch (they are deleted later)."""

    created: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> annotations
    seen_at: dict[str, float] = field(default_factory=dict)  # name -> time.time() of its ADDED
    active: set[str] = field(default_factory=set)
    max_active: dict[str, int] = field(default_factory=dict)  # policy key -> peak
    max_active_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_policy(self, key: str) -> list[str]:
        with self.lock:
            return [n for n, a in self.created.items() if a.get("scapguard.io/policy") == key]

    def for_scan(self, namespace: str, name: str) -> list[str]:
        """The Jobs created for one ImageScan, in creation order."""
        with self.lock:
            return [
                n
                for n, a in self.created.items()
                if a.get(c.SCAN_NAMESPACE_ANNOTATION) == namespace
                and a.get(c.SCAN_NAME_ANNOTATION) == name
            ]

    def attempts_of(self, namespace: str, name: str) -> list[tuple[int, int]]:
        """(request, attempt) of every Job created for one ImageScan, in creation order."""
        parsed = [parse_job_name(n) for n in self.for_scan(namespace, name)]
        return [(p.request, p.attempt) for p in parsed if p is not None]

    def active_for(self, key: str) -> set[str]:
        """The policy's Jobs that are neither finished nor deleted right now."""
        with self.lock:
            return {n for n in self.active if self._policy_of(n) == key}

    def _policy_of(self, name: str) -> str:
        return self.created.get(name, {}).get("scapguard.io/policy", "")

    def observe(self, kind: str, job: Any) -> None:
        name = job.metadata.name
        finished = job_finished(job)
        with self.lock:
            if kind == "ADDED" and name not in self.created:
                self.created[name] = dict(job.metadata.annotations or {})
                self.seen_at[name] = time.time()
            if kind == "DELETED" or finished:
                self.active.discard(name)
            else:
                self.active.add(name)
            self.max_active_total = max(self.max_active_total, len(self.active))
            key = self._policy_of(name)
            now = sum(1 for n in self.active if self._policy_of(n) == key)
            self.max_active[key] = max(self.max_active.get(key, 0), now)


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _resource_version(obj: Any) -> str:
    """Of a typed object or listing, or of a custom object's dict."""
    if isinstance(obj, dict):
        return str(obj["metadata"].get("resourceVersion") or "")
    return str(obj.metadata.resource_version or "")


@contextlib.contextmanager
def following(
    list_fn: Callable[..., Any], *args: str, observe: Callable[[str, Any], None]
) -> Iterator[None]:
    """Feed every object of a list/watch (``list_fn(*args)``, e.g. ``list_namespaced_job``
    and a namespace, or ``list_cluster_custom_object`` and group, version, plural, which give
    dicts) to ``observe(event type, object)`` from a thread until the block ends: the listing
    first (as ADDED), then the watch, listed again when the watch expires."""
    w = watch.Watch()
    done = threading.Event()

    def follow() -> None:
        resource_version = ""
        while not done.is_set():
            try:
                if not resource_version:
                    listing = list_fn(*args)
                    for obj in _field(listing, "items"):
                        observe("ADDED", obj)
                    resource_version = _resource_version(listing)
                for ev in w.stream(
                    list_fn, *args, resource_version=resource_version, timeout_seconds=60
                ):
                    obj = ev["object"]
                    resource_version = _resource_version(obj)
                    observe(ev["type"], obj)
            except ApiException as e:
                if e.status == 410:
                    resource_version = ""  # expired: list again
                elif e.status >= 500:
                    done.wait(0.5)  # an apiserver starting up (tests/e2e/test_faults.py)
                else:
                    raise
            except HTTPError:
                if done.is_set():
                    return
                # The apiserver closed the stream or is restarting (connection refused):
                # resume from the last version seen (a 410 then lists again).
                done.wait(0.5)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        w.stop()


@contextlib.contextmanager
def recording_jobs(api: client.ApiClient) -> Iterator[JobRecord]:
    """A JobRecord of the scanner Jobs in the release namespace while the block runs."""
    record = JobRecord()
    with following(client.BatchV1Api(api).list_namespaced_job, NAMESPACE, observe=record.observe):
        yield record


@pytest.fixture(scope="session")
def jobs(admin_api: client.ApiClient, operator: ChartInstall) -> Iterator[JobRecord]:
    with recording_jobs(admin_api) as record:
        yield record


_SILENT = """\
import socket, sys, time
sock = socket.socket()
sock.bind((sys.argv[1], 0))
sock.listen(16)
print(sock.getsockname()[1], flush=True)
time.sleep(3600)
"""


@pytest.fixture
def silent_registry(cluster: DevCluster) -> Iterator[str]:
    """``NODE_IP:PORT`` in the node's network namespace (where scanner pods reach it) that
    accepts connections (the kernel's backlog) and never answers."""
    assert cluster.netns is not None
    argv = [*cluster.netns.enter(), sys.executable, "-c", _SILENT, NODE_IP]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as listener:
        try:
            port = listener.stdout.readline().strip() if listener.stdout is not None else ""
            assert port.isdigit(), "the silent listener did not start"
            yield f"{NODE_IP}:{port}"
        finally:
            listener.kill()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


class E2E:
    """One test's namespace on the shared cluster: policies, images, tags and waits."""

    def __init__(
        self,
        api: client.ApiClient,
        cluster: DevCluster,
        namespace: str,
        registry: Registry,
        images: FixtureImages,
        workdir: Path,
    ) -> None:
        self.api = api
        self.cluster = cluster
        self.namespace = namespace
        self.registry = registry
        self.images = images
        self.workdir = workdir
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    # -- content and policies ----------------------------------------------------

    def feed(self, xml: str, name: str = "feed", key: str = "oval.xml") -> None:
        self.core.create_namespaced_config_map(
            self.namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={key: xml}),
        )

    def policy(self, name: str = "policy", **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": "ScanPolicy",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "vulnerabilities": {
                    "enabled": True,
                    "feed": {"configMapRef": {"name": "feed", "key": "oval.xml"}},
                },
                "failOn": "high",
                "action": "Enforce",
                "scanner": {"insecureRegistries": [self.registry.cluster_host], "retries": 1},
                **spec,
            },
        }
        return cast(
            dict[str, Any],
            self.custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, "scanpolicies", body
            ),
        )

    def policy_object(self, name: str = "policy") -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, "scanpolicies", name
            ),
        )

    def patch_policy(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, "scanpolicies", name, {"spec": spec}
        )

    # -- images --------------------------------------------------------------------

    def tag(self, stream: str, tag: str, image: PushedImage) -> str:
        """Point ``stream:tag`` at ``image`` in the cluster's registry, as pods reach it."""
        repository = f"{self.registry.cluster_host}/{image.repository}"
        tag_image(self.api, self.namespace, stream, tag, repository, image.digest)
        return image.digest

    def tag_pull_spec(self, stream: str, tag: str, repository: str, digest: str) -> str:
        """Point ``stream:tag`` at ``repository@digest`` in any registry (even one that is down)."""
        tag_image(self.api, self.namespace, stream, tag, repository, digest)
        return digest

    def distinct_images(
        self,
        count: int,
        distro: Distro = "ubuntu2204",
        variant: Variant = "patched",
        *,
        registry: Registry | None = None,
    ) -> list[PushedImage]:
        """``count`` images of one fixture tree, each with its own file: distinct digests
        (pushed to the session registry unless another, maybe with basic auth, is given)."""
        target = registry or self.registry
        build = self.workdir / f"distinct-{distro}-{variant}-{target.port}"
        root = make_fixture_rootfs(build / "rootfs", distro, variant, workdir=build)
        marker = root / "etc/scapguard-e2e-id"
        images = []
        for index in range(count):
            marker.write_text(f"{self.namespace}-{index}\n", encoding="utf-8")
            images.append(
                build_and_push(
                    root,
                    target.host,
                    f"e2e/{self.namespace}",
                    f"n{index}",
                    workdir=build / "images",
                    creds=target.auth,
                )
            )
        shutil.rmtree(build, ignore_errors=True)
        return images

    def image_object(self, digest: str) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_cluster_custom_object(IMAGE_GROUP, IMAGE_VERSION, "images", digest),
        )

    # -- scans -----------------------------------------------------------------------

    def scans(self) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, "imagescans"
        )
        return cast(list[dict[str, Any]], cast(dict[str, Any], listed)["items"])

    def scan_for(self, digest: str, policy: str = "policy") -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, "imagescans",
                scan_name(digest, self.namespace, policy),
            ),
        )  # fmt: skip

    def scan(self, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.custom.get_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, "imagescans", name
            ),
        )

    def make_scan(self, name: str, image: str, policy: str = "policy") -> dict[str, Any]:
        """A hand-made ImageScan: any pull spec by digest, checked under ``policy``."""
        body = {
            "apiVersion": f"{c.GROUP}/{c.VERSION}",
            "kind": "ImageScan",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"image": image, "policy": policy},
        }
        return cast(
            dict[str, Any],
            self.custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, self.namespace, "imagescans", body
            ),
        )

    def annotate_scan(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, "imagescans", name,
            {"metadata": {"annotations": annotations}},
        )  # fmt: skip

    def annotate_policy(self, name: str, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, self.namespace, "scanpolicies", name,
            {"metadata": {"annotations": annotations}},
        )  # fmt: skip

    def wait_settled(self, name: str, timeout: float = 180, request: int = 1) -> dict[str, Any]:
        """Wait until ImageScan ``name`` has settled request ``request``; return it."""
        found: dict[str, Any] = {}

        def settled() -> bool:
            try:
                scan = self.scan(name)
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
            status = scan.get("status") or {}
            done = status.get("result") and status.get("resultRequest", 0) >= request
            if done and status.get("state") == "Completed":
                found.update(scan)
                return True
            return False

        wait_for(f"ImageScan {name} to settle request {request}", settled, timeout, 0.5)
        return found

    def wait_result(
        self, digest: str, policy: str = "policy", timeout: float = 180, request: int = 1
    ) -> dict[str, Any]:
        """Wait until the scan of ``digest`` has settled request ``request``; return it."""
        name = scan_name(digest, self.namespace, policy)
        return self.wait_settled(name, timeout, request)

    def scapguard(self, *args: str) -> bytes:
        """Run the ``scapguard`` CLI as an admin would; returns its stdout."""
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        proc = subprocess.run(
            [sys.executable, "-m", "scapguard.cli", "-n", self.namespace, *args],
            capture_output=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    def events_for(self, kind: str, name: str, namespace: str | None = None) -> list[str]:
        events = self.core.list_namespaced_event(
            namespace or self.namespace,
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
        )
        return [e.reason or "" for e in events.items]

    def wait_events(self, kind: str, name: str, *reasons: str, timeout: float = 30) -> list[str]:
        """Wait until the object has Events with all ``reasons``; return every reason seen.

        The operator posts an Event after the status write it reports, so a test that has just
        seen the status must wait for the Event.
        """
        seen: list[str] = []

        def arrived() -> bool:
            seen[:] = self.events_for(kind, name)
            return set(reasons) <= set(seen)

        wait_for(f"Events {reasons} on {kind} {name}", arrived, timeout, 0.2)
        return seen


@pytest.fixture
def e2e(
    admin_api: client.ApiClient,
    cluster: DevCluster,
    namespace: str,
    cluster_registry: Registry,
    cluster_images: FixtureImages,
    operator: ChartInstall,
    tmp_path: Path,
) -> E2E:
    assert operator.ready(), operator.logs()[-3000:]
    return E2E(admin_api, cluster, namespace, cluster_registry, cluster_images, tmp_path)
