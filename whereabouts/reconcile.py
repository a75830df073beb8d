"""The one decision about what is orphaned, shared by every cleanup path.

The CronJob reconciler, the node agent (``whereabouts controlloop``) and the CNI GC
path all ask the same question: which recorded allocations (and overlapping-range
reservations) belong to no live attachment any more? They differ only in what they
have read; the answer comes from :func:`find_orphans`, which is pure: no I/O, no
clock, no Kubernetes client. Callers pass snapshots and ``now``.

The rules lean towards keeping. A leaked address costs one address until the next
pass; a wrongly freed one is a duplicate on the wire. So an allocation is freed only
when its pod is *demonstrably* done with it:

=====================================================  ======  =======================
situation                                              action  reason
=====================================================  ======  =======================
entry without podref (not made for a pod)              keep    ``no-podref``
pod not found                                          free    ``pod-gone``
pod younger than the grace period                      keep    ``pod-young``
phase Succeeded or Failed                              free    ``pod-terminal``
pod terminating (deletionTimestamp set)                keep    ``pod-terminating``
phase Pending / Unknown / anything but Running         keep    ``pod-not-running``
no (or unparsable) network-status annotation           keep    ``no-network-status``
network-status lists the address (any interface)       keep    ``in-network-status``
entry without ifname (written before upstream v0.8)    keep    ``no-ifname``
network-status has no entry for the interface          keep    ``interface-not-in-status``
PodReadyToStartContainers is False (sandbox rebuilt)   keep    ``sandbox-not-ready``
sandbox network ready for less than the grace period   keep    ``sandbox-recent``
Running, status shows the interface with other IPs     free    ``not-in-network-status``
=====================================================  ======  =======================

The rules apply top to bottom; the first that matches decides. "Pod" means the pod
named by the allocation's podref *as the caller knows it now*: a StatefulSet pod
recreated under the same name is that pod, so it keeps the address while it is
starting (no status yet) or when its status shows the address.

An overlapping-range reservation is judged by the same rules for its owner and
address, and is freed only when, in addition:

* no pool entry that stays holds the address for the same owner (podref + ifname);
  the reservation of an allocation freed in this pass is attached to that
  allocation instead (``OrphanAllocation.reservation``), to be deleted only after the
  pool write succeeded;
* it is older than the grace period when the store knows its creation time
  (reservations are created *before* the pool write, so a fresh reservation without
  a pool entry is an ADD in flight).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import (
    AbstractSet,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from .model import IPAddress, Owner, Pool, PoolKey, Reservation, ReservationKey

PHASE_RUNNING = "Running"
TERMINAL_PHASES: FrozenSet[str] = frozenset({"Succeeded", "Failed"})

# Reasons to free.
POD_GONE = "pod-gone"
POD_TERMINAL = "pod-terminal"
NOT_IN_NETWORK_STATUS = "not-in-network-status"
# Reasons to keep.
NO_PODREF = "no-podref"
POD_YOUNG = "pod-young"
POD_TERMINATING = "pod-terminating"
POD_NOT_RUNNING = "pod-not-running"
NO_NETWORK_STATUS = "no-network-status"
IN_NETWORK_STATUS = "in-network-status"
NO_IFNAME = "no-ifname"
INTERFACE_NOT_IN_STATUS = "interface-not-in-status"
SANDBOX_NOT_READY = "sandbox-not-ready"
SANDBOX_RECENT = "sandbox-recent"
# Reasons to keep a reservation.
ALLOCATED = "allocated"
RESERVATION_YOUNG = "reservation-young"

FREE_REASONS: FrozenSet[str] = frozenset({POD_GONE, POD_TERMINAL, NOT_IN_NETWORK_STATUS})


@dataclass(frozen=True)
class PodView:
    """What the decision needs to know about one pod, parsed from the API object
    (see ``whereabouts.controllers.pods.pod_view``). Times are seconds since the epoch."""

    podref: str
    """``namespace/name``, as allocations record it."""
    uid: str = ""
    phase: str = ""
    node: Optional[str] = None
    creation_timestamp: Optional[float] = None
    deletion_timestamp: Optional[float] = None
    has_network_status: bool = False
    """The ``k8s.v1.cni.cncf.io/network-status`` annotation is present and parses."""
    interfaces: Mapping[str, FrozenSet[IPAddress]] = field(
        default_factory=dict, hash=False, compare=False
    )
    """network-status IPs by interface name ("" for entries that name none)."""
    sandbox_ready: Optional[bool] = None
    """The PodReadyToStartContainers condition (None: the pod does not report it)."""
    sandbox_ready_since: Optional[float] = None
    """lastTransitionTime of that condition while it is True."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def all_ips(self) -> FrozenSet[IPAddress]:
        found: Set[IPAddress] = set()
        for ips in self.interfaces.values():
            found.update(ips)
        return frozenset(found)

    def lists(self, address: IPAddress) -> bool:
        """The pod's network-status shows ``address`` on some interface."""
        return any(address in ips for ips in self.interfaces.values())


@dataclass(frozen=True)
class Verdict:
    free: bool
    reason: str


def judge(
    owner: Owner,
    address: IPAddress,
    pod: Optional[PodView],
    now: float,
    grace_seconds: float,
) -> Verdict:
    """Whether the attachment ``owner`` is done with ``address``; see the module table.

    ``pod`` is the pod named by ``owner.podref`` as the caller knows it now, None when
    the caller knows it does not exist.
    """
    if not owner.podref:
        return Verdict(False, NO_PODREF)
    if pod is None:
        return Verdict(True, POD_GONE)
    if _younger(pod.creation_timestamp, now, grace_seconds):
        return Verdict(False, POD_YOUNG)
    if pod.terminal:
        return Verdict(True, POD_TERMINAL)
    if pod.deletion_timestamp is not None:
        # Still being torn down: kubelet's DEL releases it, or the pod turns terminal or
        # vanishes and a later pass does. A pod stuck here on a dead node keeps its
        # address until it is force-deleted (upstream frees it; that risks a duplicate
        # when the node comes back).
        return Verdict(False, POD_TERMINATING)
    if pod.phase != PHASE_RUNNING:
        # Pending pods are mid-ADD: upstream #162/#207 freed them and got duplicates.
        return Verdict(False, POD_NOT_RUNNING)
    if not pod.has_network_status:
        # Without Multus status there is no evidence either way (upstream freed all).
        return Verdict(False, NO_NETWORK_STATUS)
    if pod.lists(address):
        return Verdict(False, IN_NETWORK_STATUS)
    if not owner.ifname:
        return Verdict(False, NO_IFNAME)
    if owner.ifname not in pod.interfaces:
        # The status may not cover this network (another meta-plugin, partial status).
        return Verdict(False, INTERFACE_NOT_IN_STATUS)
    if pod.sandbox_ready is False:
        # The sandbox is being rebuilt: its ADD may hold this address before Multus
        # rewrites the status.
        return Verdict(False, SANDBOX_NOT_READY)
    if _younger(pod.sandbox_ready_since, now, grace_seconds):
        return Verdict(False, SANDBOX_RECENT)
    return Verdict(True, NOT_IN_NETWORK_STATUS)


def _younger(since: Optional[float], now: float, grace_seconds: float) -> bool:
    return since is not None and now - since < grace_seconds


@dataclass(frozen=True)
class OrphanAllocation:
    """A pool entry to remove (compare-and-swap), and the reservation to delete after."""

    pool: PoolKey
    offset: int
    owner: Owner
    reason: str
    reservation: Optional[Reservation] = None
    """The overlapping-range reservation of this address held by the same owner, to
    delete once the pool write has succeeded (never before: the reservation is what
    keeps an overlapping pool from handing the address out)."""

    @property
    def address(self) -> IPAddress:
        return self.pool.range.network_address + self.offset


@dataclass(frozen=True)
class OrphanReservation:
    """A reservation no pool entry backs and whose owner is done with the address."""

    reservation: Reservation
    reason: str

    @property
    def address(self) -> IPAddress:
        return self.reservation.key.address


@dataclass(frozen=True)
class Orphans:
    allocations: Tuple[OrphanAllocation, ...] = ()
    reservations: Tuple[OrphanReservation, ...] = ()
    kept: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False)
    """How many in-scope allocations and reservations were kept, by reason."""

    def __bool__(self) -> bool:
        return bool(self.allocations or self.reservations)

    def by_pool(self) -> Dict[PoolKey, List[OrphanAllocation]]:
        grouped: Dict[PoolKey, List[OrphanAllocation]] = {}
        for orphan in self.allocations:
            grouped.setdefault(orphan.pool, []).append(orphan)
        return grouped


Scope = Callable[[Owner], bool]


def everything(owner: Owner) -> bool:
    return True


def find_orphans(
    pools: Sequence[Pool],
    reservations: Sequence[Reservation],
    pods: Mapping[str, PodView],
    *,
    now: float,
    grace_seconds: float,
    scope: Scope = everything,
    free_reasons: AbstractSet[str] = FREE_REASONS,
) -> Orphans:
    """Which allocations and reservations to free.

    ``pods`` must hold every pod the caller knows to exist among the podrefs in scope:
    a podref missing from it counts as a pod that is gone. The reconciler guarantees
    that by listing pods *after* reading the pools (a pool entry's pod object exists
    before its CNI ADD); the node agent by looking up each candidate pod by name.

    ``scope`` limits which owners are considered at all (the node agent: entries made
    on its node, or of one pod); entries out of scope are never freed but still count
    as holders of their reservations. ``free_reasons`` limits which rules may free (the
    node agent frees only for ``pod-gone`` and ``pod-terminal``); a verdict to free for
    another reason keeps the entry.
    """
    by_address: Dict[Tuple[str, IPAddress, str, str], Reservation] = {}
    for reservation in reservations:
        by_address[_holder(reservation.key, reservation.owner)] = reservation

    kept: Dict[str, int] = {}
    freed: List[OrphanAllocation] = []
    linked: Set[str] = set()
    held: Set[Tuple[str, IPAddress, str, str]] = set()
    for pool in pools:
        for offset in sorted(pool.allocations):
            owner = pool.allocations[offset]
            address = pool.address(offset)
            holder = _holder(ReservationKey(pool.key.network_name, address), owner)
            if not scope(owner):
                held.add(holder)
                continue
            verdict = _decide(
                owner,
                address,
                pods,
                now=now,
                grace_seconds=grace_seconds,
                free_reasons=free_reasons,
            )
            if not verdict.free:
                held.add(holder)
                _count(kept, verdict.reason)
                continue
            freed.append(
                OrphanAllocation(pool.key, offset, owner, verdict.reason, by_address.get(holder))
            )
    # A reservation goes with its freed allocation unless another entry of the same
    # owner and address stays (overlapping pools; out of scope).
    for i, orphan in enumerate(freed):
        if orphan.reservation is None:
            continue
        if _holder(orphan.reservation.key, orphan.owner) in held:
            freed[i] = replace(orphan, reservation=None)
        else:
            linked.add(orphan.reservation.key.name)

    lonely: List[OrphanReservation] = []
    for reservation in reservations:
        owner = reservation.owner
        if reservation.key.name in linked or not scope(owner):
            continue
        if _holder(reservation.key, owner) in held:
            _count(kept, ALLOCATED)
            continue
        verdict = _decide(
            owner,
            reservation.key.address,
            pods,
            now=now,
            grace_seconds=grace_seconds,
            free_reasons=free_reasons,
        )
        if not verdict.free:
            _count(kept, verdict.reason)
            continue
        if _younger(reservation.created, now, grace_seconds):
            _count(kept, RESERVATION_YOUNG)
            continue
        lonely.append(OrphanReservation(reservation, verdict.reason))
    return Orphans(tuple(freed), tuple(lonely), kept)


def _decide(
    owner: Owner,
    address: IPAddress,
    pods: Mapping[str, PodView],
    *,
    now: float,
    grace_seconds: float,
    free_reasons: AbstractSet[str],
) -> Verdict:
    verdict = judge(owner, address, pods.get(owner.podref), now, grace_seconds)
    if verdict.free and verdict.reason not in free_reasons:
        return Verdict(False, verdict.reason)
    return verdict


def _holder(key: ReservationKey, owner: Owner) -> Tuple[str, IPAddress, str, str]:
    return (key.network_name, key.address, owner.podref, owner.ifname)


def _count(counter: Dict[str, int], reason: str) -> None:
    counter[reason] = counter.get(reason, 0) + 1


def podrefs(pools: Iterable[Pool], reservations: Iterable[Reservation] = ()) -> Set[str]:
    """Every podref some allocation or reservation names (what a pod index needs)."""
    refs = {owner.podref for pool in pools for owner in pool.allocations.values()}
    refs.update(r.owner.podref for r in reservations)
    refs.discard("")
    return refs


def containing(pools: Iterable[Pool], key: ReservationKey) -> List[Pool]:
    """The pools of the reservation's network whose range holds its address."""
    return [
        p
        for p in pools
        if p.key.network_name == key.network_name
        and p.key.range.version == key.address.version
        and key.address in p.key.range
    ]


def parse_ips(values: Iterable[object]) -> FrozenSet[IPAddress]:
    """Addresses from network-status ``ips`` (plain, or with a prefix); junk skipped."""
    found: Set[IPAddress] = set()
    for value in values:
        if not isinstance(value, str):
            continue
        try:
            found.add(ipaddress.ip_interface(value.strip()).ip)
        except ValueError:
            continue
    return frozenset(found)


__all__ = [
    "FREE_REASONS",
    "TERMINAL_PHASES",
    "OrphanAllocation",
    "OrphanReservation",
    "Orphans",
    "PodView",
    "Scope",
    "Verdict",
    "containing",
    "everything",
    "find_orphans",
    "judge",
    "parse_ips",
    "podrefs",
]


RUNTIME_FORGOT = "not-in-valid-attachments"


def forgotten_by_runtime(
    owner: Owner, node: str, valid: AbstractSet[Tuple[str, str]]
) -> Optional[str]:
    """CNI GC's rule: the reason to free an allocation, or None to keep it.

    The container runtime knows only its own node's attachments, so only entries
    recorded on ``node`` are judged; an entry without a node (written by upstream, or
    before the node was known) is left to the reconciler, which can see pods.
    """
    if owner.node != node:
        return None
    if (owner.container_id, owner.ifname) in valid:
        return None
    return RUNTIME_FORGOT


def reservation_forgotten_by_runtime(
    reservation: Reservation,
    node: str,
    valid: AbstractSet[Tuple[str, str]],
    backed: bool,
    now: float,
    grace_seconds: float,
) -> Optional[str]:
    """CNI GC's rule for an overlapping-range reservation: the reason to delete it, or None.

    Only reservations made on ``node`` for an attachment the runtime no longer knows,
    backed by no pool entry (``backed``), and older than the grace period: a fresh one
    without a pool entry is an ADD in flight (reservations precede the pool write).
    """
    if forgotten_by_runtime(reservation.owner, node, valid) is None or backed:
        return None
    if reservation.created is None or _younger(reservation.created, now, grace_seconds):
        return None
    return RUNTIME_FORGOT
