"""The orphan decision (whereabouts.reconcile): one test per rule, plus properties."""

from __future__ import annotations

import ipaddress
import json
from typing import Dict, Optional, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whereabouts import reconcile as rc
from whereabouts.controllers.pods import parse_network_status, parse_time, pod_view
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.reconcile import PodView, find_orphans, judge

NOW = 1_700_000_000.0
GRACE = 60.0
OLD = NOW - 3600
NET = ipaddress.ip_network("10.0.0.0/24")
KEY = PoolKey("", NET)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def running(
    podref: str = "default/a",
    status: Optional[Dict[str, Sequence[str]]] = None,
    **kw: object,
) -> PodView:
    interfaces = {k: rc.parse_ips(v) for k, v in (status or {}).items()}
    args: Dict[str, object] = {
        "podref": podref,
        "phase": "Running",
        "creation_timestamp": OLD,
        "has_network_status": status is not None,
        "interfaces": interfaces,
    }
    args.update(kw)
    return PodView(**args)  # type: ignore[arg-type]


OWNER = Owner("c1", "default/a", "net1", "node1")
ADDR = ip("10.0.0.5")


def verdict(pod: Optional[PodView], owner: Owner = OWNER, address: ipaddress.IPv4Address = ADDR,
            now: float = NOW) -> rc.Verdict:
    return judge(owner, address, pod, now, GRACE)


# ---------------------------------------------------------------- one test per rule


def test_entry_without_podref_is_kept() -> None:
    assert verdict(None, Owner("c1", "", "net1")) == rc.Verdict(False, rc.NO_PODREF)


def test_gone_pod_is_freed() -> None:
    assert verdict(None) == rc.Verdict(True, rc.POD_GONE)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_pod_is_freed(phase: str) -> None:
    assert verdict(running(phase=phase)) == rc.Verdict(True, rc.POD_TERMINAL)


def test_young_pod_is_never_freed_even_if_terminal_or_mismatched() -> None:
    young = NOW - 10
    assert verdict(running(phase="Failed", creation_timestamp=young)).reason == rc.POD_YOUNG
    pod = running(status={"net1": ["10.0.0.9"]}, creation_timestamp=young)
    assert verdict(pod) == rc.Verdict(False, rc.POD_YOUNG)


def test_terminating_pod_is_kept() -> None:
    pod = running(status={"net1": ["10.0.0.9"]}, deletion_timestamp=NOW - 1000)
    assert verdict(pod) == rc.Verdict(False, rc.POD_TERMINATING)


@pytest.mark.parametrize("phase", ["Pending", "Unknown", ""])
def test_pod_not_running_is_kept(phase: str) -> None:
    # upstream #162: a Pending pod without the IP in its status is mid-ADD.
    assert verdict(running(phase=phase, status={"net1": []})).reason == rc.POD_NOT_RUNNING


def test_running_pod_without_network_status_is_kept() -> None:
    assert verdict(running()) == rc.Verdict(False, rc.NO_NETWORK_STATUS)


def test_running_pod_listing_the_address_is_kept() -> None:
    assert verdict(running(status={"net1": ["10.0.0.5"]})).reason == rc.IN_NETWORK_STATUS


def test_address_listed_on_another_interface_is_kept() -> None:
    pod = running(status={"net1": ["10.0.0.9"], "net2": ["10.0.0.5"]})
    assert verdict(pod).reason == rc.IN_NETWORK_STATUS


def test_entry_without_ifname_is_only_freed_with_its_pod() -> None:
    owner = Owner("c1", "default/a", "")
    assert verdict(running(status={"net1": ["10.0.0.9"]}), owner).reason == rc.NO_IFNAME
    assert verdict(None, owner).free


def test_status_without_the_interface_is_kept() -> None:
    pod = running(status={"eth0": ["10.244.0.3"]})
    assert verdict(pod) == rc.Verdict(False, rc.INTERFACE_NOT_IN_STATUS)


def test_sandbox_being_rebuilt_is_kept() -> None:
    pod = running(status={"net1": ["10.0.0.9"]}, sandbox_ready=False)
    assert verdict(pod) == rc.Verdict(False, rc.SANDBOX_NOT_READY)


def test_recently_ready_sandbox_is_kept() -> None:
    pod = running(status={"net1": ["10.0.0.9"]}, sandbox_ready=True, sandbox_ready_since=NOW - 5)
    assert verdict(pod) == rc.Verdict(False, rc.SANDBOX_RECENT)


def test_running_pod_whose_interface_shows_other_ips_is_freed() -> None:
    pod = running(status={"net1": ["10.0.0.9"]}, sandbox_ready=True, sandbox_ready_since=OLD)
    assert verdict(pod) == rc.Verdict(True, rc.NOT_IN_NETWORK_STATUS)
    # Without the sandbox condition (older clusters) the pod's age is the only guard.
    assert verdict(running(status={"net1": ["10.0.0.9"]})).free


def test_statefulset_pod_recreated_under_the_same_name_keeps_its_address() -> None:
    # Same podref, new uid: starting (no status yet) or showing the address -> keep.
    starting = running(uid="new", phase="Pending", creation_timestamp=NOW - 1)
    assert not verdict(starting).free
    no_status_yet = running(uid="new")
    assert not verdict(no_status_yet).free
    shows_it = running(uid="new", status={"net1": ["10.0.0.5"]})
    assert not verdict(shows_it).free


def test_unknown_creation_time_does_not_count_as_young() -> None:
    assert verdict(running(phase="Succeeded", creation_timestamp=None)).free


# ---------------------------------------------------------------- find_orphans


def pool(entries: Dict[int, Owner], key: PoolKey = KEY) -> Pool:
    return Pool(key, entries, version="1")


def res(
    address: str, owner: Owner, network: str = "", created: Optional[float] = None
) -> Reservation:
    return Reservation(ReservationKey(network, ip(address)), owner, "7", created)


def test_find_orphans_frees_only_the_orphans_and_counts_the_rest() -> None:
    a = Owner("c1", "default/a", "net1", "n1")
    b = Owner("c2", "default/b", "net1", "n1")
    c = Owner("c3", "default/c", "net1", "n2")
    pods = {"default/b": running("default/b", phase="Pending"),
            "default/c": running("default/c", phase="Succeeded")}
    out = find_orphans([pool({5: a, 6: b, 7: c})], [], pods, now=NOW, grace_seconds=GRACE)
    assert [(o.offset, o.reason) for o in out.allocations] == [
        (5, rc.POD_GONE), (7, rc.POD_TERMINAL)]
    assert out.allocations[0].address == ip("10.0.0.5")
    assert out.kept == {rc.POD_NOT_RUNNING: 1}
    assert out.reservations == ()
    assert list(out.by_pool()) == [KEY]


def test_scope_limits_what_is_freed() -> None:
    a = Owner("c1", "default/a", "net1", "n1")
    b = Owner("c2", "default/b", "net1", "n2")
    out = find_orphans([pool({5: a, 6: b})], [], {}, now=NOW, grace_seconds=GRACE,
                       scope=lambda o: o.node == "n1")
    assert [o.offset for o in out.allocations] == [5]


def test_reservation_of_a_freed_allocation_goes_with_it() -> None:
    a = Owner("c1", "default/a", "net1")
    r = res("10.0.0.5", Owner("", "default/a", "net1"))
    out = find_orphans([pool({5: a})], [r], {}, now=NOW, grace_seconds=GRACE)
    assert out.allocations[0].reservation == r
    assert out.reservations == ()


def test_reservation_of_another_owner_is_not_linked() -> None:
    a = Owner("c1", "default/a", "net1")
    r = res("10.0.0.5", Owner("", "default/x", "net1"))
    pods = {"default/x": running("default/x", phase="Pending")}
    out = find_orphans([pool({5: a})], [r], pods, now=NOW, grace_seconds=GRACE)
    assert out.allocations[0].reservation is None
    assert out.reservations == ()  # x is alive and pending: its ADD may be in flight


def test_reservation_backed_by_a_pool_entry_is_kept() -> None:
    a = Owner("c1", "default/a", "net1")
    r = res("10.0.0.5", Owner("", "default/a", "net1"))
    pods = {"default/a": running(status={"net1": ["10.0.0.5"]})}
    out = find_orphans([pool({5: a})], [r], pods, now=NOW, grace_seconds=GRACE)
    assert not out
    assert out.kept == {rc.IN_NETWORK_STATUS: 1, rc.ALLOCATED: 1}


def test_reservation_backed_by_an_out_of_scope_entry_is_kept() -> None:
    a = Owner("c1", "default/a", "net1", "n2")
    r = res("10.0.0.5", Owner("", "default/a", "net1"))
    out = find_orphans([pool({5: a})], [r], {}, now=NOW, grace_seconds=GRACE,
                       scope=lambda o: o.node in ("n1", None))
    assert not out


def test_reservation_in_another_network_is_not_backed_by_this_pool() -> None:
    a = Owner("c1", "default/a", "net1")
    r = res("10.0.0.5", Owner("", "default/a", "net1"), network="blue")
    pods = {"default/a": running(status={"net1": ["10.0.0.5"]})}
    out = find_orphans([pool({5: a})], [r], pods, now=NOW, grace_seconds=GRACE)
    assert out.reservations == ()  # status lists it: kept by the owner rule


def test_lonely_reservation_of_a_gone_pod_is_freed() -> None:
    r = res("10.0.0.5", Owner("", "default/a", "net1"))
    out = find_orphans([], [r], {}, now=NOW, grace_seconds=GRACE)
    assert [(o.reservation, o.reason) for o in out.reservations] == [(r, rc.POD_GONE)]


def test_lonely_reservation_of_a_live_pod_mid_add_is_kept() -> None:
    # Reservations are created before the pool write: a pending pod's ADD is in flight.
    r = res("10.0.0.5", Owner("", "default/a", "net1"))
    for pod in (running(phase="Pending"), running(creation_timestamp=NOW - 1), running()):
        assert not find_orphans([], [r], {"default/a": pod}, now=NOW, grace_seconds=GRACE)


def test_young_lonely_reservation_is_kept_even_if_the_owner_shows_other_ips() -> None:
    owner = Owner("", "default/a", "net1")
    pods = {"default/a": running(status={"net1": ["10.0.0.9"]})}
    young = res("10.0.0.5", owner, created=NOW - 5)
    out = find_orphans([], [young], pods, now=NOW, grace_seconds=GRACE)
    assert not out and out.kept == {rc.RESERVATION_YOUNG: 1}
    old = res("10.0.0.5", owner, created=OLD)
    out = find_orphans([], [old], pods, now=NOW, grace_seconds=GRACE)
    assert [o.reason for o in out.reservations] == [rc.NOT_IN_NETWORK_STATUS]


def test_podrefs_and_containing() -> None:
    a = Owner("c1", "default/a", "net1")
    p = pool({5: a, 6: Owner("c", "", "")})
    r = res("10.0.0.5", Owner("", "default/r", "net1"))
    assert rc.podrefs([p], [r]) == {"default/a", "default/r"}
    other = Pool(PoolKey("blue", NET), {})
    v6 = Pool(PoolKey("", ipaddress.ip_network("fd00::/64")), {})
    assert rc.containing([p, other, v6], r.key) == [p]


# ---------------------------------------------------------------- pod parsing


def test_parse_time() -> None:
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20.5Z") == 1_700_000_000.5
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_parse_network_status() -> None:
    text = json.dumps([
        {"name": "kindnet", "interface": "eth0", "ips": ["10.244.1.4"], "default": True},
        {"name": "default/macvlan", "interface": "net1", "ips": ["10.0.0.5", "fd00::5"]},
        {"name": "old-multus", "ips": ["10.9.9.9/24"]},
        "junk",
        {"name": "bad", "interface": "net9", "ips": ["not-an-ip", 7]},
    ])
    parsed = parse_network_status(text)
    assert parsed is not None
    assert parsed["net1"] == {ip("10.0.0.5"), ipaddress.ip_address("fd00::5")}
    assert parsed[""] == {ip("10.9.9.9")}
    assert parsed["net9"] == frozenset()
    assert parse_network_status("{") is None
    assert parse_network_status('{"a": 1}') is None
    assert parse_network_status(None) is None


def pod_obj(**status: object) -> Dict[str, object]:
    return {
        "metadata": {
            "namespace": "ns", "name": "p", "uid": "u1", "resourceVersion": "9",
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "annotations": {
                "k8s.v1.cni.cncf.io/network-status":
                    '[{"name":"ns/m","interface":"net1","ips":["10.0.0.5"]}]',
            },
        },
        "spec": {"nodeName": "node1"},
        "status": dict(status),
    }


def test_pod_view_from_api_object() -> None:
    obj = pod_obj(phase="Running", conditions=[
        {"type": "PodReadyToStartContainers", "status": "True",
         "lastTransitionTime": "2023-11-14T22:13:30Z"},
    ])
    view = pod_view(obj)
    assert view is not None
    assert (view.podref, view.uid, view.phase, view.node) == ("ns/p", "u1", "Running", "node1")
    assert view.creation_timestamp == 1_700_000_000.0
    assert view.deletion_timestamp is None
    assert view.has_network_status and view.lists(ip("10.0.0.5"))
    assert (view.sandbox_ready, view.sandbox_ready_since) == (True, 1_700_000_010.0)


def test_pod_view_sandbox_not_ready_and_bad_status() -> None:
    obj = pod_obj(phase="Running", conditions=[{"type": "PodReadyToStartContainers",
                                                "status": "False"}])
    obj["metadata"]["annotations"] = {  # type: ignore[index]
        "k8s.v1.cni.cncf.io/network-status": "not json"}
    view = pod_view(obj)
    assert view is not None
    assert view.sandbox_ready is False and view.sandbox_ready_since is None
    assert not view.has_network_status


def test_pod_view_reads_the_legacy_annotation_and_rejects_nameless() -> None:
    obj = pod_obj()
    obj["metadata"]["annotations"] = {  # type: ignore[index]
        "k8s.v1.cni.cncf.io/networks-status": '[{"interface":"net1","ips":["10.0.0.7"]}]'}
    view = pod_view(obj)
    assert view is not None and view.lists(ip("10.0.0.7"))
    assert pod_view({"metadata": {"namespace": "x"}}) is None
    assert pod_view({}) is None


# ---------------------------------------------------------------- properties

phases = st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown", ""])
offsets = st.integers(min_value=1, max_value=30)
names = st.sampled_from(["default/a", "default/b", "default/c", "other/a"])
ifnames = st.sampled_from(["net1", "net2", ""])
times = st.one_of(st.none(), st.floats(min_value=NOW - 1000, max_value=NOW + 10))


@st.composite
def pod_views(draw: st.DrawFn, podref: str) -> PodView:
    status = draw(st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["net1", "net2", "eth0", ""]),
        st.frozensets(offsets.map(lambda o: NET.network_address + o), max_size=3),
        max_size=3)))
    return PodView(
        podref=podref,
        phase=draw(phases),
        creation_timestamp=draw(times),
        deletion_timestamp=draw(st.one_of(st.none(), st.just(NOW - 5))),
        has_network_status=status is not None,
        interfaces=status or {},
        sandbox_ready=draw(st.sampled_from([None, True, False])),
        sandbox_ready_since=draw(times),
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Pool, Dict[str, PodView], list[Reservation]]:
    entries = draw(st.dictionaries(offsets, st.builds(
        Owner, st.text("abc", min_size=1, max_size=2), names, ifnames), max_size=10))
    refs = draw(st.sets(names))
    pods = {ref: draw(pod_views(ref)) for ref in refs}
    reservations = [
        Reservation(ReservationKey("", NET.network_address + o), owner, "1", draw(times))
        for o, owner in draw(st.dictionaries(offsets, st.builds(
            Owner, st.just(""), names, ifnames), max_size=5)).items()
    ]
    return Pool(KEY, entries, "1"), pods, reservations


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_never_frees_what_a_live_pod_lists(world: tuple[Pool, Dict[str, PodView],
                                                        list[Reservation]]) -> None:
    p, pods, reservations = world
    out = find_orphans([p], reservations, pods, now=NOW, grace_seconds=GRACE)
    for orphan in out.allocations:
        pod = pods.get(orphan.owner.podref)
        if pod is not None and not pod.terminal:
            assert not pod.lists(orphan.address)
            assert pod.phase == "Running" and pod.deletion_timestamp is None
            assert pod.has_network_status and orphan.owner.ifname in pod.interfaces
        if pod is not None:
            assert pod.creation_timestamp is None or NOW - pod.creation_timestamp >= GRACE
    for lonely in out.reservations:
        pod = pods.get(lonely.reservation.owner.podref)
        assert pod is None or pod.terminal or not pod.lists(lonely.address)
        # never while a pool entry of the same owner holds the address
        for offset, owner in p.allocations.items():
            if p.address(offset) == lonely.address:
                assert (owner.podref, owner.ifname) != (lonely.reservation.owner.podref,
                                                       lonely.reservation.owner.ifname)


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_freeing_is_idempotent(world: tuple[Pool, Dict[str, PodView], list[Reservation]]) -> None:
    # A second pass over the result of the first frees nothing more (storm recovery:
    # one pass leaves the pools matching the pods).
    p, pods, reservations = world
    out = find_orphans([p], reservations, pods, now=NOW, grace_seconds=GRACE)
    freed = {o.offset for o in out.allocations}
    gone = {o.reservation.key.name for o in out.allocations if o.reservation is not None}
    gone |= {o.reservation.key.name for o in out.reservations}
    after = Pool(KEY, {k: v for k, v in p.allocations.items() if k not in freed}, "2")
    left = [r for r in reservations if r.key.name not in gone]
    assert not find_orphans([after], left, pods, now=NOW, grace_seconds=GRACE)
