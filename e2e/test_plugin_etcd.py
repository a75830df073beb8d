"""whereabouts.pyz as the IPAM of the real macvlan plugin with ``datastore: etcd``.

A real etcd (the test bed's build) runs on the host's loopback, relayed into each node's
network namespace; no Kubernetes API is involved (the harness keeps the NADs itself).
The plugin talks to etcd's v3 JSON gateway; what it stored is read back the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from e2e import netns
from e2e.conftest import unavailable
from e2e.harness import Harness
from e2e.localcluster import LocalCluster, ToolPaths
from e2e.scenarios import (
    EtcdDatastore,
    checked_cleanup,
    concurrent_adds,
    delete_all,
    macvlan,
    pool_name,
    relayed_nodes,
    reservation_name,
    single_pod_lifecycle,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def etcd_server(e2e_tools: ToolPaths) -> Iterator[LocalCluster]:
    """An etcd of its own (no API server), so its keyspace holds only the plugin's keys."""
    if not os.access(e2e_tools.etcd, os.X_OK):
        unavailable(f"etcd not built at {e2e_tools.etcd} (run ci/e2e-tools)")
    server = LocalCluster(tools=e2e_tools)
    try:
        server.start_etcd()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def topology(
    netns_factory: Callable[[], netns.Topology], etcd_server: LocalCluster
) -> Iterator[netns.Topology]:
    with relayed_nodes(netns_factory(), 2, etcd_server.etcd_port) as topo:
        yield topo


@pytest.fixture(scope="module")
def etcd(etcd_server: LocalCluster) -> EtcdDatastore:
    return EtcdDatastore(etcd_server.etcd_endpoint)


@pytest.fixture
def harness(topology: netns.Topology, bin_dir: Path, etcd: EtcdDatastore) -> Iterator[Harness]:
    h = Harness(topology, [bin_dir], etcd.node_ipam, namespace="etcd-pods")
    with checked_cleanup(h):
        yield h


def test_one_pod_add_check_del_through_macvlan_with_etcd(
    harness: Harness, etcd: EtcdDatastore, topology: netns.Topology
) -> None:
    cidr = "10.50.0.0/24"
    net = harness.create_network("etcd-single", macvlan("etcd-single", {"range": cidr}))

    pod = single_pod_lifecycle(harness, etcd, net, cidr, node=topology.nodes[0], name="single")

    assert pod.ip() == "10.50.0.1"
    assert pool_name(cidr) in etcd.pools(), "the pool is a key under /whereabouts/ippools/"
    assert reservation_name(pod.ip()) not in etcd.reservations()


def test_twenty_concurrent_adds_get_distinct_addresses_with_etcd(
    harness: Harness, etcd: EtcdDatastore, topology: netns.Topology
) -> None:
    cidr = "10.50.1.0/24"
    net = harness.create_network("etcd-many", macvlan("etcd-many", {"range": cidr}))

    pods = concurrent_adds(
        harness, etcd, net, cidr, nodes=topology.nodes, per_node=10, prefix="etcd", workers=10
    )

    assert len(pods) == 20
    assert len([n for n in etcd.reservations() if n.startswith("10.50.1.")]) == 20
    delete_all(harness, etcd, pods, cidr)
