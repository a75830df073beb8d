"""FileStore specifics the contract suite does not see: layout, permissions, locking,
atomic replacement, and what it does with damaged files."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from whereabouts.errors import ConflictError, StoreError, StoreUnavailableError
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.storage.file import FileStore

KEY = PoolKey("net", ipaddress.ip_network("10.1.0.0/24"))
A = Owner("c1", "ns/a", "net1", node="n1")


def test_missing_data_dir_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "deep" / "data"
    store = FileStore(str(data))
    store.write_pool(Pool(KEY, {1: A}))
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert sorted(p.name for p in data.iterdir()) == ["lock", "pools", "reservations"]
    assert (data / "pools" / "net-10.1.0.0-24.json").is_file()


def test_pool_file_has_the_crd_spec_shape_and_a_counting_version(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    first = store.write_pool(Pool(KEY, {1: A}))
    second = store.write_pool(first.with_allocations({1: A, 2: Owner("c2", "ns/b", "net1")}))
    assert (first.version, second.version) == ("1", "2")
    data = json.loads((tmp_path / "pools" / f"{KEY.name}.json").read_text())
    assert data == {
        "range": "10.1.0.0/24",
        "version": 2,
        "allocations": {
            "1": {"id": "c1", "podref": "ns/a", "ifname": "net1", "node": "n1"},
            "2": {"id": "c2", "podref": "ns/b", "ifname": "net1"},
        },
    }


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    pool = store.write_pool(Pool(KEY, {1: A}))
    with pytest.raises(ConflictError):
        store.write_pool(Pool(KEY, {2: A}))
    store.write_pool(pool.with_allocations({}))
    key = ReservationKey("", ipaddress.ip_address("10.1.0.1"))
    created = store.create_reservation(Reservation(key, A))
    assert store.create_reservation(Reservation(key, A)) is None
    assert created is not None and store.delete_reservation(created)
    store.ping()
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []


def test_unknown_fields_in_a_pool_file_survive(tmp_path: Path) -> None:
    (tmp_path / "pools").mkdir()
    path = tmp_path / "pools" / f"{KEY.name}.json"
    path.write_text(
        json.dumps({"range": "10.1.0.0/24", "allocations": {}, "version": 4, "owner": "ops"})
    )
    store = FileStore(str(tmp_path))
    pool = store.read_pool(KEY)
    assert pool.version == "4"
    store.write_pool(pool.with_allocations({3: A}))
    assert json.loads(path.read_text())["owner"] == "ops"


def test_damaged_pool_file_is_an_error_not_an_empty_pool(tmp_path: Path) -> None:
    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / f"{KEY.name}.json").write_text("{not json")
    store = FileStore(str(tmp_path))
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read_pool(KEY)
    with pytest.raises(StoreError):
        store.write_pool(Pool(KEY, {1: A}))
    assert store.list_pools() == []  # the reconciler skips it (logged) and goes on


def test_names_that_would_escape_the_directory_are_refused(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    for network in ("../x", ".hidden"):
        with pytest.raises(StoreError):
            store.read_pool(PoolKey(network, KEY.range))


def test_a_held_lock_times_out_as_unavailable(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), lock_timeout=0.2)
    store.ping()
    fd = os.open(tmp_path / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="lock"):
            store.write_pool(Pool(KEY, {1: A}))
        assert time.monotonic() - started < 2
        assert store.read_pool(KEY).version is None  # reads never wait for the lock
    finally:
        os.close(fd)
    store.write_pool(Pool(KEY, {1: A}))


def test_a_forked_child_takes_its_own_lock(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), lock_timeout=2)
    store.ping()  # the parent opens its lock file descriptor
    fd = os.open(tmp_path / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    pid = os.fork()
    if pid == 0:  # child: must wait for the lock, not share the parent's
        try:
            store.lock_timeout = 0.2
            store.write_pool(Pool(KEY, {1: A}))
            os._exit(1)
        except StoreUnavailableError:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WEXITSTATUS(status) == 0


def test_reservation_file_records_its_key(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))
    key = ReservationKey("cafe", ipaddress.ip_address("2001:db8::1"))
    created = store.create_reservation(Reservation(key, A))
    assert created is not None
    data = json.loads((tmp_path / "reservations" / "cafe-2001-db8--1.json").read_text())
    assert data["address"] == "2001:db8::1" and data["network_name"] == "cafe"
    assert data["podref"] == "ns/a" and data["containerid"] == "c1"
    assert [r.key for r in store.list_reservations()] == [key]


def test_threads_sharing_one_store_lose_nothing(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path))

    def add(worker: int) -> None:
        for i in range(10):
            while True:
                pool = store.read_pool(KEY)
                allocations = dict(pool.allocations)
                allocations[worker * 10 + i + 1] = A
                try:
                    store.write_pool(pool.with_allocations(allocations))
                    break
                except ConflictError:
                    continue

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.read_pool(KEY).allocations) == list(range(1, 81))
