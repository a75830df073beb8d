"""``ci/bench``: run the workloads, write bench/results/, print the report.

Exit status: 0 whatever the numbers are (they are reported against the targets, never
asserted), 1 when a storm produced a duplicate, an unrecorded allocation or a leak,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import RESULTS_DIR, ROOT
from .report import machine_info, target, write_outputs

WORKLOADS = ("exec", "profile", "storm", "scale", "memory")
QUICK = {"reps": 20, "n": 100, "m": 4, "k": 5, "sizes": [1000, 10000], "pods": 1000}
FULL = {"reps": 100, "n": 1000, "m": 10, "k": 10, "sizes": [1000, 10000, 60000], "pods": 10000}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ci/bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes (a couple of minutes): exec 20 reps, storm 100/4/5, "
                   "scale 1k/10k, memory 1k pods")
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help=f"comma-separated workloads (default all: {','.join(WORKLOADS)})")
    p.add_argument("--compare", action="append", type=Path, default=[], metavar="PATH",
                   help="another CNI IPAM binary taking the same netconf (repeatable): run "
                   "the exec and storm workloads with it too, side by side")
    p.add_argument("--reps", type=int, help="exec repetitions per operation")
    p.add_argument("--n", type=int, help="storm: attachments")
    p.add_argument("--m", type=int, help="storm: simulated nodes")
    p.add_argument("--k", type=int, help="storm: concurrent ADDs per node")
    p.add_argument("--storm-cases", default="sufficient,1:1",
                   help="storm cases, comma-separated: sufficient, 1:1, no-orip "
                   "(the first with enable_overlapping_ranges off)")
    p.add_argument("--sizes", help="scale: live allocations, comma-separated")
    p.add_argument("--pods", type=int, help="memory: pods in the API server")
    p.add_argument("--python", default=default_python(),
                   help="the interpreter the plugin's shebang names (default: the first of "
                   "the installer's candidates, /usr/bin/python3, else this one)")
    p.add_argument("--flags", default="-sES",
                   help="interpreter flags in the shebang (default: the installer's, -sES)")
    p.add_argument("--pyz", type=Path,
                   help="use this built zipapp instead of building one with ci/build-pyz")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--no-write", action="store_true", help="print only, write no results")
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir")
    ns = p.parse_args(argv)
    preset = QUICK if ns.quick else FULL
    for key in ("reps", "n", "m", "k", "pods"):
        if getattr(ns, key) is None:
            setattr(ns, key, preset[key])
    ns.sizes = [int(s) for s in ns.sizes.split(",")] if ns.sizes else list(preset["sizes"])
    ns.only = [w.strip() for w in ns.only.split(",") if w.strip()]
    ns.storm_cases = [c.strip() for c in ns.storm_cases.split(",") if c.strip()]
    from .storm import CASES

    if set(ns.storm_cases) - set(CASES):
        p.error(f"unknown storm cases: {', '.join(sorted(set(ns.storm_cases) - set(CASES)))}")
    unknown = set(ns.only) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    for path in ns.compare:
        if not os.access(path, os.X_OK):
            p.error(f"--compare {path}: not an executable file")
    ns.compare = [c.resolve() for c in ns.compare]
    return ns


def default_python() -> str:
    """What the installer would write on this host (whereabouts.hostpython's first
    candidate that is a real interpreter), else the harness's own interpreter."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK) and "/shims/" not in os.path.realpath(candidate):
            return candidate
    return os.path.realpath(sys.executable)


class Logger:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        sys.stderr.write(f"[bench {time.monotonic() - self.start:6.1f}s] {text}\n")
        sys.stderr.flush()


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up below


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from .common import Bed

    log = Logger()
    mode = "quick" if ns.quick else "full"
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    bed = Bed(work, ns.python, ns.pyz, ns.flags)
    results: Dict[str, Any] = {
        "mode": mode,
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "ci/bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "params": {"reps": ns.reps, "n": ns.n, "m": ns.m, "k": ns.k, "sizes": ns.sizes,
                   "pods": ns.pods, "compare": [str(c) for c in ns.compare],
                   "workloads": ns.only},
        "machine": machine_info(ns.python, ns.flags),
    }
    errors: Dict[str, str] = {}
    try:
        log(f"{mode} run; work dir {work}")
        bed.plugin()
        needs_cluster = bool({"exec", "storm", "scale", "memory"} & set(ns.only))
        if needs_cluster:
            log("starting etcd + kube-apiserver (LocalCluster) and the bench etcd")
            bed.cluster()
            bed.etcd()
            for name, problem in bed.problems.items():
                log(f"not available: {name}: {problem}")
        results["versions"] = versions(bed)
        results.update(run_workloads(bed, ns, work, log, errors))
    finally:
        bed.stop()
        if ns.keep_work:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["problems"] = {**bed.problems, **errors}
    results["targets"] = evaluate_targets(results, ns)
    results["failures"] = correctness_failures(results)
    results["duration_s"] = time.monotonic() - log.start
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    if not ns.no_write:
        stamp = started.strftime("%Y%m%d-%H%M%S")
        paths = write_outputs(results, ns.out, stamp)
        log("wrote " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                                 for p in paths.values()))
    from .report import render_markdown

    sys.stdout.write(render_markdown(results))
    log(f"done in {results['duration_s']:.0f} s")
    if results["failures"]:
        for failure in results["failures"]:
            log(f"FAILED: {failure}")
        return 1
    return 0


def versions(bed: Any) -> Dict[str, str]:
    from .exec_cost import which_version

    out = {"kube-apiserver": bed.k8s_version()}
    etcd = bed._etcd  # only if started
    out["etcd (datastore)"] = etcd.version() if etcd is not None else "not started"
    build_info = bed.tools.cni_plugins_dir / ".build-info"
    out["CNI plugins (host-local)"] = (
        f"{bed.tools.cni_plugins_dir.name} "
        f"({build_info.read_text().strip() if build_info.exists() else '?'})")
    plugin = bed.plugin()
    out["whereabouts plugin"] = f"{plugin.stat().st_size:,} bytes zipapp; VERSION → " + \
        which_version(plugin)
    try:
        import whereabouts

        out["whereabouts version"] = whereabouts.__version__
    except Exception:
        pass
    return out


def run_workloads(bed: Any, ns: argparse.Namespace, work: Path, log: Logger,
                  errors: Dict[str, str]) -> Dict[str, Any]:
    from . import exec_cost, memory, scale, storm

    out: Dict[str, Any] = {}

    timings: Dict[str, float] = {}
    out["phase_seconds"] = timings

    def guarded(name: str, fn: Any) -> Any:
        started = time.monotonic()
        try:
            return fn()
        except Exception as exc:
            log(f"{name} broke: {exc!r}")
            traceback.print_exc(file=sys.stderr)
            errors[name] = f"harness error: {type(exc).__name__}: {exc}"
            return None
        finally:
            timings[name] = round(time.monotonic() - started, 1)
            log(f"{name}: {timings[name]:.0f} s; load average {os.getloadavg()[0]:.1f}")

    if "exec" in ns.only:
        out["exec"] = guarded("exec", lambda: exec_cost.run(bed, ns.reps, ns.compare, work, log))
        if out["exec"] is not None:
            out["exec"]["python_floor"] = exec_cost.python_floor(ns.python, ns.flags, ns.reps)
    if "profile" in ns.only:
        out["profile"] = guarded("profile", lambda: exec_cost.profile(bed, work))
    if "storm" in ns.only:
        out["storm"] = guarded("storm", lambda: storm.run(
            bed, n=ns.n, m=ns.m, k=ns.k, compare=ns.compare, work=work, log=log,
            cases=ns.storm_cases))
    if "scale" in ns.only:
        out["scale"] = guarded("scale", lambda: scale.run(bed, ns.sizes, work, log))
    if "memory" in ns.only:
        out["memory"] = guarded("memory", lambda: memory.run(
            bed, ns.pods, sys.executable, work, log, compare=ns.compare,
            scale_results=out.get("scale")))
    return {k: v for k, v in out.items() if v is not None}


def _storm_run(results: Dict[str, Any], name: str, case: str) -> Optional[Dict[str, Any]]:
    for run in (results.get("storm") or {}).get("runs", []):
        if run.get("name") == name and run.get("case") == case and "add" in run:
            return run
    return None


def evaluate_targets(results: Dict[str, Any], ns: argparse.Namespace) -> List[Dict[str, Any]]:
    out = []
    shape = f"{ns.n}/{ns.m}/{ns.k}"
    note = ("" if (ns.n, ns.m, ns.k) == (1000, 10, 10)
            else f"measured at N/M/K={shape}, not 1000/10/10")
    run = _storm_run(results, "whereabouts", "sufficient")
    if run:
        tput = run["add"]["throughput"]
        out.append(target("storm throughput", "≥ 30 attachments/s (1000/10/10)",
                          f"{tput:.1f}/s", tput >= 30,
                          note + ("; " if note else "") + "upstream: 0.3-2/s; Spiderpool's test "
                          "≈ 5.5 pods/s"))
        p99 = run["add"]["latency"]["p99"]
        out.append(target("storm ADD p99 latency", "≤ 1 s", f"{p99:.3f} s"
                          if p99 is not None else "-", None if p99 is None else p99 <= 1.0, note))
    else:
        out.append(target("storm throughput", "≥ 30 attachments/s", "-", None, "storm not run"))
    storms = [r for r in (results.get("storm") or {}).get("runs", []) if "check" in r]
    if storms:
        dup = sum(r["check"].get("duplicates", 0) + r["check"].get("unrecorded", 0)
                  for r in storms)
        leaks = sum(r["check"].get("leaks", 0) for r in storms)
        silent = sum(r["check"].get("silent_leaks", r["check"].get("leaks", 0)) for r in storms)
        failed = sum(r["del"].get("final_failures", 0) for r in storms if "del" in r)
        out.append(target("duplicates", "0", str(dup), dup == 0,
                          "every storm; includes successful ADDs not recorded in the pool"))
        out.append(target("leaks after DEL", "0", str(leaks), leaks == 0,
                          f"every storm; {silent} silent (left although every DEL succeeded), "
                          f"{leaks - silent} left by {failed} DELs that failed in the end "
                          "(the runtime keeps retrying; the reconciler frees orphans)"))
    one = _storm_run(results, "whereabouts", "1:1")
    if one:
        completed = one["add"]["completed"]
        out.append(target("1:1 storm completes", f"all {one['n']} attachments get an address",
                          f"{completed}/{one['n']} in {one['add']['wall_s']:.1f} s "
                          f"({one['add']['throughput']:.1f}/s)",
                          completed == one["n"], note + ("; " if note else "") +
                          "upstream stalls (845/1000 after 2280 s in Spiderpool's test)"))
    api = (results.get("exec") or {}).get("api_requests") or {}
    for name, limit, goal in (("whereabouts/kubernetes", 2, "≤ 2 (overlapping ranges off)"),
                              ("whereabouts/kubernetes+orip", 3,
                               "≤ 3 (2 + 1 reservation; overlapping ranges on, the default)")):
        phases = api.get(name)
        if phases and "ADD" in phases:
            per = phases["ADD"]["per_op"]
            out.append(target(f"API round trips per uncontended ADD ({name})", goal,
                              f"{per:g}", per <= limit))
    ex = results.get("exec") or {}
    ratios = ex.get("ratios", {})
    r = (ratios.get("whereabouts/file") or {}).get("ADD", {}).get("wall_median")
    c = (ratios.get("whereabouts/file") or {}).get("ADD", {}).get("cpu_median")
    note = "" if c is None else f"CPU {c:.1f}x"
    base = (((ex.get("targets") or {}).get("host-local") or {}).get("ops") or {}).get("ADD")
    for label, floor in (ex.get("python_floor") or {}).items():
        if base and base["wall"]["median"]:
            note += (f"; the bare interpreter (`{label.split('/')[-1]}`) alone is "
                     f"{floor['wall']['median'] / base['wall']['median']:.1f}x host-local's "
                     "ADD wall")
    out.append(target("ADD on file vs host-local (wall, median)", "≤ 3x",
                      "-" if r is None else f"{r:.2f}x", None if r is None else r <= 3.0,
                      note))
    return out


def correctness_failures(results: Dict[str, Any]) -> List[str]:
    failures = []
    for run in (results.get("storm") or {}).get("runs", []):
        check = run.get("check") or {}
        for key in ("duplicates", "unrecorded", "silent_leaks"):
            value = check.get(key, check.get("leaks") if key == "silent_leaks" else 0)
            if value:
                failures.append(f"storm {run['name']} {run['case']}: {value} {key}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
