"""``whereabouts controlloop``: the node agent (one per node, in the DaemonSet).

It frees the addresses of pods that were deleted or finished on its node, a backstop
for a CNI DEL that never ran (node crash, runtime bug, plugin killed):

* it watches the pods of its node only (field selector ``spec.nodeName=<node>``),
  resuming from the last resourceVersion and listing again on 410 Gone;
* on a DELETED event, or a pod turning Succeeded/Failed, it reads the pools (a few
  objects, in one namespace), looks the pod up by name *after* that read (a
  StatefulSet may have recreated it, and the new pod keeps the address) and frees
  that pod's entries made on this node or on no recorded node, with the shared
  decision (rules ``pod-gone`` and ``pod-terminal`` only) and compare-and-swap;
* at start and every resync period it lists its node's pods and the pools, and frees
  entries made on this node whose pod is not among them and, looked up by name, is
  gone or finished (a pod alive on another node keeps its address): pods deleted
  while the agent was down are collected (upstream #546).

It never lists the cluster's pods. Memory is bounded by one node's pods and the pools.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
)

from ..model import Owner, Pool
from ..reconcile import POD_GONE, POD_TERMINAL, PodView, find_orphans
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
    parse_duration,
    seen,
    writable,
)
from .pods import KubeEvents, KubePods, PodsGone, pod_view, resource_version

log = logging.getLogger(__name__)

COMPONENT = "whereabouts-node-agent"
AGENT_REASONS = frozenset({POD_GONE, POD_TERMINAL})
WATCH_SECONDS = 300  # one watch request at most; the server ends it, we resume
MAX_BACKOFF = 30.0
RETRY_RESYNC = 30.0  # seconds until the next resync after one that failed in part
MIN_TOKEN_SECONDS = 600  # the TokenRequest API's minimum expirationSeconds


class NodeAgent:
    """The node agent's decisions and writes, one method per trigger; no loop, no
    watch. Every method catches its own failures (counted in the Tally, and a failed
    pod is retried by :meth:`retry_pending`), so an event is never lost to an error."""

    def __init__(
        self,
        store: Store,
        pods: PodLookup,
        node: str,
        grace_seconds: float,
        *,
        events: Optional[EventSink] = None,
        clock: Callable[[], float] = time.time,
        policy: Optional[RetryPolicy] = None,
    ) -> None:
        self.store = store
        self.pods = pods
        self.node = node
        self.grace_seconds = grace_seconds
        self.events: EventSink = events or NoEvents()
        self.clock = clock
        self.policy = policy
        self.pending: Set[str] = set()
        self._finished: Set[str] = set()  # uids of terminal pods already handled

    # ------------------------------------------------------------- triggers

    def handle(self, kind: str, obj: Mapping[str, Any]) -> Tally:
        """One watch event (``ADDED``, ``MODIFIED``, ``DELETED``) of a pod of this node."""
        view = pod_view(obj)
        if view is None or (view.node is not None and view.node != self.node):
            return Tally()
        if kind == "DELETED":
            self._finished.discard(view.uid)
            return self.collect({view.podref})
        if kind in ("ADDED", "MODIFIED") and view.terminal:
            # A finished pod gets several updates; its entries only need freeing once.
            if seen(self._finished, view.uid or view.podref):
                return Tally()
            return self.collect({view.podref})
        return Tally()

    def collect(self, refs: Set[str]) -> Tally:
        """Free the entries of these pods made on this node or on no recorded node,
        if each pod, looked up after the pools are read, is gone or finished."""

        def scope(owner: Owner) -> bool:
            return owner.podref in refs and owner.node in (self.node, None)

        try:
            pools = writable(self.store.list_pools())
            if not any(scope(o) for p in pools for o in p.allocations.values()):
                self.pending.difference_update(refs)
                return Tally(pools_checked=len(pools))
            cleaner = self._cleaner(scope)
            known = {r: v for r in sorted(refs) if (v := cleaner.lookup(r)) is not None}
            tally = self._free(cleaner, pools, known)
        except Exception as exc:
            log.warning("could not free the addresses of %s (will retry): %s",
                        ", ".join(sorted(refs)), _describe(exc))
            self.pending.update(refs)
            return Tally(errors=1)
        if tally.errors:
            self.pending.update(refs)
        else:
            self.pending.difference_update(refs)
        return tally

    def retry_pending(self) -> Tally:
        if not self.pending:
            return Tally()
        return self.collect(set(self.pending))

    def resync(self, node_pods: Mapping[str, PodView]) -> Tally:
        """Free entries made on this node whose pod is gone or finished; ``node_pods``
        are this node's pods as just listed (after which the pools are read: an entry
        of a pod created since has its pod found by the look-up)."""

        def scope(owner: Owner) -> bool:
            return owner.node == self.node

        try:
            pools = writable(self.store.list_pools())
            cleaner = self._cleaner(scope)
            known: Dict[str, PodView] = {}
            for pool in pools:
                for owner in pool.allocations.values():
                    ref = owner.podref
                    if not ref or not scope(owner) or ref in known:
                        continue
                    view = node_pods.get(ref)
                    if view is None or view.terminal:
                        # Not listed here: gone, moved, or created since the list.
                        view = cleaner.lookup(ref)
                    if view is not None:
                        known[ref] = view
            tally = self._free(cleaner, pools, known)
        except Exception as exc:
            log.warning("resync failed: %s", _describe(exc))
            return Tally(errors=1)
        return tally

    # ------------------------------------------------------------- internals

    def _cleaner(self, scope: Callable[[Owner], bool]) -> Cleaner:
        cleaner = Cleaner(self.store, self.pods, self.grace_seconds, scope=scope,
                          free_reasons=AGENT_REASONS, events=self.events, clock=self.clock)
        if self.policy is not None:
            cleaner.policy = self.policy
        return cleaner

    def _free(self, cleaner: Cleaner, pools: Sequence[Pool], known: Dict[str, PodView]) -> Tally:
        orphans = find_orphans(pools, (), known, now=self.clock(),
                               grace_seconds=self.grace_seconds, scope=cleaner.scope,
                               free_reasons=AGENT_REASONS)
        tally = Tally(pools_checked=len(pools))
        by_key = {p.key: p for p in pools}
        for key, group in orphans.by_pool().items():
            try:
                tally.add(cleaner.free_in_pool(by_key[key], group, known, None))
            except Exception as exc:
                tally.errors += 1
                log.warning("pool %s: could not free %d address(es): %s", key.name,
                            len(group), _describe(exc))
        return tally


# ---------------------------------------------------------------- the loop


class PodSource:
    """This node's pods through the official client: list (paged) and watch (raw JSON)."""

    def __init__(self, pods: KubePods, api_client: Any, node: str) -> None:
        self.pods = pods
        self.node = node
        self.selector = f"spec.nodeName={node}"
        self._api_client = api_client

    def list(self) -> Tuple[Dict[str, PodView], str]:
        return self.pods.list(field_selector=self.selector)

    def watch(self, since: str, seconds: int) -> Iterator[Tuple[str, Mapping[str, Any]]]:
        """Events after resourceVersion ``since`` for at most ``seconds``. Raises
        PodsGone when ``since`` has expired."""
        from kubernetes import client, watch

        core = client.CoreV1Api(self._api_client)
        watches: Any = watch  # typed or not depending on the client version

        def list_pods(**kwargs: Any) -> Any:
            # A bare wrapper: no return annotation, so the stream yields raw JSON dicts.
            return core.list_pod_for_all_namespaces(**kwargs)

        stream = watches.Watch().stream(
            list_pods, field_selector=self.selector, resource_version=since,
            allow_watch_bookmarks=True, timeout_seconds=seconds,
            _request_timeout=(10, seconds + 30),
        )
        try:
            for event in stream:
                kind = str(event.get("type", ""))
                obj = event.get("raw_object", event.get("object"))
                if kind == "ERROR":
                    code = obj.get("code") if isinstance(obj, Mapping) else None
                    if code == 410:
                        raise PodsGone(str(obj.get("message", "")))
                    raise RuntimeError(f"watch error: {obj}")
                if isinstance(obj, Mapping):
                    yield kind, obj
        except Exception as exc:
            if getattr(exc, "status", None) == 410:
                raise PodsGone(str(exc)) from exc
            raise


class NodePods(Protocol):
    def list(self) -> Tuple[Dict[str, PodView], str]:
        """This node's pods by podref, and the list's resourceVersion."""

    def watch(self, since: str, seconds: int) -> Iterator[Tuple[str, Mapping[str, Any]]]:
        """(event type, pod JSON) after ``since``; PodsGone when it has expired."""


class Interrupted(BaseException):
    """Raised by the signal handler to leave a blocking wait (never a write)."""


class Gate:
    """Lets a stop signal interrupt the loop only while it waits for the API (the next
    watch event): a pool write in progress always finishes."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.idle = False

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self.stop.is_set():
            raise Interrupted
        self.idle = True
        try:
            if self.stop.is_set():  # the signal came between the check and idle = True
                raise Interrupted
            yield
        finally:
            self.idle = False

    def interrupt(self) -> None:
        """From the signal handler, after ``stop`` was set."""
        if self.idle:
            self.idle = False
            raise Interrupted


def run(
    agent: NodeAgent,
    source: NodePods,
    stop: threading.Event,
    *,
    resync_seconds: float,
    watch_seconds: int = WATCH_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    gate: Optional[Gate] = None,
) -> None:
    """List, resync, watch; again after the resync period, a 410, or an error (with a
    jittered backoff capped at MAX_BACKOFF). Returns when ``stop`` is set (at once if
    it is set while waiting for an event through ``gate``)."""
    gate = gate or Gate(stop)
    since = ""
    next_resync = 0.0
    failures = 0
    while not stop.is_set():
        try:
            if not since or clock() >= next_resync:
                node_pods, since = source.list()
                tally = agent.resync(node_pods)
                _report("resync", tally, len(node_pods))
                # After a partial failure, try again soon; keep watching meanwhile.
                period = min(resync_seconds, RETRY_RESYNC) if tally.errors else resync_seconds
                next_resync = clock() + period
                log.info("watching the pods of node %s from resourceVersion %s", agent.node,
                         since)
            _report("retry", agent.retry_pending())
            seconds = max(1, min(watch_seconds, int(next_resync - clock()) + 1))
            events = source.watch(since, seconds)
            while True:
                with gate.waiting():
                    event = next(events, None)
                if event is None:
                    break
                kind, obj = event
                if kind != "BOOKMARK":
                    _report(f"{kind.lower()} event", agent.handle(kind, obj))
                since = resource_version(obj) or since
            failures = 0
        except Interrupted:
            break
        except PodsGone:
            log.info("watch resourceVersion %s expired; listing again", since)
            since = ""
        except Exception as exc:
            if stop.is_set():
                break  # the stop closed the watch connection under us
            failures += 1
            delay = min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
            log.warning("pod watch failed (%s); retrying in %.1fs", _describe(exc), delay)
            stop.wait(delay)


def _report(what: str, tally: Tally, listed: Optional[int] = None) -> None:
    if tally.allocations_freed or tally.reservations_freed or tally.errors:
        log.info("%s: %s", what, tally.summary())
    elif listed is not None:
        log.debug("%s: %d pods on this node, %d pools, nothing to free", what, listed,
                  tally.pools_checked)


def _describe(exc: BaseException) -> str:
    return str(getattr(exc, "msg", "") or exc) or type(exc).__name__


# ---------------------------------------------------------------- token refresh


def start_token_refresher(
    conf_dir: str, service_account: str, namespace: str, expiration_seconds: int,
    stop: threading.Event,
) -> threading.Thread:
    """Keep the plugin's kubeconfig in ``conf_dir`` valid (``install.refresh_plugin_
    kubeconfig``: re-mint the plugin ServiceAccount's token before it expires)."""
    from .. import install

    def loop() -> None:
        state = None
        failures = 0
        while not stop.is_set():
            try:
                result = install.refresh_plugin_kubeconfig(
                    Path(conf_dir), service_account, state=state, namespace=namespace,
                    expiration_seconds=expiration_seconds,
                )
                state, failures = result.state, 0
                delay = result.next_refresh_delay()
            except Exception as exc:
                failures += 1
                delay = min(300.0, install.RETRY_SECONDS * failures)
                log.error("could not refresh the plugin kubeconfig in %s (retry in %.0fs): %s",
                          conf_dir, delay, exc)
            stop.wait(delay)

    thread = threading.Thread(target=loop, name="token-refresh", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="whereabouts controlloop",
        description="Node agent: free the addresses of pods deleted or finished on this "
        "node, and keep the plugin's kubeconfig token fresh.",
    )
    parser.add_argument("--node-name", default=os.environ.get("NODENAME") or None,
                        help="this node's name (default: $NODENAME); required")
    add_common_arguments(parser)
    parser.add_argument("--resync-period", type=parse_duration, default=300.0,
                        metavar="DURATION",
                        help="how often to list this node's pods and free what the watch "
                             "missed (default 5m)")
    parser.add_argument("--cni-conf-dir", default=None,
                        help="CNI configuration dir holding whereabouts.d/whereabouts.kubeconfig;"
                             " when given, the plugin's token in it is renewed before expiry")
    parser.add_argument("--plugin-service-account", default="",
                        help="ServiceAccount whose token the plugin's kubeconfig holds "
                             "(default: copy this pod's own token)")
    parser.add_argument("--token-expiration", "--token-expiration-seconds",
                        type=parse_duration, default=None, metavar="DURATION",
                        help="lifetime of minted plugin tokens (default 24h; at least 10m)")
    args = parser.parse_args(list(argv))
    if not args.node_name:
        parser.error("--node-name (or $NODENAME) is required")
    if args.token_expiration is not None and args.token_expiration < MIN_TOKEN_SECONDS:
        parser.error(f"--token-expiration must be at least {MIN_TOKEN_SECONDS}s")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    stop = threading.Event()
    gate = Gate(stop)

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: leave now
        log.info("signal %d: stopping", signum)
        stop.set()
        gate.interrupt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.cni_conf_dir:
        from ..install import DEFAULT_TOKEN_SECONDS

        expiration = int(args.token_expiration or DEFAULT_TOKEN_SECONDS)
        start_token_refresher(args.cni_conf_dir, args.plugin_service_account, args.namespace,
                              expiration, stop)
    try:
        transport = connect(args.kubeconfig)
    except Exception as exc:
        log.error("cannot reach the Kubernetes API: %s", _describe(exc))
        return 1
    store = KubernetesStore(transport, args.namespace)
    pods = KubePods(transport)
    agent = NodeAgent(store, pods, args.node_name, args.grace_period,
                      events=KubeEvents(transport, COMPONENT, args.node_name))
    source = PodSource(pods, transport.api_client, args.node_name)
    log.info("node agent for %s: pools in %s, grace %gs, resync every %gs",
             args.node_name, args.namespace, args.grace_period, args.resync_period)
    try:
        run(agent, source, stop, resync_seconds=args.resync_period, gate=gate)
    except (KeyboardInterrupt, Interrupted):
        pass
    finally:
        store.close()
    log.info("stopped")
    return 0
