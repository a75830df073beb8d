"""The allocation engine keeps the invariants over any Store (here the memory double)."""

from __future__ import annotations

import ipaddress
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whereabouts import ipam
from whereabouts.config import IPAMConfig, RangeConfig
from whereabouts.errors import AddressInUseError, CheckFailedError, RangeExhaustedError
from whereabouts.iprange import usable_bounds
from whereabouts.model import Owner, PoolKey, Reservation, ReservationKey
from whereabouts.retry import RetryPolicy
from whereabouts.storage.memory import MemoryStore

FAST = RetryPolicy(deadline=5.0, first_delay=0.0, max_delay=0.0)


def rng(cidr: str, start: Optional[str] = None, end: Optional[str] = None,
        exclude: tuple[str, ...] = ()) -> RangeConfig:
    net = ipaddress.ip_network(cidr, strict=False)
    low, high = usable_bounds(net)
    first = ipaddress.ip_address(start) if start else net.network_address + 1
    last = ipaddress.ip_address(end) if end else net.network_address + (high - low + 1)
    return RangeConfig(net, first, last, tuple(ipaddress.ip_network(e) for e in exclude))


def cfg(*ranges: RangeConfig, overlapping: bool = True, gateway: Optional[str] = None,
        network_name: str = "") -> IPAMConfig:
    return IPAMConfig(
        ranges=ranges,
        enable_overlapping_ranges=overlapping,
        gateway=ipaddress.ip_address(gateway) if gateway else None,
        network_name=network_name,
        datastore="file",
    )


def pod(name: str, container: str = "", ifname: str = "net1", node: str = "n1") -> Owner:
    return Owner(container or f"c-{name}", f"default/{name}", ifname, node)


def addresses(assigned: List[ipam.Assigned]) -> List[str]:
    return [str(a.interface) for a in assigned]


def test_first_add_gets_the_lowest_address_with_the_range_prefix() -> None:
    store = MemoryStore()
    got = ipam.allocate(store, cfg(rng("192.168.1.44/28")), pod("a"), policy=FAST)
    assert addresses(got) == ["192.168.1.33/28"]


def test_uncontended_add_costs_one_read_one_write_and_one_reservation() -> None:
    store = MemoryStore()
    ipam.allocate(store, cfg(rng("10.0.0.0/24")), pod("a"), policy=FAST)
    assert [op for op, _ in store.calls] == ["read_pool", "create_reservation", "write_pool"]
    store.calls.clear()
    ipam.allocate(store, cfg(rng("10.0.0.0/24"), overlapping=False), pod("b"), policy=FAST)
    assert [op for op, _ in store.calls] == ["read_pool", "write_pool"]


def test_reservation_exists_before_the_pool_records_the_address() -> None:
    seen: List[bool] = []
    store = MemoryStore()

    def hook(op: str, name: str) -> None:
        if op == "write_pool":
            seen.append(store.read_reservation(ReservationKey("", ipaddress.ip_address("10.0.0.1")))
                        is not None)

    store.before_write = hook
    ipam.allocate(store, cfg(rng("10.0.0.0/24")), pod("a"), policy=FAST)
    assert seen == [True]


def test_re_add_of_the_same_pod_and_interface_returns_the_same_address() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    first = ipam.allocate(store, conf, pod("a", container="old"), policy=FAST)
    again = ipam.allocate(store, conf, pod("a", container="new"), policy=FAST)
    assert addresses(first) == addresses(again)
    assert again[0].created is False
    stored = store.read_pool(PoolKey("", conf.ranges[0].network)).allocations
    assert [o.container_id for o in stored.values()] == ["new"]


def test_another_interface_of_the_same_pod_gets_another_address() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    a = ipam.allocate(store, conf, pod("a", ifname="net1"), policy=FAST)
    b = ipam.allocate(store, conf, pod("a", ifname="net2"), policy=FAST)
    assert addresses(a) != addresses(b)


def test_gateway_is_never_handed_out() -> None:
    store = MemoryStore()
    got = ipam.allocate(store, cfg(rng("10.0.0.0/24"), gateway="10.0.0.1"), pod("a"), policy=FAST)
    assert addresses(got) == ["10.0.0.2/24"]


def test_failure_in_a_later_range_releases_the_earlier_ones() -> None:
    store = MemoryStore()
    tiny = rng("10.9.0.0/30")
    conf = cfg(rng("10.0.0.0/24"), tiny)
    ipam.allocate(store, cfg(tiny), pod("x"), policy=FAST)
    ipam.allocate(store, cfg(tiny), pod("y"), policy=FAST)
    with pytest.raises(RangeExhaustedError, match=r"10\.9\.0\.0/30"):
        ipam.allocate(store, conf, pod("z"), policy=FAST)
    assert store.read_pool(PoolKey("", conf.ranges[0].network)).allocations == {}
    assert store.read_reservation(ReservationKey("", ipaddress.ip_address("10.0.0.1"))) is None


def test_lost_races_are_retried_until_the_write_wins() -> None:
    store = MemoryStore()
    store.conflicts = 5
    got = ipam.allocate(store, cfg(rng("10.0.0.0/24")), pod("a"), policy=FAST)
    assert addresses(got) == ["10.0.0.1/24"]
    assert len(store.list_reservations()) == 1


def test_a_writer_that_wins_the_race_moves_us_to_the_next_address() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"), overlapping=False)
    sneaked = []

    def hook(op: str, name: str) -> None:
        if op == "write_pool" and not sneaked:
            sneaked.append(True)
            key = PoolKey("", conf.ranges[0].network)
            pool = store.read_pool(key)
            store.put_pool(pool.with_allocations({1: pod("intruder")}))

    store.before_write = hook
    got = ipam.allocate(store, conf, pod("a"), policy=FAST)
    assert addresses(got) == ["10.0.0.2/24"]


def test_overlapping_ranges_never_share_an_address() -> None:
    store = MemoryStore()
    wide, narrow = cfg(rng("10.10.0.0/16")), cfg(rng("10.10.0.0/17"))
    a = ipam.allocate(store, wide, pod("a"), policy=FAST)
    b = ipam.allocate(store, narrow, pod("b"), policy=FAST)
    assert addresses(a) == ["10.10.0.1/16"]
    assert addresses(b) == ["10.10.0.2/17"]


def test_overlapping_ranges_share_addresses_when_the_feature_is_off() -> None:
    store = MemoryStore()
    a = ipam.allocate(store, cfg(rng("10.10.0.0/16"), overlapping=False), pod("a"), policy=FAST)
    b = ipam.allocate(store, cfg(rng("10.10.0.0/17"), overlapping=False), pod("b"), policy=FAST)
    assert [x.address for x in a] == [x.address for x in b]


def test_named_networks_allocate_independently() -> None:
    store = MemoryStore()
    a = ipam.allocate(store, cfg(rng("10.0.0.0/24"), network_name="blue"), pod("a"), policy=FAST)
    b = ipam.allocate(store, cfg(rng("10.0.0.0/24"), network_name="red"), pod("b"), policy=FAST)
    assert addresses(a) == addresses(b) == ["10.0.0.1/24"]


def test_crash_between_reservation_and_pool_write_leaves_an_orphan_not_a_duplicate() -> None:
    store = MemoryStore()

    class Crash(Exception):
        pass

    def die(op: str, name: str) -> None:
        if op == "write_pool":
            raise Crash

    store.before_write = die
    with pytest.raises(Crash):
        ipam.allocate(store, cfg(rng("10.10.0.0/16")), pod("a"), policy=FAST)
    store.before_write = None
    # The reservation is cleaned on the error path; simulate a SIGKILL by re-planting it.
    orphan = store.put_reservation(
        Reservation(ReservationKey("", ipaddress.ip_address("10.10.0.1")), pod("a")))
    b = ipam.allocate(store, cfg(rng("10.10.0.0/17")), pod("b"), policy=FAST)
    assert addresses(b) == ["10.10.0.2/17"]
    assert store.read_reservation(orphan.key) == orphan


def test_requested_address_in_range_is_reserved_in_the_pool() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    want = ipaddress.ip_interface("10.0.0.50/24")
    got = ipam.allocate(store, conf, pod("a"), [want], policy=FAST)
    assert addresses(got) == ["10.0.0.50/24"]
    with pytest.raises(AddressInUseError, match="default/a"):
        ipam.allocate(store, conf, pod("b"), [want], policy=FAST)
    # The lowest-free allocator now passes over it.
    assert addresses(ipam.allocate(store, conf, pod("c"), policy=FAST)) == ["10.0.0.1/24"]


def test_del_releases_every_range_even_when_the_first_holds_nothing() -> None:
    store = MemoryStore()
    v4, v6 = rng("10.0.0.0/24"), rng("fd00::/64")
    ipam.allocate(store, cfg(v6), pod("a"), policy=FAST)
    freed = ipam.release(store, cfg(v4, v6), pod("a"), policy=FAST)
    assert [str(f) for f in freed] == ["fd00::1"]
    assert store.list_reservations() == []


def test_del_twice_succeeds_and_del_of_nothing_succeeds() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("a"), policy=FAST)
    assert len(ipam.release(store, conf, pod("a"), policy=FAST)) == 1
    assert ipam.release(store, conf, pod("a"), policy=FAST) == []
    assert ipam.release(store, conf, pod("never"), policy=FAST) == []


def test_del_never_deletes_another_pods_reservation() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("a"), policy=FAST)
    key = ReservationKey("", ipaddress.ip_address("10.0.0.1"))
    store.put_reservation(Reservation(key, pod("b")))
    ipam.release(store, conf, pod("a"), policy=FAST)
    remaining = store.read_reservation(key)
    assert remaining is not None and remaining.owner.podref == "default/b"


def test_del_of_an_old_container_after_a_same_name_re_add_frees_nothing() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("sts-0", container="old"), policy=FAST)
    ipam.allocate(store, conf, pod("sts-0", container="new"), policy=FAST)
    assert ipam.release(store, conf, pod("sts-0", container="old"), policy=FAST) == []
    assert len(store.list_reservations()) == 1


def test_check_passes_for_a_recorded_container_and_fails_otherwise() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("a"), policy=FAST)
    assert [str(a) for _, a in ipam.check(store, conf, pod("a"))] == ["10.0.0.1"]
    with pytest.raises(CheckFailedError, match="c-b"):
        ipam.check(store, conf, pod("b"))


def test_gc_frees_only_this_nodes_attachments_missing_from_the_valid_list() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("keep", node="n1"), policy=FAST)
    ipam.allocate(store, conf, pod("stale", node="n1"), policy=FAST)
    ipam.allocate(store, conf, pod("other-node", node="n2"), policy=FAST)
    ipam.allocate(store, conf, Owner("c-legacy", "default/legacy", "net1", None), policy=FAST)
    freed = ipam.garbage_collect(store, conf, "n1", {("c-keep", "net1")}, policy=FAST)
    assert [str(a) for a in freed] == ["10.0.0.2"]
    left = store.read_pool(PoolKey("", conf.ranges[0].network)).allocations
    assert sorted(o.podref for o in left.values()) == [
        "default/keep", "default/legacy", "default/other-node"]
    assert len(store.list_reservations()) == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.sampled_from(["net1", "net2"])),
                max_size=60))
def test_any_sequence_of_add_and_del_keeps_addresses_unique_and_lowest(
    ops: list[tuple[bool, int, str]]
) -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/29"), rng("10.0.0.0/28"))  # overlapping on purpose
    model: dict[tuple[int, str], list[str]] = {}
    for add, who, ifname in ops:
        owner = pod(f"p{who}", ifname=ifname)
        if add:
            try:
                got = ipam.allocate(store, conf, owner, policy=FAST)
            except RangeExhaustedError:
                continue
            model[(who, ifname)] = [str(a.address) for a in got]
        else:
            ipam.release(store, conf, owner, policy=FAST)
            model.pop((who, ifname), None)
    held = [a for addrs in model.values() for a in addrs]
    assert len(held) == len(set(held)), "an address is held twice"
    reservations = {str(r.key.address) for r in store.list_reservations()}
    assert reservations == set(held)
    for rc in conf.ranges:
        pool = store.read_pool(PoolKey("", rc.network))
        assert {str(pool.address(o)) for o in pool.allocations} <= set(held)


def test_del_after_a_same_pod_re_add_frees_the_reservation_too() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("a", container="first"), policy=FAST)
    ipam.allocate(store, conf, pod("a", container="second"), policy=FAST)
    assert [str(a) for a in ipam.release(store, conf, pod("a", container="second"),
                                         policy=FAST)] == ["10.0.0.1"]
    assert store.list_reservations() == []


def test_gc_sweep_deletes_only_old_unbacked_reservations_of_this_node() -> None:
    import time

    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    ipam.allocate(store, conf, pod("live", node="n1"), policy=FAST)  # backed: 10.0.0.1
    old = time.time() - 3600

    def plant(address: str, owner: Owner, created: float) -> None:
        key = ReservationKey("", ipaddress.ip_address(address))
        store.put_reservation(Reservation(key, owner, created=created))

    plant("10.0.0.5", pod("killed", node="n1"), old)        # the leak GC must fix
    plant("10.0.0.6", pod("inflight", node="n1"), time.time())  # an ADD in flight
    plant("10.0.0.7", pod("elsewhere", node="n2"), old)    # another node's
    plant("10.0.0.8", pod("known", node="n1"), old)        # the runtime still knows it
    ipam.garbage_collect(store, conf, "n1", {("c-live", "net1"), ("c-known", "net1")},
                         policy=FAST, sweep_reservations=True)
    left = sorted(str(r.key.address) for r in store.list_reservations())
    assert left == ["10.0.0.1", "10.0.0.6", "10.0.0.7", "10.0.0.8"]


def test_a_lost_pool_write_keeps_the_address_already_reserved() -> None:
    store = MemoryStore()
    conf = cfg(rng("10.0.0.0/24"))
    raced = []

    def hook(op: str, name: str) -> None:
        if op == "write_pool" and not raced:
            raced.append(True)
            pool = store.read_pool(PoolKey("", conf.ranges[0].network))
            store.put_pool(pool.with_allocations({5: pod("other")}))

    store.before_write = hook
    got = ipam.allocate(store, conf, pod("a"), policy=FAST)
    assert addresses(got) == ["10.0.0.1/24"]
    assert [op for op, _ in store.calls].count("create_reservation") == 1
