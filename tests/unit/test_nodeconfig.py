"""The real node's configuration files, without a node."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from scapguard_dev import nodeconfig
from scapguard_dev.forward import forward_argv
from scapguard_dev.netns import NODE_IP, POD_CIDR, POD_GATEWAY, NetworkNamespace
from scapguard_dev.nodeconfig import NodeLayout

LAYOUT = NodeLayout(Path("/w/node"), "n1", "/sg-test")
CRI = "io.containerd.cri.v1.runtime"
IMAGES = "io.containerd.cri.v1.images"


def test_containerd_config_is_valid_toml_with_the_settings_this_machine_needs() -> None:
    text = nodeconfig.containerd_config(LAYOUT, Path("/bin/runc"), "127.0.0.1:5000/pause@sha256:x")
    config = tomllib.loads(text)
    assert config["version"] == 3
    assert config["grpc"]["address"] == "/w/node/containerd/containerd.sock"
    runtime = config["plugins"][CRI]
    # Without CAP_SYS_RESOURCE every sandbox fails unless oom_score_adj is restricted.
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"] == {"BinaryName": "/bin/runc", "SystemdCgroup": False}
    assert runtime["cni"]["conf_dir"] == "/w/node/cni/net.d"
    images = config["plugins"][IMAGES]
    assert images["pinned_images"]["sandbox"] == "127.0.0.1:5000/pause@sha256:x"
    assert images["registry"]["config_path"] == "/w/node/containerd/certs.d"


def test_registry_hosts_toml_pulls_over_plain_http() -> None:
    hosts = tomllib.loads(nodeconfig.registry_hosts_toml("10.213.0.1:5000"))
    assert hosts["server"] == "http://10.213.0.1:5000"
    assert hosts["host"]["http://10.213.0.1:5000"]["capabilities"] == ["pull", "resolve"]


def test_pod_network_sits_on_the_node_bridge_with_the_gateway_in_the_pod_cidr() -> None:
    conflist = nodeconfig.cni_conflist(LAYOUT)
    bridge = conflist["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["isGateway"] is True
    assert bridge["ipMasq"] is False  # no address translation towards any outside network
    assert bridge["ipam"]["ranges"] == [[{"subnet": POD_CIDR}]]
    assert bridge["ipam"]["dataDir"] == "/w/node/cni/ipam"
    cidr = ipaddress.ip_network(POD_CIDR)
    assert ipaddress.ip_address(POD_GATEWAY) in cidr
    assert ipaddress.ip_address(NODE_IP) not in cidr


def test_kubelet_config_for_cgroup_v1_without_cap_sys_resource() -> None:
    config = nodeconfig.kubelet_config(LAYOUT, Path("/ca.crt"), (Path("/k.crt"), Path("/k.key")))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["failSwapOn"] is False
    assert config["cgroupRoot"] == "/sg-test"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["address"] == NODE_IP
    assert config["containerRuntimeEndpoint"] == "unix:///w/node/containerd/containerd.sock"
    assert config["clusterDNS"] == [nodeconfig.DNS_SERVICE_IP]


def test_kube_proxy_leaves_host_wide_conntrack_settings_alone() -> None:
    config = nodeconfig.kube_proxy_config(Path("/kp.kubeconfig"), "n1")
    assert config["mode"] == "iptables"
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"


def test_corefile_answers_the_cluster_zone_from_the_api_and_nothing_else() -> None:
    text = nodeconfig.corefile(Path("/dns.kubeconfig"), "ctx")
    cluster_block, rest = text.split("\n.:53 {", 1)
    assert cluster_block.startswith("cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {")
    assert "kubeconfig /dns.kubeconfig ctx" in cluster_block
    assert "forward" not in text  # no upstream resolver
    assert "rcode NXDOMAIN" in rest
    assert text.count(f"bind {NODE_IP}") == 2


def test_forward_listens_on_host_loopback_only() -> None:
    inside, host = forward_argv(NetworkNamespace("sg-x"), 6443, Path("/w/fwd"))
    assert inside[:3] == ["nsenter", "--net=/run/netns/sg-x", "--"]
    assert inside[-1] == "TCP4:127.0.0.1:6443"
    assert "TCP4-LISTEN:6443,bind=127.0.0.1,fork,reuseaddr" in host
    assert host[:2] == ["setpriv", "--pdeathsig=TERM"]  # dies with its owner
    assert host[-1] == "UNIX-CONNECT:/w/fwd/6443.sock"
