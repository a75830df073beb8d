"""The Store contract, checked on every backend against its real server.

Whatever the backend, ``whereabouts.ipam`` relies on exactly these behaviours: an
absent pool reads empty, every write is a compare-and-swap that loses with
ConflictError on a stale version (also when two writers create the same pool),
offsets of any size survive, reservations are create-if-absent and
delete-if-unchanged, listings are complete however they are paged, ping fails fast
when the server is gone, and concurrent read-modify-write loses nothing.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import time
from typing import Any

import pytest

from tests.contract.backends import StoreSpec, allocate_worker, ipam_config, rmw_worker
from whereabouts.errors import ConflictError, ObjectTooLargeError, StoreUnavailableError
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.storage.base import Store

pytestmark = pytest.mark.contract

# Backends that store a serialised format (not the in-process memory double).
STORED = ("file", "etcd", "kubernetes", "kubernetes-official")
KUBERNETES = ("kubernetes", "kubernetes-official")

V4 = PoolKey("", ipaddress.ip_network("10.10.0.0/16"))
V6 = PoolKey("", ipaddress.ip_network("fd00::/32"))
A = Owner("container-a", "default/pod-a", "net1", node="node-1")
B = Owner("container-b", "default/pod-b", "net1")
C = Owner("container-c", "default/pod-c", "net2", node="node-2")


def res_key(address: str, network: str = "") -> ReservationKey:
    return ReservationKey(network, ipaddress.ip_address(address))


# --------------------------------------------------------------------- pools


def test_absent_pool_reads_empty(store: Store) -> None:
    pool = store.read_pool(V4)
    assert pool.key == V4
    assert dict(pool.allocations) == {}
    assert pool.version is None


def test_create_then_read(store: Store) -> None:
    written = store.write_pool(Pool(V4, {1: A, 37: B}))
    assert written.version is not None
    read = store.read_pool(V4)
    assert read.version == written.version
    assert dict(read.allocations) == {1: A, 37: B}


def test_every_write_changes_the_version(store: Store) -> None:
    first = store.write_pool(Pool(V4, {1: A}))
    second = store.write_pool(first.with_allocations({1: A, 2: B}))
    third = store.write_pool(second.with_allocations({2: B}))
    assert len({first.version, second.version, third.version}) == 3
    assert dict(store.read_pool(V4).allocations) == {2: B}


def test_second_create_conflicts(store: Store) -> None:
    empty_a = store.read_pool(V4)
    empty_b = store.read_pool(V4)
    store.write_pool(empty_a.with_allocations({1: A}))
    with pytest.raises(ConflictError):
        store.write_pool(empty_b.with_allocations({2: B}))
    assert dict(store.read_pool(V4).allocations) == {1: A}


def test_stale_update_conflicts(store: Store) -> None:
    base = store.write_pool(Pool(V4, {1: A}))
    store.write_pool(base.with_allocations({1: A, 2: B}))
    with pytest.raises(ConflictError):
        store.write_pool(base.with_allocations({1: A, 3: C}))
    assert dict(store.read_pool(V4).allocations) == {1: A, 2: B}


def test_update_with_a_version_of_an_absent_pool_conflicts(store: Store) -> None:
    existing = store.write_pool(Pool(V4, {1: A}))
    other = PoolKey("other", V4.range)
    with pytest.raises(ConflictError):
        store.write_pool(Pool(other, {1: A}, version=existing.version))


def test_large_offsets_round_trip(store: Store) -> None:
    """IPv6 offsets past 2^63 and 2^64 (upstream drops keys >= 2^63)."""
    offsets = {1: A, 2**63 + 7: B, 2**64 + 1: C, 2**96 - 2: A}
    store.write_pool(Pool(V6, offsets))
    pool = store.read_pool(V6)
    assert dict(pool.allocations) == offsets
    assert pool.address(2**64 + 1) == ipaddress.ip_address("fd00:0:0:1::1")


def test_node_is_optional(store: Store) -> None:
    store.write_pool(Pool(V4, {1: A, 2: B}))
    pool = store.read_pool(V4)
    assert pool.allocations[1].node == "node-1"
    assert pool.allocations[2].node is None


def test_network_names_keep_pools_apart(store: Store) -> None:
    named = PoolKey("blue", V4.range)
    store.write_pool(Pool(V4, {1: A}))
    store.write_pool(Pool(named, {5: B}))
    assert dict(store.read_pool(V4).allocations) == {1: A}
    assert dict(store.read_pool(named).allocations) == {5: B}


UPSTREAM_SPEC = {
    "range": "10.10.0.0/16",
    "allocations": {
        "1": {"id": "c1", "podref": "default/pod-a", "ifname": "net1"},
        "37": {"id": "c2", "podref": "default/pod-b", "ifname": "net2"},
        # Written by something else: kept on every write, never decoded.
        "not-a-number": {"id": "c3", "podref": "default/pod-c", "ifname": "net1"},
        "99999999": {"id": "c4", "podref": "default/pod-d", "ifname": "net1"},
    },
}


@pytest.mark.backends(*STORED)
def test_upstream_objects_read_and_keep_what_we_cannot_decode(
    store: Store, store_spec: StoreSpec
) -> None:
    store_spec.put_raw_pool(V4.name, UPSTREAM_SPEC)
    pool = store.read_pool(V4)
    assert dict(pool.allocations) == {
        1: Owner("c1", "default/pod-a", "net1"),
        37: Owner("c2", "default/pod-b", "net2"),
    }
    store.write_pool(pool.with_allocations({37: pool.allocations[37], 2: A}))
    raw = store_spec.get_raw_pool(V4.name)
    spec = raw.get("spec", raw)
    assert spec["range"] == "10.10.0.0/16"
    assert spec["allocations"] == {
        "2": {"id": "container-a", "podref": "default/pod-a", "ifname": "net1", "node": "node-1"},
        "37": {"id": "c2", "podref": "default/pod-b", "ifname": "net2"},
        "not-a-number": UPSTREAM_SPEC["allocations"]["not-a-number"],  # type: ignore[index]
        "99999999": UPSTREAM_SPEC["allocations"]["99999999"],  # type: ignore[index]
    }


@pytest.mark.backends(*KUBERNETES)
def test_kubernetes_update_keeps_labels_annotations_and_writes_status(
    store: Store, store_spec: StoreSpec
) -> None:
    meta = {"labels": {"team": "net"}, "annotations": {"note": "keep me"}}
    store_spec.put_raw_pool(V4.name, UPSTREAM_SPEC, {"metadata": meta})
    pool = store.read_pool(V4)
    store.write_pool(pool.with_allocations({**pool.allocations, 3: C}))
    obj = store_spec.get_raw_pool(V4.name)
    assert obj["metadata"]["labels"] == {"team": "net"}
    assert obj["metadata"]["annotations"] == {"note": "keep me"}
    assert obj["status"] == {"allocatedCount": 5, "capacity": 65534}


@pytest.mark.backends("etcd", *KUBERNETES)  # the others have no size limit
def test_too_large_pool_is_refused_clearly(store: Store) -> None:
    key = PoolKey("", ipaddress.ip_network("10.0.0.0/8"))
    # About 2 MB of JSON: over etcd's default 1.5 MiB request limit.
    owners = {i: Owner("c" * 64, f"namespace/pod-{i}", "net1") for i in range(1, 16000)}
    with pytest.raises(ObjectTooLargeError) as info:
        store.write_pool(Pool(key, owners))
    assert "too large" in info.value.msg
    assert store.read_pool(key).version is None


# --------------------------------------------------------------- reservations


def test_reservation_create_if_absent(store: Store) -> None:
    key = res_key("10.10.0.5")
    assert store.read_reservation(key) is None
    created = store.create_reservation(Reservation(key, A))
    assert created is not None and created.version is not None
    assert store.create_reservation(Reservation(key, B)) is None
    read = store.read_reservation(key)
    assert read is not None
    assert (read.owner.podref, read.owner.ifname, read.owner.container_id) == (
        A.podref,
        A.ifname,
        A.container_id,
    )
    assert read.version == created.version


def test_reservation_records_when_it_was_created(store: Store) -> None:
    before = time.time()
    created = store.create_reservation(Reservation(res_key("10.10.0.6"), A))
    assert created is not None and created.created is not None
    read = store.read_reservation(res_key("10.10.0.6"))
    assert read is not None and read.created is not None
    # Kubernetes stamps whole seconds with the server's clock.
    assert before - 2 <= read.created <= time.time() + 2


def test_reservation_delete_if_unchanged(store: Store) -> None:
    key = res_key("fd00::1")
    created = store.create_reservation(Reservation(key, A))
    assert created is not None
    assert store.delete_reservation(created) is True
    assert store.read_reservation(key) is None
    assert store.delete_reservation(created) is False


def test_reservation_delete_of_a_replaced_one_is_refused(store: Store) -> None:
    key = res_key("10.10.0.7", "blue")
    mine = store.create_reservation(Reservation(key, A))
    assert mine is not None
    assert store.delete_reservation(mine)
    theirs = store.create_reservation(Reservation(key, B))
    assert theirs is not None and theirs.version != mine.version
    assert store.delete_reservation(mine) is False
    still = store.read_reservation(key)
    assert still is not None and still.owner.podref == B.podref


def test_reservation_delete_without_version_is_refused(store: Store) -> None:
    key = res_key("10.10.0.8")
    assert store.create_reservation(Reservation(key, A)) is not None
    assert store.delete_reservation(Reservation(key, A)) is False
    assert store.read_reservation(key) is not None


# --------------------------------------------------------------------- lists


def test_lists_return_everything(store: Store) -> None:
    keys = [
        V4,
        V6,
        PoolKey("blue", V4.range),
        PoolKey("net-a", ipaddress.ip_network("fd00:1::/64")),
    ]
    for n, key in enumerate(keys, start=1):
        store.write_pool(Pool(key, {n: A}))
    pools = {p.key: dict(p.allocations) for p in store.list_pools()}
    assert pools == {key: {n: A} for n, key in enumerate(keys, start=1)}
    rkeys = [
        res_key("10.10.0.1"),
        res_key("fd00::"),
        res_key("fd00:1::5", "net-a"),
        res_key("2001:db8::1", "cafe"),
        res_key("10.10.0.1", "named-range"),
    ]
    for k in rkeys:
        assert store.create_reservation(Reservation(k, B)) is not None
    listed = {r.key: r.owner.podref for r in store.list_reservations()}
    assert listed == dict.fromkeys(rkeys, B.podref)


def test_list_pages_through_more_than_a_page(store_spec: StoreSpec) -> None:
    store = store_spec.with_(page_size=3).open()
    try:
        keys = [PoolKey("", ipaddress.ip_network(f"10.{i}.0.0/24")) for i in range(10)]
        for key in keys:
            store.write_pool(Pool(key, {1: A}))
        for i in range(10):
            assert store.create_reservation(Reservation(res_key(f"10.{i}.0.1"), A)) is not None
        assert sorted(p.key.name for p in store.list_pools()) == sorted(k.name for k in keys)
        assert len(store.list_reservations()) == 10
    finally:
        store.close()


# ---------------------------------------------------------------------- ping


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_ping_fails_fast_when_the_server_is_down(dead_spec: StoreSpec) -> None:
    store = dead_spec.open()
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError):
            store.ping()
        with pytest.raises(StoreUnavailableError):
            store.write_pool(Pool(V4, {1: A}))
    finally:
        store.close()
    assert time.monotonic() - started < 5


# --------------------------------------------------------------- concurrency

WORKERS = 8


def _run_workers(func: Any, spec: StoreSpec, cidr: str, count: int) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        return pool.starmap(func, [(spec, cidr, w, count) for w in range(WORKERS)])


@pytest.mark.backends(*STORED)  # an in-process store cannot be shared with processes
def test_concurrent_read_modify_write_loses_nothing(store: Store, store_spec: StoreSpec) -> None:
    _run_workers(rmw_worker, store_spec, "10.20.0.0/16", 10)
    pool = store.read_pool(PoolKey("", ipaddress.ip_network("10.20.0.0/16")))
    assert sorted(pool.allocations) == list(range(1, WORKERS * 10 + 1))
    for offset, owner in pool.allocations.items():
        worker, i = divmod(offset - 1, 10)
        assert owner == Owner(f"c-{worker}-{i}", f"ns/pod-{worker}-{i}", "net1", f"node-{worker}")


@pytest.mark.backends(*STORED)
def test_concurrent_allocations_are_distinct_and_lowest(
    store: Store, store_spec: StoreSpec
) -> None:
    per_worker = 5
    results = _run_workers(allocate_worker, store_spec, "10.30.0.0/24", per_worker)
    got = [ipaddress.ip_address(a) for addresses in results for a in addresses]
    assert len(got) == len(set(got)) == WORKERS * per_worker
    assert sorted(got) == [
        ipaddress.ip_address("10.30.0.0") + n for n in range(1, WORKERS * per_worker + 1)
    ]
    cfg = ipam_config("10.30.0.0/24")
    pool = store.read_pool(PoolKey("", cfg.ranges[0].network))
    assert len(pool.allocations) == WORKERS * per_worker
    reserved = {r.key.address for r in store.list_reservations()}
    assert reserved == set(got)
