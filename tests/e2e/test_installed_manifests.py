"""The documented manifest install on the real node: ``kubectl apply -f deploy/crds -f
deploy/rbac -f deploy/operator.yaml -f deploy/admission`` with this build's images, then a
vulnerable image is scanned, denied and refused."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client as kube_client

from scapguard_dev.cli import DEMO_PRIORITIES, demo_policy
from scapguard_dev.cluster import DevCluster, wait_for
from scapguard_dev.fixtureimages import webapp_images
from scapguard_dev.helminstall import ChartInstall, install_scapguard
from scapguard_dev.imagestreams import tag_image
from scapguard_dev.ovalgen import ubuntu_oval

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAMESPACE = "manifests"


@pytest.fixture(scope="module")
def applied(real_cluster: DevCluster) -> Iterator[ChartInstall]:
    release = install_scapguard(real_cluster, method="kubectl", replicas="1")
    yield release
    log = release.logs()
    release.uninstall()
    assert "Traceback" not in log, log[-5000:]


def test_kubectl_apply_of_deploy_scans_denies_and_refuses(
    real_cluster: DevCluster, applied: ChartInstall
) -> None:
    cluster = real_cluster
    registry = cluster.registry
    assert registry is not None
    (pod,) = applied.operator_pods()
    assert pod["spec"]["containers"][0]["image"] == applied.operator_image.by_digest
    vulnerable = webapp_images(cluster.workdir / "webapp", registry)["vulnerable"]
    assert cluster.kubectl("create", "namespace", NAMESPACE).returncode == 0
    feed_file = cluster.workdir / "feed.xml"
    feed_file.write_text(ubuntu_oval(DEMO_PRIORITIES)[0])
    made = cluster.kubectl("-n", NAMESPACE, "create", "configmap", "oval-feed",
                           f"--from-file=ubuntu-jammy.oval.xml={feed_file}")  # fmt: skip
    assert made.returncode == 0, made.stderr
    policy = json.dumps(demo_policy(registry, NAMESPACE))
    assert cluster.kubectl("apply", "-f", "-", input_text=policy).returncode == 0
    api = kube_client.ApiClient(cluster.admin_configuration())
    try:
        tag_image(api, NAMESPACE, "webapp", "1.0", f"{registry.cluster_host}/webapp",
                  vulnerable.digest)  # fmt: skip
    finally:
        api.close()

    def denied() -> bool:
        out = cluster.kubectl("get", "images.image.openshift.io", vulnerable.digest, "-o",
                              "jsonpath={.metadata.annotations.images\\.openshift\\.io/"
                              "deny-execution}")  # fmt: skip
        return out.stdout == "true"

    wait_for("the vulnerable image denied", denied, 300, 1.0)
    refused = cluster.kubectl(
        "-n", NAMESPACE, "run", "webapp", f"--image={vulnerable.by_digest}", "--restart=Never",
        "--command", "--", "/bin/true",
    )  # fmt: skip
    assert refused.returncode != 0
    assert 'admission webhook "pod-images.scapguard.io" denied the request' in refused.stderr
