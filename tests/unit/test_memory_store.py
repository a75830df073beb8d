"""The memory double's fault injection: what tests above the storage layer rely on."""

from __future__ import annotations

import ipaddress
from typing import List, Tuple

import pytest

from whereabouts.errors import ConflictError, StoreUnavailableError
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.storage.memory import MemoryStore

KEY = PoolKey("", ipaddress.ip_network("10.0.0.0/24"))
A = Owner("c1", "ns/a", "net1")
B = Owner("c2", "ns/b", "net1")


def test_before_write_hook_can_make_the_callers_version_stale() -> None:
    store = MemoryStore()
    seen: List[Tuple[str, str]] = []

    def hook(op: str, name: str) -> None:
        seen.append((op, name))
        if len(seen) == 1:  # another writer wins the first race
            store.put_pool(Pool(KEY, {9: B}))

    store.before_write = hook
    with pytest.raises(ConflictError):
        store.write_pool(store.read_pool(KEY).with_allocations({1: A}))
    written = store.write_pool(store.read_pool(KEY).with_allocations({9: B, 1: A}))
    assert dict(written.allocations) == {9: B, 1: A}
    assert seen == [("write_pool", KEY.name), ("write_pool", KEY.name)]


def test_injected_conflicts_and_unavailability() -> None:
    store = MemoryStore()
    store.conflicts = 2
    for _ in range(2):
        with pytest.raises(ConflictError):
            store.write_pool(Pool(KEY, {1: A}))
    store.write_pool(Pool(KEY, {1: A}))
    store.unavailable = True
    with pytest.raises(StoreUnavailableError):
        store.ping()
    with pytest.raises(StoreUnavailableError):
        store.read_pool(KEY)


def test_calls_are_recorded_for_round_trip_counts() -> None:
    store = MemoryStore()
    key = ReservationKey("", ipaddress.ip_address("10.0.0.1"))
    store.write_pool(store.read_pool(KEY).with_allocations({1: A}))
    store.create_reservation(Reservation(key, A))
    assert [op for op, _ in store.calls] == ["read_pool", "write_pool", "create_reservation"]


def test_versions_are_never_reused_across_delete_and_create() -> None:
    store = MemoryStore()
    key = ReservationKey("", ipaddress.ip_address("10.0.0.1"))
    first = store.create_reservation(Reservation(key, A))
    assert first is not None and store.delete_reservation(first)
    second = store.create_reservation(Reservation(key, B))
    assert second is not None and second.version != first.version
    assert not store.delete_reservation(first)
