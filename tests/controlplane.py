"""A control plane without a node, for one test module.

A module that imports both fixtures (``from tests.controlplane import control_plane,
control_plane_api``) runs its tests on a control plane of its own, where the API server can
call webhooks served on the host's 127.0.0.1 (the session's real-node cluster runs its API
server inside the node's network namespace). Pods stay Pending there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from scapguard_dev.cluster import DevCluster
from tests.conftest import admin_client, started


@pytest.fixture(scope="module", name="cluster")
def control_plane() -> Iterator[DevCluster]:
    """This module's control plane, without a node (Pods stay Pending)."""
    with started() as dev:
        yield dev


@pytest.fixture(scope="module", name="admin_api")
def control_plane_api(cluster: DevCluster) -> Iterator[client.ApiClient]:
    with admin_client(cluster) as api:
        yield api
