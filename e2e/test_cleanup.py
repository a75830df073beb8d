"""Cleanup end to end: `whereabouts reconcile` and `whereabouts controlloop` as real
processes against the real kube-apiserver, authenticated as the chart's ServiceAccounts
(its RBAC installed by helm), on IPPools, reservations and Pod objects made here.

No kubelet runs: Pods are created with ``spec.nodeName`` set and their phase, conditions
and Multus network-status are written the way kubelet and Multus would (status
subresource, annotation). Every wait polls against a deadline.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest

from e2e import netns
from e2e.conftest import unavailable
from e2e.harness import Harness, KubeApi, Pod, ensure_nad_crd, poll
from e2e.localcluster import LocalCluster, ToolPaths
from e2e.scenarios import (
    Agent,
    KubernetesDatastore,
    assert_no_duplicates,
    child_env,
    macvlan,
    pool_name,
    relayed_nodes,
    reservation_name,
    start_agent,
)

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "whereabouts"
GROUP_API = "/apis/whereabouts.cni.cncf.io/v1alpha1"
STATUS = "k8s.v1.cni.cncf.io/network-status"
AGENT_SA = "whereabouts-node-agent"
RECONCILER_SA = "whereabouts-reconciler"

pytestmark = pytest.mark.e2e


@dataclass
class Env:
    cluster: LocalCluster
    api: KubeApi
    namespace: str  # where the chart, pools and reservations live
    pods_ns: str
    reconciler_kubeconfig: Path
    agent_kubeconfig: Path
    workdir: Path

    # ------------------------------------------------------------ objects

    def pools_path(self, name: str = "") -> str:
        return f"{GROUP_API}/namespaces/{self.namespace}/ippools" + (f"/{name}" if name else "")

    def orips_path(self, name: str = "") -> str:
        base = f"{GROUP_API}/namespaces/{self.namespace}/overlappingrangeipreservations"
        return base + (f"/{name}" if name else "")

    def create_pool(self, network: str, cidr: str, entries: Dict[int, Dict[str, str]]) -> str:
        name = f"{network}-{cidr.replace('/', '-')}"
        allocations = {str(offset): {"id": e.get("id", secrets.token_hex(8)), **e}
                       for offset, e in entries.items()}
        self.api.request("POST", self.pools_path(), {
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"range": cidr, "allocations": allocations},
        })
        return name

    def allocations(self, pool: str) -> Dict[int, str]:
        obj = self.api.get(self.pools_path(pool))
        return {int(k): v["podref"] for k, v in (obj["spec"].get("allocations") or {}).items()}

    def create_orip(self, network: str, address: str, podref: str, ifname: str = "net1") -> str:
        name = f"{network}-{address}"
        self.api.request("POST", self.orips_path(), {
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
            "kind": "OverlappingRangeIPReservation",
            "metadata": {"name": name}, "spec": {"podref": podref, "ifname": ifname},
        })
        return name

    def orip_exists(self, name: str) -> bool:
        return self.api.get_or_none(self.orips_path(name)) is not None

    def ref(self, name: str) -> str:
        return f"{self.pods_ns}/{name}"

    def pod_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.pods_ns}/pods/{name}"

    def create_pod(self, name: str, node: str, phase: Optional[str] = None,
                   ips: Optional[Dict[str, List[str]]] = None) -> None:
        """A Pod object as kubelet and Multus would leave it: ``ips`` becomes the
        network-status annotation, ``phase`` the status (None: as created, no status)."""
        annotations = {}
        if ips is not None:
            annotations[STATUS] = json.dumps(
                [{"name": "default/cluster", "interface": "eth0", "ips": ["10.244.0.9"],
                  "default": True}]
                + [{"name": f"{self.pods_ns}/macvlan", "interface": ifname, "ips": addresses}
                   for ifname, addresses in ips.items()])
        self.api.request("POST", f"/api/v1/namespaces/{self.pods_ns}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": "registry.invalid/never:pulled"}]},
        })
        if phase is not None:
            self.set_phase(name, phase)

    def set_phase(self, name: str, phase: str) -> None:
        self.api.merge_patch(self.pod_path(name) + "/status", {"status": {"phase": phase}})

    def delete_pod(self, name: str) -> None:
        self.api.delete(self.pod_path(name), grace_period=0)

    def gc_events(self) -> List[Dict[str, Any]]:
        found = self.api.get(f"/api/v1/namespaces/{self.pods_ns}/events"
                             "?fieldSelector=reason%3DIPAddressGarbageCollected")
        return list(found["items"])

    # ------------------------------------------------------------ processes

    def reconcile(self, *args: str, kubeconfig: Optional[Path] = None,
                  ) -> subprocess.CompletedProcess[str]:
        return reconcile(kubeconfig or self.reconciler_kubeconfig, self.namespace, *args)

    def start_agent(self, node: str, *args: str) -> Agent:
        return start_agent(self.agent_kubeconfig, self.namespace, node, self.workdir, *args)


def reconcile(kubeconfig: Path, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`whereabouts reconcile` as a process; its stdout/stderr captured."""
    cmd = [sys.executable, "-m", "whereabouts", "reconcile", "--kubeconfig", str(kubeconfig),
           "--namespace", namespace, "--log-level", "debug", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env(),
                          cwd=REPO, check=False)


def summary(out: str) -> Dict[str, int]:
    """The numbers of the reconciler's summary line."""
    m = re.search(r"pools checked: (\d+), allocations (?:would free|freed): (\d+), "
                  r"reservations (?:would free|freed): (\d+), errors: (\d+)", out)
    assert m, f"no summary in {out!r}"
    return dict(zip(("pools", "allocations", "reservations", "errors"), map(int, m.groups())))


def helm_install(cluster: LocalCluster, helm: Path, namespace: str, home: Path) -> None:
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    proc = subprocess.run(
        [str(helm), "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
         "upgrade", "--install", namespace, str(CHART)],
        capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, f"helm install:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def env(local_cluster: LocalCluster, e2e_tools: ToolPaths,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The chart (CRDs, ServiceAccounts, RBAC) in a fresh namespace; a namespace for pods;
    kubeconfigs holding the reconciler's and the node agent's ServiceAccount tokens."""
    if not os.access(e2e_tools.helm, os.X_OK):
        unavailable(f"missing {e2e_tools.helm} (run ci/e2e-tools)")
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        unavailable("the 'kubernetes' package is not installed (pip install -e '.[dev]')")
    suffix = secrets.token_hex(3)
    namespace, pods_ns = f"wa-clean-{suffix}", f"wa-clean-pods-{suffix}"
    work = tmp_path_factory.mktemp("cleanup")
    local_cluster.create_namespace(namespace)
    local_cluster.create_namespace(pods_ns)
    helm_install(local_cluster, e2e_tools.helm, namespace, work / "helm")
    api = KubeApi(local_cluster)
    poll("the IPPool CRD served", lambda: api.get_or_none(
        f"{GROUP_API}/namespaces/{namespace}/ippools") is not None, timeout=60)
    yield Env(
        local_cluster, api, namespace, pods_ns,
        local_cluster.create_service_account_kubeconfig(
            namespace, RECONCILER_SA, work / "reconciler.kubeconfig"),
        local_cluster.create_service_account_kubeconfig(
            namespace, AGENT_SA, work / "agent.kubeconfig"),
        work,
    )


# ---------------------------------------------------------------- the reconciler


def test_reconcile_frees_orphans_and_keeps_live_pending_and_statusless_pods(env: Env) -> None:
    net = "rec1"
    env.create_pod("live", "node-a", "Running", ips={"net1": ["10.1.0.2"]})
    env.create_pod("pending", "node-a", "Pending")
    env.create_pod("starting", "node-a")  # no status at all yet
    env.create_pod("nostatus", "node-a", "Running")  # no network-status annotation
    env.create_pod("done", "node-a", "Succeeded", ips={"net1": ["10.1.0.5"]})
    env.create_pod("moved", "node-b", "Running", ips={"net1": ["10.1.0.99"]})
    env.create_pod("other-if", "node-b", "Running", ips={"net2": ["10.1.0.77"]})
    entries = {2: "live", 3: "pending", 4: "starting", 5: "done", 6: "nostatus", 7: "gone",
               8: "moved", 9: "other-if"}
    pool = env.create_pool(net, "10.1.0.0/24", {
        o: {"podref": env.ref(p), "ifname": "net1", "node": "node-a"} for o, p in entries.items()})
    kept_orip = env.create_orip(net, "10.1.0.2", env.ref("live"))
    freed_orip = env.create_orip(net, "10.1.0.7", env.ref("gone"))
    lonely_orip = env.create_orip(net, "10.1.0.50", env.ref("gone-too"))
    pending_orip = env.create_orip(net, "10.1.0.51", env.ref("pending"))

    proc = env.reconcile("--grace-period", "0")
    assert proc.returncode == 0, proc.stderr
    assert summary(proc.stdout)["errors"] == 0
    assert env.allocations(pool) == {2: env.ref("live"), 3: env.ref("pending"),
                                     4: env.ref("starting"), 6: env.ref("nostatus"),
                                     9: env.ref("other-if")}
    assert env.orip_exists(kept_orip) and env.orip_exists(pending_orip)
    assert not env.orip_exists(freed_orip) and not env.orip_exists(lonely_orip)
    messages = {e["involvedObject"]["name"]: e["message"] for e in env.gc_events()}
    assert {"done", "gone", "moved"} <= set(messages)
    assert "10.1.0.5" in messages["done"]

    again = env.reconcile("--grace-period", "0")
    assert again.returncode == 0, again.stderr
    assert env.allocations(pool) == {2: env.ref("live"), 3: env.ref("pending"),
                                     4: env.ref("starting"), 6: env.ref("nostatus"),
                                     9: env.ref("other-if")}


def test_reconcile_dry_run_prints_and_changes_nothing(env: Env) -> None:
    pool = env.create_pool("rec2", "10.2.0.0/24", {
        3: {"podref": env.ref("dry-gone"), "ifname": "net1"}})
    proc = env.reconcile("--grace-period", "0", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would free 10.2.0.3 in pool {pool} held by {env.ref('dry-gone')}" in proc.stdout
    assert "(dry run)" in proc.stdout
    assert env.allocations(pool) == {3: env.ref("dry-gone")}


def test_reconcile_grace_period_protects_young_pods(env: Env) -> None:
    env.create_pod("young-done", "node-a", "Failed")
    pool = env.create_pool("rec3", "10.3.0.0/24", {
        4: {"podref": env.ref("young-done"), "ifname": "net1"}})
    proc = env.reconcile("--grace-period", "1h")
    assert proc.returncode == 0, proc.stderr
    assert env.allocations(pool) == {4: env.ref("young-done")}
    proc = env.reconcile("--grace-period", "0s")
    assert proc.returncode == 0, proc.stderr
    assert env.allocations(pool) == {}


def test_two_concurrent_reconcile_runs_are_safe(env: Env) -> None:
    live = [f"busy-{i}" for i in range(20)]
    for i, name in enumerate(live):
        env.create_pod(name, "node-a", "Running",
                       ips={"net1": [f"10.4.{third}.{200 + i}" for third in range(3)]})
    pools = []
    for third in range(3):
        entries = {o: {"podref": env.ref(f"orphan-{third}-{o}"), "ifname": "net1"}
                   for o in range(1, 151)}
        for i, name in enumerate(live):
            entries[200 + i] = {"podref": env.ref(name), "ifname": "net1"}
        pools.append(env.create_pool("rec4", f"10.4.{third}.0/24", entries))
    with ThreadPoolExecutor(2) as workers:
        runs = list(workers.map(lambda _: env.reconcile("--grace-period", "0"), range(2)))
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    totals = [summary(p.stdout) for p in runs]
    assert sum(t["allocations"] for t in totals) >= 450  # other tests' leftovers may add
    assert sum(t["errors"] for t in totals) == 0
    for pool in pools:
        assert sorted(env.allocations(pool).values()) == sorted(env.ref(n) for n in live)


def test_reconcile_as_an_account_without_rights_fails_loudly(env: Env, tmp_path: Path) -> None:
    env.cluster.create_service_account(env.namespace, "nobody")
    kubeconfig = env.cluster.create_service_account_kubeconfig(
        env.namespace, "nobody", tmp_path / "nobody.kubeconfig")
    proc = env.reconcile("--grace-period", "0", kubeconfig=kubeconfig)
    assert proc.returncode == 1
    assert "403" in proc.stderr or "not allowed" in proc.stderr


# ---------------------------------------------------------------- the node agent


def test_agent_frees_a_deleted_pod_within_seconds_and_only_on_its_node(env: Env) -> None:
    node = f"agent-{secrets.token_hex(2)}"
    env.create_pod("del-me", node, "Running", ips={"net1": ["10.5.0.2"]})
    env.create_pod("finish-me", node, "Running", ips={"net1": ["10.5.0.3"]})
    env.create_pod("stay", node, "Running", ips={"net1": ["10.5.0.4"]})
    env.create_pod("elsewhere", "node-z", "Running")
    pool = env.create_pool("agent1", "10.5.0.0/24", {
        2: {"podref": env.ref("del-me"), "ifname": "net1", "node": node},
        3: {"podref": env.ref("finish-me"), "ifname": "net1", "node": node},
        4: {"podref": env.ref("stay"), "ifname": "net1", "node": node},
        5: {"podref": env.ref("elsewhere"), "ifname": "net1", "node": "node-z"},
        6: {"podref": env.ref("del-me"), "ifname": "net2"},  # upstream entry: no node
    })
    orip = env.create_orip("agent1", "10.5.0.2", env.ref("del-me"))
    agent = env.start_agent(node)
    try:
        env.delete_pod("del-me")
        poll("the deleted pod's entries freed", lambda: set(env.allocations(pool)) == {3, 4, 5},
             timeout=15)
        poll("its reservation deleted", lambda: not env.orip_exists(orip), timeout=15)
        env.set_phase("finish-me", "Succeeded")
        poll("the finished pod's entry freed", lambda: set(env.allocations(pool)) == {4, 5},
             timeout=15)
        env.delete_pod("elsewhere")  # another node's pod: not this agent's business
        names = poll("events recorded", lambda: {
            e["involvedObject"]["name"] for e in env.gc_events()} >= {"del-me", "finish-me"}
            or None, timeout=15)
        assert names
        assert set(env.allocations(pool)) == {4, 5}
    finally:
        assert agent.stop() == 0, agent.output()


def test_agent_frees_pods_deleted_while_it_was_down(env: Env) -> None:
    node = f"agent-{secrets.token_hex(2)}"
    env.create_pod("was-deleted", node, "Running")
    env.create_pod("was-finished", node, "Failed")
    env.create_pod("still-running", node, "Running")
    env.create_pod("pending-here", node, "Pending")
    env.create_pod("rescheduled", "node-other", "Running")  # same name, now elsewhere
    pool = env.create_pool("agent2", "10.6.0.0/24", {
        2: {"podref": env.ref("was-deleted"), "ifname": "net1", "node": node},
        3: {"podref": env.ref("was-finished"), "ifname": "net1", "node": node},
        4: {"podref": env.ref("still-running"), "ifname": "net1", "node": node},
        5: {"podref": env.ref("pending-here"), "ifname": "net1", "node": node},
        6: {"podref": env.ref("rescheduled"), "ifname": "net1", "node": node},
        7: {"podref": env.ref("never-existed"), "ifname": "net1", "node": node},
        8: {"podref": env.ref("never-existed-2"), "ifname": "net1", "node": "node-other"},
    })
    env.delete_pod("was-deleted")
    started = time.monotonic()
    agent = env.start_agent(node)
    try:
        poll("entries of pods gone while the agent was down freed",
             lambda: set(env.allocations(pool)) == {4, 5, 6, 8}, timeout=15)
        assert time.monotonic() - started < 60
    finally:
        assert agent.stop() == 0, agent.output()


def test_agent_stops_promptly_on_sigterm(env: Env) -> None:
    agent = env.start_agent(f"agent-{secrets.token_hex(2)}")
    began = time.monotonic()
    assert agent.stop() == 0, agent.output()
    assert time.monotonic() - began < 10
    assert "stopped" in agent.output()


# ---------------------------------------------------------------- with the real plugin


@pytest.fixture(scope="module")
def topology(netns_factory: Callable[[], netns.Topology],
             local_cluster: LocalCluster) -> Iterator[netns.Topology]:
    """One node that sees the API server at the host's 127.0.0.1:<port>."""
    with relayed_nodes(netns_factory(), 1, local_cluster.apiserver_port) as topo:
        yield topo


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster, e2e_tools: ToolPaths, topology: netns.Topology,
         tmp_path_factory: pytest.TempPathFactory) -> KubernetesDatastore:
    return KubernetesDatastore(local_cluster, e2e_tools, f"wa-clean-plugin-{secrets.token_hex(3)}",
                               tmp_path_factory.mktemp("kube")).install()


@pytest.fixture
def harness(local_cluster: LocalCluster, topology: netns.Topology, bin_dir: Path,
            kube: KubernetesDatastore) -> Iterator[Harness]:
    pods_ns = f"wa-clean-plugin-pods-{secrets.token_hex(3)}"
    local_cluster.create_namespace(pods_ns)
    h = Harness(topology, [bin_dir], kube.node_ipam, cluster=local_cluster,
                namespace=pods_ns)
    ensure_nad_crd(local_cluster, h.api)  # type: ignore[arg-type]
    yield h
    h.cleanup()


def test_leaks_of_the_real_plugin_are_reclaimed_by_the_agent_and_the_reconciler(
        harness: Harness, kube: KubernetesDatastore, topology: netns.Topology,
        local_cluster: LocalCluster, tmp_path: Path) -> None:
    cidr = "10.79.0.0/24"
    net = harness.create_network("leaky", macvlan("leaky", {"range": cidr}))
    node = topology.nodes[0]
    pool = pool_name(cidr)
    pods = [harness.add_pod(f"leaky-{i}", node, [net]) for i in range(6)]
    assert all(p.ok for p in pods), [p.failure.describe() for p in pods if p.failure]
    assert len(kube.allocations(pool)) == 6
    assert harness.api is not None

    def held() -> Set[str]:
        return {a["podref"] for a in kube.allocations(pool).values()}

    def crash_and_delete(pod: Pod) -> None:
        """The node's runtime lost the sandbox without a DEL; then the pod is deleted."""
        harness.forget_sandbox(pod)
        assert harness.api is not None
        harness.api.delete(harness.pod_path(pod), grace_period=0)

    agent = start_agent(local_cluster.kubeconfig, kube.namespace, node, tmp_path)
    try:
        crash_and_delete(pods[0])
        poll("a crashed pod's address freed by the agent",
             lambda: pods[0].podref not in held(), timeout=15)
        poll("and its reservation",
             lambda: reservation_name(pods[0].ip()) not in kube.reservations(), timeout=15)
        harness.forget_sandbox(pods[1])
        assert harness.api is not None
        harness.api.merge_patch(
            harness.pod_path(pods[1]) + "/status", {"status": {"phase": "Failed"}})
        poll("a failed pod's address freed by the agent",
             lambda: pods[1].podref not in held(), timeout=15)
    finally:
        assert agent.stop() == 0, agent.output()

    crash_and_delete(pods[2])  # while the agent is down
    agent = start_agent(local_cluster.kubeconfig, kube.namespace, node, tmp_path)
    try:
        poll("a pod deleted while the agent was down freed at its start",
             lambda: pods[2].podref not in held(), timeout=15)
    finally:
        assert agent.stop() == 0, agent.output()

    crash_and_delete(pods[3])  # no agent at all: the reconciler's turn
    proc = reconcile(local_cluster.kubeconfig, kube.namespace, "--grace-period", "0")
    assert proc.returncode == 0, proc.stderr
    live = {p.podref for p in pods[4:]}
    assert held() == live
    assert {s["podref"] for s in kube.reservations().values()} == live

    # The freed addresses are handed out again, never twice.
    again = [harness.add_pod(f"again-{i}", node, [net]) for i in range(4)]
    assert all(p.ok for p in again)
    everyone = pods[4:] + again
    assert_no_duplicates(everyone)
    assert held() == {p.podref for p in everyone}
    assert reconcile(local_cluster.kubeconfig, kube.namespace,
                     "--grace-period", "0").returncode == 0
    assert held() == {p.podref for p in everyone}

