"""The node agent (`whereabouts controlloop`): per-event logic, resync, and the loop."""

from __future__ import annotations

import ipaddress
import json
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

from whereabouts.controllers import Freed
from whereabouts.controllers.podloop import Gate, NodeAgent, parse_args, run
from whereabouts.controllers.pods import PodsGone
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.reconcile import PodView, parse_ips
from whereabouts.retry import RetryPolicy
from whereabouts.storage.memory import MemoryStore

NOW = 1_700_000_000.0
OLD_STAMP = "2023-11-14T21:00:00Z"  # more than an hour before NOW
KEY = PoolKey("", ipaddress.ip_network("10.0.0.0/24"))
NODE = "node1"


def pod(name: str, phase: str = "Running", node: str = NODE, *, ns: str = "ns",
        created: str = OLD_STAMP, uid: Optional[str] = None,
        status: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
    annotations = {}
    if status is not None:
        annotations["k8s.v1.cni.cncf.io/network-status"] = json.dumps(
            [{"name": "ns/net", "interface": k, "ips": v} for k, v in status.items()])
    return {
        "metadata": {"namespace": ns, "name": name, "uid": uid or f"uid-{name}",
                     "creationTimestamp": created, "resourceVersion": "1",
                     "annotations": annotations},
        "spec": {"nodeName": node},
        "status": {"phase": phase},
    }


def view(name: str, phase: str = "Running", node: str = NODE, **kw: object) -> PodView:
    args: Dict[str, object] = {"podref": f"ns/{name}", "uid": f"uid-{name}", "phase": phase,
                                   "node": node, "creation_timestamp": NOW - 3600}
    args.update(kw)
    return PodView(**args)  # type: ignore[arg-type]


class Api:
    """Pods by podref as a GET would find them; counts the GETs."""

    def __init__(self, pods: Optional[Dict[str, PodView]] = None) -> None:
        self.pods = dict(pods or {})
        self.gets: List[str] = []
        self.fail = False

    def get(self, podref: str) -> Optional[PodView]:
        self.gets.append(podref)
        if self.fail:
            raise OSError("api down")
        return self.pods.get(podref)


class Events:
    def __init__(self) -> None:
        self.freed: List[Freed] = []

    def emit(self, pod: Freed) -> None:
        self.freed.append(pod)


def owner(name: str, node: Optional[str] = NODE, ifname: str = "net1") -> Owner:
    return Owner(f"c-{name}", f"ns/{name}", ifname, node)


def held(store: MemoryStore) -> Dict[int, str]:
    return {o: a.podref for o, a in store.read_pool(KEY).allocations.items()}


def agent(store: MemoryStore, api: Api, events: Optional[Events] = None) -> NodeAgent:
    return NodeAgent(store, api, NODE, 60.0, events=events, clock=lambda: NOW,
                     policy=RetryPolicy(deadline=0.5, first_delay=0.001, max_delay=0.005))


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put_pool(Pool(KEY, {
        2: owner("a"), 3: owner("a", node=None, ifname="net2"), 4: owner("a", node="node2",
                                                                         ifname="net3"),
        5: owner("b"), 6: owner("c", node="node2"),
    }))
    return s


# ---------------------------------------------------------------- events


def test_deleted_pod_frees_its_entries_on_this_node_or_without_node(store: MemoryStore) -> None:
    events = Events()
    tally = agent(store, Api(), events).handle("DELETED", pod("a"))
    assert held(store) == {4: "ns/a", 5: "ns/b", 6: "ns/c"}
    assert tally.allocations_freed == 2 and tally.errors == 0
    assert sorted(str(f.address) for f in events.freed) == ["10.0.0.2", "10.0.0.3"]
    assert {f.reason for f in events.freed} == {"pod-gone"}
    assert events.freed[0].uid == ""  # gone: no uid known from the look-up


def test_deleted_pod_recreated_under_the_same_name_keeps_its_address(store: MemoryStore) -> None:
    api = Api({"ns/a": view("a", "Pending", uid="new")})
    tally = agent(store, api).handle("DELETED", pod("a"))
    assert tally.allocations_freed == 0
    assert 2 in held(store)
    assert api.gets == ["ns/a"]  # looked up after the pools were read


def test_deleted_pod_alive_on_another_node_keeps_its_address(store: MemoryStore) -> None:
    api = Api({"ns/a": view("a", node="node2")})
    assert agent(store, api).handle("DELETED", pod("a")).allocations_freed == 0


def test_pods_are_looked_up_after_the_pools_are_read(store: MemoryStore) -> None:
    order: List[str] = []

    class Recording(Api):
        def get(self, podref: str) -> Optional[PodView]:
            order.append("get")
            return super().get(podref)

    original = store.list_pools

    def list_pools() -> List[Pool]:
        order.append("list_pools")
        return original()

    store.list_pools = list_pools  # type: ignore[method-assign]
    agent(store, Recording()).handle("DELETED", pod("a"))
    assert order[:2] == ["list_pools", "get"]


def test_finished_pod_is_freed_once(store: MemoryStore) -> None:
    api = Api({"ns/b": view("b", "Succeeded")})
    a = agent(store, api)
    assert a.handle("MODIFIED", pod("b", "Succeeded")).allocations_freed == 1
    assert 5 not in held(store)
    lists = sum(1 for op, _ in store.calls if op == "list_pools")
    assert a.handle("MODIFIED", pod("b", "Succeeded")).allocations_freed == 0
    assert sum(1 for op, _ in store.calls if op == "list_pools") == lists


def test_finished_event_is_checked_against_the_pod_as_it_is_now(store: MemoryStore) -> None:
    # A stale "Failed" event of an old incarnation; the same-name pod now runs.
    api = Api({"ns/b": view("b", "Running", uid="new")})
    assert agent(store, api).handle("MODIFIED", pod("b", "Failed")).allocations_freed == 0
    assert 5 in held(store)


def test_young_finished_pod_is_kept(store: MemoryStore) -> None:
    api = Api({"ns/b": view("b", "Failed", creation_timestamp=NOW - 5)})
    assert agent(store, api).handle("MODIFIED", pod("b", "Failed")).allocations_freed == 0


@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED"])
def test_live_pod_events_touch_nothing(store: MemoryStore, kind: str) -> None:
    api = Api()
    assert agent(store, api).handle(kind, pod("a", "Running")).pools_checked == 0
    assert store.calls == [] and api.gets == []


def test_event_of_another_node_is_ignored(store: MemoryStore) -> None:
    assert agent(store, Api()).handle("DELETED", pod("c", node="node2")).pools_checked == 0
    assert 6 in held(store)


def test_pod_without_entries_costs_one_pool_list(store: MemoryStore) -> None:
    api = Api()
    tally = agent(store, api).handle("DELETED", pod("zzz"))
    assert tally.pools_checked == 1 and api.gets == []
    assert [op for op, _ in store.calls] == ["list_pools"]


def test_never_frees_a_running_pod_whatever_its_status(store: MemoryStore) -> None:
    # The node agent frees only gone or finished pods; status mismatches are the
    # reconciler's call.
    api = Api({"ns/a": view("a", has_network_status=True,
                            interfaces={"net1": parse_ips(["10.0.0.99"])})})
    assert agent(store, api).handle("DELETED", pod("a")).allocations_freed == 0


def test_reservation_of_a_freed_entry_is_deleted_by_name(store: MemoryStore) -> None:
    mine = store.put_reservation(Reservation(ReservationKey("", ipaddress.ip_address("10.0.0.2")),
                                             Owner("", "ns/a", "net1")))
    theirs = store.put_reservation(Reservation(
        ReservationKey("", ipaddress.ip_address("10.0.0.3")), Owner("", "ns/x", "net2")))
    tally = agent(store, Api()).handle("DELETED", pod("a"))
    assert tally.reservations_freed == 1
    assert store.list_reservations() == [theirs]
    assert mine.key.name not in {r.key.name for r in store.list_reservations()}


def test_failure_is_retried_later(store: MemoryStore) -> None:
    api = Api()
    a = agent(store, api)
    store.unavailable = True
    tally = a.handle("DELETED", pod("a"))
    assert tally.errors == 1 and a.pending == {"ns/a"}
    store.unavailable = False
    assert a.retry_pending().allocations_freed == 2
    assert a.pending == set()
    assert a.retry_pending().pools_checked == 0


def test_conflict_is_retried(store: MemoryStore) -> None:
    store.conflicts = 2
    assert agent(store, Api()).handle("DELETED", pod("a")).allocations_freed == 2


def test_persistent_conflict_leaves_the_pod_pending(store: MemoryStore) -> None:
    store.conflicts = 10**6
    a = agent(store, Api())
    assert a.handle("DELETED", pod("a")).errors == 1
    assert a.pending == {"ns/a"}


# ---------------------------------------------------------------- resync


def test_resync_frees_entries_of_pods_deleted_while_down(store: MemoryStore) -> None:
    store.put_pool(Pool(KEY, {
        2: owner("a"), 3: owner("gone"), 4: owner("moved"), 5: owner("moved-done"),
        6: owner("finished"), 7: owner("orphan-elsewhere", node="node2"),
        8: owner("unknown-node", node=None), 9: owner("new"),
    }))
    api = Api({
        "ns/a": view("a"),
        "ns/moved": view("moved", node="node2"),
        "ns/moved-done": view("moved-done", "Succeeded", node="node2"),
        "ns/finished": view("finished", "Failed"),
        "ns/new": view("new", "Pending", creation_timestamp=NOW),  # created after the list
    })
    listed = {"ns/a": view("a"), "ns/finished": view("finished", "Failed")}
    events = Events()
    tally = agent(store, api, events).resync(listed)
    assert held(store) == {2: "ns/a", 4: "ns/moved", 7: "ns/orphan-elsewhere",
                           8: "ns/unknown-node", 9: "ns/new"}
    assert tally.allocations_freed == 3 and tally.errors == 0
    assert sorted(api.gets) == ["ns/finished", "ns/gone", "ns/moved", "ns/moved-done", "ns/new"]
    assert sorted((f.podref, f.reason) for f in events.freed) == [
        ("ns/finished", "pod-terminal"), ("ns/gone", "pod-gone"),
        ("ns/moved-done", "pod-terminal")]


def test_resync_with_everything_alive_writes_nothing(store: MemoryStore) -> None:
    api = Api()
    listed = {"ns/a": view("a"), "ns/b": view("b")}
    tally = agent(store, api).resync(listed)
    assert tally.allocations_freed == 0 and api.gets == []
    assert [op for op, _ in store.calls] == ["list_pools"]


def test_resync_failure_is_reported_not_raised(store: MemoryStore) -> None:
    api = Api()
    api.fail = True
    assert agent(store, api).resync({}).errors == 1


# ---------------------------------------------------------------- the loop


class ScriptedSource:
    """Scripted list/watch results; stops the loop when the script runs out."""

    def __init__(self, stop: threading.Event,
                 lists: List[Tuple[Dict[str, PodView], str]],
                 watches: List[Any]) -> None:
        self.stop = stop
        self.lists = lists
        self.watches = watches
        self.calls: List[Tuple[str, str]] = []

    def list(self) -> Tuple[Dict[str, PodView], str]:
        self.calls.append(("list", ""))
        return self.lists.pop(0)

    def watch(self, since: str, seconds: int) -> Iterator[Tuple[str, Mapping[str, Any]]]:
        self.calls.append(("watch", since))
        if not self.watches:
            self.stop.set()
            return
        step = self.watches.pop(0)
        if isinstance(step, BaseException):
            raise step
        yield from step


def test_loop_resyncs_watches_and_relists_on_410(store: MemoryStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    deleted = pod("a")
    deleted["metadata"]["resourceVersion"] = "11"
    bookmark = {"metadata": {"resourceVersion": "12"}}
    source = ScriptedSource(stop, lists=[({"ns/a": view("a"), "ns/b": view("b")}, "10"),
                                     ({"ns/b": view("b")}, "20")],
                        watches=[[("DELETED", deleted), ("BOOKMARK", bookmark)],
                                 PodsGone("too old"),
                                 OSError("connection reset"),
                                 []])
    monkeypatch.setattr("whereabouts.controllers.podloop.random.uniform", lambda a, b: 0.0)
    run(agent(store, Api()), source, stop, resync_seconds=300, clock=lambda: 0.0)
    assert held(store) == {4: "ns/a", 5: "ns/b", 6: "ns/c"}
    # 410 -> list again; a broken connection -> resume from the same resourceVersion.
    assert source.calls == [("list", ""), ("watch", "10"), ("watch", "12"), ("list", ""),
                            ("watch", "20"), ("watch", "20"), ("watch", "20")]


def test_loop_resyncs_after_the_period(store: MemoryStore) -> None:
    stop = threading.Event()
    now = [0.0]

    def clock() -> float:
        now[0] += 200.0
        return now[0]

    source = ScriptedSource(stop, lists=[({}, "1"), ({}, "2"), ({}, "3")], watches=[[], []])
    run(agent(store, Api()), source, stop, resync_seconds=300, clock=clock)
    assert [c for c, _ in source.calls].count("list") >= 2


def test_loop_exits_when_stopped(store: MemoryStore) -> None:
    stop = threading.Event()
    stop.set()
    source = ScriptedSource(stop, lists=[], watches=[])
    run(agent(store, Api()), source, stop, resync_seconds=300)
    assert source.calls == []


# ---------------------------------------------------------------- command line


def test_controlloop_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODENAME", "worker-1")
    monkeypatch.delenv("WHEREABOUTS_NAMESPACE", raising=False)
    args = parse_args([])
    assert (args.node_name, args.namespace, args.resync_period, args.grace_period) == (
        "worker-1", "kube-system", 300.0, 60.0)
    args = parse_args(["--node-name", "n2", "--resync-period", "1m", "--token-expiration",
                       "2h", "--cni-conf-dir", "/etc/cni/net.d", "--plugin-service-account",
                       "wa-plugin"])
    assert (args.node_name, args.resync_period, args.token_expiration, args.cni_conf_dir,
            args.plugin_service_account) == ("n2", 60.0, 7200.0, "/etc/cni/net.d", "wa-plugin")
    monkeypatch.delenv("NODENAME")
    with pytest.raises(SystemExit):
        parse_args([])


LISTED = {"ns/a": view("a"), "ns/b": view("b")}


def test_stop_signal_while_waiting_for_an_event_leaves_at_once(store: MemoryStore) -> None:
    stop = threading.Event()
    gate = Gate(stop)

    class Blocking(ScriptedSource):
        def watch(self, since: str, seconds: int) -> Iterator[Tuple[str, Mapping[str, Any]]]:
            self.calls.append(("watch", since))
            stop.set()
            gate.interrupt()  # what the SIGTERM handler does while we wait in the read
            yield ("DELETED", pod("a"))

    source = Blocking(stop, lists=[(LISTED, "1")], watches=[])
    run(agent(store, Api()), source, stop, resync_seconds=300, gate=gate)
    assert 2 in held(store)  # the event after the signal was not handled
    assert source.calls == [("list", ""), ("watch", "1")]


def test_stop_signal_during_a_write_lets_it_finish(store: MemoryStore) -> None:
    stop = threading.Event()
    gate = Gate(stop)

    class Signalled(Api):
        def get(self, podref: str) -> Optional[PodView]:
            stop.set()
            gate.interrupt()  # not idle: must not raise
            return super().get(podref)

    source = ScriptedSource(stop, lists=[(LISTED, "1")], watches=[[("DELETED", pod("a"))]])
    run(agent(store, Signalled()), source, stop, resync_seconds=300, gate=gate)
    assert held(store) == {4: "ns/a", 5: "ns/b", 6: "ns/c"}


def test_token_refresher_calls_the_installer_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from whereabouts import install
    from whereabouts.controllers.podloop import start_token_refresher

    stop = threading.Event()
    calls: List[Dict[str, Any]] = []

    class Result:
        state = "s1"

        def next_refresh_delay(self) -> float:
            return 0.01

    def refresh(conf_dir: Any, sa: str, **kw: Any) -> Result:
        calls.append({"conf_dir": str(conf_dir), "sa": sa, **kw})
        if len(calls) == 2:
            raise install.InstallError("API down")
        if len(calls) >= 4:
            stop.set()
        return Result()

    monkeypatch.setattr(install, "refresh_plugin_kubeconfig", refresh)
    monkeypatch.setattr(install, "RETRY_SECONDS", 0.01)
    thread = start_token_refresher("/etc/cni/net.d", "wa-cni", "wa", 3600, stop)
    thread.join(10)
    assert not thread.is_alive()
    assert calls[0] == {"conf_dir": "/etc/cni/net.d", "sa": "wa-cni", "state": None,
                        "namespace": "wa", "expiration_seconds": 3600}
    assert calls[1]["state"] == "s1" and calls[2]["state"] == "s1"  # kept across a failure


def test_token_expiration_below_the_api_minimum_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "n", "--token-expiration", "5m"])
    assert parse_args(["--node-name", "n", "--token-expiration-seconds", "3600"]
                      ).token_expiration == 3600.0
