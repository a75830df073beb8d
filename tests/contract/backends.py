"""How the contract suite reaches each backend's real server.

``StoreSpec`` is a picklable recipe for a Store, so processes started with ``spawn``
open their own. Raw helpers write and read a backend's objects directly (not through
the Store), to plant upstream-format data and to check what was really stored.
Worker functions for the multi-process tests live here too: spawn children import
them by module name.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from whereabouts.config import EtcdConfig, IPAMConfig, RangeConfig
from whereabouts.errors import ConflictError
from whereabouts.iprange import usable_bounds
from whereabouts.model import Owner, PoolKey
from whereabouts.storage.base import Store

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "whereabouts" / "crds"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ store recipes


@dataclass(frozen=True)
class StoreSpec:
    backend: str  # memory | file | etcd | kubernetes | kubernetes-official
    data_dir: str = ""
    etcd_host: str = ""
    etcd_prefix: str = "/whereabouts/"
    kubeconfig: str = ""
    namespace: str = ""
    page_size: int = 500
    timeout: float = 10.0
    down: bool = False  # memory only: every call fails as an unreachable store does

    def open(self) -> Store:
        if self.backend == "memory":
            from whereabouts.storage.memory import MemoryStore

            memory = MemoryStore()
            memory.unavailable = self.down
            return memory
        if self.backend == "file":
            from whereabouts.storage.file import FileStore

            return FileStore(self.data_dir, lock_timeout=self.timeout)
        if self.backend == "etcd":
            from whereabouts.storage.etcd import EtcdStore

            return EtcdStore(
                EtcdConfig(host=self.etcd_host),
                prefix=self.etcd_prefix,
                timeout=self.timeout,
                page_size=self.page_size,
            )
        from whereabouts.storage.kubernetes import KubernetesStore

        return KubernetesStore(self.transport(), self.namespace, page_size=self.page_size)

    def transport(self) -> Any:
        if self.backend == "kubernetes-official":
            from whereabouts.kube.official import OfficialTransport

            return OfficialTransport(kubeconfig=self.kubeconfig, timeout=self.timeout)
        from whereabouts.kube.kubeconfig import load_kubeconfig
        from whereabouts.kube.transport import HTTPTransport

        return HTTPTransport(load_kubeconfig(self.kubeconfig), timeout=self.timeout)

    def with_(self, **changes: Any) -> StoreSpec:
        return replace(self, **changes)

    # -- raw access

    def put_raw_pool(
        self, name: str, spec: Dict[str, Any], extra: Optional[Dict[str, Any]] = None
    ) -> None:
        """Store ``spec`` as pool ``name`` bypassing the Store (as upstream would write it).
        ``extra``: Kubernetes only, merged into the object (labels, annotations)."""
        if self.backend == "file":
            pools = Path(self.data_dir) / "pools"
            pools.mkdir(parents=True, exist_ok=True)
            (pools / f"{name}.json").write_text(json.dumps({**spec, "version": 1}))
        elif self.backend == "etcd":
            _etcd_post(
                self.etcd_host,
                "/v3/kv/put",
                {
                    "key": _b64(f"{self.etcd_prefix}ippools/{name}"),
                    "value": _b64(json.dumps(spec)),
                },
            )
        else:
            obj: Dict[str, Any] = {
                "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
                "kind": "IPPool",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": spec,
            }
            for key, value in (extra or {}).items():
                if key == "metadata":
                    obj["metadata"].update(value)
                else:
                    obj[key] = value
            self.raw_transport().request("POST", self.pool_path(), obj)

    def get_raw_pool(self, name: str) -> Dict[str, Any]:
        """The stored object: the spec for file/etcd (file: plus "version"), the whole
        object for Kubernetes."""
        if self.backend == "file":
            return dict(json.loads((Path(self.data_dir) / "pools" / f"{name}.json").read_text()))
        if self.backend == "etcd":
            response = _etcd_post(
                self.etcd_host, "/v3/kv/range", {"key": _b64(f"{self.etcd_prefix}ippools/{name}")}
            )
            return dict(json.loads(base64.b64decode(response["kvs"][0]["value"])))
        return dict(self.raw_transport().request("GET", f"{self.pool_path()}/{name}"))

    def raw_transport(self) -> Any:
        from whereabouts.kube.kubeconfig import load_kubeconfig
        from whereabouts.kube.transport import HTTPTransport

        return HTTPTransport(load_kubeconfig(self.kubeconfig))

    def pool_path(self) -> str:
        return f"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/{self.namespace}/ippools"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _etcd_post(host: str, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
    hostname, _, port = host.rpartition(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"etcd {path}: {response.status} {data!r}")
        return dict(json.loads(data))
    finally:
        conn.close()


# ------------------------------------------------------------------ etcd server


def find_etcd() -> Optional[str]:
    """$WHEREABOUTS_ETCD, the test bed's cached build, or a system etcd."""
    candidates: List[str] = []
    if os.environ.get("WHEREABOUTS_ETCD"):
        candidates.append(os.environ["WHEREABOUTS_ETCD"])
    try:
        from e2e.localcluster import tool_paths

        candidates.append(str(tool_paths().etcd))
    except Exception:  # the test bed module is optional here
        pass
    candidates += ["/usr/bin/etcd", shutil.which("etcd") or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


class EtcdServer:
    """One etcd member on free 127.0.0.1 ports with a temp data dir."""

    def __init__(
        self,
        binary: str,
        extra_args: Optional[List[str]] = None,
        tls: Optional[Dict[str, str]] = None,
    ) -> None:
        """``tls``: {"ca", "cert", "key"} files of a client the server trusts; with it the
        server serves https and requires client certificates (``extra_args`` name the
        server's own files)."""
        self.binary = binary
        self.extra_args = list(extra_args or [])
        self.tls = tls
        self.workdir = Path(tempfile.mkdtemp(prefix="wa-contract-etcd-"))
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EtcdServer:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115 - lives as long as etcd
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--name=contract",
                f"--data-dir={self.workdir / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=contract={peer}",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited: {(self.workdir / 'etcd.log').read_text()[-2000:]}"
                )
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("etcd did not become healthy")

    def _healthy(self) -> bool:
        try:
            if self.tls:
                import ssl

                context = ssl.create_default_context(cafile=self.tls["ca"])
                context.load_cert_chain(self.tls["cert"], self.tls["key"])
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=1, context=context
                )
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------ workers


def rmw_worker(spec: StoreSpec, cidr: str, worker: int, count: int) -> int:
    """Add ``count`` allocations (offsets unique to this worker) to one pool by
    read-modify-write, retrying lost compare-and-swaps. Returns the conflicts seen."""
    store = spec.open()
    key = PoolKey("", ipaddress.ip_network(cidr))
    conflicts = 0
    try:
        for i in range(count):
            offset = worker * count + i + 1
            owner = Owner(f"c-{worker}-{i}", f"ns/pod-{worker}-{i}", "net1", node=f"node-{worker}")
            while True:
                pool = store.read_pool(key)
                allocations = dict(pool.allocations)
                allocations[offset] = owner
                try:
                    store.write_pool(pool.with_allocations(allocations))
                    break
                except ConflictError:
                    conflicts += 1
                    time.sleep(random.uniform(0, 0.01))
    finally:
        store.close()
    return conflicts


def ipam_config(cidr: str, network_name: str = "", overlapping: bool = True) -> IPAMConfig:
    network = ipaddress.ip_network(cidr)
    low, high = usable_bounds(network)
    first, last = network.network_address + 1, network.network_address + (high - low + 1)
    return IPAMConfig(
        ranges=(RangeConfig(network, first, last),),
        enable_overlapping_ranges=overlapping,
        network_name=network_name,
        datastore="file",
    )


def allocate_worker(spec: StoreSpec, cidr: str, worker: int, count: int) -> List[str]:
    """Allocate ``count`` addresses for distinct pods through the allocation engine."""
    from whereabouts import ipam

    store = spec.open()
    cfg = ipam_config(cidr)
    got: List[str] = []
    try:
        for i in range(count):
            owner = Owner(f"c-{worker}-{i}", f"ns/pod-{worker}-{i}", "net1", node=f"node-{worker}")
            assigned = ipam.allocate(store, cfg, owner)
            got.extend(str(a.address) for a in assigned)
    finally:
        store.close()
    return got
