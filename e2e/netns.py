"""Simulated nodes and pods as network namespaces, and running CNI plugins in them.

Topology (nothing is added to the root namespace)::

    <prefix>-fabric:  bridge br0 --+-- n1 ===veth=== eth0  in <prefix>-node-1
                                   +-- n2 ===veth=== eth0  in <prefix>-node-2
    <prefix>-pod-<name>: one netns per pod (lo up), wired by the CNI plugin under test

A node's ``eth0`` is the macvlan/ipvlan master, so pods on different nodes reach
each other through the fabric bridge. The plugins run inside the node netns, as
a kubelet/multus would run them on that node.

Needs root and iproute2. Plugins that keep state on disk (``host-local``) must be
given a temp ``dataDir``: the filesystem is not namespaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

NETNS_DIR = Path("/var/run/netns")
FABRIC_BRIDGE = "br0"
NODE_IFNAME = "eth0"


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------- namespaces


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str = "") -> List[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add_netns(name: str) -> str:
    """Create netns ``name`` with lo up (idempotent); returns its path."""
    if not netns_exists(name):
        ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    return netns_path(name)


def delete_netns(name: str) -> None:
    """Delete netns ``name`` and every link in it (idempotent)."""
    if netns_exists(name):
        ip("netns", "delete", name, check=False)
    if netns_exists(name):  # a stale mount point left by a crashed run
        subprocess.run(["umount", "-l", netns_path(name)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.unlink(netns_path(name))


def cleanup_prefix(prefix: str) -> List[str]:
    """Delete every netns whose name starts with ``prefix`` (strays of a crashed run)."""
    names = list_netns(prefix)
    for name in names:
        delete_netns(name)
    return names


def cleanup_dead_owners(root: str = "wa-") -> List[str]:
    """Delete netns named ``<root><pid>-...`` whose owning process is gone (a killed test run)."""
    stale = []
    for name in list_netns(root):
        pid = name[len(root) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            delete_netns(name)
            stale.append(name)
    return stale


def link_exists(netns: str, ifname: str) -> bool:
    return ip("-n", netns, "link", "show", "dev", ifname, check=False).returncode == 0


def create_fabric(name: str) -> str:
    """The netns holding the bridge that connects all nodes."""
    add_netns(name)
    if not link_exists(name, FABRIC_BRIDGE):
        ip("-n", name, "link", "add", FABRIC_BRIDGE, "type", "bridge")
    ip("-n", name, "link", "set", FABRIC_BRIDGE, "up")
    return name


def create_node(name: str, fabric: str, port: str) -> str:
    """Node netns with ``eth0`` veth'd to the fabric bridge (fabric side named ``port``)."""
    add_netns(name)
    if not link_exists(name, NODE_IFNAME):
        ip("-n", fabric, "link", "del", port, check=False)
        ip(
            "-n",
            name,
            "link",
            "add",
            NODE_IFNAME,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            fabric,
        )
    ip("-n", fabric, "link", "set", port, "master", FABRIC_BRIDGE, "up")
    ip("-n", name, "link", "set", NODE_IFNAME, "up")
    return name


# ---------------------------------------------------------------- topology


class Topology:
    """Fabric + nodes + pods under one name prefix; :meth:`cleanup` removes them all.

    Use a unique prefix per test session so concurrent runs on one machine do
    not delete each other's namespaces.
    """

    def __init__(self, prefix: str = "wa") -> None:
        self.prefix = prefix
        self.fabric = f"{prefix}-fabric"
        self.nodes: List[str] = []
        self.pods: List[str] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def node_name(self, index: int) -> str:
        return f"{self.prefix}-node-{index}"

    def pod_name(self, name: str) -> str:
        return f"{self.prefix}-pod-{name}"

    def add_node(self, index: Optional[int] = None) -> str:
        """Create node ``<prefix>-node-<index>`` (default: next index); returns the netns name."""
        index = index if index is not None else len(self.nodes) + 1
        name = self.node_name(index)
        try:
            create_fabric(self.fabric)
            create_node(name, self.fabric, f"n{index}")
        except BaseException:
            delete_netns(name)
            raise
        if name not in self.nodes:
            self.nodes.append(name)
        return name

    def add_pod(self, name: str) -> str:
        """Create pod netns ``<prefix>-pod-<name>``; returns the netns name."""
        netns = self.pod_name(name)
        try:
            add_netns(netns)
        except BaseException:
            delete_netns(netns)
            raise
        if netns not in self.pods:
            self.pods.append(netns)
        return netns

    def delete_pod(self, netns: str) -> None:
        delete_netns(netns)
        if netns in self.pods:
            self.pods.remove(netns)

    def cleanup(self) -> None:
        """Delete every netns of this prefix, including ones a crashed earlier run left."""
        cleanup_prefix(f"{self.prefix}-")
        self.nodes.clear()
        self.pods.clear()


# ---------------------------------------------------------------- CNI


class CniResult(NamedTuple):
    rc: int
    output: Any  # decoded JSON on stdout (result or CNI error), None if empty, str if not JSON
    stderr: str


def find_plugin(plugin: str, cni_path: Sequence[Union[str, Path]]) -> str:
    if os.sep in plugin:
        return plugin
    for directory in cni_path:
        candidate = Path(directory) / plugin
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise NetnsError(f"CNI plugin {plugin!r} not found in {':'.join(map(str, cni_path))}")


def _decode(stdout: str) -> Any:
    if not stdout.strip():
        return None
    try:
        return json.loads(stdout)
    except ValueError:
        return stdout


def run_cni(
    plugin: str,
    command: str,
    netconf: Mapping[str, Any],
    node: str,
    pod_netns: Optional[str] = None,
    *,
    container_id: Optional[str] = None,
    ifname: Optional[str] = None,
    cni_args: Optional[Mapping[str, str]] = None,
    cni_path: Sequence[Union[str, Path]] = (),
    extra_env: Optional[Mapping[str, str]] = None,
    timeout: float = 60,
) -> CniResult:
    """Exec a CNI plugin in ``node``'s netns as the runtime would: CNI_* env, netconf on stdin.

    ``plugin`` is a name looked up in ``cni_path`` or a path. ``pod_netns`` is a
    netns name or path; it, ``container_id`` and ``ifname`` are left out when None
    (STATUS, GC and VERSION take none of them).
    """
    env: Dict[str, str] = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_PATH": ":".join(map(str, cni_path)),
    }
    if container_id is not None:
        env["CNI_CONTAINERID"] = container_id
    if pod_netns is not None:
        env["CNI_NETNS"] = pod_netns if pod_netns.startswith("/") else netns_path(pod_netns)
    if ifname is not None:
        env["CNI_IFNAME"] = ifname
    if cni_args:
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in cni_args.items())
    env.update(extra_env or {})
    proc = subprocess.run(
        ["ip", "netns", "exec", node, find_plugin(plugin, cni_path)],
        input=json.dumps(netconf),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    return CniResult(proc.returncode, _decode(proc.stdout), proc.stderr)


def run_cnitool(
    args: Sequence[str],
    node: str,
    netconf_dir: Union[str, Path],
    *,
    cni_path: Sequence[Union[str, Path]],
    cnitool: Union[str, Path],
    state_dir: Union[str, Path],
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 60,
) -> CniResult:
    """Run ``cnitool <args>`` in ``node``'s netns with NETCONFPATH=netconf_dir (*.conflist files)
    and ``env`` added to cnitool's environment.

    libcni caches results under /var/lib/cni; ``state_dir`` is bind-mounted over
    /var/lib in the private mount namespace ``ip netns exec`` makes, so the cache
    (which GC reads to find stale attachments) persists between calls of one
    test and never touches the host.
    """
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "NETCONFPATH": str(netconf_dir),
        "CNI_PATH": ":".join(map(str, cni_path)),
        "STATE_DIR": str(state_dir),
        **(env or {}),
    }
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$STATE_DIR" /var/lib && exec "$@"'
    proc = subprocess.run(
        ["ip", "netns", "exec", node, "sh", "-c", script, "sh", str(cnitool), *args],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    return CniResult(proc.returncode, _decode(proc.stdout), proc.stderr)


# ---------------------------------------------------------------- probes


def ip_addrs(pod_netns: str, ifname: str, scope: str = "global") -> List[str]:
    """Addresses (CIDR notation) on ``ifname`` in ``pod_netns``; [] if the link is absent."""
    proc = ip("-j", "-n", pod_netns, "addr", "show", "dev", ifname, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(proc.stdout)
        for a in link.get("addr_info", [])
        if not scope or a.get("scope") == scope
    ]


def ping(pod_netns: str, ip_addr: str, deadline_s: int = 5) -> bool:
    """True if ``ip_addr`` answers one ICMP echo from inside ``pod_netns`` within the deadline."""
    # -c 1 -w N: returns at the first reply, retrying each second (ARP may still be resolving).
    cmd = ["ping", "-n", "-q", "-c", "1", "-w", str(deadline_s), ip_addr]
    proc = subprocess.run(
        ["ip", "netns", "exec", pod_netns, *cmd],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0
