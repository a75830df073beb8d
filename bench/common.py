"""What every workload shares: running a child with its rusage, netconfs, the test bed.

The test bed is real: a bench-owned etcd for the etcd datastore, and a LocalCluster
(etcd + kube-apiserver, RBAC on) with the chart's CRDs applied, an audit log that records
every request of the plugin's ServiceAccount (so API round trips are counted exactly,
per request, with their status codes), and the plugin identity of the chart (a Role with
get/create/update on IPPools and get/create/delete on reservations, in one namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import ROOT

CNI_VERSION = "1.0.0"
NAMESPACE = "whereabouts-bench"
PLUGIN_SA = "whereabouts-bench-cni"
GROUP = "whereabouts.cni.cncf.io"
CRD_DIR = ROOT / "charts" / "whereabouts" / "crds"


# ----------------------------------------------------------------------------- children


@dataclass
class ChildResult:
    """One exec of a plugin: exit code, output and what the kernel accounted for it."""

    rc: int
    stdout: bytes
    stderr: bytes
    wall: float
    user: float
    sys: float
    maxrss_kb: int
    timed_out: bool = False
    started: float = 0.0  # perf_counter at fork, for storms' timelines

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def result(self) -> Dict[str, Any]:
        try:
            value = json.loads(self.stdout)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def error_text(self) -> str:
        body = self.result()
        if "code" in body:
            return f"code {body.get('code')}: {body.get('msg')}"
        tail = (self.stderr or self.stdout).decode(errors="replace").strip().splitlines()
        return (tail[-1] if tail else f"exit {self.rc}")[:300]


GNU_TIME = "/usr/bin/time"
_RSS_MARK = b"WA_BENCH_MAXRSS_KB="


def rss_supported() -> bool:
    return os.access(GNU_TIME, os.X_OK)


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: bytes = b"",
    timeout: float = 120.0,
    rss: bool = False,
) -> ChildResult:
    """Fork/exec ``argv``, feed ``stdin``, collect output, reap with wait4 for its rusage.

    Wall time runs from just before the fork to the reap, which is what a container
    runtime waiting for the plugin experiences. CPU is the child's own (``ru_utime +
    ru_stime``), exact per child even with many in flight.

    Peak RSS needs ``rss=True``: Linux carries the RSS high-water mark of the address
    space a process exec'd *from* into its ``ru_maxrss``, so a child of this (large)
    harness reports at least the harness's RSS. With ``rss=True`` the child runs under
    GNU time, a small process whose own fork gives the plugin a small starting point;
    its ``%M`` is the plugin's real peak (``maxrss_kb`` is 0 when GNU time is missing).
    """
    wrapped = rss and rss_supported()
    if wrapped:
        argv = [GNU_TIME, "-f", "\n" + _RSS_MARK.decode() + "%M", *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        close_fds=True,
    )
    done = threading.Event()
    killed = threading.Event()

    def kill() -> None:
        if not done.is_set():
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        out, err = _exchange(proc, stdin)
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Unwrapped, ru_maxrss would be this harness's RSS at fork time: not reported.
    maxrss = 0
    if wrapped:
        head, sep, tail = err.rpartition(_RSS_MARK)
        if sep:
            maxrss = int(tail.strip() or 0)
            err = head.rstrip(b"\n")
    return ChildResult(
        rc=proc.returncode,
        stdout=out,
        stderr=err,
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        maxrss_kb=maxrss,
        timed_out=killed.is_set(),
        started=started,
    )


def _exchange(proc: subprocess.Popen[bytes], data: bytes) -> Tuple[bytes, bytes]:
    """Write stdin and drain stdout/stderr without waiting for the child (wait4 does)."""
    assert proc.stdin and proc.stdout and proc.stderr
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: Dict[int, List[bytes]] = {out_fd: [], err_fd: []}
    view = memoryview(data)
    with selectors.DefaultSelector() as sel:
        if data:
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                fileobj: Any = key.fileobj
                if fileobj is proc.stdin:
                    try:
                        written = os.write(proc.stdin.fileno(), view[:65536])
                    except BrokenPipeError:
                        written = len(view)
                    view = view[written:]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    chunks[key.fd].append(chunk)
                else:
                    sel.unregister(fileobj)
                    fileobj.close()
    return b"".join(chunks[out_fd]), b"".join(chunks[err_fd])


def base_env() -> Dict[str, str]:
    """What a container runtime passes: PATH and nothing of this harness's Python set-up."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def cni_env(
    command: str, container_id: str = "", *, ifname: str = "net1", args: str = "",
    node: Optional[str] = None, cni_path: str = "/opt/cni/bin",
) -> Dict[str, str]:
    env = base_env()
    env.update({"CNI_COMMAND": command, "CNI_PATH": cni_path})
    if command != "VERSION":
        env.update({
            "CNI_CONTAINERID": container_id,
            "CNI_IFNAME": ifname,
            # IPAM plugins never enter the netns (host-local and whereabouts alike): the
            # path only has to be set, which measures the IPAM alone.
            "CNI_NETNS": f"/var/run/netns/bench-{container_id[:12]}",
        })
        if args:
            env["CNI_ARGS"] = args
    if node:
        env["NODENAME"] = node
    return env


def pod_args(namespace: str, name: str, container_id: str) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}")


def container_id(tag: str, index: int) -> str:
    """A 64-hex-digit id like a runtime's, unique per (tag, index)."""
    import hashlib

    return hashlib.sha256(f"{tag}/{index}".encode()).hexdigest()


# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One IPAM plugin set-up: a binary plus the netconf it is executed with."""

    name: str
    plugin: Path
    netconf: Dict[str, Any]
    kind: str  # "host-local" | "whereabouts" | "compare"
    datastore: Optional[str] = None
    extra_env: Dict[str, str] = field(default_factory=dict)

    def stdin(self) -> bytes:
        return json.dumps(self.netconf).encode()

    def run(self, command: str, cid: str = "", *, pod: str = "", node: Optional[str] = None,
            timeout: float = 120.0, rss: bool = False) -> ChildResult:
        args = pod_args(NAMESPACE, pod, cid) if pod else ""
        env = cni_env(command, cid, args=args, node=node, cni_path=str(self.plugin.parent))
        env.update(self.extra_env)
        return run_child([str(self.plugin)], env, self.stdin(), timeout=timeout, rss=rss)


def whereabouts_netconf(
    name: str,
    ipam: Mapping[str, Any],
) -> Dict[str, Any]:
    """The shape Multus hands a delegate: a macvlan attachment with whereabouts IPAM."""
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {"type": "whereabouts", **ipam},
    }


def host_local_netconf(name: str, subnet: str, data_dir: Path) -> Dict[str, Any]:
    """The same attachment with the reference host-local IPAM (one range, on disk)."""
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                 "dataDir": str(data_dir)},
    }


# ----------------------------------------------------------------------------- the bed


class BedError(RuntimeError):
    pass


def build_pyz(output: Path, python: str, flags: str = "-sES") -> Path:
    """ci/build-pyz into ``output`` with an absolute interpreter and the installer's flags
    in the shebang, the way the installer points the plugin at the node's Python (no PATH
    lookup, no pyenv shim). Built *by* that interpreter, so the shipped .pyc match it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [python, str(ROOT / "ci" / "build-pyz"), "--output", str(output),
         "--python", f"{python} {flags}".strip(), "--no-smoke"],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise BedError(f"ci/build-pyz failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return output


class EtcdServer:
    """A bench-owned etcd (the etcd datastore's server), on free 127.0.0.1 ports."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        from e2e.localcluster import free_port

        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.peer_port = free_port()
        self.popen: Optional[subprocess.Popen[bytes]] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EtcdServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            str(self.binary), "--name=bench", f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={self.endpoint}", f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}", "--log-level=warn",
            # Same as LocalCluster's etcd: crash safety is not what is measured here.
            "--unsafe-no-fsync",
        ]
        # SIGKILL when this harness dies (setpriv: preexec_fn is unsafe with threads).
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(self.workdir / "etcd.log", "ab") as log:
            self.popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BedError(f"etcd exited {self.popen.returncode}; see {self.workdir}/etcd.log")
            with contextlib.suppress(OSError, ValueError):
                if http_json("GET", self.endpoint + "/health").get("health") == "true":
                    return self
            time.sleep(0.05)
        raise BedError("etcd not healthy after 30 s")

    def version(self) -> str:
        try:
            return str(http_json("GET", self.endpoint + "/version").get("etcdserver", "?"))
        except (OSError, ValueError):
            return "?"

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.endpoint + "/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    def stop(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        self.popen = None


def process_cpu(pids: Sequence[int]) -> float:
    """user+sys CPU seconds consumed so far by these (running) processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def http_json(method: str, url: str, body: Optional[Any] = None, timeout: float = 10) -> Any:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def etcd_grpc_counts(metrics_text: str) -> Dict[str, float]:
    """grpc_server_handled_total by method (Range, Txn, Put, ...) from etcd's /metrics."""
    counts: Dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("grpc_server_handled_total{"):
            continue
        labels = parse_labels(line[line.index("{") + 1 : line.rindex("}")])
        if labels.get("grpc_type") != "unary":
            continue
        method = labels.get("grpc_method", "?")
        counts[method] = counts.get(method, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def parse_labels(text: str) -> Dict[str, str]:
    import re

    return {m.group(1): m.group(2) for m in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', text)}


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Every request of the bench's service accounts (plugin, controllers); nothing else,
        # so the log costs the API server next to nothing.
        {"level": "Metadata", "userGroups": [f"system:serviceaccounts:{NAMESPACE}"]},
        {"level": "None"},
    ],
}


@dataclass
class AuditCount:
    """Requests seen in the audit log between two marks."""

    total: int = 0
    by_verb: Dict[str, int] = field(default_factory=dict)
    by_status: Dict[str, int] = field(default_factory=dict)
    by_user: Dict[str, int] = field(default_factory=dict)
    by_resource_verb: Dict[str, int] = field(default_factory=dict)

    def add(self, event: Mapping[str, Any]) -> None:
        self.total += 1
        verb = str(event.get("verb", "?"))
        code = str((event.get("responseStatus") or {}).get("code", "?"))
        resource = str((event.get("objectRef") or {}).get("resource", "?"))
        user = str((event.get("user") or {}).get("username", "?")).rsplit(":", 1)[-1]
        self.by_verb[verb] = self.by_verb.get(verb, 0) + 1
        self.by_status[code] = self.by_status.get(code, 0) + 1
        self.by_user[user] = self.by_user.get(user, 0) + 1
        key = f"{verb} {resource} {code}"
        self.by_resource_verb[key] = self.by_resource_verb.get(key, 0) + 1

    def as_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "by_verb": self.by_verb, "by_status": self.by_status,
                "by_user": self.by_user, "by_resource_verb_status": self.by_resource_verb}


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def count_since(self, mark: int, user: Optional[str] = None, settle: float = 0.3) -> AuditCount:
        """Requests logged after ``mark`` (optionally of one ServiceAccount name)."""
        # Blocking mode writes the event when the response completes; the child has read
        # its response by then, but give the server a moment to finish the write.
        time.sleep(settle)
        count = AuditCount()
        if self.mark() < mark:
            raise BedError(f"{self.path} was rotated during a count")
        with open(self.path, "rb") as handle:
            handle.seek(mark)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                name = str((event.get("user") or {}).get("username", ""))
                if user is not None and not name.endswith(f":{user}"):
                    continue
                count.add(event)
        return count


class Bed:
    """Everything a run needs, started lazily and stopped at the end."""

    def __init__(self, work: Path, python: str, pyz: Optional[Path] = None,
                 flags: str = "-sES") -> None:
        from e2e.localcluster import tool_paths

        self.work = work
        self.python = python
        self.flags = flags
        self.tools = tool_paths()
        self._pyz_source = pyz
        self._plugin: Optional[Path] = None
        self._etcd: Optional[EtcdServer] = None
        self._cluster: Any = None
        self._plugin_kubeconfig: Optional[Path] = None
        self.audit: Optional[AuditLog] = None
        self.problems: Dict[str, str] = {}
        self._lock = threading.Lock()

    # -- binaries

    @property
    def bin_dir(self) -> Path:
        path = self.work / "bin"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def plugin(self) -> Path:
        """The whereabouts plugin under test, as the CNI runtime finds it: ``<bin>/whereabouts``."""
        if self._plugin is None:
            target = self.bin_dir / "whereabouts"
            if self._pyz_source is not None:
                shutil.copy2(self._pyz_source, target)
                target.chmod(0o755)
            else:
                build_pyz(target, self.python, self.flags)
            self._plugin = target
        return self._plugin

    def plugin_variant(self, name: str, shebang: str) -> Path:
        """The same zipapp under another ``#!`` line (e.g. other interpreter flags)."""
        plugin = self.plugin()
        variant = plugin.with_name(name)
        data = plugin.read_bytes()
        variant.write_bytes(f"#!{shebang}\n".encode() + data[data.index(b"\n") + 1 :])
        variant.chmod(0o755)
        return variant

    def host_local(self) -> Optional[Path]:
        path = self.tools.cni_plugins_dir / "host-local"
        if not os.access(path, os.X_OK):
            self.problems["host-local"] = f"{path} missing (run ci/e2e-tools)"
            return None
        return path

    # -- etcd datastore

    def etcd(self) -> Optional[EtcdServer]:
        if self._etcd is None and "etcd" not in self.problems:
            if not os.access(self.tools.etcd, os.X_OK):
                self.problems["etcd"] = f"{self.tools.etcd} missing (run ci/e2e-tools)"
                return None
            try:
                self._etcd = EtcdServer(self.tools.etcd, self.work / "etcd").start()
            except Exception as exc:  # reported, the other workloads go on
                self.problems["etcd"] = f"{type(exc).__name__}: {exc}"
        return self._etcd

    # -- kubernetes datastore

    def cluster(self) -> Any:
        """The LocalCluster (admin API at ``.api``), CRDs applied, plugin identity made."""
        if self._cluster is None and "kubernetes" not in self.problems:
            try:
                self._start_cluster()
            except Exception as exc:  # reported, the other workloads go on
                self.problems["kubernetes"] = f"{type(exc).__name__}: {exc}"
                if self._cluster is not None:
                    self._cluster.stop()
                    self._cluster = None
        return self._cluster

    def _start_cluster(self) -> None:
        from e2e.localcluster import LocalCluster

        missing = self.tools.missing_cluster()
        if missing:
            raise BedError(f"missing {', '.join(missing)} (run ci/e2e-tools)")
        kdir = self.work / "cluster"
        kdir.mkdir(parents=True, exist_ok=True)
        policy = self.work / "audit-policy.json"
        policy.write_text(json.dumps(AUDIT_POLICY))
        audit_path = self.work / "audit.log"
        cluster = LocalCluster(
            workdir=kdir,
            tools=self.tools,
            extra_apiserver_args=[
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit_path}",
                "--audit-log-mode=blocking",
                "--audit-log-format=json",
                # In MB; 0 would mean lumberjack's default of 100 MB, and a rotation
                # in the middle of a count would lose requests.
                "--audit-log-maxsize=100000",
            ],
        )
        self._cluster = cluster
        cluster.start()
        self.audit = AuditLog(audit_path)
        for crd in sorted(CRD_DIR.glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        for crd in sorted(CRD_DIR.glob("*.yaml")):
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "-f", str(crd))
        cluster.create_namespace(NAMESPACE)
        cluster.create_service_account(NAMESPACE, PLUGIN_SA)
        self.apply(_plugin_rbac())

    def apply(self, objects: Sequence[Mapping[str, Any]]) -> None:
        cluster = self.cluster()
        body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def plugin_kubeconfig(self) -> Optional[Path]:
        """A kubeconfig of the plugin's ServiceAccount (the chart's cni Role), as the
        installer writes it on a node."""
        cluster = self.cluster()
        if cluster is None:
            return None
        if self._plugin_kubeconfig is None:
            self._plugin_kubeconfig = cluster.create_service_account_kubeconfig(
                NAMESPACE, PLUGIN_SA, self.work / "whereabouts.kubeconfig",
                expiration_seconds=24 * 3600,
            )
        return self._plugin_kubeconfig

    def control_plane_pids(self) -> List[int]:
        """kube-apiserver and its etcd (not the bench etcd)."""
        return list(self._cluster.pids) if self._cluster is not None else []

    def k8s_version(self) -> str:
        cluster = self._cluster
        if cluster is None:
            return "not started"
        status, body = cluster.api("GET", "/version")
        return str(body.get("gitVersion")) if status == 200 else "?"

    def list_objects(self, resource: str) -> List[Dict[str, Any]]:
        """Every object of a whereabouts CRD in every namespace (admin read, paged)."""
        cluster = self.cluster()
        items: List[Dict[str, Any]] = []
        token = ""
        while True:
            path = f"/apis/{GROUP}/v1alpha1/{resource}?limit=500"
            if token:
                path += f"&continue={token}"
            status, body = cluster.api("GET", path, timeout=120)
            if status != 200:
                raise BedError(f"list {resource}: HTTP {status}: {str(body)[:300]}")
            items.extend(body.get("items") or [])
            token = (body.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def delete_all(self, resource: str) -> None:
        cluster = self.cluster()
        for item in self.list_objects(resource):
            meta = item["metadata"]
            cluster.api("DELETE", f"/apis/{GROUP}/v1alpha1/namespaces/{meta['namespace']}/"
                        f"{resource}/{meta['name']}")

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None


def _plugin_rbac() -> List[Dict[str, Any]]:
    """The chart's templates/plugin/rbac.yaml, for the bench namespace."""
    name = "whereabouts-bench-cni"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "rules": [
                {"apiGroups": [GROUP], "resources": ["ippools"],
                 "verbs": ["get", "create", "update"]},
                {"apiGroups": [GROUP], "resources": ["overlappingrangeipreservations"],
                 "verbs": ["get", "create", "delete"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": PLUGIN_SA, "namespace": NAMESPACE}],
        },
    ]


@contextlib.contextmanager
def timer() -> Iterator[List[float]]:
    box: List[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
