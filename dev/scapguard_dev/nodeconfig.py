"""The real node's configuration files, as pure functions of a ``NodeLayout``.

containerd 2 (config version 3, runc as the default runtime, CNI from Debian's
containernetworking-plugins, registries by ``hosts.toml``), the kubelet (cgroupfs on cgroup v1,
x509 and webhook auth), kube-proxy (iptables, leaving host-wide conntrack sysctls alone), the CNI
bridge network and CoreDNS. ``scapguard_dev.node`` writes them and starts the processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapguard_dev.netns import BRIDGE, NODE_IP, POD_CIDR

CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.0.0.10"
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_PORT = 10250
COREDNS_READY_PORT = 8181
COREDNS_HEALTH_PORT = 8180


@dataclass(frozen=True)
class NodeLayout:
    """Where one node keeps its state (everything under ``root``) and what it is called."""

    root: Path
    node_name: str
    #: The cgroup parent of every pod (one per node, so two local clusters never share one).
    cgroup_root: str

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def registry_hosts_dir(self) -> Path:
        return self.containerd_dir / "certs.d"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def pod_logs_dir(self) -> Path:
        return self.root / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.yaml"

    @property
    def corefile(self) -> Path:
        return self.root / "Corefile"


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def containerd_config(layout: NodeLayout, runc: Path, sandbox_image: str) -> str:
    """containerd's config.toml (version 3).

    ``restrict_oom_score_adj``: without CAP_SYS_RESOURCE runc cannot lower a sandbox's
    oom_score_adj below containerd's own, and every sandbox fails. Pod network namespaces are
    mounted under containerd's state directory, so stopping the node finds them all there.
    """
    d = layout.containerd_dir
    cri = "plugins.'io.containerd.cri.v1.runtime'"
    images = "plugins.'io.containerd.cri.v1.images'"
    return f"""version = 3
root = {_toml_str(d / "root")}
state = {_toml_str(d / "state")}

[grpc]
  address = {_toml_str(layout.containerd_socket)}

[ttrpc]
  address = {_toml_str(d / "containerd.sock.ttrpc")}

[{cri}]
  enable_selinux = false
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = {_toml_str(runc)}
  SystemdCgroup = false

[{cri}.cni]
  bin_dirs = [{_toml_str(CNI_BIN_DIR)}]
  conf_dir = {_toml_str(layout.cni_conf_dir)}
  max_conf_num = 1

[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = {_toml_str(sandbox_image)}

[{images}.registry]
  config_path = {_toml_str(layout.registry_hosts_dir)}

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def registry_hosts_toml(host: str) -> str:
    """A ``certs.d/HOST/hosts.toml`` that pulls from a plain-HTTP registry at ``host``."""
    return f"""server = {_toml_str("http://" + host)}

[host.{_toml_str("http://" + host)}]
  capabilities = ["pull", "resolve"]
"""


def cni_network() -> dict[str, Any]:
    """The pod network: the bridge that holds the node address, host-local addresses."""
    return {
        "cniVersion": "1.0.0",
        "name": "scapguard",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    # Services (kube-proxy's DNAT) and the node are reached through the gateway;
                    # the node's namespace has no route beyond itself.
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cni_conflist(layout: NodeLayout) -> dict[str, Any]:
    """``cni_network()`` with host-local's data kept under the node's root."""
    network = cni_network()
    network["plugins"][0]["ipam"]["dataDir"] = str(layout.cni_ipam_dir)
    return network


def kubelet_config(layout: NodeLayout, ca: Path, serving: tuple[Path, Path]) -> dict[str, Any]:
    """KubeletConfiguration for a cgroup v1 machine without CAP_SYS_RESOURCE."""
    cert, key = serving
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": layout.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "resolvConf": str(layout.resolv_conf),
        "podLogsDir": str(layout.pod_logs_dir),
        "registerNode": True,
        "serializeImagePulls": False,
        # Test machines are small and busy; evict only when really out of room.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "imageGCHighThresholdPercent": 98,
        "imageGCLowThresholdPercent": 95,
        "staticPodPath": "",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "nodeStatusReportFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, node_name: str) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables inside the node's namespace.

    The conntrack table size and timeouts are host-wide sysctls (read-only in a network
    namespace): zero leaves them as they are.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def corefile(kubeconfig: Path, context: str) -> str:
    """CoreDNS: cluster names from the API; every other name NXDOMAIN (no upstream exists)."""
    zones = f"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53"
    return f"""{zones} {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{COREDNS_READY_PORT}
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    cache 30
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        ttl 30
    }}
}}
.:53 {{
    bind {NODE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


#: RBAC for CoreDNS's kubernetes plugin (the rules of CoreDNS's own deployment manifests).
COREDNS_USER = "system:scapguard-dev:coredns"
COREDNS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["list", "watch"]},
]  # fmt: skip
