"""`whereabouts reconcile` over the memory store, with pods given as PodViews."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any, Dict, List, Optional, Set

import pytest

from whereabouts.controllers import Cleaner, Freed, Tally, parse_duration
from whereabouts.controllers.reconciler import parse_args, reconcile
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.reconcile import PodView, parse_ips
from whereabouts.retry import RetryPolicy
from whereabouts.storage.memory import MemoryStore

NOW = 1_700_000_000.0
OLD = NOW - 3600
KEY = PoolKey("", ipaddress.ip_network("10.0.0.0/24"))
KEY6 = PoolKey("", ipaddress.ip_network("fd00::/64"))
FAST = RetryPolicy(deadline=0.5, first_delay=0.001, max_delay=0.005)


def view(podref: str, phase: str = "Running", ips: Optional[Dict[str, List[str]]] = None,
         **kw: object) -> PodView:
    args: Dict[str, object] = {
        "podref": podref, "uid": f"uid-{podref}", "phase": phase, "creation_timestamp": OLD,
        "has_network_status": ips is not None,
        "interfaces": {k: parse_ips(v) for k, v in (ips or {}).items()}}
    args.update(kw)
    return PodView(**args)  # type: ignore[arg-type]


class Cluster:
    """The pods the API would show, and a record of what the reconciler asked."""

    def __init__(self, store: MemoryStore, pods: Optional[Dict[str, PodView]] = None) -> None:
        self.store = store
        self.pods: Dict[str, PodView] = dict(pods or {})
        self.gets: List[str] = []
        self.lists = 0

    def list_pods(self, wanted: Set[str]) -> Dict[str, PodView]:
        self.lists += 1
        self.store.calls.append(("list_pods", ""))
        return {k: v for k, v in self.pods.items() if k in wanted}

    def get(self, podref: str) -> Optional[PodView]:
        self.gets.append(podref)
        return self.pods.get(podref)


class Events:
    def __init__(self) -> None:
        self.freed: List[Freed] = []

    def emit(self, pod: Freed) -> None:
        self.freed.append(pod)


def owner(podref: str, ifname: str = "net1", cid: str = "c", node: str = "n1") -> Owner:
    return Owner(f"{cid}-{podref}", podref, ifname, node)


def run(store: MemoryStore, cluster: Cluster, **kw: object) -> Tally:
    args: Dict[str, object] = {"grace_seconds": 60.0, "clock": lambda: NOW, "policy": FAST}
    args.update(kw)
    return reconcile(store, cluster.list_pods, cluster, **args)  # type: ignore[arg-type]


def held(store: MemoryStore, key: PoolKey = KEY) -> Dict[int, str]:
    return {o: a.podref for o, a in store.read_pool(key).allocations.items()}


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_pool(Pool(KEY, {
        2: owner("ns/live"), 3: owner("ns/gone"), 4: owner("ns/done"),
        5: owner("ns/pending"), 6: owner("ns/nostatus"), 7: owner("ns/moved"),
    }))
    return s


@pytest.fixture
def cluster(store: MemoryStore) -> Cluster:
    return Cluster(store, {
        "ns/live": view("ns/live", ips={"net1": ["10.0.0.2"]}),
        "ns/done": view("ns/done", "Succeeded"),
        "ns/pending": view("ns/pending", "Pending"),
        "ns/nostatus": view("ns/nostatus"),
        "ns/moved": view("ns/moved", ips={"net1": ["10.0.0.99"]}),
    })


def test_frees_orphans_and_keeps_the_rest(store: MemoryStore, cluster: Cluster) -> None:
    events = Events()
    tally = run(store, cluster, events=events)
    assert held(store) == {2: "ns/live", 5: "ns/pending", 6: "ns/nostatus"}
    assert (tally.pools_checked, tally.allocations_freed, tally.errors) == (1, 3, 0)
    assert sorted((f.podref, str(f.address), f.reason) for f in events.freed) == [
        ("ns/done", "10.0.0.4", "pod-terminal"),
        ("ns/gone", "10.0.0.3", "pod-gone"),
        ("ns/moved", "10.0.0.7", "not-in-network-status"),
    ]
    assert {f.pool for f in events.freed} == {"10.0.0.0-24"}
    assert "pools checked: 1, allocations freed: 3" in tally.summary()


def test_pools_and_reservations_are_read_before_pods_are_listed(
        store: MemoryStore, cluster: Cluster) -> None:
    run(store, cluster)
    ops = [op for op, _ in store.calls]
    assert ops.index("list_pools") < ops.index("list_pods")
    assert ops.index("list_reservations") < ops.index("list_pods")
    assert cluster.gets == []  # no conflict: no look-ups


def test_one_write_per_pool(store: MemoryStore, cluster: Cluster) -> None:
    store.put_pool(Pool(KEY6, {1: owner("ns/gone6")}))
    run(store, cluster)
    writes = [name for op, name in store.calls if op == "write_pool"]
    assert sorted(writes) == ["10.0.0.0-24", "fd00---64"]
    assert held(store, KEY6) == {}


def test_nothing_to_free_writes_nothing() -> None:
    store = MemoryStore()
    store.put_pool(Pool(KEY, {2: owner("ns/live")}))
    cluster = Cluster(store, {"ns/live": view("ns/live", "Pending")})
    tally = run(store, cluster)
    assert tally.allocations_freed == 0
    assert not [c for c in store.calls if c[0] == "write_pool"]


def test_empty_store_lists_no_pods() -> None:
    store = MemoryStore()
    cluster = Cluster(store)
    assert run(store, cluster).pools_checked == 0
    assert cluster.lists == 0


def test_dry_run_changes_nothing(store: MemoryStore, cluster: Cluster) -> None:
    store.put_reservation(Reservation(ReservationKey("", ipaddress.ip_address("10.0.0.3")),
                                      Owner("", "ns/gone", "net1")))
    before = held(store)
    events = Events()
    tally = run(store, cluster, dry_run=True, events=events)
    assert held(store) == before
    assert tally.allocations_freed == 3 and tally.reservations_freed == 1
    assert sorted(f.podref for f in tally.freed) == ["ns/done", "ns/gone", "ns/moved"]
    assert tally.freed_reservations == ["10.0.0.3"]
    assert events.freed == []
    assert not [c for c in store.calls if c[0] in ("write_pool", "delete_reservation")]
    assert "would free" in tally.summary(dry_run=True)


# ---------------------------------------------------------------- reservations


def reservation(address: str, podref: str, ifname: str = "net1",
                created: Optional[float] = OLD, network: str = "") -> Reservation:
    return Reservation(ReservationKey(network, ipaddress.ip_address(address)),
                       Owner("", podref, ifname), created=created)


def test_reservation_of_a_freed_entry_is_deleted_after_the_pool_write(
        store: MemoryStore, cluster: Cluster) -> None:
    store.put_reservation(reservation("10.0.0.3", "ns/gone"))
    store.put_reservation(reservation("10.0.0.2", "ns/live"))
    tally = run(store, cluster)
    names = {r.key.name for r in store.list_reservations()}
    assert names == {"10.0.0.2"}
    assert tally.reservations_freed == 1
    ops = [(op, n) for op, n in store.calls if op in ("write_pool", "delete_reservation")]
    assert ops == [("write_pool", "10.0.0.0-24"), ("delete_reservation", "10.0.0.3")]


def test_reservation_is_kept_when_the_pool_write_fails(store: MemoryStore,
                                                       cluster: Cluster) -> None:
    store.put_reservation(reservation("10.0.0.3", "ns/gone"))
    store.conflicts = 10**6
    tally = run(store, cluster)
    assert tally.errors == 1
    assert [r.key.name for r in store.list_reservations()] == ["10.0.0.3"]


def test_lonely_reservations() -> None:
    store = MemoryStore()
    store.put_reservation(reservation("10.0.0.10", "ns/gone"))
    store.put_reservation(reservation("10.0.0.11", "ns/pending"))  # ADD in flight
    store.put_reservation(reservation("10.0.0.12", "ns/other", created=NOW - 5))
    store.put_reservation(reservation("10.0.0.13", "ns/other", created=OLD))
    cluster = Cluster(store, {
        "ns/pending": view("ns/pending", "Pending"),
        "ns/other": view("ns/other", ips={"net1": ["10.0.0.50"]}),
    })
    tally = run(store, cluster)
    assert sorted(r.key.name for r in store.list_reservations()) == ["10.0.0.11", "10.0.0.12"]
    assert tally.reservations_freed == 2
    assert sorted(tally.freed_reservations) == ["10.0.0.10", "10.0.0.13"]


def test_lonely_reservation_adopted_meanwhile_is_kept() -> None:
    # After the decision, an ADD of a same-name pod adopts the reservation and writes
    # the pool: the re-check before the delete sees the pool entry and the pod.
    cluster = Cluster(MemoryStore(), {})

    class Adopting(MemoryStore):
        def read_pool(self, key: PoolKey) -> Pool:
            if "ns/sts-0" not in cluster.pods:
                cluster.pods["ns/sts-0"] = view("ns/sts-0", "Pending", uid="new")
                self.put_pool(Pool(KEY, {10: owner("ns/sts-0", cid="new")}))
            return super().read_pool(key)

    store = Adopting()
    cluster.store = store
    store.put_pool(Pool(KEY, {}))
    store.put_reservation(reservation("10.0.0.10", "ns/sts-0"))
    tally = run(store, cluster)
    assert [r.key.name for r in store.list_reservations()] == ["10.0.0.10"]
    assert tally.reservations_freed == 0
    assert cluster.gets == ["ns/sts-0"]


def test_named_network_reservations_match_their_pools() -> None:
    store = MemoryStore()
    named = PoolKey("blue", ipaddress.ip_network("10.0.0.0/24"))
    store.put_pool(Pool(named, {5: owner("ns/a")}))
    store.put_reservation(reservation("10.0.0.5", "ns/a", network="blue"))
    cluster = Cluster(store, {"ns/a": view("ns/a", ips={"net1": ["10.0.0.5"]})})
    assert run(store, cluster).reservations_freed == 0
    del cluster.pods["ns/a"]
    tally = run(store, cluster)
    assert (tally.allocations_freed, tally.reservations_freed) == (1, 1)
    assert store.list_reservations() == []


# ---------------------------------------------------------------- conflicts


def test_a_conflict_is_retried(store: MemoryStore, cluster: Cluster) -> None:
    store.conflicts = 2
    tally = run(store, cluster)
    assert tally.errors == 0 and tally.allocations_freed == 3
    assert held(store) == {2: "ns/live", 5: "ns/pending", 6: "ns/nostatus"}


def test_conflict_from_a_same_name_pod_readopting_keeps_the_address(
        store: MemoryStore, cluster: Cluster) -> None:
    # Between the decision and the write, ns/gone is recreated (StatefulSet) and its
    # ADD re-adopts offset 3 (new container id): the re-decision looks it up and keeps it.
    fired = []

    def readopt(op: str, name: str) -> None:
        if op == "write_pool" and not fired:
            fired.append(1)
            pool = store.read_pool(KEY)
            allocations = dict(pool.allocations)
            allocations[3] = owner("ns/gone", cid="new")
            store.put_pool(pool.with_allocations(allocations))
            cluster.pods["ns/gone"] = view("ns/gone", "Pending", uid="new", creation_timestamp=NOW)

    store.before_write = readopt
    tally = run(store, cluster)
    assert held(store) == {2: "ns/live", 3: "ns/gone", 5: "ns/pending", 6: "ns/nostatus"}
    assert tally.allocations_freed == 2 and tally.errors == 0
    assert cluster.gets == ["ns/gone"]


def test_conflict_from_an_add_of_a_new_pod_keeps_its_entry(store: MemoryStore,
                                                          cluster: Cluster) -> None:
    fired = []

    def add(op: str, name: str) -> None:
        if op == "write_pool" and not fired:
            fired.append(1)
            pool = store.read_pool(KEY)
            store.put_pool(pool.with_allocations({**pool.allocations, 9: owner("ns/new")}))
            cluster.pods["ns/new"] = view("ns/new", "Pending", creation_timestamp=NOW)

    store.before_write = add
    tally = run(store, cluster)
    assert 9 in held(store)
    assert tally.allocations_freed == 3
    assert "ns/new" in cluster.gets


def test_conflict_where_someone_else_freed_it_counts_nothing_twice(
        store: MemoryStore, cluster: Cluster) -> None:
    fired = []

    def other_reconciler(op: str, name: str) -> None:
        if op == "write_pool" and not fired:
            fired.append(1)
            pool = store.read_pool(KEY)
            store.put_pool(pool.with_allocations(
                {k: v for k, v in pool.allocations.items() if v.podref != "ns/gone"}))

    store.before_write = other_reconciler
    tally = run(store, cluster)
    assert tally.allocations_freed == 2
    assert held(store) == {2: "ns/live", 5: "ns/pending", 6: "ns/nostatus"}


def test_one_pool_failing_does_not_stop_the_others(store: MemoryStore,
                                                   cluster: Cluster) -> None:
    store.put_pool(Pool(KEY6, {1: owner("ns/gone6")}))

    def block_v4(op: str, name: str) -> None:
        if op == "write_pool" and name == KEY.name:
            from whereabouts.errors import ConflictError
            raise ConflictError("always")

    store.before_write = block_v4
    tally = run(store, cluster)
    assert tally.errors == 1
    assert held(store, KEY6) == {}
    assert len(held(store)) == 6


def test_unreachable_store_raises() -> None:
    store = MemoryStore()
    store.unavailable = True
    with pytest.raises(Exception, match="unavailable"):
        run(store, Cluster(store))


def test_two_overlapping_runs_are_safe(store: MemoryStore, cluster: Cluster) -> None:
    store.put_reservation(reservation("10.0.0.3", "ns/gone"))
    barrier = threading.Barrier(2, timeout=10)

    class Racing(Cluster):
        def list_pods(self, wanted: Set[str]) -> Dict[str, PodView]:
            found = super().list_pods(wanted)
            barrier.wait()  # both have read everything before either writes
            return found

    racing = Racing(store, cluster.pods)
    results: List[Tally] = []

    def one() -> None:
        results.append(run(store, racing, policy=RetryPolicy(deadline=5)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 2
    assert sum(r.allocations_freed for r in results) == 3
    assert sum(r.reservations_freed for r in results) == 1
    assert sum(r.errors for r in results) == 0
    assert held(store) == {2: "ns/live", 5: "ns/pending", 6: "ns/nostatus"}
    assert store.list_reservations() == []


def test_one_pass_after_a_storm_leaves_exactly_the_live_attachments() -> None:
    # 200 entries over two pools; a third of the pods were deleted without DEL, some
    # finished; one pass must leave only entries of pods that still hold them.
    store = MemoryStore()
    pods: Dict[str, PodView] = {}
    entries4, entries6 = {}, {}
    for i in range(1, 201):
        ref = f"ns/p{i}"
        entries4[i] = owner(ref)
        entries6[i] = owner(ref)
        if i % 3 == 0:
            continue  # deleted
        phase = "Failed" if i % 7 == 0 else "Running"
        pods[ref] = view(ref, phase, ips={"net1": [f"10.0.{i // 256}.{i % 256}", f"fd00::{i:x}"]})
    store.put_pool(Pool(KEY, entries4))
    store.put_pool(Pool(KEY6, entries6))
    store.conflicts = 3
    tally = run(store, Cluster(store, pods))
    live = {ref for ref, v in pods.items() if not v.terminal}
    assert set(held(store).values()) == live
    assert set(held(store, KEY6).values()) == live
    assert tally.errors == 0
    again = run(store, Cluster(store, pods))
    assert again.allocations_freed == 0


def test_pool_whose_name_does_not_match_its_key_is_skipped() -> None:
    store = MemoryStore()
    store.put_pool(Pool(KEY, {3: owner("ns/gone")},
                        raw={"metadata": {"name": "node1-10.0.0.0-24-x"}}))
    tally = run(store, Cluster(store))
    assert tally.pools_checked == 0 and held(store) == {3: "ns/gone"}


def test_cleaner_caches_lookups(store: MemoryStore, cluster: Cluster) -> None:
    cleaner = Cleaner(store, cluster, 60.0)
    assert cleaner.lookup("ns/live") is not None
    assert cleaner.lookup("ns/live") is not None
    assert cluster.gets == ["ns/live"]


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize(("text", "seconds"), [
    ("60", 60.0), ("60s", 60.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("500ms", 0.5), ("0", 0.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 m", "m", "-1", "5x", "1h-2m"])
def test_parse_duration_rejects(text: str) -> None:
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_reconcile_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHEREABOUTS_NAMESPACE", raising=False)
    args = parse_args([])
    assert (args.namespace, args.grace_period, args.dry_run, args.kubeconfig) == (
        "kube-system", 60.0, False, None)
    monkeypatch.setenv("WHEREABOUTS_NAMESPACE", "wa")
    args = parse_args(["--grace-period", "5m", "--dry-run", "--log-level", "DEBUG",
                       "--kubeconfig", "/k"])
    assert (args.namespace, args.grace_period, args.dry_run, args.log_level, args.kubeconfig) == (
        "wa", 300.0, True, "debug", "/k")


# ---------------------------------------------------------------- pods and events over a transport


class Transport:
    """A double of our own kube.api.Transport: canned answers, in order."""

    def __init__(self, answers: List[Any]) -> None:
        self.answers = answers
        self.requests: List[Any] = []

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Dict[str, Any]:
        self.requests.append((method, path, body))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def pod_json(name: str, phase: str = "Running") -> Dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}"},
            "spec": {"nodeName": "n1"}, "status": {"phase": phase}}


def test_pod_list_pages_filters_and_restarts_on_expired_continue() -> None:
    from whereabouts.controllers.pods import KubePods
    from whereabouts.kube.api import ApiError

    t = Transport([
        {"items": [pod_json("a"), pod_json("b")], "metadata": {"continue": "tok1"}},
        ApiError("expired", "Expired", 410),
        {"items": [pod_json("a")], "metadata": {"continue": "tok2"}},
        {"items": [pod_json("c"), {"metadata": {}}], "metadata": {"resourceVersion": "77"}},
    ])
    pods, rv = KubePods(t, page_size=2).list(field_selector="spec.nodeName=n1",
                                            wanted=lambda v: v.podref != "ns/b")
    assert sorted(pods) == ["ns/a", "ns/c"] and rv == "77"
    paths = [p for _, p, _ in t.requests]
    assert paths[0] == "/api/v1/pods?limit=2&fieldSelector=spec.nodeName%3Dn1"
    assert paths[1].endswith("&continue=tok1")
    assert "continue" not in paths[2]  # started over
    assert paths[3].endswith("&continue=tok2")


def test_pod_get_maps_404_to_none() -> None:
    from whereabouts.controllers.pods import KubePods
    from whereabouts.kube.api import NotFoundError

    t = Transport([pod_json("a", "Failed"), NotFoundError("gone")])
    got = KubePods(t).get("ns/a")
    assert got is not None and got.terminal and got.uid == "u-a"
    assert KubePods(t).get("ns/b") is None
    assert [p for _, p, _ in t.requests] == ["/api/v1/namespaces/ns/pods/a",
                                             "/api/v1/namespaces/ns/pods/b"]
    assert KubePods(t).get("no-slash") is None


def test_events_are_recorded_on_the_pod_and_stop_when_forbidden_or_over_the_limit() -> None:
    from whereabouts.controllers.pods import KubeEvents
    from whereabouts.kube.api import ApiError

    freed = Freed("ns/a", "u-a", ipaddress.ip_address("10.0.0.3"), "10.0.0.0-24", "net1",
                  "pod-gone")
    t = Transport([{}, OSError("boom"), ApiError("forbidden", "Forbidden", 403)])
    events = KubeEvents(t, "whereabouts-test", host="n1")
    events.emit(freed)
    method, path, body = t.requests[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/ns/events")
    assert body["reason"] == "IPAddressGarbageCollected"
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "ns",
                                      "name": "a", "uid": "u-a"}
    assert "successful cleanup of IP address [10.0.0.3]" in body["message"]
    events.emit(freed)  # an error is logged, not raised
    events.emit(freed)  # 403: no more attempts
    events.emit(freed)
    assert len(t.requests) == 3
    limited = KubeEvents(Transport([{}, {}]), "c", host="h", limit=1)
    limited.emit(freed)
    limited.emit(freed)
    assert limited.sent == 1
