"""Shared fixtures: the local control plane (one per test session) and a namespace per test."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from kubernetes import client

from scapguard_dev.cluster import DevCluster
from scapguard_dev.fixtureimages import FixtureImages
from scapguard_dev.node import remove_tree
from scapguard_dev.registry import Registry


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, ``kill``) stops the run like Ctrl-C: the session's teardown still
    stops the control plane, the operator and the registry instead of leaving them running."""
    signal.signal(signal.SIGTERM, _interrupted)


@contextlib.contextmanager
def started(**kwargs: Any) -> Iterator[DevCluster]:
    """A local cluster in a fresh work directory, stopped and removed afterwards."""
    # Not under pytest's 0700 tmp: non-root pod processes must reach their pod dirs.
    workdir = Path(tempfile.mkdtemp(prefix="scapguard-dev-"))
    workdir.chmod(0o755)
    dev = DevCluster(workdir, **kwargs)
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        remove_tree(workdir)


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster]:
    """A real single-node cluster shared by the session (tests/cluster and the e2e suite,
    where scapguard runs installed with Helm); started on first use."""
    with started(real_node=True) as dev:
        yield dev


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[DevCluster]:
    """A real single-node cluster (kubelet, containerd, CNI, kube-proxy, CoreDNS) in its own
    network namespace, with its registry; one per test module (for its own install)."""
    with started(real_node=True) as dev:
        yield dev


@contextlib.contextmanager
def admin_client(dev: DevCluster) -> Iterator[client.ApiClient]:
    """An API client with the cluster's admin credentials, closed afterwards."""
    api = client.ApiClient(configuration=dev.admin_configuration())
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def admin_api(cluster: DevCluster) -> Iterator[client.ApiClient]:
    with admin_client(cluster) as api:
        yield api


@pytest.fixture
def namespace(admin_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(admin_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 (plain HTTP), storage in a session temp dir."""
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def fixture_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> FixtureImages:
    """Fixture images built on first use and pushed once per session to ``registry``.

    The debootstrap layer is cached across sessions under ~/.cache/scapguard.
    """
    return FixtureImages(registry.host, tmp_path_factory.mktemp("fixture-images"))
