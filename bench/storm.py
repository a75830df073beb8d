"""Storms: N attachments across M simulated nodes at once, K concurrent ADDs per node,
against the real API server; then DEL of everything. Duplicates and leaks must be 0."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import (
    NAMESPACE,
    Bed,
    ChildResult,
    Target,
    container_id,
    host_local_netconf,
    process_cpu,
    whereabouts_netconf,
)
from .exec_cost import ipam_for
from .report import summarize

Log = Callable[[str], None]
SUFFICIENT_RANGE = "10.160.0.0/16"
ONE_TO_ONE_NET = "10.200.0.0/20"


def one_to_one_bounds(network: str, n: int) -> Tuple[str, str]:
    """range_start/range_end holding exactly ``n`` usable addresses of ``network`` (IPv4:
    whereabouts never hands out the network, broadcast or any ``.0`` address)."""
    net = ipaddress.ip_network(network)
    first = net.network_address + 1
    count = 0
    address = first
    while address < net.broadcast_address:
        if not (net.version == 4 and int(address) & 0xFF == 0):
            count += 1
            if count == n:
                return str(first), str(address)
        address += 1
    raise ValueError(f"{network} has fewer than {n} usable addresses")


class Attachment:
    __slots__ = ("address", "attempts", "cid", "dels", "end", "error", "index", "node", "pod",
                 "results", "teardown")

    def __init__(self, index: int, cid: str, pod: str, node: str) -> None:
        self.index, self.cid, self.pod, self.node = index, cid, pod, node
        self.results: List[ChildResult] = []  # ADD attempts
        self.teardown: List[ChildResult] = []  # the DEL after each failed ADD attempt
        self.dels: List[ChildResult] = []  # DEL attempts of the DEL phase
        self.address: Optional[str] = None
        self.error: Optional[str] = None
        self.attempts = 0
        self.end = 0.0


def _drive(target: Target, attachments: Sequence[Attachment], *, m: int, k: int, command: str,
           retries: int, timeout: float, log: Log) -> Tuple[float, float]:
    """Run ``command`` for every attachment: per node a queue, K workers per node."""
    queues: Dict[str, queue.Queue[Attachment]] = {}
    for att in attachments:
        queues.setdefault(att.node, queue.Queue()).put(att)
    start_gate = threading.Barrier(m * k + 1)

    def worker(q: queue.Queue[Attachment]) -> None:
        start_gate.wait()
        while True:
            try:
                att = q.get_nowait()
            except queue.Empty:
                return
            if command == "ADD":
                _add(target, att, retries, timeout)
                continue
            # The runtime retries a failed DEL until it succeeds; here a few times.
            for _ in range(retries + 1):
                res = target.run("DEL", att.cid, pod=att.pod, node=att.node, timeout=timeout)
                att.dels.append(res)
                if res.ok:
                    break
            att.end = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(q,), daemon=True)
               for q in queues.values() for _ in range(k)]
    progress = threading.Thread(target=_progress, args=(attachments, command, log, threads),
                                daemon=True)
    # Fewer node queues than M (tiny N) still start every worker.
    while len(threads) < m * k:
        threads.append(threading.Thread(target=start_gate.wait, daemon=True))
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    progress.start()
    for th in threads:
        th.join()
    return t0, time.perf_counter()


def _progress(attachments: Sequence[Attachment], command: str, log: Log,
              threads: Sequence[threading.Thread], every: float = 30.0) -> None:
    """A line every ``every`` seconds while a phase runs (long storms on busy machines)."""
    started = time.monotonic()
    while any(th.is_alive() for th in threads):
        time.sleep(1.0)
        if time.monotonic() - started >= every:
            started = time.monotonic()
            done = sum(1 for a in attachments if a.end)
            failed = sum(1 for a in attachments for r in (a.results if command == "ADD"
                                                            else a.dels) if not r.ok)
            log(f"storm: ... {command} {done}/{len(attachments)} done, {failed} failed execs")


def _add(target: Target, att: Attachment, retries: int, timeout: float) -> None:
    for attempt in range(retries + 1):
        att.attempts = attempt + 1
        res = target.run("ADD", att.cid, pod=att.pod, node=att.node, timeout=timeout)
        att.results.append(res)
        if res.ok:
            ips = res.result().get("ips") or []
            att.address = str(ips[0]["address"]).split("/")[0] if ips else None
            att.error = None if att.address else "ADD result without ips"
            break
        att.error = res.error_text()
        # The runtime tears the failed sandbox down (DEL) before trying again.
        att.teardown.append(target.run("DEL", att.cid, pod=att.pod, node=att.node,
                                       timeout=timeout))
    att.end = time.perf_counter()


def _phase(attachments: Sequence[Attachment], t0: float, t1: float, dels: bool) -> Dict[str, Any]:
    if dels:
        execs = [r for a in attachments for r in a.dels]
        ok = [r for r in execs if r.ok]
        failed_tries = len(execs) - len(ok)
        failed_final = sum(1 for a in attachments if not (a.dels and a.dels[-1].ok))
    else:
        execs = [r for a in attachments for r in a.results]
        ok = [r for r in execs if r.ok]
        failed_tries = len(execs) - len(ok)
        failed_final = sum(1 for a in attachments if a.address is None)
    done = len(attachments) - failed_final
    wall = t1 - t0
    return {
        "wall_s": wall,
        "throughput": done / wall if wall > 0 else None,
        "completed": done,
        "execs": len(execs),
        "attempt_failures": failed_tries,
        "final_failures": failed_final,
        "latency": summarize(r.wall for r in ok),
        "cpu": summarize(r.cpu for r in ok),
        "samples": [r.wall for r in ok],
        "end_to_end": summarize(a.end - t0 for a in attachments if a.end),
    }


def _errors_sample(attachments: Sequence[Attachment], limit: int = 5) -> List[str]:
    seen: Dict[str, int] = {}
    for a in attachments:
        for r in [*a.results, *a.teardown, *a.dels]:
            if not r.ok:
                text = re.sub(r"\b[0-9a-f]{64}\b", "<cid>", r.error_text())
                text = re.sub(r"storm-\d+", "storm-<i>", text)
                seen[text] = seen.get(text, 0) + 1
    ordered = sorted(seen.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{count}x {text}" for text, count in ordered]


def _check_duplicates(attachments: Sequence[Attachment]) -> int:
    holders: Dict[str, int] = {}
    for a in attachments:
        if a.address:
            holders[a.address] = holders.get(a.address, 0) + 1
    return sum(count - 1 for count in holders.values() if count > 1)


def _pool_entries(bed: Bed, network_name: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """pool name -> offset -> allocation, for the pools of one network (admin read)."""
    pools = {}
    for item in bed.list_objects("ippools"):
        name = item["metadata"]["name"]
        if name.startswith(network_name + "-"):
            pools[name] = dict((item.get("spec") or {}).get("allocations") or {})
            pools[name]["__range__"] = {"range": (item.get("spec") or {}).get("range")}
    return pools


def _reservations(bed: Bed, network_name: str) -> List[Dict[str, Any]]:
    return [item for item in bed.list_objects("overlappingrangeipreservations")
            if item["metadata"]["name"].startswith(network_name + "-")]


def _check_kubernetes(bed: Bed, network_name: str, attachments: Sequence[Attachment],
                      overlapping: bool) -> Dict[str, Any]:
    """After the ADDs: every successful ADD recorded in the pool under its own container,
    no address twice in results or in the pool."""
    pools = _pool_entries(bed, network_name)
    recorded: Dict[str, str] = {}  # address -> container id
    dup_in_pool = 0
    for entries in pools.values():
        cidr = entries.pop("__range__")["range"]
        base = ipaddress.ip_network(cidr).network_address
        for offset, alloc in entries.items():
            address = str(base + int(offset))
            if address in recorded:
                dup_in_pool += 1
            recorded[address] = str(alloc.get("id", ""))
    unrecorded = sum(1 for a in attachments if a.address and recorded.get(a.address) != a.cid)
    orips = _reservations(bed, network_name) if overlapping else []
    return {
        "duplicates": _check_duplicates(attachments) + dup_in_pool,
        "unrecorded": unrecorded,
        "pool_entries": len(recorded),
        "reservations": len(orips),
        "pools": len(pools),
    }


def _leaks_kubernetes(bed: Bed, network_name: str,
                      attachments: Sequence[Attachment]) -> Dict[str, int]:
    """What is left after DEL of everything, by cause.

    * silent: left although every DEL and ADD of its attachment reported success: a bug.
    * after a failed DEL: the runtime would retry that DEL; an allocation is freed by the
      retry, a reservation whose pool entry a failed DEL already removed is an orphan the
      reconciler frees (the design's "at worst an orphan").
    """
    by_cid = {a.cid: a for a in attachments}

    def troubled(cid: str) -> bool:
        a = by_cid.get(cid)
        return a is None or any(not r.ok for r in [*a.results, *a.teardown, *a.dels])

    pools = _pool_entries(bed, network_name)
    out = {"leaked_allocations": 0, "leaked_reservations": 0, "silent_allocations": 0,
           "silent_reservations": 0}
    for entries in pools.values():
        for offset, alloc in entries.items():
            if offset == "__range__":
                continue
            out["leaked_allocations"] += 1
            a = by_cid.get(str(alloc.get("id", "")))
            if a is not None and a.dels and a.dels[-1].ok:
                out["silent_allocations"] += 1
    for item in _reservations(bed, network_name):
        out["leaked_reservations"] += 1
        if not troubled(str((item.get("spec") or {}).get("containerid", ""))):
            out["silent_reservations"] += 1
    return out


def _count_log(path: Path) -> Tuple[int, int]:
    """(conflict retries logged, distinct processes that retried) in a debug log."""
    if not path.exists():
        return 0, 0
    conflicts = 0
    pids = set()
    for line in path.read_text(errors="replace").splitlines():
        if "conflict" in line and "retrying" in line:
            conflicts += 1
            match = re.search(r"\] (\d+) ", line)
            if match:
                pids.add(match.group(1))
    return conflicts, len(pids)


def run_case(bed: Bed, label: str, plugin: Path, kind: str, case: str, *, n: int, m: int,
             k: int, retries: int, timeout: float, work: Path, log: Log) -> Dict[str, Any]:
    tag = re.sub(r"[^a-z0-9-]", "-", f"storm-{label}-{case}".lower())
    run: Dict[str, Any] = {"name": label, "case": case, "n": n, "m": m, "k": k}
    logfile = work / f"{tag}.log"
    # "no-orip": the same storm with enable_overlapping_ranges off, which
    # separates the cost of reservations from the pool's own compare-and-swap.
    overlapping = case != "no-orip"
    if kind == "host-local":
        # Node-local IPAM: each simulated node has its own data dir and subnet (host-local
        # cannot share a range across nodes, which is why cluster-wide IPAM exists).
        targets = {}
        for node in range(m):
            data_dir = work / tag / f"node-{node}"
            data_dir.mkdir(parents=True, exist_ok=True)
            targets[f"node-{node}"] = Target(
                label, plugin, host_local_netconf(tag, f"10.{100 + node}.0.0/16", data_dir),
                kind)
        target: Target = _PerNode(targets)
    else:
        extra: Dict[str, Any] = {"log_level": "debug", "log_file": str(logfile)}
        if case == "1:1":
            start, end = one_to_one_bounds(ONE_TO_ONE_NET, n)
            extra.update(range=ONE_TO_ONE_NET, range_start=start, range_end=end)
        else:
            extra["range"] = SUFFICIENT_RANGE
        ipam = ipam_for(bed, "kubernetes", tag, overlapping, work, **extra)
        if ipam is None:
            return {**run, "error": "kubernetes datastore not available: "
                    + bed.problems.get("kubernetes", "?")}
        target = Target(label, plugin, whereabouts_netconf(tag, ipam), kind, "kubernetes")
        run["range"] = {k2: ipam[k2] for k2 in ("range", "range_start", "range_end") if k2 in ipam}
    attachments = [
        Attachment(i, container_id(tag, i), f"storm-{i}", f"node-{i % m}") for i in range(n)
    ]
    mark = bed.audit.mark() if bed.audit and kind != "host-local" else None
    log(f"storm: {label} {case}: {n} ADDs, {m} nodes x {k} workers")
    cpu = _CpuMeter(bed, kind)
    t0, t1 = _drive(target, attachments, m=m, k=k, command="ADD", retries=retries,
                    timeout=timeout, log=log)
    run["add"] = _phase(attachments, t0, t1, dels=False)
    run["add"]["cpu_split"] = cpu.split([r for a in attachments for r in a.results],
                                        run["add"]["completed"])
    add_api = bed.audit.count_since(mark) if mark is not None and bed.audit else None
    if kind == "host-local":
        nodes = {a.node for a in attachments}
        run["check"] = {"duplicates": sum(
            _check_duplicates([a for a in attachments if a.node == nd]) for nd in nodes)}
    else:
        run["check"] = _check_kubernetes(bed, tag, attachments, overlapping)
    log(f"storm: {label} {case}: ADD {run['add']['throughput'] or 0:.1f}/s, "
        f"p99 {run['add']['latency']['p99'] or 0:.3f}s, failed {run['add']['final_failures']}, "
        f"dup {run['check']['duplicates']}, unrecorded {run['check'].get('unrecorded', 0)}")
    mark = bed.audit.mark() if bed.audit and kind != "host-local" else None
    cpu = _CpuMeter(bed, kind)
    for a in attachments:
        a.end = 0.0
    t0, t1 = _drive(target, attachments, m=m, k=k, command="DEL", retries=retries,
                    timeout=timeout, log=log)
    run["del"] = _phase(attachments, t0, t1, dels=True)
    run["del"]["cpu_split"] = cpu.split([a.dels[-1] for a in attachments if a.dels],
                                        run["del"]["completed"])
    del_api = bed.audit.count_since(mark) if mark is not None and bed.audit else None
    if kind == "host-local":
        leaked = sum(1 for d in (work / tag).rglob("*")
                     if d.is_file() and d.name != "lock" and not d.name.startswith("last_"))
        run["check"]["leaks"] = leaked
        run["check"]["silent_leaks"] = leaked
    else:
        leaks = _leaks_kubernetes(bed, tag, attachments)
        run["check"].update(leaks)
        run["check"]["leaks"] = leaks["leaked_allocations"] + leaks["leaked_reservations"]
        run["check"]["silent_leaks"] = (leaks["silent_allocations"]
                                        + leaks["silent_reservations"])
    if add_api is not None and del_api is not None:
        run["api"] = {"add": add_api.as_dict(), "del": del_api.as_dict()}
        run["conflicts"] = add_api.by_status.get("409", 0) + del_api.by_status.get("409", 0)
    if kind != "host-local":
        run["log_conflicts"], run["adds_with_retry"] = _count_log(logfile)
    run["errors_sample"] = _errors_sample(attachments)
    log(f"storm: {label} {case}: DEL {run['del']['throughput'] or 0:.1f}/s, failed "
        f"{run['del']['final_failures']}, leaks {run['check']['leaks']} (silent "
        f"{run['check'].get('silent_leaks', run['check']['leaks'])})")
    return run


class _CpuMeter:
    """Where the CPU of a phase went: the plugin processes (their rusage), the control
    plane (kube-apiserver + etcd, from /proc) and this harness. Their sum per attachment
    bounds throughput on this machine regardless of what else runs on it."""

    def __init__(self, bed: Bed, kind: str) -> None:
        self.pids = bed.control_plane_pids() if kind != "host-local" else []
        self.control = process_cpu(self.pids)
        self.harness = time.process_time()

    def split(self, execs: Sequence[ChildResult], completed: int) -> Dict[str, Any]:
        plugin = sum(r.cpu for r in execs)
        control = process_cpu(self.pids) - self.control
        harness = time.process_time() - self.harness
        per = (plugin + control) / completed if completed else None
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {
            "plugin_cpu_s": plugin,
            "control_plane_cpu_s": control,
            "harness_cpu_s": harness,
            "cpu_per_attachment_s": per,
            "cpus": cpus,
            "cpu_bound_ceiling_per_s": (cpus or 1) / per if per else None,
        }


class _PerNode(Target):
    """host-local per simulated node: the node picks the netconf (its own data dir)."""

    def __init__(self, per_node: Dict[str, Target]) -> None:
        first = next(iter(per_node.values()))
        super().__init__(first.name, first.plugin, first.netconf, first.kind)
        self.per_node = per_node

    def run(self, command: str, cid: str = "", *, pod: str = "", node: Optional[str] = None,
            timeout: float = 120.0, rss: bool = False) -> ChildResult:
        return self.per_node[node or ""].run(command, cid, pod=pod, node=node, timeout=timeout,
                                             rss=rss)


CASES = ("sufficient", "1:1", "no-orip")


def run(bed: Bed, *, n: int, m: int, k: int, compare: Sequence[Path], work: Path, log: Log,
        retries: int = 3, timeout: float = 120.0,
        cases: Sequence[str] = ("sufficient", "1:1")) -> Dict[str, Any]:
    out: Dict[str, Any] = {"n": n, "m": m, "k": k, "retries": retries, "del_retries": retries,
                           "runs": [],
                           "namespace": NAMESPACE}
    plugins: List[Tuple[str, Path, str]] = [("whereabouts", bed.plugin(), "whereabouts")]
    plugins += [(f"compare{i}:{p.name}", p, "compare") for i, p in enumerate(compare, 1)]
    host_local = bed.host_local()
    if host_local is not None:
        out["runs"].append(run_case(bed, "host-local", host_local, "host-local", "per-node",
                                    n=n, m=m, k=k, retries=0, timeout=timeout, work=work,
                                    log=log))
    for label, plugin, kind in plugins:
        for case in cases:
            try:
                out["runs"].append(run_case(bed, label, plugin, kind, case, n=n, m=m, k=k,
                                            retries=retries, timeout=timeout, work=work,
                                            log=log))
            except Exception as exc:  # keep going; the report says what broke
                log(f"storm: {label} {case} broke: {exc!r}")
                out["runs"].append({"name": label, "case": case, "n": n,
                                    "error": f"{type(exc).__name__}: {exc}"})
    return out


def summarize_for_json(storm: Dict[str, Any]) -> Dict[str, Any]:
    """The storm section without the per-exec samples (they go to the plot only)."""
    slim = json.loads(json.dumps(storm, default=str))
    for r in slim.get("runs", []):
        for phase in ("add", "del"):
            if phase in r:
                r[phase].pop("samples", None)
    return slim
