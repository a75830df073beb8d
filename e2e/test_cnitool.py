"""CNI 1.1 STATUS and GC through libcni (``cnitool`` v1.3.1), Kubernetes datastore.

``cnitool`` runs a conflist (macvlan + whereabouts, cniVersion 1.1.0) from NETCONFPATH
in a node's netns and caches each attachment's result the way container runtimes do.

Two facts of the reference components shape the GC test:

* ``cnitool gc`` calls ``GCNetworkList`` with no arguments: libcni DELs every cached
  attachment of the network and sends GC without ``cni.dev/valid-attachments``.
* macvlan v1.9.1 does not implement GC (``/* FIXME GC */``), so a GC sent to the
  chain never reaches its IPAM. Runtimes that pass valid attachments (containerd) reach
  whereabouts only through a main plugin that delegates GC to IPAM, so the test sends
  the GC request to whereabouts itself, built exactly as libcni builds it (the plugin's
  config plus ``name``, ``cniVersion`` and ``cni.dev/valid-attachments``).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from e2e import netns
from e2e.harness import cnitool_container_id, merge_node_ipam, run_cnitool
from e2e.localcluster import LocalCluster, ToolPaths
from e2e.scenarios import (
    KubernetesDatastore,
    offset,
    pool_name,
    relayed_nodes,
    reservation_name,
)

pytestmark = pytest.mark.e2e

NETWORK = "gcnet"
CIDR = "10.40.0.0/24"


@pytest.fixture(scope="module")
def topology(
    netns_factory: Callable[[], netns.Topology], local_cluster: LocalCluster
) -> Iterator[netns.Topology]:
    with relayed_nodes(netns_factory(), 2, local_cluster.apiserver_port) as topo:
        yield topo


@pytest.fixture(scope="module")
def kube(
    local_cluster: LocalCluster,
    e2e_tools: ToolPaths,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KubernetesDatastore]:
    store = KubernetesDatastore(
        local_cluster, e2e_tools, f"wa-cnitool-{secrets.token_hex(3)}",
        tmp_path_factory.mktemp("kube"),
    ).install()
    yield store
    store.uninstall()


class Runtime:
    """A container runtime on one node, driving libcni through cnitool."""

    def __init__(
        self,
        node: str,
        workdir: Path,
        bin_dir: Path,
        cnitool: Path,
        plugin: Dict[str, Any],
    ) -> None:
        self.node = node
        self.bin_dir = bin_dir
        self.cnitool = cnitool
        self.plugin = plugin
        self.net_d = workdir / "net.d"
        self.state = workdir / "var-lib"
        self.net_d.mkdir(parents=True, exist_ok=True)
        self.conflist = {"cniVersion": "1.1.0", "name": NETWORK, "plugins": [plugin]}
        (self.net_d / f"10-{NETWORK}.conflist").write_text(json.dumps(self.conflist))

    def run(
        self, *args: str, pod: Optional[str] = None, podref: str = ""
    ) -> netns.CniResult:
        env = {"CNI_IFNAME": "net1"}
        if podref:
            namespace, name = podref.split("/")
            env["CNI_ARGS"] = (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
            )
        target = netns.netns_path(pod) if pod else "/var/run/netns/none"
        return run_cnitool(
            [*args, NETWORK, target], self.node, self.net_d, cni_path=[self.bin_dir],
            cnitool=self.cnitool, state_dir=self.state, env=env,
        )

    def cache_entry(self, pod: str) -> Path:
        cid = cnitool_container_id(netns.netns_path(pod))
        return self.state / "cni" / "results" / f"{NETWORK}-{cid}-net1"

    def plugin_conf(self) -> Dict[str, Any]:
        """The plugin's config as libcni hands it to a plugin for STATUS and GC."""
        return {**self.plugin, "name": NETWORK, "cniVersion": "1.1.0"}


@pytest.fixture(scope="module")
def runtimes(
    topology: netns.Topology,
    kube: KubernetesDatastore,
    bin_dir: Path,
    e2e_tools: ToolPaths,
    tmp_path_factory: pytest.TempPathFactory,
) -> List[Runtime]:
    found = []
    for node in topology.nodes:
        ipam = merge_node_ipam({"type": "whereabouts", "range": CIDR}, kube.node_ipam(node))
        plugin = {"type": "macvlan", "master": netns.NODE_IFNAME, "mode": "bridge", "ipam": ipam}
        found.append(
            Runtime(node, tmp_path_factory.mktemp("runtime"), bin_dir, e2e_tools.cnitool, plugin)
        )
    return found


def run_direct(
    runtime: Runtime, command: str, conf: Dict[str, Any], plugin: Optional[str] = None
) -> netns.CniResult:
    """Exec one plugin with a libcni-built config and no container (STATUS, GC)."""
    return netns.run_cni(
        plugin or conf["type"], command, conf, runtime.node, cni_path=[runtime.bin_dir],
        timeout=150,
    )


# ---------------------------------------------------------------- STATUS


def test_status_succeeds_while_the_api_server_answers_and_reports_50_when_it_is_down(
    runtimes: List[Runtime], topology: netns.Topology, local_cluster: LocalCluster
) -> None:
    runtime = runtimes[0]
    pod = topology.add_pod("status")

    up = runtime.run("status", pod=pod)
    assert up.rc == 0, up

    local_cluster.stop_apiserver()
    try:
        down = runtime.run("status", pod=pod)
        # macvlan relays its IPAM's STATUS error; the runtime sees the plugin's code.
        direct = run_direct(runtime, "STATUS", runtime.plugin_conf())
    finally:
        local_cluster.start_apiserver()

    assert down.rc != 0, "cnitool status must fail while the datastore is unreachable"
    assert "not available" in down.stderr or "unreachable" in down.stderr.lower() or (
        "reach" in down.stderr
    ), down.stderr
    assert direct.rc == 1 and isinstance(direct.output, dict), direct
    assert direct.output["code"] == 50, direct.output
    assert runtime.run("status", pod=pod).rc == 0, "STATUS must recover with the API server"


# ---------------------------------------------------------------- GC


def test_gc_frees_only_this_nodes_allocations_the_runtime_no_longer_knows(
    runtimes: List[Runtime], topology: netns.Topology, kube: KubernetesDatastore
) -> None:
    here, there = runtimes
    pods = {name: topology.add_pod(f"gc-{name}") for name in ("a", "b", "c", "remote")}
    podrefs = {name: f"gc-pods/{name}" for name in pods}
    added: Dict[str, str] = {}
    for name in ("a", "b", "c"):
        result = here.run("add", pod=pods[name], podref=podrefs[name])
        assert result.rc == 0, result
        added[name] = result.output["ips"][0]["address"].split("/")[0]
    remote = there.run("add", pod=pods["remote"], podref=podrefs["remote"])
    assert remote.rc == 0, remote
    added["remote"] = remote.output["ips"][0]["address"].split("/")[0]
    assert len(set(added.values())) == 4

    def entries() -> Dict[str, Dict[str, Any]]:
        return kube.allocations(pool_name(CIDR))

    before = entries()
    for name, ip in added.items():
        entry = before[str(offset(ip, CIDR))]
        runtime = there if name == "remote" else here
        assert entry["id"] == cnitool_container_id(netns.netns_path(pods[name]))
        assert entry["node"] == runtime.node
        assert entry["podref"] == podrefs[name]

    # The runtime loses its record of "c" (its cache entry), so "c" is no longer a
    # valid attachment; "a" and "b" are.
    here.cache_entry(pods["c"]).unlink()
    valid = [
        {"containerID": cnitool_container_id(netns.netns_path(pods[n])), "ifname": "net1"}
        for n in ("a", "b")
    ]
    gc_conf = {
        **here.plugin_conf(),
        "cni.dev/valid-attachments": valid,
        "cni.dev/attachments": valid,
    }
    gc = run_direct(here, "GC", gc_conf, plugin="whereabouts")
    assert gc.rc == 0, gc

    after = entries()
    assert str(offset(added["c"], CIDR)) not in after, "GC must free the stale attachment"
    for name in ("a", "b", "remote"):
        assert after[str(offset(added[name], CIDR))] == before[str(offset(added[name], CIDR))]
    reservations = kube.reservations()
    assert reservation_name(added["c"]) not in reservations
    assert reservation_name(added["remote"]) in reservations

    # cnitool gc passes no valid attachments: libcni DELs every attachment it cached
    # on this node ("a", "b"); another node's allocation is never touched.
    swept = here.run("gc", pod=pods["a"])
    assert swept.rc == 0, swept
    final = entries()
    assert set(final) == {str(offset(added["remote"], CIDR))}, final
    for name in ("a", "b"):
        assert not netns.link_exists(pods[name], "net1")
    assert netns.link_exists(pods["remote"], "net1")

    gone = there.run("del", pod=pods["remote"], podref=podrefs["remote"])
    assert gone.rc == 0, gone
    assert entries() == {}
