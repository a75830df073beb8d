"""whereabouts.pyz as the IPAM of real CNI plugins, with the Kubernetes datastore.

The plugin runs exactly as on a node: kubelet + Multus (``e2e/harness.py``) exec the
reference ``macvlan`` or ``bridge`` plugin in a node's network namespace, which execs
``whereabouts``; the plugin talks to a real kube-apiserver (RBAC on) with a
TokenRequest kubeconfig of the chart's ServiceAccount and only the chart's Role.

Three nodes; the second is installed the way the installer does it (flat file and
``nodename`` in ``whereabouts.d``), the others get kubeconfig and node name in the
netconf. Every test uses its own ranges, so pools never carry over between tests.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from e2e import netns
from e2e.harness import CniCall, Harness, Pod, ensure_nad_crd, poll
from e2e.localcluster import LocalCluster, ToolPaths
from e2e.scenarios import (
    IPPOOLS,
    KubernetesDatastore,
    assert_interface_has,
    assert_no_duplicates,
    assert_recorded,
    assert_released,
    bridge,
    checked_cleanup,
    concurrent_adds,
    delete_all,
    in_range,
    link_mac,
    macvlan,
    offset,
    pool_name,
    relayed_nodes,
    reservation_name,
)

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def topology(
    netns_factory: Callable[[], netns.Topology], local_cluster: LocalCluster
) -> Iterator[netns.Topology]:
    """Three nodes; each sees the API server at the host's 127.0.0.1:<port>."""
    with relayed_nodes(netns_factory(), 3, local_cluster.apiserver_port) as topo:
        yield topo


@pytest.fixture(scope="module")
def kube(
    local_cluster: LocalCluster,
    e2e_tools: ToolPaths,
    topology: netns.Topology,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KubernetesDatastore]:
    store = KubernetesDatastore(
        local_cluster,
        e2e_tools,
        f"wa-kube-{secrets.token_hex(3)}",
        tmp_path_factory.mktemp("kube"),
        flat_file_nodes=[topology.nodes[1]],
    ).install()
    yield store
    store.uninstall()


@pytest.fixture(scope="module")
def pods_namespace(local_cluster: LocalCluster) -> Iterator[str]:
    name = f"wa-pods-{secrets.token_hex(3)}"
    local_cluster.create_namespace(name)
    yield name
    # Nothing finalizes a namespace without kube-controller-manager; the objects in it
    # are deleted by the harness, the namespace is marked for deletion.
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def harness(
    local_cluster: LocalCluster,
    topology: netns.Topology,
    bin_dir: Path,
    kube: KubernetesDatastore,
    pods_namespace: str,
) -> Iterator[Harness]:
    h = Harness(
        topology, [bin_dir], kube.node_ipam, cluster=local_cluster, namespace=pods_namespace
    )
    ensure_nad_crd(local_cluster, h.api)  # type: ignore[arg-type]
    with checked_cleanup(h):
        yield h


def nodes(topology: netns.Topology) -> List[str]:
    return list(topology.nodes)


# ---------------------------------------------------------------- RBAC


def test_plugin_runs_with_only_the_charts_least_privilege_role(
    kube: KubernetesDatastore,
) -> None:
    assert kube.rbac_kinds == ["Role", "RoleBinding", "ServiceAccount"], kube.rbac_source
    allowed = {
        (verb, resource)
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
        for resource in (IPPOOLS, "overlappingrangeipreservations.whereabouts.cni.cncf.io")
        if kube.can_i(verb, resource)
    }
    assert allowed == {
        ("get", IPPOOLS),
        ("create", IPPOOLS),
        ("update", IPPOOLS),
        ("get", "overlappingrangeipreservations.whereabouts.cni.cncf.io"),
        ("create", "overlappingrangeipreservations.whereabouts.cni.cncf.io"),
        ("delete", "overlappingrangeipreservations.whereabouts.cni.cncf.io"),
    }
    assert not kube.can_i("get", "pods")
    assert not kube.can_i("get", IPPOOLS, namespace="default")


# ---------------------------------------------------------------- 1. one pod


def test_one_pod_add_check_del_through_macvlan(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.21.0.0/24"
    net = harness.create_network("single", macvlan("single", {"range": cidr}))
    node = topology.nodes[0]

    pod = harness.add_pod("single", node, [net])

    # The result, and the address really on the pod's interface.
    result = pod.attachment().result
    assert result["cniVersion"] == "1.0.0"
    assert [ip["address"] for ip in result["ips"]] == ["10.21.0.1/24"]
    assert netns.ip_addrs(pod.netns, "net1") == ["10.21.0.1/24"]
    # The IPPool as an operator sees it: the entry at the decimal offset of the address.
    pools = kube.pool_objects()
    spec = pools[pool_name(cidr)]["spec"]
    assert spec["range"] == cidr
    assert spec["allocations"] == {
        "1": {"id": pod.container_id, "podref": pod.podref, "ifname": "net1", "node": node}
    }
    reservation = kube.reservations()[reservation_name("10.21.0.1")]
    assert (reservation["podref"], reservation["ifname"]) == (pod.podref, "net1")
    # What Multus and kubelet recorded on the Pod.
    assert harness.network_status(pod) == [
        {
            "name": net.ref,
            "interface": "net1",
            "ips": ["10.21.0.1"],
            "mac": link_mac(pod.netns, "net1"),
            "dns": {},
        }
    ]
    assert harness.pod_object(pod)["status"]["phase"] == "Running"

    checks = harness.check_pod(pod)
    assert all(c.ok for c in checks), [c.describe() for c in checks]

    harness.del_networks(pod)
    assert not netns.link_exists(pod.netns, "net1")
    assert kube.pools()[pool_name(cidr)].get("allocations") in ({}, None)
    assert reservation_name("10.21.0.1") not in kube.reservations()

    # DEL again: nothing is held any more, and that is a success.
    again = harness.del_networks(pod)
    assert all(c.ok for c in again)
    harness.delete_pod(pod)


def test_check_fails_when_the_allocation_vanished_from_the_pool(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology,
    local_cluster: LocalCluster,
) -> None:
    cidr = "10.21.1.0/24"
    net = harness.create_network("vanish", macvlan("vanish", {"range": cidr}))
    pod = harness.add_pod("vanish", topology.nodes[0], [net])
    key = str(offset(pod.ip(), cidr))
    local_cluster.kubectl(
        "patch", IPPOOLS, pool_name(cidr), "-n", kube.namespace, "--type=json",
        "-p", json.dumps([{"op": "remove", "path": f"/spec/allocations/{key}"}]),
    )

    [check] = harness.check_pod(pod)

    assert not check.ok
    assert check.is_cni_error, check.describe()
    assert pod.ip() in check.msg or "no allocation" in check.msg, check.describe()


# ---------------------------------------------------------------- 2. many pods, many nodes


def test_pods_added_at_once_on_three_nodes_get_distinct_addresses_and_reach_each_other(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.22.0.0/24"
    net = harness.create_network("storm", macvlan("storm", {"range": cidr}))

    pods = concurrent_adds(
        harness, kube, net, cidr, nodes=nodes(topology), per_node=15, prefix="many", workers=12
    )

    assert len(pods) == 45
    assert {p.node for p in pods} == set(topology.nodes)
    for pod in (pods[0], pods[-1]):
        assert_interface_has(pod)
    first, last = pods[0], pods[-1]  # node 1 and node 3
    assert first.node != last.node
    assert netns.ping(first.netns, last.ip()), f"{first.podref} cannot reach {last.ip()}"
    assert netns.ping(last.netns, first.ip()), f"{last.podref} cannot reach {first.ip()}"

    delete_all(harness, kube, pods, cidr, workers=12)


# ---------------------------------------------------------------- 3. dual stack


def test_dual_stack_ip_ranges_put_both_families_on_the_interface(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    v4, v6 = "10.23.0.0/24", "fd23::/64"
    ipam = {"ipRanges": [{"range": v4}, {"range": v6}], "gateway": "10.23.0.254"}
    net = harness.create_network("dual", macvlan("dual", ipam))

    pod = harness.add_pod("dual", topology.nodes[0], [net])

    ips = pod.attachment().result["ips"]
    assert [ip["address"] for ip in ips] == ["10.23.0.1/24", "fd23::1/64"]
    assert ips[0].get("gateway") == "10.23.0.254"
    assert "gateway" not in ips[1], "the IPv4 gateway must not be given to the IPv6 address"
    assert set(netns.ip_addrs(pod.netns, "net1")) >= {"10.23.0.1/24", "fd23::1/64"}
    assert kube.allocations(pool_name(v4))["1"]["podref"] == pod.podref
    assert kube.allocations(pool_name(v6))["1"]["podref"] == pod.podref
    assert pool_name(v6) == "fd23---64"
    reservations = kube.reservations()
    assert {"10.23.0.1", "fd23--1"} <= set(reservations)
    assert harness.network_status(pod)[0]["ips"] == ["10.23.0.1", "fd23::1"]

    harness.delete_pod(pod)
    assert_released(kube, v4, ["10.23.0.1"])
    assert_released(kube, v6, ["fd23::1"])


# ---------------------------------------------------------------- 4. range bounds


def add_one_by_one(harness: Harness, node: str, net: Any, prefix: str, count: int) -> List[Pod]:
    return [harness.add_pod(f"{prefix}-{i}", node, [net], check=False) for i in range(count)]


def test_exclude_range_start_range_end_and_gateway_are_honoured_in_order(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.24.0.0/24"
    ipam = {
        "range": cidr,
        "range_start": "10.24.0.10",
        "range_end": "10.24.0.20",
        "exclude": ["10.24.0.12/31", "10.24.0.15"],
        "gateway": "10.24.0.16",
    }
    net = harness.create_network("bounds", macvlan("bounds", ipam))

    pods = add_one_by_one(harness, topology.nodes[0], net, "bounds", 8)

    given = [p.ip() for p in pods[:7]]
    assert given == [f"10.24.0.{i}" for i in (10, 11, 14, 17, 18, 19, 20)], [
        p.failure.describe() if p.failure else p.ip() for p in pods
    ]
    exhausted = pods[7].failure
    assert exhausted is not None and exhausted.code == 100, exhausted
    assert cidr in exhausted.msg, exhausted.describe()
    assert_recorded(kube, pods[:7], cidr)


def test_ipv4_addresses_ending_in_dot_zero_are_never_handed_out(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.24.2.0/23"
    ipam = {"range": cidr, "range_start": "10.24.2.253", "range_end": "10.24.3.2"}
    net = harness.create_network("dotzero", macvlan("dotzero", ipam))

    pods = add_one_by_one(harness, topology.nodes[0], net, "dotzero", 6)

    assert [p.ip() for p in pods[:5]] == [
        "10.24.2.253", "10.24.2.254", "10.24.2.255", "10.24.3.1", "10.24.3.2"
    ]
    assert pods[5].failure is not None and pods[5].failure.code == 100


# ---------------------------------------------------------------- 5. overlapping ranges


def test_overlapping_ranges_get_different_addresses_when_enabled(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    wide = harness.create_network(
        "ovl-wide",
        macvlan("ovl-wide", {"range": "10.25.0.0/16", "enable_overlapping_ranges": True}),
    )
    narrow = harness.create_network(
        "ovl-narrow",
        macvlan("ovl-narrow", {"range": "10.25.0.0/17", "enable_overlapping_ranges": True}),
    )

    a = harness.add_pod("ovl-a", topology.nodes[0], [wide])
    b = harness.add_pod("ovl-b", topology.nodes[1], [narrow])

    assert a.ip() == "10.25.0.1"
    assert b.ip() != a.ip() and in_range(b.ip(), "10.25.0.0/17")
    reservations = kube.reservations()
    assert reservations[reservation_name(a.ip())]["podref"] == a.podref
    assert reservations[reservation_name(b.ip())]["podref"] == b.podref


def test_overlapping_ranges_hand_out_the_same_address_when_disabled(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    wide = harness.create_network(
        "novl-wide",
        macvlan("novl-wide", {"range": "10.26.0.0/16", "enable_overlapping_ranges": False}),
    )
    narrow = harness.create_network(
        "novl-narrow",
        macvlan("novl-narrow", {"range": "10.26.0.0/17", "enable_overlapping_ranges": False}),
    )

    a = harness.add_pod("novl-a", topology.nodes[0], [wide])
    b = harness.add_pod("novl-b", topology.nodes[1], [narrow])

    assert a.ip() == b.ip() == "10.26.0.1"
    assert not [n for n in kube.reservations() if n.startswith("10.26.")]
    assert_recorded(kube, [a], "10.26.0.0/16", overlapping=False)
    assert_recorded(kube, [b], "10.26.0.0/17", overlapping=False)


# ---------------------------------------------------------------- 6. named networks


def test_named_networks_sharing_a_cidr_allocate_independently(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.27.0.0/24"
    net_a = harness.create_network(
        "named-a", macvlan("named-a", {"range": cidr, "network_name": "a"})
    )
    net_b = harness.create_network(
        "named-b", macvlan("named-b", {"range": cidr, "network_name": "b"})
    )
    net_a2 = harness.create_network(
        "named-a2", macvlan("named-a2", {"range": "10.27.0.0/25", "network_name": "a"})
    )

    pa = harness.add_pod("named-a", topology.nodes[0], [net_a])
    pb = harness.add_pod("named-b", topology.nodes[1], [net_b])
    pa2 = harness.add_pod("named-a2", topology.nodes[2], [net_a2])

    assert pa.ip() == pb.ip() == "10.27.0.1"
    assert pa2.ip() != pa.ip(), "an overlapping range inside one named network must not collide"
    pools = kube.pools()
    assert {"a-10.27.0.0-24", "b-10.27.0.0-24", "a-10.27.0.0-25"} <= set(pools)
    assert pool_name(cidr) not in pools
    assert_recorded(kube, [pa], cidr, network_name="a")
    assert_recorded(kube, [pb], cidr, network_name="b")
    assert_recorded(kube, [pa2], "10.27.0.0/25", network_name="a")
    assert {"a-10.27.0.1", "b-10.27.0.1"} <= set(kube.reservations())


# ---------------------------------------------------------------- 7. exhaustion


def test_exhausted_pool_fails_the_third_add_cleanly_and_recovers_after_a_delete(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.28.0.0/30"
    net = harness.create_network("tiny", bridge("tiny", {"range": cidr}))
    node = topology.nodes[0]

    first = harness.add_pod("tiny-1", node, [net])
    second = harness.add_pod("tiny-2", node, [net])
    third = harness.add_pod("tiny-3", node, [net], check=False)

    assert {first.ip(), second.ip()} == {"10.28.0.1", "10.28.0.2"}
    failure = third.failure
    assert failure is not None, "a /30 holds two addresses; the third ADD must fail"
    assert failure.is_cni_error and failure.code == 100, failure.describe()
    assert cidr in failure.msg, failure.describe()
    assert "Traceback" not in failure.stderr
    # Multus DELs the failed delegate; that removes the veth bridge left behind.
    assert all(c.ok for c in third.cleanup), [c.describe() for c in third.cleanup]
    assert not netns.link_exists(third.netns, "net1")
    # Nothing half-allocated.
    allocations = assert_recorded(kube, [first, second], cidr)
    assert len(allocations) == 2
    assert not [a for a in allocations.values() if a["id"] == third.container_id]
    assert len([n for n in kube.reservations() if n.startswith("10.28.0.")]) == 2

    freed = first.ip()
    harness.delete_pod(first)
    harness.run_sandbox(third)
    assert third.ok, third.failure.describe() if third.failure else third
    assert third.ip() == freed
    assert_recorded(kube, [second, third], cidr)


# ---------------------------------------------------------------- 8. re-ADD


def test_re_add_of_the_same_pod_with_a_new_container_gets_the_same_address(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.31.0.0/24"
    net = harness.create_network("readd", macvlan("readd", {"range": cidr}))
    harness.add_pod("readd-other", topology.nodes[0], [net])
    pod = harness.add_pod("readd", topology.nodes[0], [net])
    address = pod.ip()

    # The sandbox dies without a DEL (as after a node reboot); kubelet makes a new one.
    old = harness.forget_sandbox(pod)
    harness.run_sandbox(pod)

    assert pod.ok, pod.failure.describe() if pod.failure else pod
    assert pod.container_id != old.container_id
    assert pod.ip() == address
    assert_interface_has(pod)
    assert_recorded(kube, [pod], cidr, exact=False)
    # The old container's late DEL must not free the address the new one holds.
    assert all(c.ok for c in harness.del_networks(old))
    assert_recorded(kube, [pod], cidr, exact=False)

    harness.delete_pod(pod)
    assert_released(kube, cidr, [address])


# ---------------------------------------------------------------- 10. upstream's pools


def test_pool_in_upstream_format_is_extended_and_its_foreign_entries_survive(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "fd10::/64"
    high = 2**63 + 5
    foreign: Dict[str, Any] = {
        "1": {"id": "legacy-1", "podref": "legacy/pod-1", "ifname": "net1"},
        "2": {"id": "legacy-2", "podref": "legacy/pod-2"},  # written before v0.8.0: no ifname
        str(high): {"id": "legacy-3", "podref": "legacy/pod-3", "ifname": "net1"},
        str(2**64 - 2): {"id": "legacy-4", "podref": "legacy/pod-4", "ifname": "net1"},
        "not-an-offset": {"id": "legacy-5", "podref": "legacy/pod-5", "ifname": "net1"},
        str(2**64 + 3): {"id": "legacy-6", "podref": "legacy/pod-6", "ifname": "net1"},
    }
    kube.create_pool_object(pool_name(cidr), {"range": cidr, "allocations": foreign})
    network = ipaddress.ip_network(cidr)
    low_net = harness.create_network("legacy-low", macvlan("legacy-low", {"range": cidr}))
    high_net = harness.create_network(
        "legacy-high",
        macvlan("legacy-high", {"range": cidr, "range_start": str(network[high])}),
    )

    low_pod = harness.add_pod("legacy-low", topology.nodes[0], [low_net])
    high_pod = harness.add_pod("legacy-high", topology.nodes[1], [high_net])

    assert low_pod.ip() == "fd10::3", "offsets 1 and 2 are held by upstream's entries"
    assert high_pod.ip() == str(network[high + 1]), "offset 2^63+5 is held"
    allocations = kube.allocations(pool_name(cidr))
    for key, entry in foreign.items():
        assert allocations.get(key) == entry, f"foreign entry {key} changed: {allocations.get(key)}"
    assert_recorded(kube, [low_pod, high_pod], cidr, exact=False)
    assert str(high + 1) in allocations

    harness.delete_pod(low_pod)
    harness.delete_pod(high_pod)
    assert kube.allocations(pool_name(cidr)) == foreign


# ---------------------------------------------------------------- 12. bad config


def test_range_start_outside_the_range_is_a_config_error_through_macvlan(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    cidr = "10.30.0.0/24"
    net = harness.create_network(
        "badstart", macvlan("badstart", {"range": cidr, "range_start": "10.30.1.5"})
    )

    pod = harness.add_pod("badstart", topology.nodes[0], [net], check=False)
    try:
        failure = pod.failure
        assert failure is not None, "ADD with range_start outside the range must fail"
        assert failure.is_cni_error and failure.code == 7, failure.describe()
        assert "range_start" in failure.msg, failure.describe()
        assert "Traceback" not in failure.stderr
        assert pool_name(cidr) not in kube.pools(), "a config error must allocate nothing"
    finally:
        harness.delete_pod(pod, check=False)


def test_del_after_a_config_error_succeeds_so_the_pod_can_terminate(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology
) -> None:
    """Nothing was allocated, so DEL must succeed (invariant 4): kubelet retries a failed
    DEL forever, and macvlan v1.9.1 removes the link its failed ADD left only after
    IPAM DEL succeeded."""
    cidr = "10.30.2.0/24"
    net = harness.create_network(
        "baddel", macvlan("baddel", {"range": cidr, "range_start": "10.30.3.5"})
    )

    pod = harness.add_pod("baddel", topology.nodes[0], [net], check=False)
    try:
        assert pod.failure is not None and pod.failure.code == 7, pod.failure
        dels = pod.cleanup
        assert all(c.ok for c in dels), [c.describe() for c in dels]
        assert not netns.link_exists(pod.netns, "net1"), "the failed ADD's link is left"
    finally:
        harness.delete_pod(pod, check=False)


# ---------------------------------------------------------------- 9. API server restart


def test_adds_during_an_api_server_restart_succeed_or_fail_cleanly_and_nothing_leaks(
    harness: Harness, kube: KubernetesDatastore, topology: netns.Topology,
    local_cluster: LocalCluster,
) -> None:
    cidr = "10.29.0.0/24"
    net = harness.create_network("restart", macvlan("restart", {"range": cidr}))
    pods = [harness.new_pod(f"restart-{i}", topology.nodes[i % 3], [net]) for i in range(40)]
    failures: List[CniCall] = []
    failed_dels: List[CniCall] = []
    lock = threading.Lock()

    def bring_up(pod: Pod) -> Pod:
        """kubelet: on a failed sandbox, tear it down (DEL until it succeeds), then retry
        with a new sandbox and container ID."""
        deadline = time.monotonic() + 200
        while True:
            harness.run_sandbox(pod)
            if pod.ok:
                return pod
            with lock:
                failures.append(pod.failure)  # type: ignore[arg-type]
            if not all(c.ok for c in pod.cleanup):
                with lock:
                    failed_dels.extend(c for c in pod.cleanup if not c.ok)
                poll(
                    f"the DEL of {pod.podref}'s failed sandbox to succeed",
                    lambda: all(c.ok for c in harness.del_networks(pod, check=False)),
                    120,
                )
            assert time.monotonic() < deadline, f"{pod.podref} never came up: {pod.failure}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(bring_up, p) for p in pods]
        poll("the first ADDs to succeed", lambda: sum(f.done() for f in futures) >= 5, 120)
        pending_at_restart = sum(not f.done() for f in futures)
        local_cluster.restart_apiserver()
        results = [f.result() for f in futures]

    assert pending_at_restart > 0, "the storm was over before the restart"
    for call in failures + failed_dels:
        assert call.is_cni_error, f"not a CNI error: {call.describe()}"
        assert "Traceback" not in call.stderr, call.describe()
        assert call.code != 999, f"an internal error is a crash: {call.describe()}"
    assert all(p.ok for p in results)
    assert_no_duplicates(results)
    assert_recorded(kube, results, cidr)
    orphans = [
        name for name, spec in kube.reservations().items()
        if name.startswith("10.29.0.") and name not in {reservation_name(p.ip()) for p in results}
    ]
    # A reservation whose pool write never happened is the one leftover the design allows
    # (the reconciler frees it); it can never be a duplicate.
    assert len(orphans) <= len(failures), orphans
    seen = Counter(f"{c.command} {c.code}: {c.msg[:120]}" for c in failures + failed_dels)
    print(
        f"restart storm: {len(failures)} failed ADDs, {len(failed_dels)} failed DELs, "
        f"{pending_at_restart} of {len(pods)} pods pending at restart, "
        f"orphan reservations {orphans}; errors: {dict(seen)}"
    )

    harness.delete_pods(results, workers=8)
    left = kube.allocations(pool_name(cidr))
    assert not left, f"allocations left after deleting every pod: {left}"
