"""What the plugin end-to-end tests share: node installations per datastore, views of
what each datastore holds, invariant checks, and the scenarios every backend runs.

A datastore object plays the part of whereabouts' installation:

* ``node_ipam(node)`` is what the installer leaves on that node for the plugin (the
  kubeconfig and node name, or a flat file and ``nodename`` file, or the etcd endpoint,
  or the file store's directory); the harness merges it into each NAD's ipam object.
* ``pools()`` / ``reservations()`` read back what the plugin stored, as an operator
  would (``kubectl get ippools -o json``, the etcd keys, the files).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)
from urllib.parse import urlsplit

from e2e import netns
from e2e.conftest import unavailable
from e2e.harness import Harness, LoopbackRelay, Network, Pod, poll, run_concurrently
from e2e.localcluster import LocalCluster, ToolPaths, read_versions

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "whereabouts"
CRD_DIR = CHART / "crds"
PLUGIN_RBAC_TEMPLATE = "templates/plugin/rbac.yaml"
GROUP_API = "/apis/whereabouts.cni.cncf.io/v1alpha1"
PLUGIN_SERVICE_ACCOUNT = "whereabouts-cni"
IPPOOLS = "ippools.whereabouts.cni.cncf.io"
RESERVATIONS = "overlappingrangeipreservations.whereabouts.cni.cncf.io"
# The plugin's least privilege when the chart is not there to render it.
PLUGIN_RULES = [
    {
        "apiGroups": ["whereabouts.cni.cncf.io"],
        "resources": ["ippools"],
        "verbs": ["get", "create", "update"],
    },
    {
        "apiGroups": ["whereabouts.cni.cncf.io"],
        "resources": ["overlappingrangeipreservations"],
        "verbs": ["get", "create", "delete"],
    },
]


# ---------------------------------------------------------------- the plugin on a node


def install_plugin_dir(cni_bin_dir: Path, whereabouts_bin: Path, target: Path) -> Path:
    """A node's CNI bin dir: the reference plugins and whereabouts.pyz installed the way
    the installer does it, with an absolute interpreter (``-sES``) in place of
    ``/usr/bin/env python3`` (which may be a slow pyenv shim)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in cni_bin_dir.iterdir():
        if entry.name != "whereabouts":
            (target / entry.name).symlink_to(entry.resolve())
    data = whereabouts_bin.read_bytes()
    assert data.startswith(b"#!"), f"{whereabouts_bin} has no shebang"
    body = data[data.index(b"\n") + 1 :]
    plugin = target / "whereabouts"
    plugin.write_bytes(f"#!{os.path.realpath(sys.executable)} -sES\n".encode() + body)
    plugin.chmod(0o755)
    return target


@contextlib.contextmanager
def relayed_nodes(topology: netns.Topology, count: int, port: int) -> Iterator[netns.Topology]:
    """``count`` nodes added to ``topology``, each seeing the host's 127.0.0.1:``port``
    through a LoopbackRelay; relay and topology are cleaned up on exit."""
    relay = LoopbackRelay()
    try:
        for _ in range(count):
            relay.expose(topology.add_node(), port)
        yield topology
    finally:
        relay.close()
        topology.cleanup()


@contextlib.contextmanager
def checked_cleanup(harness: Harness) -> Iterator[Harness]:
    """Yields ``harness``; on exit its teardown DELs run and must all succeed."""
    yield harness
    problems = harness.cleanup()
    assert not problems, f"teardown DELs failed: {problems}"


def macvlan(name: str, ipam: Mapping[str, Any], cni_version: str = "1.0.0") -> Dict[str, Any]:
    """A macvlan NAD config on the node's eth0 with whereabouts IPAM."""
    return {
        "cniVersion": cni_version,
        "name": name,
        "type": "macvlan",
        "master": netns.NODE_IFNAME,
        "mode": "bridge",
        "ipam": {"type": "whereabouts", **ipam},
    }


def bridge(name: str, ipam: Mapping[str, Any], cni_version: str = "1.0.0") -> Dict[str, Any]:
    """A bridge NAD config (the bridge lives in the node's netns) with whereabouts IPAM."""
    return {
        "cniVersion": cni_version,
        "name": name,
        "type": "bridge",
        "bridge": "wa-br0",
        "isGateway": False,
        "ipMasq": False,
        "ipam": {"type": "whereabouts", **ipam},
    }


# ---------------------------------------------------------------- datastores


class Datastore:
    name = "datastore"

    def node_ipam(self, node: str) -> Dict[str, Any]:
        raise NotImplementedError

    def pools(self) -> Dict[str, Dict[str, Any]]:
        """Pool name -> spec ({"range", "allocations": {offset: {...}}})."""
        raise NotImplementedError

    def reservations(self) -> Dict[str, Dict[str, Any]]:
        """Overlapping-range reservation name -> spec ({"podref", "ifname", ...})."""
        raise NotImplementedError

    def allocations(self, pool: str) -> Dict[str, Dict[str, Any]]:
        spec = self.pools().get(pool)
        return dict(spec.get("allocations") or {}) if spec else {}


class KubernetesDatastore(Datastore):
    """whereabouts on the local control plane: the chart's CRDs, the plugin's RBAC
    (rendered from the chart with helm) and a TokenRequest kubeconfig of its
    ServiceAccount. Nodes in ``flat_file_nodes`` get what the installer writes (a
    ``whereabouts.d`` directory with ``whereabouts.conf`` and ``nodename``, found via
    ``configuration_path``); the others get ``kubernetes.kubeconfig`` and ``node_name``
    in the netconf."""

    name = "kubernetes"

    def __init__(
        self,
        cluster: LocalCluster,
        tools: ToolPaths,
        namespace: str,
        workdir: Path,
        flat_file_nodes: Iterable[str] = (),
    ) -> None:
        self.cluster = cluster
        self.tools = tools
        self.namespace = namespace
        self.workdir = workdir
        self.flat_file_nodes: Set[str] = set(flat_file_nodes)
        self.kubeconfig = workdir / "whereabouts.kubeconfig"
        self.service_account = PLUGIN_SERVICE_ACCOUNT
        self.rbac_source = ""
        self.rbac_kinds: List[str] = []
        self._lock = threading.Lock()

    # -- installation

    def install(self) -> KubernetesDatastore:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not CRD_DIR.is_dir() or not list(CRD_DIR.glob("*.yaml")):
            unavailable(f"no CRDs in {CRD_DIR}")
        self.cluster.kubectl("apply", "-f", str(CRD_DIR))
        self.cluster.create_namespace(self.namespace)
        for plural in ("ippools", "overlappingrangeipreservations"):
            path = f"{GROUP_API}/namespaces/{self.namespace}/{plural}"
            poll(f"{plural} to be served", lambda p=path: self._served(p), 60)  # type: ignore[misc]
        self._install_rbac()
        self.cluster.create_service_account_kubeconfig(
            self.namespace, self.service_account, self.kubeconfig
        )
        for verb, resource in (
            ("get", IPPOOLS),
            ("create", IPPOOLS),
            ("update", IPPOOLS),
            ("get", RESERVATIONS),
            ("create", RESERVATIONS),
            ("delete", RESERVATIONS),
        ):
            poll(
                f"RBAC to allow the plugin to {verb} {resource}",
                lambda v=verb, r=resource: self.can_i(v, r),  # type: ignore[misc]
                30,
            )
        return self

    def uninstall(self) -> None:
        """Deletes the pools, reservations and namespace (without waiting: nothing
        finalizes a namespace without kube-controller-manager)."""
        self.cluster.kubectl(
            "delete", IPPOOLS, RESERVATIONS, "--all", "-n", self.namespace, "--wait=false",
            check=False,
        )
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    def _served(self, path: str) -> bool:
        return self.cluster.api("GET", path)[0] == 200

    def _install_rbac(self) -> None:
        if (CHART / PLUGIN_RBAC_TEMPLATE).is_file():
            if not os.access(self.tools.helm, os.X_OK):
                unavailable(f"helm not built at {self.tools.helm} (run ci/e2e-tools)")
            proc = subprocess.run(
                [
                    str(self.tools.helm),
                    "template",
                    "whereabouts",
                    str(CHART),
                    "--namespace",
                    self.namespace,
                    "--kube-version",
                    read_versions()["K8S_VERSION"],
                    "--show-only",
                    PLUGIN_RBAC_TEMPLATE,
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert proc.returncode == 0, f"helm template failed: {proc.stderr}"
            applied = json.loads(
                self.cluster.kubectl("apply", "-f", "-", "-o", "json", input=proc.stdout).stdout
            )
            items = applied.get("items", [applied])
            self.rbac_kinds = sorted(item["kind"] for item in items)
            accounts = [i["metadata"]["name"] for i in items if i["kind"] == "ServiceAccount"]
            assert len(accounts) == 1, f"the chart's plugin RBAC has {accounts}"
            self.service_account = accounts[0]
            self.rbac_source = f"helm template --show-only {PLUGIN_RBAC_TEMPLATE}"
            return
        self.cluster.create_service_account(self.namespace, self.service_account)
        objects = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "whereabouts-cni", "namespace": self.namespace},
                "rules": PLUGIN_RULES,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "whereabouts-cni", "namespace": self.namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "whereabouts-cni",
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": self.service_account,
                        "namespace": self.namespace,
                    }
                ],
            },
        ]
        for body in objects:
            self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        self.rbac_kinds = ["Role", "RoleBinding", "ServiceAccount"]
        self.rbac_source = "built-in Role (no chart)"

    def can_i(self, verb: str, resource: str, namespace: Optional[str] = None) -> bool:
        """``kubectl auth can-i`` as the plugin's ServiceAccount (``resource`` as kubectl
        takes it, e.g. ``ippools.whereabouts.cni.cncf.io`` or ``pods``)."""
        proc = self.cluster.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            namespace or self.namespace,
            kubeconfig=self.kubeconfig,
            check=False,
        )
        return proc.stdout.strip() == "yes"

    def node_dir(self, node: str) -> Path:
        return self.workdir / "nodes" / node / "whereabouts.d"

    def node_ipam(self, node: str) -> Dict[str, Any]:
        if node in self.flat_file_nodes:
            directory = self.node_dir(node)
            with self._lock:
                if not (directory / "whereabouts.conf").exists():
                    directory.mkdir(parents=True, exist_ok=True)
                    (directory / "nodename").write_text(node + "\n")
                    flat = {
                        "datastore": "kubernetes",
                        "kubernetes": {"kubeconfig": str(self.kubeconfig)},
                    }
                    tmp = directory / "whereabouts.conf.tmp"
                    tmp.write_text(json.dumps(flat))
                    tmp.replace(directory / "whereabouts.conf")
            return {"configuration_path": str(directory)}
        return {"kubernetes": {"kubeconfig": str(self.kubeconfig)}, "node_name": node}

    # -- what is stored

    def _list(self, plural: str) -> Dict[str, Dict[str, Any]]:
        out = self.cluster.kubectl("get", plural, "-n", self.namespace, "-o", "json").stdout
        return {i["metadata"]["name"]: i for i in json.loads(out)["items"]}

    def pool_objects(self) -> Dict[str, Dict[str, Any]]:
        return self._list(IPPOOLS)

    def pools(self) -> Dict[str, Dict[str, Any]]:
        return {name: obj.get("spec", {}) for name, obj in self.pool_objects().items()}

    def reservations(self) -> Dict[str, Dict[str, Any]]:
        objects = self._list(RESERVATIONS)
        return {name: obj.get("spec", {}) for name, obj in objects.items()}

    def create_pool_object(self, name: str, spec: Mapping[str, Any]) -> None:
        body = {
            "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
            "kind": "IPPool",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": dict(spec),
        }
        self.cluster.kubectl("create", "-f", "-", input=json.dumps(body))

    def delete_pools(self, names: Iterable[str]) -> None:
        for name in names:
            self.cluster.kubectl(
                "delete", IPPOOLS, name, "-n", self.namespace,
                "--ignore-not-found", "--wait=false",
            )


class EtcdDatastore(Datastore):
    """``datastore: etcd`` against a real etcd, read back through its v3 JSON gateway."""

    name = "etcd"

    def __init__(self, endpoint: str, prefix: str = "/whereabouts/") -> None:
        self.endpoint = endpoint
        self.prefix = prefix

    def node_ipam(self, node: str) -> Dict[str, Any]:
        return {"datastore": "etcd", "etcd_host": self.endpoint, "node_name": node}

    def _range(self, prefix: str) -> Dict[str, Dict[str, Any]]:
        url = urlsplit(self.endpoint)
        end = bytearray(prefix.encode())
        end[-1] += 1
        body = {
            "key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(bytes(end)).decode(),
        }
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        try:
            conn.request("POST", "/v3/kv/range", json.dumps(body))
            resp = conn.getresponse()
            data = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 200, data
        found = {}
        for kv in data.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            found[key[len(prefix) :]] = json.loads(base64.b64decode(kv["value"]))
        return found

    def pools(self) -> Dict[str, Dict[str, Any]]:
        return self._range(self.prefix + "ippools/")

    def reservations(self) -> Dict[str, Dict[str, Any]]:
        return self._range(self.prefix + "reservations/")


class FileDatastore(Datastore):
    """``datastore: file``: one directory on the (single) host."""

    name = "file"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def node_ipam(self, node: str) -> Dict[str, Any]:
        return {"datastore": "file", "data_dir": str(self.data_dir), "node_name": node}

    def _read(self, sub: str) -> Dict[str, Dict[str, Any]]:
        directory = self.data_dir / sub
        if not directory.is_dir():
            return {}
        return {
            p.name[: -len(".json")]: json.loads(p.read_text())
            for p in directory.iterdir()
            if p.name.endswith(".json")
        }

    def pools(self) -> Dict[str, Dict[str, Any]]:
        return self._read("pools")

    def reservations(self) -> Dict[str, Dict[str, Any]]:
        return self._read("reservations")


# ---------------------------------------------------------------- names and offsets


def pool_name(cidr: str, network_name: str = "") -> str:
    """Upstream's IPPool name: ``[network_name-]<cidr, ':' and '/' as '-'>``."""
    text = str(ipaddress.ip_network(cidr, strict=False))
    base = text.replace(":", "-").replace("/", "-")
    return f"{network_name}-{base}" if network_name else base


def reservation_name(ip: str, network_name: str = "") -> str:
    """Upstream's OverlappingRangeIPReservation name (``NormalizeIP``)."""
    text = str(ipaddress.ip_address(ip))
    if text.endswith(":"):
        text += "0"
    base = text.replace(":", "-")
    return f"{network_name}-{base}" if network_name else base


def offset(ip: str, cidr: str) -> int:
    network = ipaddress.ip_network(cidr, strict=False)
    return int(ipaddress.ip_address(ip)) - int(network.network_address)


def in_range(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)


# ---------------------------------------------------------------- invariants


def assert_no_duplicates(pods: Sequence[Pod], ifname: str = "net1") -> None:
    counts = Counter(p.ip(ifname) for p in pods)
    duplicated = {ip: [p.podref for p in pods if p.ip(ifname) == ip] for ip, n in counts.items()
                  if n > 1}
    assert not duplicated, f"one address handed to several pods: {duplicated}"


def assert_recorded(
    store: Datastore,
    pods: Sequence[Pod],
    cidr: str,
    *,
    network_name: str = "",
    ifname: str = "net1",
    overlapping: bool = True,
    exact: bool = True,
) -> Dict[str, Dict[str, Any]]:
    """Each pod's address is in its pool exactly once, at its offset, owned by that pod's
    current container on its node; with ``overlapping`` each has its own reservation;
    with ``exact`` the pool holds nothing else. Returns the pool's allocations."""
    name = pool_name(cidr, network_name)
    pools = store.pools()
    assert name in pools, f"no pool {name}; pools: {sorted(pools)}"
    allocations = dict(pools[name].get("allocations") or {})
    assert pools[name].get("range") == str(ipaddress.ip_network(cidr)), pools[name]
    by_owner = Counter((a.get("podref"), a.get("ifname")) for a in allocations.values())
    for pod in pods:
        ip = pod.ip(ifname)
        key = str(offset(ip, cidr))
        entry = allocations.get(key)
        assert entry is not None, f"{pod.podref} {ip} is not recorded at offset {key} of {name}"
        want = {"id": pod.container_id, "podref": pod.podref, "ifname": ifname, "node": pod.node}
        got = {k: entry.get(k) for k in want}
        assert got == want, f"{name}[{key}] is {entry}, expected {want}"
        assert by_owner[(pod.podref, ifname)] == 1, (
            f"{pod.podref} {ifname} recorded {by_owner[(pod.podref, ifname)]} times in {name}"
        )
    if exact:
        mine = {str(offset(p.ip(ifname), cidr)) for p in pods}
        extra = {k: v for k, v in allocations.items() if k not in mine}
        assert not extra, f"{name} holds allocations of no live pod: {extra}"
    if overlapping:
        reservations = store.reservations()
        for pod in pods:
            rname = reservation_name(pod.ip(ifname), network_name)
            spec = reservations.get(rname)
            assert spec is not None, f"no overlapping-range reservation {rname} for {pod.podref}"
            assert (spec.get("podref"), spec.get("ifname")) == (pod.podref, ifname), (rname, spec)
    return allocations


def assert_released(
    store: Datastore,
    cidr: str,
    ips: Iterable[str],
    *,
    network_name: str = "",
) -> None:
    """None of ``ips`` is allocated in the pool or reserved any more."""
    wanted = {str(offset(ip, cidr)): ip for ip in ips}
    allocations = store.allocations(pool_name(cidr, network_name))
    left = {wanted[k]: v for k, v in allocations.items() if k in wanted}
    assert not left, f"still allocated after DEL: {left}"
    reservations = store.reservations()
    left_r = [reservation_name(ip, network_name) for ip in wanted.values()
              if reservation_name(ip, network_name) in reservations]
    assert not left_r, f"reservations left after DEL: {left_r}"


def link_mac(pod_netns: str, ifname: str) -> str:
    """The MAC address of ``ifname`` in ``pod_netns``."""
    proc = netns.ip("-j", "-n", pod_netns, "link", "show", "dev", ifname)
    return str(json.loads(proc.stdout)[0]["address"])


def assert_interface_has(pod: Pod, ifname: str = "net1") -> None:
    """The addresses of the result are really configured on the pod's interface."""
    configured = set(netns.ip_addrs(pod.netns, ifname))
    expected = set(pod.attachment(ifname).addresses)
    assert expected and expected <= configured, (
        f"{pod.podref} {ifname}: result {sorted(expected)}, interface has {sorted(configured)}"
    )


# ---------------------------------------------------------------- scenarios run on every backend


def single_pod_lifecycle(
    harness: Harness, store: Datastore, network: Network, cidr: str, *, node: str, name: str
) -> Pod:
    """ADD, CHECK, DEL and DEL again of one pod; checks every step. Returns the pod
    (deleted) for backend-specific checks that the caller already made in between."""
    pod = harness.add_pod(name, node, [network])
    ip = pod.ip()
    assert in_range(ip, cidr), (ip, cidr)
    assert_interface_has(pod)
    assert_recorded(store, [pod], cidr)
    for call in harness.check_pod(pod):
        assert call.ok, call.describe()
    harness.del_networks(pod)
    assert not netns.link_exists(pod.netns, "net1"), "DEL left the interface"
    assert_released(store, cidr, [ip])
    # DEL is idempotent: nothing held, still success.
    harness.delete_pod(pod)
    return pod


def concurrent_adds(
    harness: Harness,
    store: Datastore,
    network: Network,
    cidr: str,
    *,
    nodes: Sequence[str],
    per_node: int,
    prefix: str,
    workers: int = 10,
) -> List[Pod]:
    """``per_node`` pods on each node ADDed at once: distinct, in range, recorded once."""
    specs = [(f"{prefix}-{n}-{i}", node, [network]) for n, node in enumerate(nodes, 1)
             for i in range(per_node)]
    pods = harness.add_pods(specs, workers=workers)
    assert_no_duplicates(pods)
    outside = [p.ip() for p in pods if not in_range(p.ip(), cidr)]
    assert not outside, f"addresses outside {cidr}: {outside}"
    assert_recorded(store, pods, cidr)
    return pods


def delete_all(harness: Harness, store: Datastore, pods: Sequence[Pod], cidr: str,
               workers: int = 10) -> None:
    """Delete the pods at once; the pool must be left empty."""
    ips = [p.ip() for p in pods]
    harness.delete_pods(pods, workers=workers)
    assert_released(store, cidr, ips)
    left = store.allocations(pool_name(cidr))
    assert not left, f"allocations left after deleting every pod: {left}"


__all__ = [
    "Datastore",
    "EtcdDatastore",
    "FileDatastore",
    "KubernetesDatastore",
    "assert_interface_has",
    "assert_no_duplicates",
    "assert_recorded",
    "assert_released",
    "bridge",
    "concurrent_adds",
    "delete_all",
    "in_range",
    "install_plugin_dir",
    "link_mac",
    "macvlan",
    "offset",
    "pool_name",
    "reservation_name",
    "run_concurrently",
    "single_pod_lifecycle",
]


# ---------------------------------------------------------------- controller processes


def child_env(*drop: str) -> Dict[str, str]:
    """The environment of a `whereabouts` controller process run from this checkout:
    no in-cluster or node settings of the test run (nor ``drop``)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "NODENAME", *drop)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class Agent:
    """A running `whereabouts controlloop` process and its log."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.output()}")
        return True

    def stop(self) -> int:
        """SIGTERM, as the kubelet stops the DaemonSet pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_agent(
    kubeconfig: Path,
    namespace: str,
    node: str,
    workdir: Path,
    *args: str,
    log_level: str = "debug",
    drop_env: Tuple[str, ...] = (),
) -> Agent:
    """`whereabouts controlloop` for ``node`` as a process, once it watches (its log in
    ``workdir``)."""
    log = workdir / f"agent-{node}-{secrets.token_hex(3)}.log"
    cmd = [sys.executable, "-m", "whereabouts", "controlloop", "--kubeconfig", str(kubeconfig),
           "--namespace", namespace, "--node-name", node, "--grace-period", "0",
           "--log-level", log_level, *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(*drop_env), cwd=REPO)
    agent = Agent(proc, log)
    try:
        poll(f"the agent of {node} watching",
             lambda: agent.alive() and "watching the pods" in agent.output(), timeout=60)
    except BaseException:
        agent.stop()
        raise
    return agent
