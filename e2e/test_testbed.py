"""Proves the real-component test bed works (cluster, RBAC, netns + reference CNI plugins)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from e2e import netns
from e2e.localcluster import LocalCluster, read_versions

pytestmark = pytest.mark.e2e

VERSIONS = read_versions()
SUBNET = "10.200.0.0/24"


# ---------------------------------------------------------------- control plane


def test_cluster_is_ready_and_reports_pinned_version(local_cluster: LocalCluster) -> None:
    status, _ = local_cluster.api("GET", "/readyz")
    assert status == 200
    status, version = local_cluster.api("GET", "/version")
    assert status == 200
    assert version["gitVersion"] == VERSIONS["K8S_VERSION"]


def test_kubectl_as_admin_lists_namespaces(local_cluster: LocalCluster) -> None:
    out = local_cluster.kubectl("get", "ns", "-o", "json").stdout
    names = {item["metadata"]["name"] for item in json.loads(out)["items"]}
    assert {"default", "kube-system"} <= names


def test_rbac_denies_fresh_service_account_until_granted(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.create_namespace("rbac-check")
    local_cluster.create_service_account("rbac-check", "probe")
    kubeconfig = local_cluster.create_service_account_kubeconfig(
        "rbac-check", "probe", tmp_path / "sa.kubeconfig"
    )

    denied = local_cluster.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert "system:serviceaccount:rbac-check:probe" in denied.stderr

    local_cluster.kubectl(
        "-n", "rbac-check", "create", "role", "pod-reader", "--verb=list", "--resource=pods"
    )
    local_cluster.kubectl(
        "-n",
        "rbac-check",
        "create",
        "rolebinding",
        "probe-reads",
        "--role=pod-reader",
        "--serviceaccount=rbac-check:probe",
    )
    allowed = local_cluster.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert allowed.returncode == 0, allowed.stderr
    # The context namespace is the ServiceAccount's; other namespaces stay forbidden.
    assert (
        local_cluster.kubectl(
            "-n", "default", "get", "pods", kubeconfig=kubeconfig, check=False
        ).returncode
        != 0
    )


def test_etcd_v3_json_gateway(local_cluster: LocalCluster) -> None:
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(local_cluster.etcd_endpoint)

    def post(path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
        conn.request("POST", path, json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return dict(json.loads(resp.read()))

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    post("/v3/kv/put", {"key": b64("/testbed/k"), "value": b64("v")})
    got = post("/v3/kv/range", {"key": b64("/testbed/k")})
    assert base64.b64decode(got["kvs"][0]["value"]) == b"v"


def test_restarts_keep_data(local_cluster: LocalCluster) -> None:
    local_cluster.kubectl("-n", "default", "create", "configmap", "survivor", "--from-literal=k=v")
    local_cluster.restart_etcd()
    local_cluster.restart_apiserver()
    out = local_cluster.kubectl(
        "-n", "default", "get", "configmap", "survivor", "-o", "json"
    ).stdout
    assert json.loads(out)["data"] == {"k": "v"}


def test_helm_is_pinned_v3_and_reaches_the_cluster(
    helm_bin: Path, local_cluster: LocalCluster
) -> None:
    def helm(*args: str) -> str:
        cmd = [str(helm_bin), f"--kubeconfig={local_cluster.kubeconfig}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    assert helm("version", "--short").startswith(VERSIONS["HELM_VERSION"])
    # Reaching the cluster: listing releases works (other modules may have installed some).
    assert isinstance(json.loads(helm("list", "-A", "-o", "json")), list)


# ---------------------------------------------------------------- CNI in network namespaces


def macvlan_conf(data_dir: Path, range_start: str, range_end: str) -> Dict[str, Any]:
    # host-local keeps state on the (not namespaced) filesystem: give it the test's dir.
    ipam_range = {"subnet": SUBNET, "rangeStart": range_start, "rangeEnd": range_end}
    return {
        "cniVersion": "1.1.0",
        "name": "testbed-macvlan",
        "type": "macvlan",
        "master": netns.NODE_IFNAME,
        "mode": "bridge",
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[ipam_range]]},
    }


def reserved_ips(data_dir: Path, network: str) -> List[str]:
    return [p.name for p in (data_dir / network).iterdir() if p.name[0].isdigit()]


def test_macvlan_host_local_pods_on_two_nodes_ping_and_del_cleans_up(
    netns_factory: Callable[[], netns.Topology], cni_bin_dir: Path, tmp_path: Path
) -> None:
    with netns_factory() as topo:
        nodes = [topo.add_node(), topo.add_node()]
        pods = [topo.add_pod("a"), topo.add_pod("b")]
        data_dirs = [tmp_path / "ipam-0", tmp_path / "ipam-1"]
        confs = [
            macvlan_conf(data_dirs[0], "10.200.0.10", "10.200.0.19"),
            macvlan_conf(data_dirs[1], "10.200.0.20", "10.200.0.29"),
        ]

        def cni(i: int, command: str) -> netns.CniResult:
            return netns.run_cni(
                "macvlan", command, confs[i], nodes[i], pods[i],
                container_id=f"ctr-{i}", ifname="net1", cni_path=[cni_bin_dir],
            )  # fmt: skip

        try:
            addrs = []
            for i in range(2):
                rc, result, stderr = cni(i, "ADD")
                assert rc == 0, (result, stderr)
                assert result["cniVersion"] == "1.1.0"
                assert netns.ip_addrs(pods[i], "net1") == [result["ips"][0]["address"]]
                addrs.append(result["ips"][0]["address"].split("/")[0])
            assert addrs == ["10.200.0.10", "10.200.0.20"]
            assert netns.ping(pods[0], addrs[1])
            assert netns.ping(pods[1], addrs[0])
        finally:
            # Always DEL, even after a failed ADD: plugins may leave links behind.
            dels = [cni(i, "DEL") for i in range(2)]
        assert [d.rc for d in dels] == [0, 0], dels
        for i in range(2):
            assert not netns.link_exists(pods[i], "net1")
            assert reserved_ips(data_dirs[i], "testbed-macvlan") == []
    assert not netns.list_netns(topo.prefix)


def test_plugins_and_cnitool_speak_cni_1_1(
    netns_factory: Callable[[], netns.Topology], cni_bin_dir: Path, tmp_path: Path
) -> None:
    with netns_factory() as topo:
        node = topo.add_node()
        rc, version, stderr = netns.run_cni(
            "host-local", "VERSION", {"cniVersion": "1.1.0"}, node, cni_path=[cni_bin_dir]
        )
        assert rc == 0, stderr
        assert "1.1.0" in version["supportedVersions"]

        plugin = macvlan_conf(tmp_path / "ipam", "10.200.0.50", "10.200.0.59")
        del plugin["cniVersion"], plugin["name"]
        net_d = tmp_path / "net.d"
        net_d.mkdir()
        conflist = {"cniVersion": "1.1.0", "name": "testbed-gc", "plugins": [plugin]}
        (net_d / "10-gc.conflist").write_text(json.dumps(conflist))
        pod = topo.add_pod("gc")

        def cnitool(*args: str) -> netns.CniResult:
            result = netns.run_cnitool(
                args, node, net_d, cni_path=[cni_bin_dir], cnitool=cni_bin_dir / "cnitool",
                state_dir=tmp_path / "var-lib",
            )  # fmt: skip
            assert result.rc == 0, result
            return result

        added = cnitool("add", "testbed-gc", netns.netns_path(pod))
        assert added.output["ips"][0]["address"] == "10.200.0.50/24"
        assert netns.link_exists(pod, "eth0")
        cnitool("status", "testbed-gc", netns.netns_path(pod))
        # cnitool passes no valid attachments: GC deletes the cached attachment, freeing its IP.
        cnitool("gc", "testbed-gc", netns.netns_path(pod))
        assert not netns.link_exists(pod, "eth0")
        assert reserved_ips(tmp_path / "ipam", "testbed-gc") == []
