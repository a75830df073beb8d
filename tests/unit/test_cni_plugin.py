"""The CNI protocol layer: env and stdin in, result or error JSON out, per version."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, Optional, Tuple

import pytest

from whereabouts.cni.plugin import main
from whereabouts.config import IPAMConfig
from whereabouts.storage.memory import MemoryStore


def netconf(version: str = "1.0.0", **ipam: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"type": "whereabouts", "range": "10.0.0.0/24", "datastore": "file"}
    body.update(ipam)
    return {"cniVersion": version, "name": "net", "type": "macvlan", "ipam": body}


class Runtime:
    """Plays the container runtime: one shared store across invocations."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.opened: list[IPAMConfig] = []

    def opener(self, cfg: IPAMConfig) -> MemoryStore:
        self.opened.append(cfg)
        return self.store

    def run(self, command: str, conf: Optional[Dict[str, Any]], container: str = "c1",
            ifname: str = "net1", args: str = "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p1",
            **env: str) -> Tuple[int, Any]:
        environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
                   "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/opt/cni/bin",
                   "CNI_ARGS": args}
        environ.update(env)
        out, err = io.StringIO(), io.StringIO()
        data = json.dumps(conf).encode() if conf is not None else b""
        rc = main(environ, data, out, err, self.opener)
        text = out.getvalue()
        return rc, json.loads(text) if text.strip() else None


@pytest.fixture
def runtime() -> Runtime:
    return Runtime()


def test_version_lists_every_supported_version(runtime: Runtime) -> None:
    rc, out = runtime.run("VERSION", None)
    assert rc == 0
    assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_add_returns_a_1_0_result_without_version_fields(runtime: Runtime) -> None:
    rc, out = runtime.run("ADD", netconf("1.0.0", gateway="10.0.0.1",
                                         routes=[{"dst": "0.0.0.0/0"}]))
    assert rc == 0
    assert out == {"cniVersion": "1.0.0",
                   "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}]}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_add_returns_legacy_results_with_version_and_dns(runtime: Runtime, version: str) -> None:
    rc, out = runtime.run("ADD", netconf(version))
    assert rc == 0
    assert out == {"cniVersion": version, "ips": [{"version": "4", "address": "10.0.0.1/24"}],
                   "dns": {}}


def test_gateway_goes_only_on_addresses_of_its_family(runtime: Runtime) -> None:
    conf = netconf("1.1.0", ipRanges=[{"range": "fd00::/64"}], gateway="10.0.0.1")
    rc, out = runtime.run("ADD", conf)
    assert rc == 0
    assert out["ips"] == [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
                          {"address": "fd00::1/64"}]


def test_del_releases_and_a_second_del_succeeds(runtime: Runtime) -> None:
    runtime.run("ADD", netconf())
    assert runtime.run("DEL", netconf()) == (0, None)
    assert runtime.run("DEL", netconf()) == (0, None)
    assert all(not p.allocations for p in runtime.store.list_pools())


def test_check_passes_after_add_and_fails_after_del(runtime: Runtime) -> None:
    conf = netconf("1.0.0")
    runtime.run("ADD", conf)
    assert runtime.run("CHECK", conf) == (0, None)
    runtime.run("DEL", conf)
    rc, out = runtime.run("CHECK", conf)
    assert rc == 1 and out["code"] == 102


def test_check_is_refused_before_cni_0_4(runtime: Runtime) -> None:
    rc, out = runtime.run("CHECK", netconf("0.3.1"))
    assert rc == 1 and out["code"] == 1 and "CHECK" in out["msg"]


def test_status_reports_50_when_the_store_is_unreachable(runtime: Runtime) -> None:
    assert runtime.run("STATUS", netconf("1.1.0")) == (0, None)
    runtime.store.unavailable = True
    rc, out = runtime.run("STATUS", netconf("1.1.0"))
    assert rc == 1 and out["code"] == 50


def test_gc_frees_attachments_missing_from_valid_attachments(runtime: Runtime) -> None:
    conf = netconf("1.1.0", node_name="node-a")
    runtime.run("ADD", conf, container="keep", args="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=keep")
    runtime.run("ADD", conf, container="gone", args="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=gone")
    conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "net1"}]
    assert runtime.run("GC", conf) == (0, None)
    (pool,) = runtime.store.list_pools()
    assert [o.container_id for o in pool.allocations.values()] == ["keep"]


def test_missing_environment_is_error_4_naming_the_variable(runtime: Runtime) -> None:
    rc, out = runtime.run("ADD", netconf(), CNI_NETNS="")
    assert rc == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]


def test_bad_config_is_error_7_naming_the_key(runtime: Runtime) -> None:
    rc, out = runtime.run("ADD", netconf(range_start="10.9.9.9"))
    assert rc == 1 and out["code"] == 7 and "range_start" in out["msg"]
    assert out["cniVersion"] == "1.0.0"


def test_unparseable_stdin_is_error_6(runtime: Runtime) -> None:
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0",
               "CNI_NETNS": "/x", "CNI_PATH": "/p"}
    out = io.StringIO()
    assert main(environ, b"{not json", out, io.StringIO(), runtime.opener) == 1
    assert json.loads(out.getvalue())["code"] == 6


def test_exhaustion_is_a_plugin_error_and_leaves_nothing(runtime: Runtime) -> None:
    conf = netconf(range="10.0.0.0/30")
    for n in range(2):
        assert runtime.run("ADD", conf, container=f"c{n}",
                           args=f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p{n}")[0] == 0
    rc, out = runtime.run("ADD", conf, container="c9", args="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p9")
    assert rc == 1 and out["code"] == 100 and "10.0.0.0/30" in out["msg"]
    assert len(runtime.store.list_reservations()) == 2


def test_requested_ip_from_cni_args_is_taken_from_the_pool(runtime: Runtime) -> None:
    rc, out = runtime.run("ADD", netconf(),
                          args="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p1;"
                               "IP=10.0.0.77/24")
    assert rc == 0 and out["ips"] == [{"address": "10.0.0.77/24"}]
    (pool,) = runtime.store.list_pools()
    assert list(pool.allocations) == [77]


def test_runtime_config_ips_outside_the_range_are_static(runtime: Runtime) -> None:
    conf = netconf()
    conf["runtimeConfig"] = {"ips": ["192.168.5.5/24"]}
    rc, out = runtime.run("ADD", conf)
    assert rc == 0
    assert [ip["address"] for ip in out["ips"]] == ["10.0.0.1/24", "192.168.5.5/24"]


def test_unknown_cni_args_without_ignore_unknown_are_refused(runtime: Runtime) -> None:
    rc, out = runtime.run("ADD", netconf(), args="FOO=bar")
    assert rc == 1 and out["code"] == 4 and "FOO" in out["msg"]


def test_logs_never_reach_stdout(runtime: Runtime, tmp_path: Any) -> None:
    log_file = tmp_path / "w.log"
    rc, out = runtime.run("ADD", netconf(log_level="debug", log_file=str(log_file)))
    assert rc == 0 and set(out) == {"cniVersion", "ips"}
    assert "ADD ns/p1 net1: 10.0.0.1/24" in log_file.read_text()


def test_del_with_an_unusable_config_succeeds_so_the_pod_can_terminate(runtime: Runtime) -> None:
    assert runtime.run("DEL", netconf(range_start="10.9.9.9")) == (0, None)
    environ = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/p"}
    out = io.StringIO()
    assert main(environ, b"{not json", out, io.StringIO(), runtime.opener) == 0
    assert out.getvalue() == ""
