"""A real Kubernetes control plane (etcd + kube-apiserver) as local processes.

No Docker, no fakes: the binaries are built by ``ci/e2e-tools`` into a cache
outside the repo, and this module finds them at the same versioned paths (the
pins live in ``e2e/tools/versions.env``). Everything listens on 127.0.0.1 only.

What is *not* there (no kube-controller-manager, scheduler or kubelet): namespaces
get no ``default`` ServiceAccount (use :meth:`LocalCluster.create_namespace`),
namespace deletion never finalizes, ownerReferences do not cascade, and nothing
schedules or runs Pods; tests create Pod objects with ``spec.nodeName`` set.

Stdlib only (plus the ``openssl`` and ``kubectl`` executables).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

E2E_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = E2E_DIR / "tools" / "versions.env"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "whereabouts-e2e-admin"
WORKDIR_PREFIX = "wa-cluster-"  # + "<owner pid>-"


# ---------------------------------------------------------------- binaries


def read_versions(path: Path = VERSIONS_FILE) -> Dict[str, str]:
    """KEY=VALUE lines of versions.env (the single place versions are pinned)."""
    versions: Dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    default = Path(env.get("HOME", str(Path.home()))) / ".cache" / "whereabouts-e2e"
    return Path(env.get("WHEREABOUTS_CACHE") or default)


@dataclass(frozen=True)
class ToolPaths:
    """Where the test-bed binaries are (same layout as ci/e2e-tools)."""

    kube_apiserver: Path
    etcd: Path
    helm: Path
    cni_plugins_dir: Path
    kubectl: Path
    openssl: Path

    @property
    def cnitool(self) -> Path:
        return self.cni_plugins_dir / "cnitool"

    def missing_cluster(self) -> List[str]:
        """What LocalCluster needs that is not there."""
        required = [self.kube_apiserver, self.etcd, self.kubectl, self.openssl]
        return [str(p) for p in required if not os.access(p, os.X_OK)]

    def missing_cni(self) -> List[str]:
        """What the netns/CNI tests need that is not there."""
        required = [self.cnitool] + [self.cni_plugins_dir / p for p in ("host-local", "macvlan")]
        return [str(p) for p in required if not os.access(p, os.X_OK)]

    def missing(self) -> List[str]:
        """Everything of the test bed that is not there."""
        helm = [] if os.access(self.helm, os.X_OK) else [str(self.helm)]
        return self.missing_cluster() + self.missing_cni() + helm


def tool_paths(env: Mapping[str, str] = os.environ) -> ToolPaths:
    """Binaries from $WHEREABOUTS_E2E_BIN / $CNI_PLUGINS_DIR, else the version-keyed cache."""
    v = read_versions()
    cache = cache_dir(env)
    bin_dir = env.get("WHEREABOUTS_E2E_BIN")
    if bin_dir:
        apiserver, etcd, helm = (Path(bin_dir) / n for n in ("kube-apiserver", "etcd", "helm"))
    else:
        apiserver = cache / f"k8s-{v['K8S_VERSION']}" / "kube-apiserver"
        etcd = cache / f"etcd-{v['ETCD_VERSION']}" / "etcd"
        helm = cache / f"helm-{v['HELM_VERSION']}" / "helm"
    cni_default = cache / f"cni-plugins-{v['CNI_PLUGINS_VERSION']}_cni-{v['CNI_VERSION']}"
    return ToolPaths(
        kube_apiserver=apiserver,
        etcd=etcd,
        helm=helm,
        cni_plugins_dir=Path(env.get("CNI_PLUGINS_DIR") or cni_default),
        kubectl=Path(shutil.which("kubectl") or "/usr/bin/kubectl"),
        openssl=Path(shutil.which("openssl") or "/usr/bin/openssl"),
    )


# ---------------------------------------------------------------- helpers


class ClusterError(RuntimeError):
    pass


class PortInUseError(ClusterError):
    """A server lost the race for a port picked by free_port()."""


class KubectlError(ClusterError):
    def __init__(self, args: List[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
        self.proc = proc


def remove_dead_workdirs() -> None:
    """Remove temp dirs of LocalClusters whose owning process died without stop()."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        pid = path.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_pdeathsig(cmd: List[str]) -> List[str]:
    # The server gets SIGKILL when the thread that started it dies, so a killed test
    # run leaves no strays. setpriv (util-linux) rather than preexec_fn: the latter
    # can deadlock in a process that runs threads.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(cmd: List[str], **kwargs: Any) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")


class _Process:
    """One server process in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: List[str], log: Path, die_with_parent: bool) -> None:
        self.name, self.cmd, self.log = name, cmd, log
        self.die_with_parent = die_with_parent
        self.popen: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                _with_pdeathsig(self.cmd) if self.die_with_parent else self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            tail = _tail(self.log)
            error = PortInUseError if "address already in use" in tail else ClusterError
            raise error(f"{self.name} exited ({code}); log {self.log}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reap_group()
        self.popen = None

    def _reap_group(self) -> None:
        # The leader may be gone while children of its group live on.
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


# ---------------------------------------------------------------- cluster


class LocalCluster:
    """etcd + kube-apiserver (RBAC on) on free 127.0.0.1 ports in a temp dir.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. The admin
    kubeconfig (token of a system:masters user, CA data inline) is at
    :attr:`kubeconfig`.
    """

    def __init__(
        self,
        workdir: Optional[Path] = None,
        tools: Optional[ToolPaths] = None,
        startup_timeout: float = 60.0,
        die_with_parent: bool = True,
        extra_apiserver_args: Optional[List[str]] = None,
    ) -> None:
        self.tools = tools or tool_paths()
        self._own_workdir = workdir is None
        if workdir is None:
            remove_dead_workdirs()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self._pick_ports()
        self.admin_token = secrets.token_hex(24)
        self._etcd: Optional[_Process] = None
        self._apiserver: Optional[_Process] = None

    # -- paths and endpoints

    @property
    def etcd_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    def env(self) -> Dict[str, str]:
        """Variables for child processes that talk to this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig), "WHEREABOUTS_E2E_ETCD": self.etcd_endpoint}

    # -- lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        missing = self.tools.missing_cluster()
        if missing:
            raise ClusterError(f"missing binaries (run ci/e2e-tools): {', '.join(missing)}")
        try:
            self._write_pki()
            for attempt in range(3):
                self._write_kubeconfig(self.kubeconfig, {"token": self.admin_token}, "default")
                try:
                    self.start_etcd()
                    self.start_apiserver()
                    return self
                except PortInUseError:
                    # Another process took a port between free_port() and bind: new ports.
                    if attempt == 2:
                        raise
                    self.stop_apiserver()
                    self.stop_etcd()
                    self._pick_ports()
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _pick_ports(self) -> None:
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()

    def stop(self) -> None:
        """Kill every process this cluster started; remove its temp dir if it made it."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop()
        self._apiserver = self._etcd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_etcd(self) -> None:
        self._etcd = _Process(
            "etcd", self._etcd_cmd(), self.workdir / "etcd.log", self.die_with_parent
        )
        self._etcd.start()
        self._wait(self._etcd, self._etcd_healthy)

    def stop_etcd(self) -> None:
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None

    def restart_etcd(self) -> None:
        """Stop and start etcd on the same port and data dir (data survives)."""
        self.stop_etcd()
        self.start_etcd()

    def start_apiserver(self) -> None:
        self._apiserver = _Process(
            "kube-apiserver",
            self._apiserver_cmd(),
            self.workdir / "kube-apiserver.log",
            self.die_with_parent,
        )
        self._apiserver.start()
        self._wait(self._apiserver, self._apiserver_ready)

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop()
            self._apiserver = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    @property
    def pids(self) -> List[int]:
        return [p.popen.pid for p in (self._etcd, self._apiserver) if p and p.popen]

    # -- commands

    def _etcd_cmd(self) -> List[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.tools.etcd),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_endpoint}",
            f"--advertise-client-urls={self.etcd_endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            # Only process crashes are simulated, never power loss: skip fsync for speed.
            "--unsafe-no-fsync",
        ]

    def _apiserver_cmd(self) -> List[str]:
        pki = self.workdir / "pki"
        return [
            str(self.tools.kube_apiserver),
            f"--etcd-servers={self.etcd_endpoint}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]

    # -- readiness

    def _wait(self, proc: _Process, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while time.monotonic() < deadline:
            proc.check_alive()
            if ready():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise ClusterError(
            f"{proc.name} not ready after {self.startup_timeout}s; log {proc.log}:\n"
            f"{_tail(proc.log)}"
        )

    def _etcd_healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.api("GET", "/readyz", timeout=2)
            return status == 200
        except (OSError, http.client.HTTPException):
            return False

    # -- TLS material and kubeconfigs

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (pki / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
        )
        os.chmod(pki / "tokens.csv", 0o600)
        if (pki / "apiserver.crt").exists():
            return
        ossl = str(self.tools.openssl)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _run(
            [
                ossl,
                "req",
                "-x509",
                *ec,
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "365",
                "-subj",
                "/CN=whereabouts-e2e-ca",
            ],
            cwd=pki,
        )
        _run(
            [
                ossl,
                "req",
                *ec,
                "-keyout",
                "apiserver.key",
                "-out",
                "apiserver.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
            cwd=pki,
        )
        (pki / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n"
        )
        _run(
            [
                ossl,
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "apiserver.crt",
                "-days",
                "365",
                "-extfile",
                "san.ext",
            ],
            cwd=pki,
        )
        _run(
            [ossl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key"], cwd=pki
        )
        _run([ossl, "ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"], cwd=pki)

    def _write_kubeconfig(self, path: Path, user: Dict[str, str], namespace: str) -> Path:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {  # JSON is valid kubeconfig YAML; keeps this module free of PyYAML.
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {
                    "name": "local",
                    "context": {"cluster": "local", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "local",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        os.chmod(path, 0o600)
        return path

    # -- API access

    def api(
        self,
        method: str,
        path: str,
        body: Optional[Any] = None,
        token: Optional[str] = None,
        timeout: float = 30,
        *,
        content_type: str = "application/json",
        context: Optional[ssl.SSLContext] = None,
    ) -> Tuple[int, Any]:
        """One HTTPS request to the API server (admin token by default); (status, decoded body).

        ``context`` verifies against ``ca_file`` when not given."""
        ctx = context or ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, context=ctx, timeout=timeout
        )
        headers = {
            "Authorization": f"Bearer {token or self.admin_token}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def kubectl(
        self,
        *args: str,
        input: Optional[str] = None,
        check: bool = True,
        kubeconfig: Optional[Path] = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the machine's kubectl against this cluster (admin unless kubeconfig is given)."""
        cmd = [str(self.tools.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc)
        return proc

    def create_namespace(self, name: str) -> None:
        """Namespace plus its ``default`` ServiceAccount (no controller-manager creates it here)."""
        for body in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name},
            },
        ):
            self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def create_service_account(self, namespace: str, name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def service_account_token(
        self, namespace: str, sa_name: str, expiration_seconds: int = 3600
    ) -> str:
        """Mint a bound token through the TokenRequest API."""
        status, body = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa_name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ClusterError(f"TokenRequest for {namespace}/{sa_name} failed ({status}): {body}")
        return str(body["status"]["token"])

    def create_service_account_kubeconfig(
        self, namespace: str, sa_name: str, path: Path, expiration_seconds: int = 3600
    ) -> Path:
        """Kubeconfig authenticating as the ServiceAccount; context namespace = its namespace."""
        token = self.service_account_token(namespace, sa_name, expiration_seconds)
        return self._write_kubeconfig(Path(path), {"token": token}, namespace)
