"""The benchmark harness's statistics and report code (no processes, no cluster)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import report
from bench.common import AuditCount, AuditLog, etcd_grpc_counts, parse_labels
from bench.exec_cost import parse_importtime, summarize_importtime
from bench.run import correctness_failures, evaluate_targets
from bench.scale import offsets_for
from bench.storm import one_to_one_bounds


def test_percentile_matches_linear_interpolation() -> None:
    data = [4.0, 1.0, 3.0, 2.0]
    assert report.percentile(data, 0) == 1.0
    assert report.percentile(data, 100) == 4.0
    assert report.percentile(data, 50) == 2.5
    assert report.percentile(data, 95) == pytest.approx(3.85)
    assert report.percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 101])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        report.percentile([1.0], q)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError):
        report.percentile([], 50)


def test_summarize() -> None:
    s = report.summarize(range(1, 101))
    assert s["n"] == 100
    assert s["min"] == 1 and s["max"] == 100
    assert s["median"] == 50.5
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == 50.5
    empty = report.summarize([])
    assert empty["n"] == 0 and empty["median"] is None


def test_ratio_and_formatting() -> None:
    assert report.ratio(6.0, 2.0) == 3.0
    assert report.ratio(1.0, 0.0) is None
    assert report.ratio(None, 1.0) is None
    assert report.fmt_ms(0.0123) == "12.3"
    assert report.fmt_ms(0.25) == "250"
    assert report.fmt_ms(None) == "-"
    assert report.fmt_ratio(2.345) == "2.35x"
    assert report.fmt_bytes(1536) == "1.50 KiB"
    assert report.fmt_bytes(3 * 1048576) == "3.00 MiB"
    assert report.fmt_bytes(12) == "12 B"


def test_importtime_parsing() -> None:
    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |   _io\n"
        "import time:      3000 |       3500 | whereabouts.cni.plugin\n"
        "import time:       500 |        500 |     ssl\n"
        "noise line\n"
    )
    rows = parse_importtime(stderr)
    assert [r["module"] for r in rows] == ["_io", "whereabouts.cni.plugin", "ssl"]
    assert rows[1]["depth"] == 0 and rows[0]["depth"] == 1 and rows[2]["depth"] == 2
    summary = summarize_importtime(rows)
    assert summary["modules"] == 3
    assert summary["total_ms"] == pytest.approx(3.62)
    assert summary["imports_ssl"] is True
    assert summary["imports_http"] is False
    assert summary["top_self"][0]["module"] == "whereabouts.cni.plugin"


def test_metrics_label_parsing() -> None:
    labels = parse_labels('grpc_method="Range",grpc_service="etcdserverpb.KV",x="a\\"b"')
    assert labels["grpc_method"] == "Range" and labels["x"] == 'a\\"b'
    text = "\n".join([
        "# HELP grpc_server_handled_total ...",
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_type="unary"} 5',
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_type="unary"} 2',
        'grpc_server_handled_total{grpc_code="Unknown",grpc_method="Txn",grpc_type="unary"} 1',
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Watch",grpc_type="bidi_stream"} 9',
    ])
    assert etcd_grpc_counts(text) == {"Range": 5.0, "Txn": 3.0}


def test_audit_log_counts_since_mark(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    def event(verb: str, resource: str, code: int, user: str) -> str:
        return json.dumps({"verb": verb, "objectRef": {"resource": resource},
                           "responseStatus": {"code": code},
                           "user": {"username": f"system:serviceaccount:ns:{user}"}}) + "\n"

    path.write_text(event("get", "ippools", 200, "cni"))
    log = AuditLog(path)
    mark = log.mark()
    with open(path, "a") as handle:
        handle.write(event("get", "ippools", 200, "cni"))
        handle.write(event("update", "ippools", 409, "cni"))
        handle.write(event("list", "pods", 200, "agent"))
        handle.write('{"partial": ')  # a line still being written is not counted
    count = log.count_since(mark, settle=0)
    assert count.total == 3
    assert count.by_status == {"200": 2, "409": 1}
    assert count.by_resource_verb == {"get ippools 200": 1, "update ippools 409": 1,
                                      "list pods 200": 1}
    only = log.count_since(mark, user="cni", settle=0)
    assert only.total == 2
    assert isinstance(only, AuditCount)


def test_one_to_one_bounds_skip_dot_zero() -> None:
    assert one_to_one_bounds("10.0.0.0/24", 254) == ("10.0.0.1", "10.0.0.254")
    # 10.0.1.0 is never handed out, so the 300th usable address is 10.0.1.45.
    assert one_to_one_bounds("10.0.0.0/22", 300) == ("10.0.0.1", "10.0.1.45")
    with pytest.raises(ValueError):
        one_to_one_bounds("10.0.0.0/24", 255)


def test_scale_offsets_are_usable_and_unique() -> None:
    packed = offsets_for(600, "packed", 1 << 16)
    assert packed[0] == 1 and len(set(packed)) == 600
    assert all(o & 0xFF for o in packed)
    spread = offsets_for(600, "fragmented", 1 << 16)
    assert len(set(spread)) == 600 and all(o & 0xFF for o in spread)
    assert spread != packed


def _ns(n: int = 1000, m: int = 10, k: int = 10) -> argparse.Namespace:
    return argparse.Namespace(n=n, m=m, k=k)


def _storm_run(name: str, case: str, tput: float, p99: float, completed: int, *,
               dup: int = 0, leaks: int = 0) -> dict:
    return {"name": name, "case": case, "n": 1000,
            "add": {"throughput": tput, "latency": {"p99": p99}, "completed": completed,
                    "wall_s": 10.0},
            "check": {"duplicates": dup, "unrecorded": 0, "leaks": leaks}}


def test_targets_met_and_not_met() -> None:
    results = {
        "storm": {"runs": [_storm_run("whereabouts", "sufficient", 35.0, 0.8, 1000),
                           _storm_run("whereabouts", "1:1", 20.0, 2.0, 998)]},
        "exec": {
            "api_requests": {"whereabouts/kubernetes": {"ADD": {"per_op": 2.0}},
                             "whereabouts/kubernetes+orip": {"ADD": {"per_op": 4.0}}},
            "ratios": {"whereabouts/file": {"ADD": {"wall_median": 2.5}}},
        },
    }
    verdicts = {t["name"]: t["met"] for t in evaluate_targets(results, _ns())}
    assert verdicts["storm throughput"] is True
    assert verdicts["storm ADD p99 latency"] is True
    assert verdicts["duplicates"] is True
    assert verdicts["leaks after DEL"] is True
    assert verdicts["1:1 storm completes"] is False
    assert verdicts["API round trips per uncontended ADD (whereabouts/kubernetes)"] is True
    assert verdicts["API round trips per uncontended ADD (whereabouts/kubernetes+orip)"] is False
    assert verdicts["ADD on file vs host-local (wall, median)"] is True


def test_targets_unmeasured_and_quick_note() -> None:
    targets = evaluate_targets({}, _ns(100, 4, 5))
    assert all(t["met"] is None for t in targets)
    results = {"storm": {"runs": [_storm_run("whereabouts", "sufficient", 5.0, 3.0, 100)]}}
    first = evaluate_targets(results, _ns(100, 4, 5))[0]
    assert first["met"] is False and "100/4/5" in first["note"]


def test_correctness_failures_only_for_duplicates_and_leaks() -> None:
    clean = {"storm": {"runs": [_storm_run("whereabouts", "sufficient", 1.0, 9.0, 10)]}}
    assert correctness_failures(clean) == []
    bad = {"storm": {"runs": [_storm_run("whereabouts", "1:1", 1.0, 9.0, 10, dup=2, leaks=1)]}}
    failures = correctness_failures(bad)
    assert len(failures) == 2
    assert "2 duplicates" in failures[0] and "1 silent_leaks" in failures[1]
    # Left by DELs that failed (the runtime retries them): reported, not a failure.
    retried = _storm_run("whereabouts", "1:1", 1.0, 9.0, 10, leaks=3)
    retried["check"]["silent_leaks"] = 0
    assert correctness_failures({"storm": {"runs": [retried]}}) == []


def test_markdown_renders_every_section(tmp_path: Path) -> None:
    results = {
        "mode": "quick", "started": "2025-01-01 00:00:00 UTC", "duration_s": 12.0,
        "machine": {"cpu_model": "cpu", "cpus": 2, "affinity_cpus": 2, "memory_gib": 4,
                    "kernel": "6.1", "os": "Debian", "plugin_python": "/usr/bin/python3",
                    "harness_python": "3.11", "loadavg_at_start": [0.1, 0.2, 0.3],
                    "loadavg_at_end": [0.4, 0.5, 0.6]},
        "versions": {"kube-apiserver": "v1.35.4"},
        "targets": [report.target("t", "g", "v", True)],
        "exec": {"reps": 2, "targets": {"host-local": {"ops": {"ADD": {
            "wall": report.summarize([0.01, 0.02]), "cpu": report.summarize([0.004]),
            "errors": 0, "first_error": None}}}},
            "ratios": {"host-local": {"ADD": {"wall_median": 1.0, "cpu_median": 1.0}}},
            "samples": {"host-local": [0.01, 0.02]}},
        "storm": {"n": 10, "m": 2, "k": 2, "retries": 3, "runs": [{
            "name": "whereabouts", "case": "1:1", "n": 10,
            "add": {"wall_s": 1.0, "throughput": 10.0, "latency": report.summarize([0.1]),
                    "cpu": report.summarize([0.05]), "attempt_failures": 0, "final_failures": 0,
                    "completed": 10, "samples": [0.1, 0.2]},
            "del": {"throughput": 12.0},
            "check": {"duplicates": 0, "unrecorded": 0, "leaks": 0},
            "api": {"add": {"total": 30, "by_resource_verb_status": {"get ippools 200": 10}},
                    "del": {"total": 20, "by_resource_verb_status": {}}}}]},
        "memory": {"method": "m", "rows": [{"what": "plugin", "peak_rss_mib": 20.0}]},
        "failures": [],
    }
    text = report.render_markdown(results)
    for heading in ("## Machine", "## Targets", "## Exec cost", "## Storms", "## Memory",
                    "## Correctness"):
        assert heading in text
    assert "| t | g | v | met |" in text
    paths = report.write_outputs(results, tmp_path, "20250101-000000")
    assert paths["latest"].read_text() == paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["mode"] == "quick"
    assert paths["md"].name == "20250101-000000-quick.md"
