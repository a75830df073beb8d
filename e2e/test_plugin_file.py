"""whereabouts.pyz as the IPAM of the real macvlan plugin with ``datastore: file``.

One node (the file store is for a single host), no Kubernetes API: the harness keeps the
NADs itself. What the plugin stored is read back from ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from e2e import netns
from e2e.harness import Harness
from e2e.scenarios import (
    FileDatastore,
    checked_cleanup,
    concurrent_adds,
    delete_all,
    macvlan,
    pool_name,
    single_pod_lifecycle,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def topology(netns_factory: Callable[[], netns.Topology]) -> Iterator[netns.Topology]:
    topo = netns_factory()
    topo.add_node()
    yield topo
    topo.cleanup()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FileDatastore:
    return FileDatastore(tmp_path_factory.mktemp("whereabouts-data"))


@pytest.fixture
def harness(topology: netns.Topology, bin_dir: Path, store: FileDatastore) -> Iterator[Harness]:
    h = Harness(topology, [bin_dir], store.node_ipam, namespace="file-pods")
    with checked_cleanup(h):
        yield h


def test_one_pod_add_check_del_through_macvlan_with_files(
    harness: Harness, store: FileDatastore, topology: netns.Topology
) -> None:
    cidr = "10.60.0.0/24"
    net = harness.create_network("file-single", macvlan("file-single", {"range": cidr}))

    pod = single_pod_lifecycle(harness, store, net, cidr, node=topology.nodes[0], name="single")

    assert pod.ip() == "10.60.0.1"
    assert (store.data_dir / "pools" / f"{pool_name(cidr)}.json").is_file()


def test_twenty_concurrent_adds_on_one_node_get_distinct_addresses_with_files(
    harness: Harness, store: FileDatastore, topology: netns.Topology
) -> None:
    cidr = "10.60.1.0/24"
    net = harness.create_network("file-many", macvlan("file-many", {"range": cidr}))

    pods = concurrent_adds(
        harness, store, net, cidr, nodes=topology.nodes, per_node=20, prefix="file", workers=10
    )

    assert len(pods) == 20
    delete_all(harness, store, pods, cidr)
