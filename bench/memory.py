"""Memory: peak RSS of the plugin process, and of the node agent (``whereabouts
controlloop``) and the reconciler (``whereabouts reconcile``) with many pods in the API."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import ROOT
from .common import GROUP, NAMESPACE, Bed, base_env, run_child

Log = Callable[[str], None]
POD_NAMESPACE = "bench-pods"
NODE_AGENT_SA = "whereabouts-bench-node-agent"
RECONCILER_SA = "whereabouts-bench-reconciler"
NETWORK = "memnet"
NODES = 10


METHOD = (
    "Plugins: GNU time's %M (ru_maxrss) of the exec'd plugin, max of 5 runs: Linux carries "
    "the RSS high-water mark of the process a child was exec'd from into the child's "
    "ru_maxrss, so children of the (large) harness are run under GNU time, whose small "
    "address space is the floor. Controllers: VmHWM of the process (its own address space) "
    "sampled until it stops growing, or GNU time's %M for the one-shot reconciler."
)


def plugin_rows(bed: Bed, compare: Sequence[Path], work: Path, reps: int = 5,
                scale_results: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    from .common import container_id, rss_supported
    from .exec_cost import make_targets

    if not rss_supported():
        return [{"what": "plugin processes", "peak_rss_mib": None,
                 "note": "not measured: GNU time (/usr/bin/time, Debian package time) missing"}]
    rows = []
    for t in make_targets(bed, compare, work, tag="mem"):
        if t.name.startswith("whereabouts[") or t.name.endswith("+orip"):
            continue
        ops = ("VERSION", "ADD", "DEL") if t.datastore in (None, "file") else ("ADD", "DEL")
        for op in ops:
            peaks = []
            for i in range(reps):
                res = t.run(op, container_id(f"mem-{t.name}", i), pod=f"mem-{i}", rss=True)
                if res.ok and res.maxrss_kb:
                    peaks.append(res.maxrss_kb)
            rows.append({"what": f"{t.name} {op}",
                         "peak_rss_mib": max(peaks) / 1024 if peaks else None,
                         "note": f"max of {len(peaks)} runs" if peaks else "failed"})
    for w in (scale_results or {}).get("writes") or []:
        if w.get("maxrss_kb"):
            rows.append({"what": f"whereabouts/{w['datastore']} ADD, pool of {w['live']:,}",
                         "peak_rss_mib": w["maxrss_kb"] / 1024,
                         "note": f"{(w.get('pool_bytes') or 0) / 1048576:.2f} MiB pool"})
    return rows


# ----------------------------------------------------------------------------- pods


def _connection(bed: Bed) -> http.client.HTTPSConnection:
    cluster = bed.cluster()
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    return http.client.HTTPSConnection("127.0.0.1", cluster.apiserver_port, context=ctx,
                                       timeout=60)


def pod_name(i: int) -> str:
    return f"web-{i:06d}"


def pod_node(i: int) -> str:
    return f"node-{i % NODES:03d}"


def pod_ip(i: int) -> str:
    j = i + 1  # never the network address
    return f"10.{96 + j // 65536}.{(j // 256) % 256}.{j % 256}"


def _pod(i: int) -> Dict[str, Any]:
    status = [{"name": f"{POD_NAMESPACE}/{NETWORK}", "interface": "net1", "ips": [pod_ip(i)],
               "mac": "02:00:00:00:00:01", "dns": {}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "namespace": POD_NAMESPACE,
            "labels": {"app": "web", "bench": "memory"},
            "annotations": {
                "k8s.v1.cni.cncf.io/networks": NETWORK,
                "k8s.v1.cni.cncf.io/network-status": json.dumps(status),
            },
        },
        "spec": {
            "nodeName": pod_node(i),
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        },
    }


def create_pods(bed: Bed, count: int, log: Log, threads: int = 8) -> float:
    """POST ``count`` pods as admin over keep-alive connections; returns the seconds taken."""
    cluster = bed.cluster()
    cluster.create_namespace(POD_NAMESPACE)
    token = cluster.admin_token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json"}
    path = f"/api/v1/namespaces/{POD_NAMESPACE}/pods"
    errors: List[str] = []
    lock = threading.Lock()
    next_index = [0]

    def work() -> None:
        conn = _connection(bed)
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= count:
                break
            body = json.dumps(_pod(i)).encode()
            for _ in range(3):
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = _connection(bed)
                    continue
                if resp.status in (201, 409):
                    break
                with lock:
                    errors.append(f"{resp.status}: {data[:200]!r}")
                break
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - started
    log(f"memory: created {count} pods in {took:.1f} s ({count / took:.0f}/s), "
        f"{len(errors)} errors")
    if errors:
        raise RuntimeError(f"creating pods failed: {errors[0]}")
    return took


def fill_pools(bed: Bed, count: int, orphans: int, per_pool: int = 2500) -> List[str]:
    """Pools of network ``memnet`` holding an allocation for every pod (plus ``orphans``
    whose pods do not exist), as the plugin would have written them."""
    from whereabouts.kube import kubeconfig
    from whereabouts.kube.transport import HTTPTransport
    from whereabouts.model import Owner, Pool, PoolKey
    from whereabouts.storage.kubernetes import KubernetesStore

    from .common import container_id

    access = kubeconfig.load_kubeconfig(str(bed.cluster().kubeconfig))
    store = KubernetesStore(HTTPTransport(access), NAMESPACE)
    import ipaddress

    names = []
    total = count + orphans
    try:
        for start in range(0, total, per_pool):
            allocations = {}
            network = None
            for i in range(start, min(start + per_pool, total)):
                address = ipaddress.ip_address(pod_ip(i))
                if network is None:
                    network = ipaddress.ip_network(f"{address}/16", strict=False)
                name = pod_name(i) if i < count else f"gone-{i:06d}"
                allocations[int(address) - int(network.network_address)] = Owner(
                    container_id("mem", i), f"{POD_NAMESPACE}/{name}", "net1", pod_node(i))
            assert network is not None
            key = PoolKey(f"{NETWORK}{start // per_pool}", network)
            current = store.read_pool(key)
            store.write_pool(Pool(key, allocations, current.version, current.raw))
            names.append(key.name)
    finally:
        store.close()
    return names


def count_allocations(bed: Bed) -> int:
    return sum(len((item.get("spec") or {}).get("allocations") or {})
               for item in bed.list_objects("ippools")
               if item["metadata"]["name"].startswith(NETWORK))


# ----------------------------------------------------------------------------- controllers


def _rbac() -> List[Dict[str, Any]]:
    """The chart's node-agent and reconciler identities (templates/*/rbac.yaml)."""
    objs: List[Dict[str, Any]] = []
    for sa, cluster_verbs, pool_verbs, orip_verbs in (
        (NODE_AGENT_SA, ["get", "list", "watch"], ["get", "list", "update"],
         ["get", "list", "delete"]),
        (RECONCILER_SA, ["get", "list"], ["get", "list", "update"], ["get", "list", "delete"]),
    ):
        objs += [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": sa, "namespace": NAMESPACE}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": sa},
             "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": cluster_verbs},
                       {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                        "verbs": ["create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": sa},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": sa},
             "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": sa, "namespace": NAMESPACE},
             "rules": [{"apiGroups": [GROUP], "resources": ["ippools"], "verbs": pool_verbs},
                       {"apiGroups": [GROUP], "resources": ["overlappingrangeipreservations"],
                        "verbs": orip_verbs},
                       {"apiGroups": [""], "resources": ["serviceaccounts/token"],
                        "verbs": ["create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": sa, "namespace": NAMESPACE},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
             "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]},
        ]
    return objs


def controller_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _help(python: str, command: str) -> str:
    proc = subprocess.run([python, "-m", "whereabouts", command, "--help"], cwd=str(ROOT),
                          capture_output=True, text=True, check=False, timeout=60)
    return proc.stdout + proc.stderr


def _controller_env(kubeconfig: Path) -> Dict[str, str]:
    env = base_env()
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONPATH"] = str(ROOT)
    env["POD_NAMESPACE"] = NAMESPACE
    env["WHEREABOUTS_NAMESPACE"] = NAMESPACE
    return env


def run_reconciler(bed: Bed, python: str, work: Path, log: Log) -> Dict[str, Any]:
    kubeconfig = bed.cluster().create_service_account_kubeconfig(
        NAMESPACE, RECONCILER_SA, work / "reconciler.kubeconfig", expiration_seconds=3600)
    help_text = _help(python, "reconcile")
    argv = [python, "-m", "whereabouts", "reconcile"]
    if "--grace-period" in help_text:
        argv += ["--grace-period", "0s"]
    if "--kubeconfig" in help_text:
        argv += ["--kubeconfig", str(kubeconfig)]
    if "--namespace" in help_text:
        argv += ["--namespace", NAMESPACE]
    if "--log-level" in help_text:
        argv += ["--log-level", "info"]
    before = count_allocations(bed)
    res = run_child(argv, _controller_env(kubeconfig), timeout=900, rss=True)
    after = count_allocations(bed)
    note = (f"{'ok' if res.ok else 'exit ' + str(res.rc)}, {res.wall:.1f} s wall, "
            f"{res.cpu:.1f} s CPU; allocations {before} → {after}")
    if not res.ok:
        note += f"; {res.error_text()}"
    log(f"memory: reconciler: {res.maxrss_kb / 1024:.1f} MiB, {note}")
    return {"what": "reconciler (`whereabouts reconcile`, one pass)",
            "peak_rss_mib": res.maxrss_kb / 1024, "note": note, "argv": argv[3:],
            "wall_s": res.wall, "cpu_s": res.cpu, "allocations_before": before,
            "allocations_after": after, "rc": res.rc}


def run_node_agent(bed: Bed, python: str, work: Path, log: Log, *,
                   settle: float = 3.0, limit: float = 60.0) -> Dict[str, Any]:
    kubeconfig = bed.cluster().create_service_account_kubeconfig(
        NAMESPACE, NODE_AGENT_SA, work / "node-agent.kubeconfig", expiration_seconds=3600)
    help_text = _help(python, "controlloop")
    argv = [python, "-m", "whereabouts", "controlloop"]
    for flag, value in (("--node-name", pod_node(0)), ("--kubeconfig", str(kubeconfig)),
                        ("--namespace", NAMESPACE), ("--grace-period", "0s"),
                        ("--log-level", "info")):
        if flag in help_text:
            argv += [flag, value]
    env = _controller_env(kubeconfig)
    env["NODENAME"] = pod_node(0)
    log_path = work / "node-agent.log"
    started = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    # Its steady state: RSS (VmHWM) stops growing for ``settle`` seconds after start-up.
    last, stable_since = 0, time.monotonic()
    while time.monotonic() - started < limit and proc.poll() is None:
        hwm = _vm_hwm_kb(proc.pid)
        if hwm != last:
            last, stable_since = hwm, time.monotonic()
        elif time.monotonic() - stable_since >= settle and time.monotonic() - started > 5:
            break
        time.sleep(0.25)
    exited_early = proc.poll() is not None
    peak_kb = _vm_hwm_kb(proc.pid) or last
    if not exited_early:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    _, status, usage = _wait4_timeout(proc, 15)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    note = (f"ran {time.monotonic() - started:.1f} s for node {pod_node(0)}; "
            f"{usage.ru_utime + usage.ru_stime:.1f} s CPU")
    if exited_early:
        note += f"; exited by itself with {proc.returncode}: {' | '.join(tail)[:300]}"
    log(f"memory: node agent: {peak_kb / 1024:.1f} MiB, {note}")
    return {"what": "node agent (`whereabouts controlloop`, one node)",
            "peak_rss_mib": peak_kb / 1024 if peak_kb else None, "note": note,
            "argv": argv[3:],
            "exited_early": exited_early}


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _wait4_timeout(proc: subprocess.Popen[bytes], timeout: float) -> Tuple[int, int, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    return os.wait4(proc.pid, 0)


def run(bed: Bed, pods: int, python: str, work: Path, log: Log, *,
        compare: Sequence[Path] = (),
        scale_results: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"pods": pods, "method": METHOD,
                           "rows": plugin_rows(bed, compare, work, scale_results=scale_results)}
    log("memory: plugin peaks measured")
    agent = controller_available("whereabouts.controllers.podloop")
    reconciler = controller_available("whereabouts.controllers.reconciler")
    if not agent and not reconciler:
        out["rows"] += [
            {"what": "node agent (`whereabouts controlloop`)", "peak_rss_mib": None,
             "note": "not available (whereabouts/controllers/podloop.py not written yet)"},
            {"what": "reconciler (`whereabouts reconcile`)", "peak_rss_mib": None,
             "note": "not available (whereabouts/controllers/reconciler.py not written yet)"},
        ]
        return out
    if bed.cluster() is None:
        out["rows"].append({"what": "controllers", "peak_rss_mib": None,
                            "note": "not available: " + bed.problems.get("kubernetes", "?")})
        return out
    bed.apply(_rbac())
    orphans = max(pods // 100, 1)
    out["pod_create_s"] = create_pods(bed, pods, log)
    out["pools"] = fill_pools(bed, pods, orphans)
    out["orphans"] = orphans
    for available, name, fn in ((agent, "node agent (`whereabouts controlloop`)",
                                 run_node_agent),
                                (reconciler, "reconciler (`whereabouts reconcile`)",
                                 run_reconciler)):
        if not available:
            out["rows"].append({"what": name, "peak_rss_mib": None, "note": "not available"})
            continue
        try:
            row = fn(bed, python, work, log)
            row["note"] = f"{pods:,} pods, {orphans} orphaned allocations; " + row["note"]
            out["rows"].append(row)
        except Exception as exc:
            out["rows"].append({"what": name, "peak_rss_mib": None,
                                "note": f"failed: {type(exc).__name__}: {exc}"[:400]})
    return out
