"""The "kubelet + Multus" player of the end-to-end suite.

No kubelet, container runtime or Multus runs on the test bed, so this module does on a
simulated node (a network namespace, see ``e2e/netns.py``) what they would do for a pod:

1. kubelet: the Pod object exists in the API with ``spec.nodeName`` set (created here;
   nothing schedules or runs it), a sandbox is made (a network namespace) and given a
   fresh container ID.
2. Multus: it reads the pod's ``k8s.v1.cni.cncf.io/networks`` annotation, fetches each
   NetworkAttachmentDefinition's ``spec.config`` from the API and execs that delegate
   (a real reference plugin: macvlan, bridge) in the node's network namespace with
   ``CNI_IFNAME=net<i>`` and ``CNI_ARGS`` carrying the pod's identity
   (``IgnoreUnknown=1;K8S_POD_NAMESPACE;K8S_POD_NAME;K8S_POD_INFRA_CONTAINER_ID;K8S_POD_UID``).
   The delegate execs ``whereabouts`` for IPAM. When every delegate succeeded it writes
   the ``k8s.v1.cni.cncf.io/network-status`` annotation; when one fails it DELs every
   delegate it ran, the failed one included (the bridge plugin leaves its veth behind
   after a failed ADD), and reports the error.
3. kubelet again: marks the pod Running through the status subresource; on deletion
   it DELs every attachment in reverse order, removes the sandbox, then the object.

What a node's installation provides to the plugin (kubeconfig, node name, datastore,
flat file) is an ``ipam`` fragment per node (``node_ipam``). It is merged into every
whereabouts ``ipam`` object the way the flat file is: keys the NAD sets win.

Without a cluster (``cluster=None``: the etcd and file datastores on a host without
Kubernetes) the same flow runs with the NADs kept in memory and no API objects.

The test bed's API server and etcd listen on the host's 127.0.0.1, which a node's
network namespace cannot reach; :class:`LoopbackRelay` makes those ports answer on
each node's own 127.0.0.1, so the plugin uses the same URLs a host-network plugin would.

Every wait polls against a deadline. Stdlib only.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import http.client
import json
import os
import secrets
import socket
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from e2e import netns
from e2e.localcluster import LocalCluster

T = TypeVar("T")

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
PLACEHOLDER_IMAGE = "registry.invalid/whereabouts-e2e/placeholder:never-pulled"
NAD_API = "/apis/k8s.cni.cncf.io/v1"

# Multus' CRD (deployments/multus-daemonset.yml), the part the API server needs.
NAD_CRD: Dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"},
    "spec": {
        "group": "k8s.cni.cncf.io",
        "scope": "Namespaced",
        "names": {
            "plural": "network-attachment-definitions",
            "singular": "network-attachment-definition",
            "kind": "NetworkAttachmentDefinition",
            "shortNames": ["net-attach-def"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "properties": {"config": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


# ---------------------------------------------------------------- polling


def poll(
    what: str,
    probe: Callable[[], Optional[T]],
    timeout: float = 30.0,
    first_delay: float = 0.05,
    max_delay: float = 0.5,
) -> T:
    """Call ``probe`` until it returns something other than None/False; fail at the deadline.

    The failure message names ``what`` and the last value or exception the probe gave.
    """
    deadline = time.monotonic() + timeout
    delay = first_delay
    last: Any = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # keep polling; report it if the deadline passes
            value, last = None, exc
        else:
            last = value
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        time.sleep(delay)
        delay = min(max_delay, delay * 1.5)


def run_concurrently(
    fn: Callable[[T], Any], items: Sequence[T], workers: int
) -> List[Union[Any, BaseException]]:
    """``fn`` over ``items`` from a thread pool; results (or the exception raised) in order."""

    def guarded(item: T) -> Any:
        try:
            return fn(item)
        except BaseException as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(guarded, items))


# ---------------------------------------------------------------- host loopback in a node

_CLONE_NEWNET = 0x40000000


def _in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread that has joined netns ``name``.

    setns(2) on a network namespace changes only the calling thread, and the thread
    ends right after, so the rest of the process never leaves its namespace. Sockets
    ``fn`` creates stay in ``name``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(netns.netns_path(name), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"setns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class LoopbackRelay:
    """Make TCP ports on the host's 127.0.0.1 answer on 127.0.0.1 inside node netns.

    The API server and etcd of the test bed listen on the root namespace's loopback,
    which a node's network namespace cannot see. The plugin runs in the node's netns
    (as it runs on a node's host network), so each node gets a listener on its own
    127.0.0.1:<same port> that relays byte for byte to the host's. The kubeconfig's
    server URL and the serving certificate (SAN 127.0.0.1) stay valid; nothing is
    added to the root namespace. When the host port refuses (a server being
    restarted), the relayed connection is closed at once, as a load balancer does.

    Every socket is closed only by the thread that uses it, after its users are done;
    :meth:`close` merely shuts sockets down (which wakes blocked accept/recv calls) and
    waits. Closing a socket another thread is blocked on would let that thread's next
    call land on whatever new socket reuses the file descriptor.
    """

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._listeners: List[socket.socket] = []
        self._conns: List[socket.socket] = []
        self._threads: List[threading.Thread] = []

    def expose(self, netns_name: str, port: int) -> None:
        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(256)
            return sock

        sock = _in_netns(netns_name, listen)
        thread = threading.Thread(
            target=self._accept, args=(sock, port), name=f"relay-{netns_name}:{port}",
            daemon=True,
        )
        with self._lock:
            self._listeners.append(sock)
            self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        try:
            while not self._closed.is_set():
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                thread = threading.Thread(target=self._connect, args=(client, port), daemon=True)
                with self._lock:
                    if self._closed.is_set():
                        client.close()
                        return
                    self._threads.append(thread)
                thread.start()
        finally:
            with self._lock:
                self._listeners.remove(listener)
            listener.close()

    def _connect(self, client: socket.socket, port: int) -> None:
        try:
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            with self._lock:
                self._conns.extend((client, upstream))
                if self._closed.is_set():  # close() ran before we registered
                    for sock in (client, upstream):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
            try:
                back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
                back.start()
                self._pipe(client, upstream)
                back.join()
            finally:
                with self._lock:
                    self._conns.remove(client)
                    self._conns.remove(upstream)
                upstream.close()
        finally:
            client.close()
            with self._lock, contextlib.suppress(ValueError):
                self._threads.remove(threading.current_thread())

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RD)

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        with self._lock:
            for sock in self._listeners + self._conns:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        assert not stuck, f"relay threads did not stop: {stuck}"


# ---------------------------------------------------------------- the API


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: Optional[int], body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:500]}")
        self.status = status
        self.body = body


class KubeApi:
    """Admin access to the local API server, with PATCH content types and retries.

    A request that cannot connect or gets a 5xx/429 is retried until ``retry_for``
    seconds have passed: the suite restarts the API server on purpose, and kubelet and
    Multus retry too. Thread-safe: one connection per request.
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._ssl = ssl.create_default_context(cafile=str(cluster.ca_file))

    def _once(
        self, method: str, path: str, body: Optional[Any], content_type: str, timeout: float
    ) -> Tuple[int, Any]:
        return self.cluster.api(
            method, path, body, timeout=timeout, content_type=content_type, context=self._ssl
        )

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Any] = None,
        *,
        content_type: str = "application/json",
        expect: Iterable[int] = (200, 201),
        retry_for: float = 90.0,
        timeout: float = 30.0,
    ) -> Any:
        expected = set(expect)
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            try:
                status, data = self._once(method, path, body, content_type, timeout)
            except (OSError, http.client.HTTPException) as exc:
                status, data = None, exc
            if status in expected:
                return data
            transient = status is None or status >= 500 or status == 429
            if not transient or time.monotonic() >= deadline:
                raise ApiError(method, path, status, data)
            time.sleep(delay)
            delay = min(0.5, delay * 2)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.request("GET", path, expect=(200,))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def merge_patch(self, path: str, body: Mapping[str, Any], **kwargs: Any) -> Any:
        return self.request(
            "PATCH", path, body, content_type="application/merge-patch+json", **kwargs
        )

    def delete(self, path: str, grace_period: Optional[int] = None) -> None:
        body = None
        if grace_period is not None:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace_period}
        self.request("DELETE", path, body, expect=(200, 202, 404))


def ensure_nad_crd(cluster: LocalCluster, api: KubeApi, timeout: float = 60.0) -> None:
    """Install Multus' NetworkAttachmentDefinition CRD (idempotent) and wait until served."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(NAD_CRD))
    poll(
        "the NetworkAttachmentDefinition resource to be served",
        lambda: api.get_or_none(f"{NAD_API}/network-attachment-definitions") is not None,
        timeout,
    )


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class CniCall:
    """One exec of a delegate plugin, as the runtime saw it."""

    command: str
    plugin: str
    node: str
    container_id: str
    ifname: str
    rc: int
    output: Any
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def is_cni_error(self) -> bool:
        """A failure reported the CNI way: exit 1 and an error object on stdout."""
        out = self.output
        return (
            self.rc == 1
            and isinstance(out, dict)
            and isinstance(out.get("code"), int)
            and isinstance(out.get("msg"), str)
            and bool(out["msg"])
        )

    @property
    def code(self) -> Optional[int]:
        out = self.output
        return out.get("code") if isinstance(out, dict) and "code" in out else None

    @property
    def msg(self) -> str:
        out = self.output
        if isinstance(out, dict):
            return f"{out.get('msg', '')} {out.get('details', '')}".strip()
        return str(out)

    def describe(self) -> str:
        return (
            f"{self.plugin} {self.command} (container {self.container_id[:12]}, "
            f"{self.ifname or '-'}, node {self.node}) exited {self.rc}: "
            f"stdout={self.output!r} stderr={self.stderr.strip()[-2000:]!r}"
        )


class CniFailure(AssertionError):
    """A CNI call that had to succeed failed."""

    def __init__(self, call: CniCall, context: str = "") -> None:
        super().__init__(f"{context}{': ' if context else ''}{call.describe()}")
        self.call = call


@dataclass
class Network:
    """A NetworkAttachmentDefinition (``spec.config`` decoded)."""

    namespace: str
    name: str
    config: Dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Attachment:
    """One interface of a pod: what Multus records in network-status."""

    network: str  # "<namespace>/<nad>"
    ifname: str
    netconf: Dict[str, Any]  # the delegate config as executed (DEL and CHECK reuse it)
    result: Dict[str, Any]

    @property
    def plugin(self) -> str:
        return str(self.netconf.get("type", ""))

    @property
    def addresses(self) -> List[str]:
        """CIDR notation, in result order."""
        return [str(ip["address"]) for ip in self.result.get("ips", [])]

    @property
    def ips(self) -> List[str]:
        return [a.split("/")[0] for a in self.addresses]

    @property
    def mac(self) -> Optional[str]:
        for iface in self.result.get("interfaces", []) or []:
            if iface.get("name") == self.ifname and iface.get("sandbox"):
                return str(iface.get("mac")) if iface.get("mac") else None
        return None

    def network_status(self) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"name": self.network, "interface": self.ifname, "ips": self.ips}
        if self.mac:
            entry["mac"] = self.mac
        entry["dns"] = self.result.get("dns") or {}
        return entry


@dataclass
class Pod:
    """A pod and its current sandbox."""

    namespace: str
    name: str
    node: str
    networks: Tuple[str, ...]  # "<namespace>/<nad>" in annotation order
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    netns: str = ""
    container_id: str = ""
    attachments: List[Attachment] = field(default_factory=list)
    failure: Optional[CniCall] = None
    """The ADD that failed (the pod then has no attachments)."""
    cleanup: List[CniCall] = field(default_factory=list)
    """The DELs Multus ran after that failed ADD."""

    @property
    def podref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ok(self) -> bool:
        return self.failure is None and len(self.attachments) == len(self.networks)

    @property
    def ips(self) -> List[str]:
        return [ip for att in self.attachments for ip in att.ips]

    def attachment(self, ifname: str = "net1") -> Attachment:
        for att in self.attachments:
            if att.ifname == ifname:
                return att
        raise KeyError(f"pod {self.podref} has no attachment {ifname}: {self.attachments}")

    def ip(self, ifname: str = "net1") -> str:
        ips = self.attachment(ifname).ips
        assert len(ips) == 1, f"{self.podref} {ifname} has {ips}, expected one address"
        return ips[0]


def merge_node_ipam(ipam: Mapping[str, Any], node_part: Mapping[str, Any]) -> Dict[str, Any]:
    """Fill the keys a NAD's ipam leaves unset from the node's installation."""
    merged = dict(ipam)
    for key, value in node_part.items():
        if key == "kubernetes" and isinstance(merged.get(key), dict):
            merged[key] = {**value, **merged[key]}
        elif key not in merged:
            merged[key] = copy.deepcopy(value)
    return merged


NodeIpam = Callable[[str], Mapping[str, Any]]


# ---------------------------------------------------------------- the player


class Harness:
    """kubelet + Multus for the pods of one test module.

    ``cni_path`` is the CNI_PATH of every node (the reference plugins and
    ``whereabouts``). ``node_ipam(node)`` returns what that node's installation adds to
    whereabouts' ipam config.
    """

    def __init__(
        self,
        topology: netns.Topology,
        cni_path: Sequence[Union[str, Path]],
        node_ipam: NodeIpam,
        *,
        cluster: Optional[LocalCluster] = None,
        namespace: str = "default",
        cni_timeout: float = 150.0,
    ) -> None:
        self.topology = topology
        self.cni_path = [str(p) for p in cni_path]
        self.node_ipam = node_ipam
        self.cluster = cluster
        self.api = KubeApi(cluster) if cluster is not None else None
        self.namespace = namespace
        self.cni_timeout = cni_timeout
        # Added to every delegate's environment (and so whereabouts', which inherits it).
        self.delegate_env: Dict[str, str] = {}
        self._networks: Dict[str, Network] = {}
        self._pods: Dict[str, Pod] = {}  # pods with a sandbox, by podref
        self._lock = threading.Lock()

    # -- networks

    def create_network(
        self, name: str, config: Mapping[str, Any], namespace: Optional[str] = None
    ) -> Network:
        """Create (or replace) a NetworkAttachmentDefinition."""
        ns = namespace or self.namespace
        network = Network(ns, name, copy.deepcopy(dict(config)))
        if self.api is not None:
            path = f"{NAD_API}/namespaces/{ns}/network-attachment-definitions"
            metadata: Dict[str, str] = {"name": name, "namespace": ns}
            body = {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": metadata,
                "spec": {"config": json.dumps(network.config)},
            }
            existing = self.api.get_or_none(f"{path}/{name}")
            if existing is None:
                self.api.request("POST", path, body)
            else:
                metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
                self.api.request("PUT", f"{path}/{name}", body)
        self._networks[network.ref] = network
        return network

    def delete_network(self, network: Network) -> None:
        if self.api is not None:
            self.api.delete(
                f"{NAD_API}/namespaces/{network.namespace}/network-attachment-definitions/"
                f"{network.name}"
            )
        self._networks.pop(network.ref, None)

    def _nad_config(self, ref: str) -> Dict[str, Any]:
        """What Multus does per pod: read the NAD (from the API when there is one)."""
        ns, _, name = ref.partition("/")
        if self.api is None:
            return copy.deepcopy(self._networks[ref].config)
        nad = self.api.get(f"{NAD_API}/namespaces/{ns}/network-attachment-definitions/{name}")
        config = json.loads(nad["spec"]["config"])
        assert isinstance(config, dict), f"NAD {ref} config is not an object"
        return config

    def delegate_conf(self, ref: str, node: str) -> Dict[str, Any]:
        """The delegate config Multus hands the plugin on ``node`` for NAD ``ref``."""
        conf = self._nad_config(ref)
        conf.setdefault("name", ref.partition("/")[2])  # Multus names it after the NAD
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "whereabouts":
            conf["ipam"] = merge_node_ipam(ipam, self.node_ipam(node))
        return conf

    # -- CNI execs

    def cni_args(self, pod: Pod, container_id: Optional[str] = None) -> Dict[str, str]:
        return {
            "IgnoreUnknown": "1",
            "K8S_POD_NAMESPACE": pod.namespace,
            "K8S_POD_NAME": pod.name,
            "K8S_POD_INFRA_CONTAINER_ID": container_id or pod.container_id,
            "K8S_POD_UID": pod.uid,
        }

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
        """Exec the delegate of ``netconf`` for ``pod`` on its node (ADD, CHECK, DEL)."""
        conf = dict(netconf)
        if prev_result is not None:
            conf["prevResult"] = prev_result
        cid = container_id or pod.container_id
        rc, output, stderr = netns.run_cni(
            str(conf["type"]),
            command,
            conf,
            pod.node,
            pod.netns,
            container_id=cid,
            ifname=ifname,
            cni_args=self.cni_args(pod, cid),
            cni_path=self.cni_path,
            extra_env=self.delegate_env,
            timeout=self.cni_timeout,
        )
        return CniCall(command, str(conf["type"]), pod.node, cid, ifname, rc, output, stderr)

    def exec_plugin(
        self,
        plugin: str,
        command: str,
        netconf: Mapping[str, Any],
        node: str,
        extra_env: Optional[Mapping[str, str]] = None,
    ) -> CniCall:
        """Exec a plugin with no container (STATUS, GC), as the runtime does."""
        rc, output, stderr = netns.run_cni(
            plugin,
            command,
            netconf,
            node,
            cni_path=self.cni_path,
            extra_env=extra_env,
            timeout=self.cni_timeout,
        )
        return CniCall(command, plugin, node, "", "", rc, output, stderr)

    # -- pods

    def pod_path(self, pod: Pod) -> str:
        return f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"

    def create_pod_object(self, pod: Pod) -> None:
        if self.api is None:
            return
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "annotations": {NETWORKS_ANNOTATION: ",".join(pod.networks)},
                "labels": {"app.kubernetes.io/part-of": "whereabouts-e2e"},
            },
            "spec": {
                "nodeName": pod.node,
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": PLACEHOLDER_IMAGE}],
            },
        }
        created = self.api.request("POST", f"/api/v1/namespaces/{pod.namespace}/pods", body)
        pod.uid = created["metadata"]["uid"]

    def new_pod(
        self,
        name: str,
        node: str,
        networks: Sequence[Union[str, Network]],
        namespace: Optional[str] = None,
    ) -> Pod:
        """The Pod object (in the API when there is one); no sandbox yet."""
        refs = tuple(n.ref if isinstance(n, Network) else _full_ref(n, namespace or self.namespace)
                     for n in networks)
        pod = Pod(namespace or self.namespace, name, node, refs)
        self.create_pod_object(pod)
        return pod

    def run_sandbox(self, pod: Pod, running: bool = True) -> Pod:
        """Make a new sandbox (netns, container ID) and attach every network, as Multus.

        On failure ``pod.failure`` holds the failed ADD and ``pod.cleanup`` the DELs Multus
        ran for every delegate it had started, the failed one included.
        """
        if pod.netns:
            # kubelet removes the previous sandbox before it makes a new one.
            self.topology.delete_pod(pod.netns)
        pod.container_id = secrets.token_hex(32)
        pod.netns = self.topology.add_pod(f"{pod.name}-{pod.container_id[:6]}")
        pod.attachments, pod.failure, pod.cleanup = [], None, []
        with self._lock:
            self._pods[pod.podref] = pod
        for index, ref in enumerate(pod.networks, start=1):
            ifname = f"net{index}"
            conf = self.delegate_conf(ref, pod.node)
            call = self.exec_cni("ADD", conf, pod, ifname)
            if not call.ok:
                pod.failure = call
                started = [*pod.attachments, Attachment(ref, ifname, conf, {})]
                for att in reversed(started):
                    pod.cleanup.append(self.exec_cni("DEL", att.netconf, pod, att.ifname))
                pod.attachments = []
                return pod
            pod.attachments.append(Attachment(ref, ifname, conf, call.output))
        if self.api is not None:
            status = [att.network_status() for att in pod.attachments]
            self.api.merge_patch(
                self.pod_path(pod),
                {"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: json.dumps(status)}}},
            )
            if running:
                self.api.merge_patch(
                    self.pod_path(pod) + "/status",
                    {
                        "status": {
                            "phase": "Running",
                            "conditions": [{"type": "Ready", "status": "True"}],
                        }
                    },
                )
        return pod

    def add_pod(
        self,
        name: str,
        node: str,
        networks: Sequence[Union[str, Network]],
        *,
        namespace: Optional[str] = None,
        check: bool = True,
        running: bool = True,
    ) -> Pod:
        """Create the pod and run its sandbox; ``check`` raises CniFailure if an ADD failed."""
        pod = self.new_pod(name, node, networks, namespace)
        self.run_sandbox(pod, running=running)
        if check and pod.failure is not None:
            raise CniFailure(pod.failure, f"ADD of pod {pod.podref}")
        return pod

    def add_pods(
        self,
        specs: Sequence[Tuple[str, str, Sequence[Union[str, Network]]]],
        workers: int = 8,
        check: bool = True,
    ) -> List[Pod]:
        """``add_pod`` for many ``(name, node, networks)`` at once from a thread pool."""
        outcomes = run_concurrently(
            lambda spec: self.add_pod(spec[0], spec[1], spec[2], check=check), specs, workers
        )
        pods: List[Pod] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            pods.append(outcome)
        return pods

    def check_pod(self, pod: Pod) -> List[CniCall]:
        """CNI CHECK of every attachment, with its cached result as prevResult."""
        return [
            self.exec_cni("CHECK", att.netconf, pod, att.ifname, prev_result=att.result)
            for att in pod.attachments
        ]

    def del_networks(
        self, pod: Pod, check: bool = True, attachments: Optional[Sequence[Attachment]] = None
    ) -> List[CniCall]:
        """CNI DEL of the sandbox's attachments in reverse order (all of its networks when
        it has no recorded attachment: kubelet DELs whatever it may have added)."""
        if attachments is None:
            attachments = pod.attachments or [
                Attachment(ref, f"net{i}", self.delegate_conf(ref, pod.node), {})
                for i, ref in enumerate(pod.networks, start=1)
            ]
        calls = []
        for att in reversed(list(attachments)):
            call = self.exec_cni(
                "DEL", att.netconf, pod, att.ifname, prev_result=att.result or None
            )
            if check and not call.ok:
                raise CniFailure(call, f"DEL of pod {pod.podref}")
            calls.append(call)
        return calls

    def stop_sandbox(self, pod: Pod, check: bool = True) -> List[CniCall]:
        """DEL every attachment, then remove the sandbox's netns (the Pod object stays)."""
        calls = self.del_networks(pod, check=check)
        self.topology.delete_pod(pod.netns)
        with self._lock:
            self._pods.pop(pod.podref, None)
        return calls

    def forget_sandbox(self, pod: Pod) -> Pod:
        """The sandbox dies without a DEL (node crash, runtime restart): netns gone.

        Returns a copy of the old sandbox (container ID, attachments) for a late DEL.
        """
        old = copy.copy(pod)
        old.attachments = list(pod.attachments)
        self.topology.delete_pod(pod.netns)
        return old

    def delete_pod(self, pod: Pod, check: bool = True) -> List[CniCall]:
        """kubelet tearing a pod down: DEL, sandbox gone, then the API object."""
        calls = self.stop_sandbox(pod, check=check)
        if self.api is not None:
            self.api.delete(self.pod_path(pod), grace_period=0)
        return calls

    def delete_pods(self, pods: Sequence[Pod], workers: int = 8, check: bool = True) -> None:
        outcomes = run_concurrently(lambda p: self.delete_pod(p, check=check), pods, workers)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]

    def pod_object(self, pod: Pod) -> Dict[str, Any]:
        assert self.api is not None, "no cluster"
        return dict(self.api.get(self.pod_path(pod)))

    def network_status(self, pod: Pod) -> List[Dict[str, Any]]:
        annotations = self.pod_object(pod)["metadata"].get("annotations", {})
        return list(json.loads(annotations[NETWORK_STATUS_ANNOTATION]))

    def live_pods(self) -> List[Pod]:
        with self._lock:
            return list(self._pods.values())

    def cleanup(self) -> List[str]:
        """Tear down every sandbox still up (DEL best effort) and the networks.

        Returns the failures, so a test's teardown can report leaks it caused.
        """
        problems = []
        for pod in self.live_pods():
            try:
                for call in self.delete_pod(pod, check=False):
                    if not call.ok:
                        problems.append(call.describe())
            except Exception as exc:
                problems.append(f"deleting {pod.podref}: {exc}")
        for network in list(self._networks.values()):
            with contextlib.suppress(Exception):
                self.delete_network(network)
        return problems


# ---------------------------------------------------------------- cnitool (libcni)


def cnitool_container_id(netns_path: str) -> str:
    """The container ID cnitool derives from the netns path (cnitool/cmd/root.go)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).hexdigest()[:20]


def run_cnitool(
    args: Sequence[str],
    node: str,
    netconf_dir: Union[str, Path],
    *,
    cni_path: Sequence[Union[str, Path]],
    cnitool: Union[str, Path],
    state_dir: Union[str, Path],
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 150.0,
) -> netns.CniResult:
    """``netns.run_cnitool`` with environment for cnitool itself (``CNI_ARGS``,
    ``CNI_IFNAME``, ``CAP_ARGS``) and a longer timeout: libcni runs the conflist in
    ``node``'s netns and caches results under ``state_dir`` (bind-mounted over /var/lib
    in the exec's private mount namespace)."""
    return netns.run_cnitool(
        args, node, netconf_dir, cni_path=cni_path, cnitool=cnitool, state_dir=state_dir,
        env=env, timeout=timeout,
    )


def _full_ref(ref: str, namespace: str) -> str:
    return ref if "/" in ref else f"{namespace}/{ref}"
