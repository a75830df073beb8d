"""Long-running and scheduled cleanup: the reconciler (CronJob) and the node agent.

Both ask :func:`whereabouts.reconcile.find_orphans` what to free and apply the answer
here, with the same compare-and-swap discipline as the allocation engine:

* a pool write removes exactly the entries decided on, against the version read;
* on a conflict the pool is re-read, the pods of entries that are new, changed or
  were not known to exist are looked up by name, and the decision is taken again;
* an entry's overlapping-range reservation is deleted only after its pool write
  succeeded, and only while it still belongs to that owner (delete-if-unchanged).

Nothing here imports the ``kubernetes`` client; the entry points do, lazily.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import (
    AbstractSet,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
)

from ..errors import ConflictError, TryAgainLaterError
from ..kube.official import OfficialTransport
from ..model import IPAddress, Owner, Pool, Reservation, ReservationKey
from ..reconcile import (
    FREE_REASONS,
    OrphanAllocation,
    OrphanReservation,
    PodView,
    Scope,
    containing,
    everything,
    find_orphans,
)
from ..retry import Backoff, RetryPolicy
from ..storage.base import Store

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "kube-system"
NAMESPACE_ENV = "WHEREABOUTS_NAMESPACE"
EVENT_REASON = "IPAddressGarbageCollected"


class PodLookup(Protocol):
    def get(self, podref: str) -> Optional[PodView]:
        """The pod as it is now, None when it does not exist."""


class EventSink(Protocol):
    def emit(self, pod: Freed) -> None:
        """Record that ``pod``'s address was freed; failures are the sink's to log."""


class NoEvents:
    def emit(self, pod: Freed) -> None:
        pass


@dataclass(frozen=True)
class Freed:
    """One address given back, for events and the summary."""

    podref: str
    uid: str
    address: IPAddress
    pool: str
    """The IPPool's name (``[network_name-]<range>``)."""
    ifname: str
    reason: str


@dataclass
class Tally:
    pools_checked: int = 0
    allocations_freed: int = 0
    reservations_freed: int = 0
    errors: int = 0
    freed: List[Freed] = field(default_factory=list)
    freed_reservations: List[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.pools_checked += other.pools_checked
        self.allocations_freed += other.allocations_freed
        self.reservations_freed += other.reservations_freed
        self.errors += other.errors
        self.freed.extend(other.freed)
        self.freed_reservations.extend(other.freed_reservations)

    def summary(self, dry_run: bool = False) -> str:
        verb = "would free" if dry_run else "freed"
        return (
            f"pools checked: {self.pools_checked}, allocations {verb}: "
            f"{self.allocations_freed}, reservations {verb}: {self.reservations_freed}, "
            f"errors: {self.errors}"
        )


@dataclass
class Cleaner:
    """Applies decisions to a store. One per pass (it caches pod look-ups)."""

    store: Store
    pods: PodLookup
    grace_seconds: float
    scope: Scope = everything
    free_reasons: AbstractSet[str] = FREE_REASONS
    events: EventSink = field(default_factory=NoEvents)
    dry_run: bool = False
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(deadline=30.0,
                                                                    max_delay=1.0))
    clock: Callable[[], float] = time.time
    looked_up: Dict[str, Optional[PodView]] = field(default_factory=dict)

    def lookup(self, podref: str) -> Optional[PodView]:
        """The pod by name, once per pass."""
        if podref not in self.looked_up:
            self.looked_up[podref] = self.pods.get(podref)
        return self.looked_up[podref]

    def free_in_pool(
        self,
        pool: Pool,
        orphans: Sequence[OrphanAllocation],
        known: Mapping[str, PodView],
        reservations: Optional[Sequence[Reservation]],
    ) -> Tally:
        """Remove ``orphans`` from ``pool`` (as read), re-deciding after every conflict.

        ``known`` are the pods the first decision used (absent: gone). ``reservations``
        is the listed snapshot that links entries to their reservations, or None to
        look each freed address's reservation up by name.
        """
        tally = Tally()
        pods: Dict[str, PodView] = dict(known)
        confirmed: Set[str] = set()
        backoff = Backoff(self.policy)
        snapshot, doomed = pool, list(orphans)
        while doomed:
            if self.dry_run:
                break
            gone = {o.offset for o in doomed}
            kept = {k: v for k, v in snapshot.allocations.items() if k not in gone}
            try:
                self.store.write_pool(snapshot.with_allocations(kept))
                break
            except ConflictError as exc:
                log.info("pool %s changed while freeing (%s); re-reading", pool.key.name,
                         exc.msg)
                if not backoff.wait():
                    raise TryAgainLaterError(
                        f"pool {pool.key.name}: gave up freeing after "
                        f"{backoff.attempts} conflicts"
                    ) from exc
            fresh = self.store.read_pool(pool.key)
            self._refresh(pods, confirmed, snapshot, fresh)
            decided = find_orphans([fresh], reservations or (), pods, now=self.clock(),
                                   grace_seconds=self.grace_seconds, scope=self.scope,
                                   free_reasons=self.free_reasons)
            snapshot, doomed = fresh, list(decided.allocations)
        for orphan in doomed:
            tally.allocations_freed += 1
            pod = pods.get(orphan.owner.podref)
            freed = Freed(orphan.owner.podref, pod.uid if pod else "", orphan.address,
                          pool.key.name, orphan.owner.ifname, orphan.reason)
            tally.freed.append(freed)
            log.info("%s %s of %s (%s) in pool %s: %s",
                     "would free" if self.dry_run else "freed", orphan.address,
                     orphan.owner.podref, orphan.owner.ifname or "-", pool.key.name,
                     orphan.reason)
            if self.dry_run:
                if orphan.reservation is not None:
                    tally.reservations_freed += 1
                    tally.freed_reservations.append(orphan.reservation.key.name)
                continue
            dropped = self._drop_reservation(orphan, reservations)
            if dropped is not None:
                tally.reservations_freed += 1
                tally.freed_reservations.append(dropped)
            self.events.emit(freed)
        return tally

    def _refresh(
        self, pods: Dict[str, PodView], confirmed: Set[str], before: Pool, after: Pool
    ) -> None:
        """Look up the pods of entries that are new or changed since ``before`` (a
        same-name pod's ADD re-adopted it), and once the pods of entries not known to
        exist (a same-name pod may have appeared since the list)."""
        for offset, owner in after.allocations.items():
            if not owner.podref or not self.scope(owner):
                continue
            changed = before.allocations.get(offset) != owner
            if not changed and (owner.podref in pods or owner.podref in confirmed):
                continue
            confirmed.add(owner.podref)
            self.looked_up.pop(owner.podref, None)
            view = self.lookup(owner.podref)
            if view is None:
                pods.pop(owner.podref, None)
            else:
                pods[owner.podref] = view

    def _drop_reservation(
        self, orphan: OrphanAllocation, reservations: Optional[Sequence[Reservation]]
    ) -> Optional[str]:
        """Delete the freed entry's reservation if it still is that owner's; its name."""
        reservation = orphan.reservation
        try:
            if reservation is None and reservations is None:
                found = self.store.read_reservation(
                    ReservationKey(orphan.pool.network_name, orphan.address))
                if found is not None and _same_attachment(found.owner, orphan.owner):
                    reservation = found
            if reservation is None:
                return None
            if self.store.delete_reservation(reservation):
                log.info("freed reservation %s of %s", reservation.key.name,
                         orphan.owner.podref)
                return reservation.key.name
            log.info("reservation %s changed or vanished; left alone", reservation.key.name)
        except Exception:  # one reservation must not stop the pass; the next one retries
            log.exception("could not delete the reservation of %s", orphan.address)
        return None

    def free_reservation(
        self,
        lonely: OrphanReservation,
        pools: Sequence[Pool],
        reread: Optional[Dict[str, Pool]] = None,
    ) -> Tally:
        """Delete a reservation no pool entry backs, after checking again: the pools
        holding its address are re-read (once per ``reread`` cache, shared by the
        reservations of a pass) and its pod looked up by name."""
        tally = Tally()
        reservation = lonely.reservation
        name = reservation.key.name
        cache: Dict[str, Pool] = {} if reread is None else reread
        fresh = []
        for pool in containing(pools, reservation.key):
            if pool.key.name not in cache:
                cache[pool.key.name] = self.store.read_pool(pool.key)
            fresh.append(cache[pool.key.name])
        podref = reservation.owner.podref
        self.looked_up.pop(podref, None)
        view = self.lookup(podref)
        decided = find_orphans(fresh, [reservation], {podref: view} if view else {},
                               now=self.clock(), grace_seconds=self.grace_seconds,
                               scope=self.scope, free_reasons=self.free_reasons)
        if not decided.reservations:
            log.info("reservation %s of %s is in use again; kept", name, podref)
            return tally
        reason = decided.reservations[0].reason
        log.info("%s reservation %s of %s: %s", "would free" if self.dry_run else "freeing",
                 name, podref, reason)
        if self.dry_run or self.store.delete_reservation(reservation):
            tally.reservations_freed += 1
            tally.freed_reservations.append(name)
        else:
            log.info("reservation %s changed or vanished; left alone", name)
        return tally


_skipped: Set[str] = set()


def writable(pools: Sequence[Pool]) -> List[Pool]:
    """The pools whose key reproduces their object name. A pool read under a name that
    does not end in its normalised range would be written to another object: it is
    left alone, with a warning."""
    kept = []
    for pool in pools:
        metadata = (pool.raw or {}).get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if name is not None and name != pool.key.name:
            if name not in _skipped:
                _skipped.add(name)
                log.warning("skipping IPPool %s: its name does not follow "
                            "[network_name-]<range> (read as %s)", name, pool.key.name)
            continue
        kept.append(pool)
    return kept


def _same_attachment(a: Owner, b: Owner) -> bool:
    return a.podref == b.podref and a.ifname == b.ifname


# ---------------------------------------------------------------- command-line helpers

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds from ``60``, ``60s``, ``5m``, ``1h30m``, ``1.5h``, ``500ms``."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for m in _DURATION.finditer(value):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * units[m.group(2)]
            pos = m.end()
        if pos != len(value) or not value:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 60, 60s, 5m, 1h30m)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return seconds


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster config, else $KUBECONFIG "
                             "or ~/.kube/config)")
    parser.add_argument("--namespace", default=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE,
                        help=f"namespace of the IPPool and OverlappingRangeIPReservation "
                             f"objects (default: ${NAMESPACE_ENV} or {DEFAULT_NAMESPACE})")
    parser.add_argument("--grace-period", type=parse_duration, default=60.0, metavar="DURATION",
                        help="never free the address of a pod younger than this, or a "
                             "reservation younger than this (default 60s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        type=str.lower, help="log verbosity (default info)")


def connect(kubeconfig: Optional[str], timeout: float = 30.0) -> OfficialTransport:
    """The official client's transport: ``kubeconfig`` if given; else the pod's
    ServiceAccount in a cluster; else ``$KUBECONFIG`` (its first file) or
    ``~/.kube/config``."""
    if not kubeconfig and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        default = os.path.expanduser("~/.kube/config")
        kubeconfig = paths[0] if paths else (default if os.path.exists(default) else None)
    return OfficialTransport(kubeconfig=kubeconfig, timeout=timeout)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The client library logs every request at debug; keep it one level quieter.
    if level.lower() == "debug":
        logging.getLogger("urllib3").setLevel(logging.INFO)


def seen(items: Set[str], item: str, limit: int = 10000) -> bool:
    """Remember ``item`` in a bounded set; True when it was already there."""
    if item in items:
        return True
    if len(items) >= limit:
        items.clear()
    items.add(item)
    return False
