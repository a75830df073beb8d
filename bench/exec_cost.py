"""Exec cost: wall and CPU time of one plugin invocation (VERSION, ADD, DEL) per datastore,
next to the reference host-local IPAM in the same run, plus API / etcd round trips per
operation and the interpreter's import-time profile of the exec path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .common import (
    Bed,
    ChildResult,
    Target,
    cni_env,
    container_id,
    etcd_grpc_counts,
    host_local_netconf,
    run_child,
    whereabouts_netconf,
)
from .report import ratio, summarize

SUBNET = "10.128.0.0/16"
OPS = ("VERSION", "ADD", "DEL")
Log = Callable[[str], None]


def ipam_for(bed: Bed, datastore: str, network_name: str, overlapping: bool,
             work: Path, **extra: Any) -> Optional[Dict[str, Any]]:
    """The ipam object of a whereabouts netconf for one datastore (None: unavailable)."""
    flat = work / "flat" / "whereabouts.conf"
    if not flat.exists():
        flat.parent.mkdir(parents=True, exist_ok=True)
        # An explicit (empty) flat file: never pick up a host's /etc/cni/net.d one.
        flat.write_text("{}\n")
    ipam: Dict[str, Any] = {
        "range": extra.pop("range", SUBNET),
        "network_name": network_name,
        "enable_overlapping_ranges": overlapping,
        "datastore": datastore,
        "configuration_path": str(flat),
        "log_level": "error",
    }
    if datastore == "file":
        data_dir = work / "file-store" / network_name
        data_dir.mkdir(parents=True, exist_ok=True)
        ipam["data_dir"] = str(data_dir)
    elif datastore == "etcd":
        etcd = bed.etcd()
        if etcd is None:
            return None
        ipam["etcd_host"] = etcd.endpoint
    elif datastore == "kubernetes":
        kubeconfig = bed.plugin_kubeconfig()
        if kubeconfig is None:
            return None
        ipam["kubernetes"] = {"kubeconfig": str(kubeconfig)}
    ipam.update(extra)
    return ipam


def make_targets(bed: Bed, compare: Sequence[Path], work: Path, tag: str = "exec",
                 datastores: Sequence[str] = ("file", "etcd", "kubernetes")) -> List[Target]:
    targets: List[Target] = []
    host_local = bed.host_local()
    if host_local is not None:
        hl_dir = work / f"{tag}-host-local"
        hl_dir.mkdir(parents=True, exist_ok=True)
        targets.append(Target("host-local", host_local,
                              host_local_netconf(f"{tag}-hl", SUBNET, hl_dir), "host-local"))
    plugins = [("whereabouts", bed.plugin(), "whereabouts", datastores)]
    if tag == "exec" and "S" not in bed.flags.lstrip("-") and "file" in datastores:
        # What skipping site (.pth files of the interpreter's site-packages) would save:
        # the zipapp is stdlib-only, so -S is safe for it.
        suggested = f"{bed.flags}S" if bed.flags.startswith("-") else "-sES"
        plugins.append((f"whereabouts[{suggested}]",
                        bed.plugin_variant("whereabouts-S", f"{bed.python} {suggested}"),
                        "whereabouts", ("file",)))
    for index, path in enumerate(compare, 1):
        plugins.append((f"compare{index}:{path.name}", path, "compare", datastores))
    for label, plugin, kind, stores in plugins:
        for ds in stores:
            variants = [(False, "")] if ds != "kubernetes" else [(False, ""), (True, "+orip")]
            for overlapping, suffix in variants:
                net = re.sub(r"[^a-z0-9-]", "-", f"{tag}-{label}-{ds}{suffix}".lower())
                ipam = ipam_for(bed, ds, net, overlapping, work)
                if ipam is None:
                    continue
                targets.append(Target(f"{label}/{ds}{suffix}", plugin,
                                      whereabouts_netconf(net, ipam), kind, ds))
    return targets


def _stats(results: List[ChildResult]) -> Dict[str, Any]:
    ok = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    return {
        "wall": summarize(r.wall for r in ok),
        "cpu": summarize(r.cpu for r in ok),
        "errors": len(errors),
        "first_error": errors[0].error_text() if errors else None,
    }


def run(bed: Bed, reps: int, compare: Sequence[Path], work: Path, log: Log) -> Dict[str, Any]:
    targets = make_targets(bed, compare, work)
    env_python = _env_python_variant(bed)
    results: Dict[str, Dict[str, List[ChildResult]]] = {t.name: {op: [] for op in OPS}
                                                         for t in targets}
    if env_python is not None:
        results[env_python.name] = {"VERSION": []}
    log(f"exec: {len(targets)} targets x {reps} reps: {', '.join(t.name for t in targets)}")
    # Warm-up (page cache, first pool creation) is not measured.
    for t in targets:
        t.run("VERSION")
        cid = container_id(f"warm-{t.name}", 0)
        first = t.run("ADD", cid, pod="warm-0")
        if not first.ok:
            log(f"exec: {t.name} warm-up ADD failed: {first.error_text()}")
        t.run("DEL", cid, pod="warm-0")
    for _ in range(reps):
        for t in targets:
            results[t.name]["VERSION"].append(t.run("VERSION"))
        if env_python is not None:
            results[env_python.name]["VERSION"].append(env_python.run("VERSION"))
    for op in ("ADD", "DEL"):
        for i in range(reps):
            for t in targets:
                results[t.name][op].append(t.run(op, container_id(f"exec-{t.name}", i),
                                                 pod=f"exec-{i}"))
    out: Dict[str, Any] = {"reps": reps, "targets": {}, "ratios": {}, "samples": {}}
    for name, ops in results.items():
        t = next((t for t in targets if t.name == name), env_python)
        assert t is not None
        out["targets"][name] = {
            "kind": t.kind, "datastore": t.datastore, "plugin": str(t.plugin),
            "ops": {op: _stats(rs) for op, rs in ops.items()},
        }
        if ops.get("ADD"):
            out["samples"][name] = [r.wall for r in ops["ADD"] if r.ok]
    base = out["targets"].get("host-local", {}).get("ops", {})
    for name, t in out["targets"].items():
        out["ratios"][name] = {
            op: {
                "wall_median": ratio(s["wall"]["median"], base.get(op, {}).get("wall", {})
                                     .get("median")),
                "cpu_median": ratio(s["cpu"]["median"], base.get(op, {}).get("cpu", {})
                                    .get("median")),
            }
            for op, s in t["ops"].items()
        }
    out["api_requests"] = count_api_requests(bed, targets, min(reps, 10), work, log)
    out["etcd_requests"] = count_etcd_requests(bed, targets, min(reps, 10), log)
    return out


def _env_python_variant(bed: Bed) -> Optional[Target]:
    """The same zipapp with ci/build-pyz's default shebang (``/usr/bin/env python3``),
    to show what a PATH lookup (here possibly a pyenv shim) adds to every exec."""
    variant = bed.plugin_variant("whereabouts-envpython", "/usr/bin/env python3")
    resolved = shutil.which("python3") or "?"
    return Target(f"whereabouts (#!/usr/bin/env python3 → {resolved})", variant, {}, "whereabouts")


def count_api_requests(bed: Bed, targets: Sequence[Target], n: int, work: Path,
                       log: Log) -> Dict[str, Any]:
    """Requests per operation, from the audit log of the plugin's ServiceAccount."""
    out: Dict[str, Any] = {}
    if bed.audit is None:
        return out
    for t in targets:
        if t.datastore != "kubernetes":
            continue
        # A fresh pool, so the first ADD shows the pool creation.
        fresh = json.loads(json.dumps(t.netconf))
        fresh["ipam"]["network_name"] += "-rt"
        fresh["name"] += "-rt"
        probe = Target(t.name, t.plugin, fresh, t.kind, t.datastore)
        phases: Dict[str, Any] = {}

        def measure(label: str, op: str, indexes: Sequence[int], probe: Target = probe,
                    phases: Dict[str, Any] = phases) -> None:
            assert bed.audit is not None
            mark = bed.audit.mark()
            failed = 0
            for i in indexes:
                failed += not probe.run(op, container_id(f"rt-{probe.name}", i),
                                        pod=f"rt-{i}").ok
            count = bed.audit.count_since(mark)
            ops = len(indexes)
            phases[label] = {"ops": ops, "failed": failed, "per_op": count.total / ops,
                             **count.as_dict()}

        measure("first ADD (creates the pool)", "ADD", [0])
        measure("ADD", "ADD", list(range(1, n + 1)))
        measure("ADD again (idempotent)", "ADD", [1])
        measure("DEL", "DEL", list(range(1, n + 1)))
        measure("DEL (nothing held)", "DEL", [1])
        measure("DEL (last entry)", "DEL", [0])
        out[t.name] = phases
        log(f"exec: {t.name}: ADD {phases['ADD']['per_op']:g} requests, "
            f"DEL {phases['DEL']['per_op']:g}")
    return out


def count_etcd_requests(bed: Bed, targets: Sequence[Target], n: int, log: Log) -> Dict[str, Any]:
    """etcd requests per operation (gRPC counters behind the JSON gateway)."""
    etcd = bed.etcd() if any(t.datastore == "etcd" for t in targets) else None
    out: Dict[str, Any] = {}
    if etcd is None:
        return out
    for t in targets:
        if t.datastore != "etcd":
            continue
        phases: Dict[str, Any] = {}
        for label, op, indexes in (("ADD", "ADD", range(n)), ("DEL", "DEL", range(n))):
            before = etcd_grpc_counts(etcd.metrics())
            for i in indexes:
                t.run(op, container_id(f"rt-{t.name}", i), pod=f"rt-{i}")
            after = etcd_grpc_counts(etcd.metrics())
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            delta = {k: v / n for k, v in delta.items() if v}
            phases[label] = {"ops": n, "per_op": sum(delta.values()), "per_op_by_method": delta}
        out[t.name] = phases
    return out


# ----------------------------------------------------------------------------- profile

_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def parse_importtime(stderr: str) -> List[Dict[str, Any]]:
    """``-X importtime`` lines as dicts (module, self_us, cumulative_us, depth)."""
    rows = []
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            rows.append({"module": match.group(4), "self_us": int(match.group(1)),
                         "cumulative_us": int(match.group(2)),
                         "depth": (len(match.group(3)) - 1) // 2})
    return rows


def summarize_importtime(rows: List[Dict[str, Any]], top: int = 15) -> Dict[str, Any]:
    modules = {r["module"] for r in rows}
    ordered = sorted(rows, key=lambda r: r["self_us"], reverse=True)[:top]
    return {
        "modules": len(rows),
        "total_ms": sum(r["self_us"] for r in rows) / 1000,
        "imports_ssl": "ssl" in modules or "_ssl" in modules,
        "imports_http": any(m == "http" or m.startswith("http.") for m in modules),
        "top_self": [{"module": r["module"], "self_ms": r["self_us"] / 1000,
                      "cumulative_ms": r["cumulative_us"] / 1000} for r in ordered],
        "top_cumulative": [
            {"module": r["module"], "depth": r["depth"], "self_ms": r["self_us"] / 1000,
             "cumulative_ms": r["cumulative_us"] / 1000}
            for r in sorted(rows, key=lambda r: r["cumulative_us"], reverse=True)[:top]],
        "top_level": sorted(
            ({"module": r["module"], "cumulative_ms": r["cumulative_us"] / 1000}
             for r in rows if r["depth"] == 0),
            key=lambda r: r["cumulative_ms"], reverse=True)[:top],
        "all_modules": sorted(modules),
    }


def profile(bed: Bed, work: Path, reps: int = 7) -> Dict[str, Any]:
    """``python -X importtime`` of the zipapp: VERSION, ADD and DEL on the file datastore,
    ADD on kubernetes. Per module, the minimum over ``reps`` runs (the least disturbed)."""
    plugin = bed.plugin()
    cases = []
    for ds in ("file", "kubernetes"):
        ipam = ipam_for(bed, ds, f"profile-{ds}", False, work)
        if ipam is not None:
            cases.append((ds, json.dumps(whereabouts_netconf(f"profile-{ds}", ipam)).encode()))
    out: Dict[str, Any] = {}
    # The plugin's own shebang interpreter and flags, plus -X importtime.
    shebang = plugin.read_bytes().split(b"\n", 1)[0][2:].decode().split()
    plan = [("VERSION", "VERSION", cases[0][1])]
    for ds, netconf in cases:
        plan.append((f"ADD ({ds} datastore)", "ADD", netconf))
        if ds == "file":
            plan.append((f"DEL ({ds} datastore)", "DEL", netconf))
    for label, command, netconf in plan:
        best: Dict[str, Dict[str, Any]] = {}
        order: List[str] = []
        for i in range(reps):
            env = cni_env(command, container_id(f"profile-{label}", i),
                          cni_path=str(plugin.parent))
            child = run_child([*shebang, "-X", "importtime", str(plugin)], env, netconf)
            if not child.ok:
                out[label] = {"error": child.error_text()}
                break
            for row in parse_importtime(child.stderr.decode()):
                name = row["module"]
                if name not in best:
                    best[name] = dict(row)
                    order.append(name)
                else:
                    for key in ("self_us", "cumulative_us"):
                        best[name][key] = min(best[name][key], row[key])
        else:
            out[label] = summarize_importtime([best[name] for name in order])
            out[label]["runs"] = reps
    return out


def python_floor(python: str, flags: str, reps: int) -> Dict[str, Any]:
    """The interpreter alone (``-c pass``), with the plugin's flags and with -S added:
    the floor of any exec of a Python plugin."""
    out = {}
    variants = [(f"{python} {flags} -c pass", [python, *flags.split(), "-c", "pass"])]
    if "S" not in flags:
        variants.append((f"{python} -sES -c pass", [python, "-sES", "-c", "pass"]))
    for label, argv in variants:
        runs = [run_child(argv, {"PATH": "/usr/bin:/bin"}) for _ in range(reps)]
        peaks = [run_child(argv, {"PATH": "/usr/bin:/bin"}, rss=True).maxrss_kb
                 for _ in range(3)]
        out[label] = {"wall": summarize(r.wall for r in runs),
                      "cpu": summarize(r.cpu for r in runs),
                      "maxrss_kb": summarize(p for p in peaks if p)}
    return out


def which_version(path: Path) -> str:
    """The plugin's answer to CNI VERSION (supported spec versions), for the report."""
    try:
        proc = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin"},
                              capture_output=True, text=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)
        try:
            return json.dumps(json.loads(proc.stdout), separators=(",", ":"))
        except ValueError:
            return proc.stdout.strip()[:200]
    except OSError as exc:
        return str(exc)
