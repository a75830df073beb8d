"""Statistics, machine details, targets, and the JSON / Markdown / PNG outputs."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

# ----------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default).

    Raises ValueError on an empty sequence or q outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def summarize(values: Iterable[float]) -> Dict[str, Any]:
    """n, min, median, p95, p99, max and mean of ``values`` (None fields when empty)."""
    data = [float(v) for v in values]
    if not data:
        return {"n": 0, "min": None, "median": None, "p95": None, "p99": None, "max": None,
                "mean": None}
    return {
        "n": len(data),
        "min": min(data),
        "median": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": max(data),
        "mean": sum(data) / len(data),
    }


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def fmt_num(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_bytes(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


# ----------------------------------------------------------------------------- targets


def target(name: str, goal: str, value: Any, met: Optional[bool], note: str = "") -> Dict[str, Any]:
    """One reported (never asserted) target: met is True/False, or None when not measured."""
    return {"name": name, "goal": goal, "value": value, "met": met, "note": note}


def verdict(met: Optional[bool]) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


# ----------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(python: str, flags: str = "") -> Dict[str, Any]:
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    match = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    if match:
        mem_kb = int(match.group(1))
    os_name = "?"
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    try:
        plugin_python = subprocess.run(
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True, text=True, check=False, timeout=30,
        ).stdout.strip()
    except OSError:
        plugin_python = "?"
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(mem_kb / (1 << 20), 1),
        "kernel": platform.release(),
        "os": os_name,
        "harness_python": sys.version.split()[0],
        "plugin_python": f"#!{python} {flags} (Python {plugin_python})",
        "loadavg_at_start": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------- output


def write_outputs(results: Dict[str, Any], out_dir: Path, stamp: str) -> Dict[str, Path]:
    """<date>-<mode>.json/.md/.png plus latest-<mode>.md; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = results["mode"]
    base = out_dir / f"{stamp}-{mode}"
    paths: Dict[str, Path] = {}
    png = base.with_suffix(".png")
    plotted = plot_latencies(results, png)
    if plotted:
        paths["png"] = png
        results["plot"] = png.name
    paths["json"] = base.with_suffix(".json")
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    text = render_markdown(results)
    paths["md"] = base.with_suffix(".md")
    paths["md"].write_text(text)
    latest = out_dir / f"latest-{mode}.md"
    latest.write_text(text)
    paths["latest"] = latest
    return paths


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    out: List[str] = []
    mode = results.get("mode", "?")
    out.append(f"# whereabouts benchmark ({mode})")
    out.append("")
    out.append(f"Run {results.get('started', '?')}, {results.get('duration_s', 0):.0f} s, "
               f"`{results.get('command', 'ci/bench')}`. Numbers are measured, never asserted; "
               "the run fails only on duplicates, unrecorded allocations or silent leaks.")
    out.append("")
    m = results.get("machine", {})
    versions = results.get("versions", {})
    out.append("## Machine")
    out.append("")
    out.extend(_table(["what", "value"], [
        ("CPU", f"{m.get('cpu_model')} x {m.get('cpus')} (usable {m.get('affinity_cpus')})"),
        ("memory", f"{m.get('memory_gib')} GiB"),
        ("kernel / OS", f"{m.get('kernel')} / {m.get('os')}"),
        ("plugin interpreter", m.get("plugin_python")),
        ("harness Python", m.get("harness_python")),
        ("load average (1/5/15 min) at start → end",
         ", ".join(f"{x:.2f}" for x in m.get("loadavg_at_start", [])) + " → "
         + ", ".join(f"{x:.2f}" for x in m.get("loadavg_at_end", []))),
        ("seconds per workload", ", ".join(f"{k} {v:g}" for k, v in
                                            (results.get("phase_seconds") or {}).items())),
        *((k, v) for k, v in versions.items()),
    ]))
    out.append("")
    _targets_section(out, results.get("targets", []))
    _exec_section(out, results.get("exec"))
    _profile_section(out, results.get("profile"))
    _storm_section(out, results.get("storm"))
    _scale_section(out, results.get("scale"))
    _memory_section(out, results.get("memory"))
    problems = results.get("problems") or {}
    if problems:
        out.append("## Not available in this run")
        out.append("")
        out.extend(f"- **{k}**: {v}" for k, v in problems.items())
        out.append("")
    failures = results.get("failures") or []
    out.append("## Correctness")
    out.append("")
    if failures:
        out.extend(f"- FAILED: {f}" for f in failures)
    else:
        out.append("- 0 duplicates, 0 unrecorded allocations, 0 silent leaks in every storm.")
    out.append("")
    if results.get("plot"):
        out.append(f"![latency distributions]({results['plot']})")
        out.append("")
    return "\n".join(out)


def _targets_section(out: List[str], targets: Sequence[Mapping[str, Any]]) -> None:
    if not targets:
        return
    out.append("## Targets (reported, not asserted)")
    out.append("")
    out.extend(_table(
        ["target", "goal", "measured", "verdict", "note"],
        ((t["name"], t["goal"], t["value"], verdict(t["met"]), t.get("note", ""))
         for t in targets),
    ))
    out.append("")


def _exec_section(out: List[str], ex: Optional[Mapping[str, Any]]) -> None:
    if not ex:
        return
    out.append("## Exec cost per invocation")
    out.append("")
    out.append(f"{ex.get('reps')} repetitions per operation, targets interleaved round-robin; "
               "the IPAM plugin is executed directly (no netns, no main plugin), with a "
               "netconf of the same shape (macvlan + one range). Wall = fork to reap; "
               "CPU = the child's user+sys (wait4). Times in ms; ratios are medians over "
               "host-local's medians in the same run.")
    out.append("")
    rows = []
    ratios = ex.get("ratios", {})
    for name, t in ex.get("targets", {}).items():
        for op, s in t.get("ops", {}).items():
            w, c = s["wall"], s["cpu"]
            r = ratios.get(name, {}).get(op, {})
            rows.append((
                name, op, fmt_ms(w["min"]), fmt_ms(w["median"]), fmt_ms(w["p95"]),
                fmt_ms(c["min"]), fmt_ms(c["median"]), fmt_ms(c["p95"]),
                fmt_ratio(r.get("wall_median")), fmt_ratio(r.get("cpu_median")),
                s.get("errors", 0) or "",
            ))
    out.extend(_table(
        ["target", "op", "wall min", "wall med", "wall p95", "CPU min", "CPU med", "CPU p95",
         "wall ÷ host-local", "CPU ÷ host-local", "errors"], rows))
    out.append("")
    floor = ex.get("python_floor") or {}
    if floor:
        out.append("The interpreter alone, for reference (no plugin code at all):")
        out.append("")
        out.extend(_table(["command", "wall min", "wall med", "CPU med", "peak RSS MiB"], (
            (f"`{label}`", fmt_ms(f["wall"]["min"]), fmt_ms(f["wall"]["median"]),
             fmt_ms(f["cpu"]["median"]), f"{(f['maxrss_kb']['max'] or 0) / 1024:.1f}")
            for label, f in floor.items())))
        out.append("")
    errors = [(n, op, s.get("first_error")) for n, t in ex.get("targets", {}).items()
              for op, s in t.get("ops", {}).items() if s.get("first_error")]
    for name, op, text in errors:
        out.append(f"- {name} {op} error: `{text}`")
    if errors:
        out.append("")
    api = ex.get("api_requests") or {}
    if api:
        out.append("### Kubernetes API requests per operation (audit log of the plugin's "
                   "ServiceAccount)")
        out.append("")
        rows = []
        for name, phases in api.items():
            for phase, c in phases.items():
                detail = ", ".join(f"{k} x{v / max(c['ops'], 1):g}"
                                   for k, v in sorted(c["by_resource_verb_status"].items()))
                rows.append((name, phase, c["ops"], f"{c['per_op']:g}", detail))
        out.extend(_table(["target", "operation", "ops", "requests/op", "verb resource status"],
                          rows))
        out.append("")
    etcd = ex.get("etcd_requests") or {}
    if etcd:
        out.append("### etcd requests per operation (etcd's gRPC counters, via the v3 gateway)")
        out.append("")
        rows = []
        for name, phases in etcd.items():
            for phase, c in phases.items():
                detail = ", ".join(f"{k} x{v:g}" for k, v in sorted(c["per_op_by_method"].items()))
                rows.append((name, phase, c["ops"], f"{c['per_op']:g}", detail))
        out.extend(_table(["target", "operation", "ops", "requests/op", "by method"], rows))
        out.append("")


def _profile_section(out: List[str], prof: Optional[Mapping[str, Any]]) -> None:
    if not prof:
        return
    out.append("## Start-up profile (`python -X importtime`, plugin interpreter)")
    out.append("")
    for label, p in prof.items():
        if "error" in p:
            out.append(f"- {label}: {p['error']}")
            continue
        out.append(f"**{label}**: {p['modules']} modules imported, {p['total_ms']:.1f} ms of "
                   f"import time in total (per module the least of {p.get('runs', 1)} runs; "
                   f"importtime's own overhead included); ssl imported: {p['imports_ssl']}, "
                   f"http imported: {p['imports_http']}.")
        out.append("")
        cumulative = p.get("top_cumulative") or []
        rows = [(r["module"], f"{r['self_ms']:.2f}", f"{r['cumulative_ms']:.2f}", "")
                for r in p["top_self"]]
        for i, r in enumerate(cumulative):
            cell = (f"{r['module']} (depth {r['depth']}) {r['cumulative_ms']:.1f}")
            if i < len(rows):
                rows[i] = (*rows[i][:3], cell)
            else:
                rows.append(("", "", "", cell))
        out.extend(_table(["module (by self time)", "self ms", "cumulative ms",
                           "heaviest subtrees (cumulative ms)"], rows))
        out.append("")


def _storm_section(out: List[str], storm: Optional[Mapping[str, Any]]) -> None:
    if not storm:
        return
    out.append("## Storms")
    out.append("")
    out.append(f"N={storm.get('n')} attachments across M={storm.get('m')} simulated nodes "
               f"(distinct NODENAME), K={storm.get('k')} concurrent ADDs per node "
               f"({storm.get('m', 0) * storm.get('k', 0)} plugin processes in flight), all "
               "started at once; then DEL of everything with the same concurrency. A failed "
               f"ADD is followed by a DEL and retried (at most {storm.get('retries')} times), a "
               f"failed DEL is retried (at most {storm.get('del_retries', storm.get('retries'))} "
               "times), as a kubelet would. Latencies in ms. "
               "Leaks: allocations and reservations left after the DEL phase; silent leaks: "
               "those left although every ADD and DEL of their attachment reported success.")
    out.append("")
    rows = []
    for run in storm.get("runs", []):
        if "error" in run:
            rows.append((run["name"], run.get("case", ""), "error: " + run["error"][:150],
                         *[""] * 14))
            continue
        add, dele = run["add"], run["del"]
        rows.append((
            run["name"], run["case"], f"{add['wall_s']:.1f}", fmt_num(add["throughput"]),
            fmt_ms(add["latency"]["median"]), fmt_ms(add["latency"]["p95"]),
            fmt_ms(add["latency"]["p99"]), fmt_ms(add["cpu"]["median"]),
            add["attempt_failures"], add["final_failures"], run.get("conflicts", "-"),
            run["check"].get("duplicates", "-"), run["check"].get("unrecorded", "-"),
            fmt_num(dele["throughput"]), dele.get("final_failures", "-"),
            run["check"].get("leaks", "-"), run["check"].get("silent_leaks", "-"),
        ))
    out.extend(_table(
        ["plugin", "case", "ADD wall s", "ADD/s", "p50", "p95", "p99", "CPU/ADD med",
         "failed tries", "failed final", "conflicts (409)", "dup", "unrecorded", "DEL/s",
         "DEL failed final", "leaks", "silent leaks"], rows))
    out.append("")
    for run in storm.get("runs", []):
        if run.get("api"):
            a = run["api"]
            out.append(f"- {run['name']} {run['case']}: {a['add']['total']} API requests for "
                       f"the ADDs ({a['add']['total'] / max(run['n'], 1):.2f} per attachment; "
                       f"{_breakdown(a['add'])}), {a['del']['total']} for the DELs "
                       f"({a['del']['total'] / max(run['n'], 1):.2f} per attachment; "
                       f"{_breakdown(a['del'])}); debug log: "
                       f"{run.get('log_conflicts', '-')} conflict retries logged, "
                       f"{run.get('adds_with_retry', '-')} ADDs retried at least once.")
        for phase in ("add", "del"):
            split = (run.get(phase) or {}).get("cpu_split")
            if split and split.get("cpu_per_attachment_s"):
                done = max((run.get(phase) or {}).get("completed") or 0, 1)
                out.append(
                    f"- {run['name']} {run['case']} {phase.upper()} CPU per attachment: plugin "
                    f"{split['plugin_cpu_s'] / done * 1000:.0f} ms + kube-apiserver/etcd "
                    f"{split['control_plane_cpu_s'] / done * 1000:.0f} ms = "
                    f"{split['cpu_per_attachment_s'] * 1000:.0f} ms, so at most "
                    f"{split['cpu_bound_ceiling_per_s']:.1f}/s on {split['cpus']} cores even on "
                    "an otherwise idle machine (harness: "
                    f"{split['harness_cpu_s'] / done * 1000:.0f} ms).")
        lc = (run.get("check") or {}).get("leak_classification")
        if lc:
            out.append(f"- {run['name']} {run['case']} leaks: {lc['leftover_allocations']} "
                       f"allocations and {lc['leftover_reservations']} reservations left; "
                       f"{lc['del_failures_logged']} DELs failed, {lc['del_successes']} "
                       f"succeeded; left although their DEL succeeded: "
                       f"{lc['silent_allocations']} allocations, {lc['silent_reservations']} "
                       f"reservations ({lc['method']}).")
        for err in run.get("errors_sample", []):
            out.append(f"  - error seen: `{err}`")
    out.append("")


def _breakdown(count: Mapping[str, Any]) -> str:
    items = sorted(count.get("by_resource_verb_status", {}).items(), key=lambda kv: -kv[1])
    short = {"ippools": "pool", "overlappingrangeipreservations": "reservation"}
    return ", ".join(
        f"{verb} {short.get(resource, resource)} {code} x{n}"
        for (verb, resource, code), n in ((k.split(" ", 2), v) for k, v in items))


def _scale_section(out: List[str], scale: Optional[Mapping[str, Any]]) -> None:
    if not scale:
        return
    out.append("## Scale: one range with many live allocations")
    out.append("")
    rows = []
    for row in scale.get("allocator", []):
        rows.append((fmt_num(row["live"]), row["layout"], fmt_bytes(row["pool_json_bytes"]),
                     f"{row['decode_ms']:.2f}", f"{row['choose_ms']:.3f}",
                     f"{row['encode_ms']:.2f}", f"{row['total_ms']:.2f}"))
    out.append("In-process CPU per allocation decision (parse the stored pool JSON, decode, "
               "`allocator.choose`, encode, serialise), median of repeated runs, ms:")
    out.append("")
    out.extend(_table(["live allocations", "layout", "IPPool JSON", "parse+decode",
                       "choose", "encode+dump", "total"], rows))
    out.append("")
    writes = scale.get("writes", [])
    if writes:
        out.append("A real ADD through the plugin (exec) against a pool pre-filled to that size:")
        out.append("")
        out.extend(_table(
            ["datastore", "live allocations", "pool size", "ADD wall ms (med)",
             "ADD CPU ms (med)", "result"],
            ((w["datastore"], fmt_num(w["live"]), fmt_bytes(w.get("pool_bytes")),
              fmt_ms(w.get("wall_median")), fmt_ms(w.get("cpu_median")), w.get("result", ""))
             for w in writes)))
        out.append("")
    for limit in scale.get("limits", []):
        out.append(f"- **{limit['datastore']} size limit**: {limit.get('summary', '')}")
    if scale.get("limits"):
        out.append("")


def _memory_section(out: List[str], mem: Optional[Mapping[str, Any]]) -> None:
    if not mem:
        return
    out.append("## Memory (peak RSS of the process)")
    out.append("")
    out.append(mem.get("method", ""))
    out.append("")
    rows = [(r["what"], r.get("peak_rss_mib") if r.get("peak_rss_mib") is None
             else f"{r['peak_rss_mib']:.1f}", r.get("note", "")) for r in mem.get("rows", [])]
    out.extend(_table(["process", "peak RSS MiB", "note"], rows))
    out.append("")


# ----------------------------------------------------------------------------- plot


def plot_latencies(results: Mapping[str, Any], path: Path) -> bool:
    """Latency distributions (exec ADD per target; storm ADD per run) as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series_exec = results.get("exec", {}).get("samples", {})
    series_storm = {f"{r['name']} {r['case']}": r["add"]["samples"]
                    for r in results.get("storm", {}).get("runs", []) if "add" in r}
    panels = [(title, s) for title, s in (
        ("exec: ADD wall time per target (ms)", series_exec),
        ("storm: ADD latency per exec (ms)", series_storm),
    ) if s]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels):
        labels = list(series)
        data = [[v * 1000 for v in series[label]] or [0.0] for label in labels]
        style = {"whis": (1, 99), "showfliers": True, "flierprops": {"markersize": 2}}
        try:
            ax.boxplot(data, orientation="horizontal", **style)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, **style)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.set_xscale("log")
        ax.set_title(title + " — box: quartiles, whiskers: p1-p99", fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(f"whereabouts bench ({results.get('mode')}) {results.get('started', '')}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
