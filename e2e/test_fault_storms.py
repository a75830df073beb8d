"""Fault storms end to end: plugin processes SIGKILLed between their writes, the API
server and etcd restarted under load, pods deleted while the node agent is down.

Everything is real: ``dist/whereabouts.pyz`` is the IPAM of the reference ``macvlan``
plugin, exec'd by the kubelet + Multus player (``e2e/harness.py``) in three simulated
nodes, against the local kube-apiserver + etcd. Crashes come from the test-only hook
``whereabouts.faults`` (``WHEREABOUTS_TEST_FAULTS`` in the plugin's environment, see
``docs/faults.md``). The cleanup runs as the real ``whereabouts reconcile`` and
``whereabouts controlloop`` processes with the chart's ServiceAccounts and RBAC.

What is checked (design invariants 1, 2, 4 and 5):

* no address is ever reported by two successful ADDs of live pods;
* every failure is a CNI error object, never a hang or a traceback;
* before cleanup the only leftovers are orphans (never a live pod's address missing);
* one reconcile pass (or the node agent, for its node) leaves every pool holding
  exactly the addresses of the live pods, each with its own reservation, and frees
  exactly the leftovers it was expected to free.

The numbers of each storm are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import pytest

from e2e import netns
from e2e.conftest import unavailable
from e2e.harness import CniCall, Harness, Network, Pod, ensure_nad_crd, poll
from e2e.localcluster import LocalCluster, ToolPaths, read_versions
from e2e.scenarios import (
    Agent,
    KubernetesDatastore,
    checked_cleanup,
    child_env,
    in_range,
    macvlan,
    offset,
    pool_name,
    relayed_nodes,
    start_agent,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "whereabouts"
CONTROLLER_RBAC = ("templates/reconciler/rbac.yaml", "templates/node-agent/rbac.yaml")
RECONCILER_SA = "whereabouts-reconciler"
AGENT_SA = "whereabouts-node-agent"
FAULTS_ENV = "WHEREABOUTS_TEST_FAULTS"
FAULTS_LOG_ENV = "WHEREABOUTS_TEST_FAULTS_LOG"
IFNAME = "net1"

# Storm 1: a whereabouts ADD dies with probability 1 - 0.8 * 0.9 * 0.8 = 42 % (more under
# contention: each CAS retry passes the points again), a DEL with 30 %.
STORM_FAULTS = "after-reserve:0.2,before-pool-write:0.1,after-pool-write:0.2," \
               "after-release-write:0.3"
STORM_PODS = 60
STORM_WORKERS = 8
MAX_ADD_ATTEMPTS = 10  # kubelet never gives up; a pod that does here is deleted
MAX_TEARDOWN_DELS = 10
RESTART_PODS = 40
CALL_DEADLINE = 60.0  # no plugin exec may take longer, whatever the API server does


# ---------------------------------------------------------------- the player, with faults


@dataclass
class Calls:
    """Every delegate exec of a test, as kubelet saw it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: List[Tuple[CniCall, float]] = field(default_factory=list)

    def add(self, call: CniCall, seconds: float) -> None:
        with self.lock:
            self.calls.append((call, seconds))

    def of(self, command: str) -> List[CniCall]:
        with self.lock:
            return [c for c, _ in self.calls if c.command == command]

    def slowest(self) -> float:
        with self.lock:
            return max((s for _, s in self.calls), default=0.0)


class FaultyHarness(Harness):
    """The kubelet + Multus player, exec'ing every delegate (and so whereabouts, which
    inherits the delegate's environment) with ``fault_env`` added."""

    fault_env: Dict[str, str]
    record: Calls

    def exec_cni(
        self,
        command: str,
        netconf: Mapping[str, Any],
        pod: Pod,
        ifname: str,
        *,
        container_id: Optional[str] = None,
        prev_result: Optional[Mapping[str, Any]] = None,
    ) -> CniCall:
        self.delegate_env = dict(self.fault_env)
        started = time.monotonic()
        call = super().exec_cni(command, netconf, pod, ifname, container_id=container_id,
                                prev_result=prev_result)
        self.record.add(call, time.monotonic() - started)
        return call


def killed(call: CniCall) -> bool:
    """macvlan reports its IPAM plugin dying of a signal (pkg/invoke's message)."""
    return not call.ok and "signal: killed" in call.msg


def assert_clean_failure(call: CniCall) -> None:
    """A failed exec answered the CNI way: an error object, no traceback, no crash code."""
    assert call.is_cni_error, f"not a CNI error: {call.describe()}"
    assert "Traceback" not in json.dumps(call.output), call.describe()
    assert "Traceback" not in call.stderr, call.describe()
    assert call.code != 999, f"an internal error is a crash: {call.describe()}"


class Live:
    """Addresses reported by successful ADDs of live pods; a second holder is a duplicate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_ip: Dict[str, str] = {}
        self.duplicates: List[str] = []

    def up(self, pod: Pod) -> None:
        with self.lock:
            for ip in pod.ips:
                holder = self.by_ip.get(ip)
                if holder is not None and holder != pod.podref:
                    self.duplicates.append(f"{ip}: {holder} and {pod.podref}")
                self.by_ip[ip] = pod.podref

    def down(self, pod: Pod) -> None:
        """Before the DEL (or the crash): from then on the pod holds nothing."""
        with self.lock:
            for ip in pod.ips:
                if self.by_ip.get(ip) == pod.podref:
                    del self.by_ip[ip]


class Pacing:
    """kubelet's back-off between retries of a failing sandbox (not a wait for a state:
    the next attempt is what the test observes)."""

    def __init__(self, first: float = 0.05, cap: float = 1.0) -> None:
        self.delay, self.cap = first, cap

    def next(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)


def bring_up(harness: FaultyHarness, pod: Pod, live: Live, *, attempts: int = MAX_ADD_ATTEMPTS,
             until: Optional[float] = None, gave_up: Optional[List[Pod]] = None) -> bool:
    """kubelet: run a sandbox; after a failed ADD, tear it down (Multus already DELed
    its delegates; kubelet's StopPodSandbox DELs again, retried), then a new sandbox
    with a new container ID. Gives up after ``attempts`` tries or at ``until``."""
    pacing = Pacing()
    for _ in range(attempts):
        harness.run_sandbox(pod)
        if pod.ok:
            live.up(pod)
            return True
        for _ in range(MAX_TEARDOWN_DELS):
            if all(c.ok for c in harness.del_networks(pod, check=False)):
                break
            pacing.next()
        if until is not None and time.monotonic() > until:
            break
        if not killed(pod.failure):  # type: ignore[arg-type]
            pacing.next()
    if gave_up is not None:
        gave_up.append(pod)
    return False


# ---------------------------------------------------------------- what is stored


@dataclass
class Audit:
    """A namespace's pools and reservations of one range against the live pods."""

    leaked: Dict[int, Dict[str, Any]]
    """Pool entries of no live pod (by offset)."""
    orphans: Dict[str, Dict[str, Any]]
    """Reservations no pool entry of the same owner backs (by name)."""
    of_leaked: Set[str]
    """Reservations of leaked pool entries (freed with them)."""
    wrong: List[str]
    """Violations: a live pod's address missing, recorded for another owner, twice, or
    reserved by someone else."""

    def describe(self) -> str:
        return f"leaked {self.leaked}, orphan reservations {self.orphans}, wrong {self.wrong}"


def audit(kube: KubernetesDatastore, cidr: str, pods: Sequence[Pod]) -> Audit:
    allocations = {int(k): v for k, v in kube.allocations(pool_name(cidr)).items()}
    reservations = {name: spec for name, spec in kube.reservations().items()
                    if _is_address(name) and in_range(name, cidr)}
    wrong: List[str] = []
    mine: Set[int] = set()
    owners = Counter((a.get("podref"), a.get("ifname")) for a in allocations.values())
    for pod in pods:
        ip = pod.ip(IFNAME)
        at = offset(ip, cidr)
        mine.add(at)
        entry = allocations.get(at)
        want = {"podref": pod.podref, "ifname": IFNAME, "id": pod.container_id, "node": pod.node}
        if entry is None or {k: entry.get(k) for k in want} != want:
            wrong.append(f"{pod.podref} {ip}: pool entry {entry}, want {want}")
        if owners[(pod.podref, IFNAME)] != 1:
            wrong.append(f"{pod.podref}: {owners[(pod.podref, IFNAME)]} pool entries")
        spec = reservations.get(ip)
        if spec is None or (spec.get("podref"), spec.get("ifname")) != (pod.podref, IFNAME):
            wrong.append(f"{pod.podref} {ip}: reservation {spec}")
    leaked = {k: v for k, v in allocations.items() if k not in mine}
    orphans = {}
    of_leaked = set()
    for name, spec in reservations.items():
        at = offset(name, cidr)
        entry = allocations.get(at)
        if entry is None or (entry.get("podref"), entry.get("ifname")) != (
                spec.get("podref"), spec.get("ifname")):
            orphans[name] = spec
            if entry is not None:
                wrong.append(f"reservation {name} of {spec} but the pool holds it for {entry}")
        elif at in leaked:
            of_leaked.add(name)
    return Audit(leaked, orphans, of_leaked, wrong)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def assert_pods_running_with_their_address(harness: Harness, pods: Sequence[Pod]) -> None:
    """What the reconciler sees: each live pod Running, its network-status showing its IP."""
    assert harness.api is not None
    items = harness.api.get(f"/api/v1/namespaces/{harness.namespace}/pods")["items"]
    objects = {o["metadata"]["name"]: o for o in items}
    for pod in pods:
        obj = objects.get(pod.name)
        assert obj is not None, f"{pod.podref} has no Pod object"
        assert obj.get("status", {}).get("phase") == "Running", obj.get("status")
        status = json.loads(obj["metadata"]["annotations"][
            "k8s.v1.cni.cncf.io/network-status"])
        listed = [ip for entry in status if entry.get("interface") == IFNAME
                  for ip in entry.get("ips", [])]
        assert listed == [pod.ip(IFNAME)], (pod.podref, status)


# ---------------------------------------------------------------- the controllers


@dataclass
class Controllers:
    namespace: str
    reconciler_kubeconfig: Path
    agent_kubeconfig: Path
    workdir: Path

    def reconcile(self) -> Dict[str, int]:
        """One ``whereabouts reconcile --grace-period 0`` pass; its summary's numbers."""
        cmd = [sys.executable, "-m", "whereabouts", "reconcile", "--kubeconfig",
               str(self.reconciler_kubeconfig), "--namespace", self.namespace,
               "--grace-period", "0", "--log-level", "info"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env=child_env(FAULTS_ENV), cwd=REPO, check=False)
        assert proc.returncode == 0, f"reconcile exited {proc.returncode}:\n{proc.stderr}"
        m = re.search(r"pools checked: (\d+), allocations freed: (\d+), "
                      r"reservations freed: (\d+), errors: (\d+)", proc.stdout)
        assert m, f"no summary in {proc.stdout!r}"
        return dict(zip(("pools", "allocations", "reservations", "errors"),
                        map(int, m.groups())))

    def start_agent(self, node: str) -> Agent:
        """``whereabouts controlloop`` for ``node``, once it watches."""
        return start_agent(self.agent_kubeconfig, self.namespace, node, self.workdir,
                           log_level="info", drop_env=(FAULTS_ENV,))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def topology(netns_factory: Callable[[], netns.Topology],
             local_cluster: LocalCluster) -> Iterator[netns.Topology]:
    """Three nodes; each sees the API server at the host's 127.0.0.1:<port>."""
    with relayed_nodes(netns_factory(), 3, local_cluster.apiserver_port) as topo:
        yield topo


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster, e2e_tools: ToolPaths, topology: netns.Topology,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesDatastore]:
    store = KubernetesDatastore(local_cluster, e2e_tools, f"wa-faults-{secrets.token_hex(3)}",
                                tmp_path_factory.mktemp("kube")).install()
    yield store
    store.uninstall()


@pytest.fixture(scope="module")
def controllers(local_cluster: LocalCluster, e2e_tools: ToolPaths, kube: KubernetesDatastore,
                tmp_path_factory: pytest.TempPathFactory) -> Controllers:
    """The chart's reconciler and node-agent ServiceAccounts and RBAC (rendered by helm,
    release named after the namespace so the ClusterRoles of parallel runs differ)."""
    if not os.access(e2e_tools.helm, os.X_OK):
        unavailable(f"missing {e2e_tools.helm} (run ci/e2e-tools)")
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        unavailable("the 'kubernetes' package is not installed (pip install -e '.[dev]')")
    release = f"whereabouts-{kube.namespace}"
    for template in CONTROLLER_RBAC:
        proc = subprocess.run(
            [str(e2e_tools.helm), "template", release, str(CHART), "--namespace",
             kube.namespace, "--kube-version", read_versions()["K8S_VERSION"],
             "--show-only", template],
            capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"helm template {template}: {proc.stderr}"
        local_cluster.kubectl("apply", "-f", "-", input=proc.stdout)
    work = tmp_path_factory.mktemp("controllers")
    return Controllers(
        kube.namespace,
        local_cluster.create_service_account_kubeconfig(
            kube.namespace, RECONCILER_SA, work / "reconciler.kubeconfig"),
        local_cluster.create_service_account_kubeconfig(
            kube.namespace, AGENT_SA, work / "agent.kubeconfig"),
        work,
    )


@pytest.fixture
def harness(local_cluster: LocalCluster, topology: netns.Topology, bin_dir: Path,
            kube: KubernetesDatastore) -> Iterator[FaultyHarness]:
    pods_ns = f"wa-faults-pods-{secrets.token_hex(3)}"
    local_cluster.create_namespace(pods_ns)
    h = FaultyHarness(topology, [bin_dir], kube.node_ipam, cluster=local_cluster,
                      namespace=pods_ns, cni_timeout=2 * CALL_DEADLINE)
    h.fault_env, h.record = {}, Calls()
    ensure_nad_crd(local_cluster, h.api)  # type: ignore[arg-type]
    with checked_cleanup(h):
        yield h
        h.fault_env = {}
    local_cluster.kubectl("delete", "namespace", pods_ns, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def clean_start(kube: KubernetesDatastore, controllers: Controllers) -> None:
    """Each test counts what one reconcile pass frees in the whole namespace: start from
    an empty one even when an earlier test failed before its own cleanup."""
    if kube.reservations() or any(s.get("allocations") for s in kube.pools().values()):
        controllers.reconcile()


def kill_counts(log: Path) -> Counter[str]:
    """``<point> <command>`` -> processes the fault hook killed there."""
    if not log.exists():
        return Counter()
    return Counter(" ".join(line.split()[:2]) for line in log.read_text().splitlines() if line)


def finish(harness: FaultyHarness, kube: KubernetesDatastore, controllers: Controllers,
           cidr: str, alive: Sequence[Pod]) -> int:
    """Delete the live pods the clean way (faults off, every DEL must succeed): the pool
    must end empty. Reservations clean DELs left (see the last test) are reclaimed by a
    reconcile pass so the next test starts from an empty namespace. Returns how many."""
    harness.fault_env = {}
    harness.delete_pods(alive, workers=STORM_WORKERS)
    left_entries = kube.allocations(pool_name(cidr))
    assert not left_entries, f"allocations left after clean DELs: {left_entries}"
    left = [n for n in kube.reservations() if _is_address(n) and in_range(n, cidr)]
    freed = controllers.reconcile()
    assert freed["errors"] == 0 and freed["allocations"] == 0, freed
    assert freed["reservations"] == len(left), (freed, left)
    assert not kube.reservations(), kube.reservations()
    return len(left)


# ---------------------------------------------------------------- 1. SIGKILL storm


def test_sigkill_storm_leaves_only_orphans_and_one_reconcile_pass_restores_the_pools(
    harness: FaultyHarness, kube: KubernetesDatastore, controllers: Controllers,
    topology: netns.Topology, tmp_path: Path,
) -> None:
    cidr = "10.91.0.0/24"
    net = harness.create_network("storm", macvlan("storm", {"range": cidr}))
    nodes = topology.nodes
    pods = [harness.new_pod(f"storm-{i}", nodes[i % 3], [net]) for i in range(STORM_PODS)]
    fault_log = tmp_path / "faults.log"
    live = Live()
    gave_up: List[Pod] = []
    deleted: List[Pod] = []
    crashed: List[Pod] = []
    cleanly_deleted: Dict[str, str] = {}  # podref -> the address its successful DEL freed
    lock = threading.Lock()

    def lifecycle(index: int) -> None:
        pod = pods[index]
        if not bring_up(harness, pod, live, gave_up=gave_up):
            harness.delete_pod(pod, check=False)  # a pod that never started is deleted
            return
        if index % 3 == 0:
            # Deleted: kubelet's DEL (which may die too; not retried: the node went down
            # or the pod was force-deleted), the sandbox gone, then the object.
            live.down(pod)
            calls = harness.delete_pod(pod, check=False)
            with lock:
                deleted.append(pod)
                if all(c.ok for c in calls):
                    cleanly_deleted[pod.podref] = pod.ip()
        elif index % 15 == 1:
            # A node crash: the sandbox vanishes without any DEL; the pod is deleted.
            live.down(pod)
            harness.forget_sandbox(pod)
            assert harness.api is not None
            harness.api.delete(harness.pod_path(pod), grace_period=0)
            with lock:
                crashed.append(pod)

    started = time.monotonic()
    harness.fault_env = {FAULTS_ENV: STORM_FAULTS, FAULTS_LOG_ENV: str(fault_log)}
    try:
        with ThreadPoolExecutor(max_workers=STORM_WORKERS) as workers:
            for future in [workers.submit(lifecycle, i) for i in range(STORM_PODS)]:
                future.result()
    finally:
        harness.fault_env = {}
    storm_seconds = time.monotonic() - started

    adds, dels = harness.record.of("ADD"), harness.record.of("DEL")
    kills = kill_counts(fault_log)
    failed_adds = [c for c in adds if not c.ok]
    for call in failed_adds:
        if not killed(call):
            assert_clean_failure(call)
    assert not live.duplicates, f"one address reported to two live pods: {live.duplicates}"
    gone = {p.podref for p in deleted + crashed + gave_up}
    alive = [p for p in pods if p.podref not in gone]
    assert all(p.ok for p in alive)
    assert len({p.ip() for p in alive}) == len(alive)
    assert sum(n for k, n in kills.items() if k.endswith(" ADD")) > 0, kills
    assert sum(n for k, n in kills.items() if k.endswith(" DEL")) > 0, kills

    before = audit(kube, cidr, alive)
    assert not before.wrong, f"a live pod's address is not held right: {before.describe()}"
    assert_pods_running_with_their_address(harness, alive)
    freed = controllers.reconcile()
    after = audit(kube, cidr, alive)
    assert not after.wrong, after.describe()
    assert not after.leaked and not after.orphans, f"left after reconcile: {after.describe()}"
    assert freed["errors"] == 0, freed
    assert freed["allocations"] == len(before.leaked), (freed, before.describe())
    assert freed["reservations"] == len(before.orphans) + len(before.of_leaked), (
        freed, before.describe())
    crashed_refs = {p.podref for p in crashed}
    # A DEL that succeeded frees its address's reservation too, whatever container made
    # it (an orphan of such a pod is at an address an earlier, killed ADD reserved).
    kept_by_clean_del = {n: v for n, v in before.orphans.items()
                         if cleanly_deleted.get(v.get("podref", "")) == n}
    assert not kept_by_clean_del, f"reservations a successful DEL left: {kept_by_clean_del}"
    assert {v["podref"] for v in before.leaked.values()} <= crashed_refs | {
        p.podref for p in gave_up}, before.describe()

    alive_refs = {p.podref for p in alive}
    orphan_owners = Counter(
        "live pod" if v.get("podref") in alive_refs
        else "deleted, DEL ok" if v.get("podref") in cleanly_deleted
        else "deleted, DEL killed" if v.get("podref") in {p.podref for p in deleted}
        else "crashed" if v.get("podref") in crashed_refs else "gave up"
        for v in before.orphans.values())
    left_by_clean_dels = finish(harness, kube, controllers, cidr, alive)
    print(
        f"\nSIGKILL storm ({storm_seconds:.0f}s, {STORM_WORKERS} in flight, faults "
        f"{STORM_FAULTS}): {STORM_PODS} pods on {len(nodes)} nodes; ADDs attempted "
        f"{len(adds)}, failed {len(failed_adds)} (killed {sum(killed(c) for c in adds)}), "
        f"retried {len(adds) - STORM_PODS}; DELs {len(dels)}, failed "
        f"{sum(not c.ok for c in dels)}; processes killed by point: {dict(sorted(kills.items()))};"
        f" pods gave up {len(gave_up)}, deleted with DEL {len(deleted)}, crashed "
        f"{len(crashed)}, live {len(alive)}; before reconcile: leaked allocations "
        f"{len(before.leaked)} (+{len(before.of_leaked)} reservations), orphan reservations "
        f"{len(before.orphans)} (owners: {dict(orphan_owners)}); reconcile freed "
        f"{freed['allocations']} allocations, "
        f"{freed['reservations']} reservations; slowest exec {harness.record.slowest():.1f}s;"
        f" pods deleted by a DEL that succeeded: {len(cleanly_deleted)}; reservations left"
        f" by the clean DELs of the {len(alive)} live pods afterwards: {left_by_clean_dels}"
    )


# ---------------------------------------------------------------- 2. restarts under load


def test_api_server_and_etcd_restarts_mid_storm_fail_cleanly_and_reconcile_restores_pools(
    harness: FaultyHarness, kube: KubernetesDatastore, controllers: Controllers,
    topology: netns.Topology, local_cluster: LocalCluster,
) -> None:
    cidr = "10.92.0.0/24"
    net = harness.create_network("restarts", macvlan("restarts", {"range": cidr}))
    nodes = topology.nodes
    pods = [harness.new_pod(f"restart-{i}", nodes[i % 3], [net]) for i in range(RESTART_PODS)]
    live = Live()
    gave_up: List[Pod] = []
    until = time.monotonic() + 200
    in_flight: Dict[str, int] = {}

    with ThreadPoolExecutor(max_workers=STORM_WORKERS) as workers:
        futures = [workers.submit(bring_up, harness, p, live, attempts=1000, until=until,
                                  gave_up=gave_up) for p in pods]

        def done() -> int:
            return sum(f.done() for f in futures)

        poll("the first ADDs to succeed", lambda: done() >= 4, 120)
        in_flight["apiserver"] = len(futures) - done()
        began = time.monotonic()
        local_cluster.restart_apiserver()
        apiserver_seconds = time.monotonic() - began
        mark = done()
        poll("more ADDs to succeed after the API server restart",
             lambda: done() >= min(mark + 6, len(futures) - 8), 120)
        in_flight["etcd"] = len(futures) - done()
        began = time.monotonic()
        local_cluster.restart_etcd()
        etcd_seconds = time.monotonic() - began
        results = [f.result() for f in futures]

    assert in_flight["apiserver"] > 0 and in_flight["etcd"] > 0, in_flight
    assert all(results), f"pods that never came up: {[p.podref for p in gave_up]}"
    adds, dels = harness.record.of("ADD"), harness.record.of("DEL")
    failed = [c for c in adds + dels if not c.ok]
    for call in failed:
        assert_clean_failure(call)
    slowest = harness.record.slowest()
    assert slowest < CALL_DEADLINE, f"a plugin exec took {slowest:.1f}s"
    assert not live.duplicates, live.duplicates
    assert len({p.ip() for p in pods}) == len(pods)

    before = audit(kube, cidr, pods)
    assert not before.wrong, before.describe()
    assert_pods_running_with_their_address(harness, pods)
    freed = controllers.reconcile()
    after = audit(kube, cidr, pods)
    assert not after.wrong and not after.leaked and not after.orphans, after.describe()
    assert freed["errors"] == 0, freed
    assert freed["allocations"] == len(before.leaked), (freed, before.describe())
    assert freed["reservations"] == len(before.orphans) + len(before.of_leaked), (
        freed, before.describe())
    codes = Counter(c.code for c in failed)
    messages = sorted({f"{c.command} {c.code} {c.msg[:150]}" for c in failed})
    left_by_clean_dels = finish(harness, kube, controllers, cidr, pods)
    print(
        f"\nrestart storm: {RESTART_PODS} pods, {STORM_WORKERS} in flight; API server restart "
        f"{apiserver_seconds:.1f}s with {in_flight['apiserver']} pods pending, etcd restart "
        f"{etcd_seconds:.1f}s with {in_flight['etcd']} pending; ADDs {len(adds)}, failed "
        f"{sum(not c.ok for c in adds)}, DELs {len(dels)}, failed {sum(not c.ok for c in dels)}"
        f" (CNI codes {dict(codes)}: {messages}); "
        f"slowest exec {slowest:.1f}s; before reconcile: leaked allocations "
        f"{len(before.leaked)}, orphan reservations {len(before.orphans)}; reconcile freed "
        f"{freed['allocations']} + {freed['reservations']}; reservations left by the clean "
        f"DELs of all {len(pods)} pods afterwards: {left_by_clean_dels}"
    )


# ---------------------------------------------------------------- 3. node agent down


def test_node_agent_frees_pods_deleted_while_it_was_stopped_and_only_on_its_node(
    harness: FaultyHarness, kube: KubernetesDatastore, controllers: Controllers,
    topology: netns.Topology,
) -> None:
    cidr = "10.93.0.0/24"
    net: Network = harness.create_network("agent", macvlan("agent", {"range": cidr}))
    node, others = topology.nodes[0], topology.nodes[1:]
    specs = [(f"here-{i}", node, [net]) for i in range(6)]
    specs += [(f"there-{i}", others[i % len(others)], [net]) for i in range(3)]
    pods = harness.add_pods(specs, workers=STORM_WORKERS)
    by_name = {p.name: p for p in pods}
    pool = pool_name(cidr)
    assert harness.api is not None
    api = harness.api

    def held() -> Dict[str, str]:
        return {v["podref"]: k for k, v in kube.allocations(pool).items()}

    def reserved() -> Set[str]:
        return {s["podref"] for n, s in kube.reservations().items()
                if _is_address(n) and in_range(n, cidr)}

    def crash(pod: Pod) -> None:
        """The node died: no DEL ran; the pod object is deleted (force)."""
        harness.forget_sandbox(pod)
        api.delete(harness.pod_path(pod), grace_period=0)

    assert set(held()) == {p.podref for p in pods}
    agent = controllers.start_agent(node)
    assert agent.stop() == 0, agent.output()

    crashed_here = [by_name["here-0"], by_name["here-1"], by_name["here-2"]]
    crashed_there = by_name["there-0"]
    for pod in [*crashed_here, crashed_there]:
        crash(pod)
    kept = [p for p in pods if p not in crashed_here]
    before = held()

    began = time.monotonic()
    agent = controllers.start_agent(node)
    try:
        poll("the agent freeing the pods deleted while it was stopped",
             lambda: not {p.podref for p in crashed_here} & set(held()), timeout=20)
        freed_after = time.monotonic() - began
        poll("their reservations deleted",
             lambda: not {p.podref for p in crashed_here} & reserved(), timeout=20)
        now = held()
        assert {p.podref: before[p.podref] for p in kept} == {p.podref: now[p.podref]
                                                                for p in kept}, now
        assert set(now) == {p.podref for p in kept}
        # The watch, while it runs: one more crash on this node is freed too.
        crash(by_name["here-3"])
        poll("a pod deleted while the agent watches freed",
             lambda: by_name["here-3"].podref not in held(), timeout=20)
        kept.remove(by_name["here-3"])
        assert set(held()) == {p.podref for p in kept}
        assert crashed_there.podref in reserved()
    finally:
        assert agent.stop() == 0, agent.output()

    # The other node's crashed pod is the reconciler's (or its own agent's) to free.
    freed = controllers.reconcile()
    assert freed["errors"] == 0, freed
    alive = [p for p in kept if p is not crashed_there]
    after = audit(kube, cidr, alive)
    assert not after.wrong and not after.leaked and not after.orphans, after.describe()
    finish(harness, kube, controllers, cidr, alive)
    print(
        f"\nnode agent: {len(pods)} pods ({len(specs) - 3} on {node}); 3 deleted while its "
        f"agent was stopped freed {freed_after:.1f}s after it started; 1 more via the watch; "
        f"the other node's crashed pod kept until the reconciler freed "
        f"{freed['allocations']} + {freed['reservations']}"
    )


# ---------------------------------------------------------------- a bug the storms found


@pytest.mark.parametrize("crash", ["killed-add", "lost-sandbox"])
def test_clean_del_after_a_crash_recovered_add_leaves_no_reservation(
    crash: str, harness: FaultyHarness, kube: KubernetesDatastore, controllers: Controllers,
    topology: netns.Topology,
) -> None:
    """The storm's first finding: an ADD of a pod that re-adopts what an earlier ADD of
    the same pod left (a reservation after a crash, or the pool entry of a sandbox lost
    without DEL) keeps the reservation under the old container ID; the next successful
    DEL must free it all the same (fixed in ``ipam._release_reservation``)."""
    cidr = "10.94.0.0/24" if crash == "killed-add" else "10.95.0.0/24"
    net = harness.create_network(crash, macvlan(crash, {"range": cidr}))
    pod = harness.new_pod(f"adopt-{crash}", topology.nodes[0], [net])
    try:
        if crash == "killed-add":
            harness.fault_env = {FAULTS_ENV: "after-reserve:1"}
            harness.run_sandbox(pod)  # whereabouts dies right after creating its reservation
            assert pod.failure is not None and killed(pod.failure), pod.failure
            harness.fault_env = {}
            harness.del_networks(pod)  # kubelet tears the sandbox down: nothing in the pool
        else:
            harness.run_sandbox(pod)
            assert pod.ok, pod.failure
            harness.forget_sandbox(pod)  # the runtime lost the sandbox: no DEL
        harness.run_sandbox(pod)  # a new sandbox and container ID re-adopt the address
        assert pod.ok, pod.failure
        ip = pod.ip()
        first = kube.reservations()[ip]
        harness.delete_pod(pod)  # a DEL that succeeds
        assert not kube.allocations(pool_name(cidr))
        left = {n: v for n, v in kube.reservations().items() if n == ip}
        assert not left, (
            f"the clean DEL of container {pod.container_id[:12]} left reservation {left} "
            f"(recorded at ADD as {first})")
    finally:
        harness.fault_env = {}
        controllers.reconcile()
