"""``whereabouts reconcile``: one cluster-wide cleanup pass (the chart's CronJob).

Order matters, so that an ADD in flight is never mistaken for an orphan:

1. read every IPPool and OverlappingRangeIPReservation of the namespace;
2. *then* list the pods (paged). A pool entry's pod object exists before its CNI ADD
   runs, so every entry read in step 1 has its pod in this list, unless the pod is gone;
3. decide with :func:`whereabouts.reconcile.find_orphans`;
4. per pool, remove the orphans with compare-and-swap. A conflict re-reads that pool,
   looks up by name the pods of entries that are new or changed (a same-name pod's ADD)
   or whose pod was not listed, decides again and retries with backoff. One pool's
   trouble is counted and logged; the pass goes on with the other pools (upstream's
   aborted the whole run on the first conflict);
5. delete the reservations of the freed entries, then the reservations no entry backs,
   each re-checked just before (its pools re-read, its pod looked up) and deleted only
   if unchanged since read (a delete precondition).

Two passes at once are safe: every write is a compare-and-swap, so the slower one
re-reads, finds the work done and frees nothing twice.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Set

from ..model import Pool, PoolKey
from ..reconcile import PodView, find_orphans, podrefs
from ..retry import RetryPolicy
from ..storage.base import Store
from ..storage.kubernetes import KubernetesStore
from . import (
    Cleaner,
    EventSink,
    NoEvents,
    PodLookup,
    Tally,
    add_common_arguments,
    configure_logging,
    connect,
    writable,
)
from .pods import KubeEvents, KubePods

log = logging.getLogger(__name__)

COMPONENT = "whereabouts-reconciler"
MAX_EVENTS = 500  # Events per pass; after a storm the log still names every freed address

# (wanted podrefs) -> pods by podref that exist now, among those wanted.
PodLister = Callable[[Set[str]], Dict[str, PodView]]


def reconcile(
    store: Store,
    list_pods: PodLister,
    lookup: PodLookup,
    *,
    grace_seconds: float,
    dry_run: bool = False,
    events: Optional[EventSink] = None,
    clock: Callable[[], float] = time.time,
    policy: Optional[RetryPolicy] = None,
) -> Tally:
    """One pass. Raises only when the pools, reservations or pods cannot be read."""
    pools = writable(store.list_pools())
    reservations = store.list_reservations()
    wanted = podrefs(pools, reservations)
    pods = list_pods(wanted) if wanted else {}
    orphans = find_orphans(pools, reservations, pods, now=clock(), grace_seconds=grace_seconds)
    if orphans.kept:
        log.info("kept: %s", ", ".join(f"{n} {r}" for r, n in sorted(orphans.kept.items())))
    cleaner = Cleaner(store, lookup, grace_seconds, events=events or NoEvents(),
                      dry_run=dry_run, clock=clock)
    if policy is not None:
        cleaner.policy = policy
    tally = Tally(pools_checked=len(pools))
    by_key: Dict[PoolKey, Pool] = {p.key: p for p in pools}
    for key, group in orphans.by_pool().items():
        try:
            tally.add(cleaner.free_in_pool(by_key[key], group, pods, reservations))
        except Exception as exc:
            tally.errors += 1
            log.error("pool %s: could not free %d orphan(s): %s", key.name, len(group),
                      _describe(exc))
    reread: Dict[str, Pool] = {}
    for lonely in orphans.reservations:
        try:
            tally.add(cleaner.free_reservation(lonely, pools, reread))
        except Exception as exc:
            tally.errors += 1
            log.error("reservation %s: %s", lonely.reservation.key.name, _describe(exc))
    return tally


def _describe(exc: BaseException) -> str:
    return str(getattr(exc, "msg", "") or exc) or type(exc).__name__


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="whereabouts reconcile",
        description="Free allocations and overlapping-range reservations whose pods are "
        "gone, finished, or demonstrably hold other addresses; one pass, then exit.",
    )
    add_common_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be freed; change nothing")
    parser.add_argument("--page-size", type=int, default=500, help=argparse.SUPPRESS)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        transport = connect(args.kubeconfig)
    except Exception as exc:
        print(f"whereabouts reconcile: {_describe(exc)}", file=sys.stderr)
        return 1
    store = KubernetesStore(transport, args.namespace)
    pods = KubePods(transport, page_size=args.page_size)

    def list_pods(wanted: Set[str]) -> Dict[str, PodView]:
        found, _ = pods.list(wanted=lambda view: view.podref in wanted)
        return found

    events = None if args.dry_run else KubeEvents(transport, COMPONENT, limit=MAX_EVENTS)
    started = time.monotonic()
    try:
        tally = reconcile(store, list_pods, pods, grace_seconds=args.grace_period,
                          dry_run=args.dry_run, events=events)
    except Exception as exc:
        print(f"whereabouts reconcile: failed: {_describe(exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.dry_run:
        for freed in tally.freed:
            print(f"would free {freed.address} in pool {freed.pool} held by {freed.podref} "
                  f"({freed.ifname or '-'}): {freed.reason}")
        for name in tally.freed_reservations:
            print(f"would delete OverlappingRangeIPReservation {name}")
    print(f"whereabouts reconcile{' (dry run)' if args.dry_run else ''}: "
          f"{tally.summary(args.dry_run)} in {time.monotonic() - started:.1f}s")
    return 1 if tally.errors else 0


__all__: List[str] = ["main", "reconcile"]
