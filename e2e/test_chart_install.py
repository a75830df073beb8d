"""The Helm chart against a real kube-apiserver (RBAC on).

Install, permissions, CRDs, upgrade, uninstall.

There is no controller-manager, scheduler or kubelet: the DaemonSet and the CronJob are
accepted and stored (every field validated by the API server) but never run. What is proven
here is what the API server decides: which ServiceAccount may do what, which IPPool objects
the CRDs accept and keep, what `kubectl get ippools` prints, and that helm leaves no strays.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from e2e.conftest import unavailable
from e2e.localcluster import LocalCluster, ToolPaths, read_versions

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "whereabouts"
CRDS = CHART / "crds"
CRONJOB = "whereabouts-ip-reconciler"
GROUP = "whereabouts.cni.cncf.io"
IPPOOLS = f"ippools.{GROUP}"
ORIPS = f"overlappingrangeipreservations.{GROUP}"
PLUGIN_SA = "whereabouts-cni"
AGENT_SA = "whereabouts-node-agent"
RECONCILER_SA = "whereabouts-reconciler"
# helm template assumes an old cluster unless told; install asks the real server.
K8S_VERSION = read_versions()["K8S_VERSION"]

pytestmark = pytest.mark.e2e


@dataclass
class Release:
    """One helm release of the chart in its own namespace of a cluster."""

    cluster: LocalCluster
    helm_bin: Path
    helm_home: Path
    name: str
    namespace: str
    notes: str = ""

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ,
               "HELM_CACHE_HOME": str(self.helm_home / "cache"),
               "HELM_CONFIG_HOME": str(self.helm_home / "config"),
               "HELM_DATA_HOME": str(self.helm_home / "data")}
        cmd = [str(self.helm_bin), "--kubeconfig", str(self.cluster.kubeconfig),
               "--namespace", self.namespace, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env,
                              check=False)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def upgrade_install(self, *values: str) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", "--install", self.name, str(CHART), *values)

    def kubectl(self, *args: str, check: bool = True, input: Optional[str] = None,
                ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, input=input)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, obj: Dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-",
                            input=json.dumps(obj), check=False)


def new_release(cluster: LocalCluster, tools: ToolPaths, home: Path, prefix: str) -> Release:
    if not os.access(tools.helm, os.X_OK):
        unavailable(f"missing {tools.helm} (run ci/e2e-tools)")
    suffix = secrets.token_hex(3)
    release = Release(cluster, tools.helm, home, f"{prefix}-{suffix}", f"{prefix}-{suffix}")
    cluster.create_namespace(release.namespace)
    return release


def ippool(name: str, cidr: str, allocations: Dict[str, Dict[str, str]],
           status: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPPool",
                            "metadata": {"name": name},
                            "spec": {"range": cidr, "allocations": allocations}}
    if status is not None:
        body["status"] = status
    return body


def orip(name: str, spec: Dict[str, str]) -> Dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "OverlappingRangeIPReservation",
            "metadata": {"name": name}, "spec": spec}


# ---------------------------------------------------------------- the shared release


@pytest.fixture(scope="module")
def release(local_cluster: LocalCluster, e2e_tools: ToolPaths,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart with its defaults, installed once for the permission and CRD tests."""
    rel = new_release(local_cluster, e2e_tools, tmp_path_factory.mktemp("helm"), "wa-chart")
    rel.notes = rel.upgrade_install().stdout
    try:
        yield rel
    finally:
        rel.helm("uninstall", rel.name, check=False)


def test_install_creates_every_object_the_chart_promises(release: Release) -> None:
    ns = release.namespace
    full = f"{release.name}-whereabouts"
    ds = release.get_json("daemonset", full)
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == AGENT_SA
    cronjob = release.get_json("cronjob", CRONJOB)
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    for sa in (PLUGIN_SA, AGENT_SA, RECONCILER_SA):
        release.get_json("serviceaccount", sa)
    for suffix in ("cni", "node-agent", "reconciler"):
        release.get_json("role", f"{full}-{suffix}")
        release.get_json("rolebinding", f"{full}-{suffix}")
    for suffix in ("node-agent", "reconciler"):
        release.cluster.kubectl("get", "clusterrole", f"{full}-{suffix}")
        binding = json.loads(release.cluster.kubectl(
            "get", "clusterrolebinding", f"{full}-{suffix}", "-o", "json").stdout)
        assert binding["subjects"][0]["namespace"] == ns
    for crd in (IPPOOLS, ORIPS):
        release.cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}",
                                "--timeout=30s")


def test_install_notes_explain_nad_and_pools(release: Release) -> None:
    notes = release.notes
    assert f"kubectl get ippools -n {release.namespace}" in notes
    assert "kind: NetworkAttachmentDefinition" in notes
    assert '"type": "whereabouts"' in notes
    manual = f"kubectl create job --from=cronjob/{CRONJOB} manual-cleanup"
    assert f"{manual} -n {release.namespace}" in notes
    assert "WARNINGS" not in notes


# ---------------------------------------------------------------- who may do what

# (verb, resource, scope): scope "ns" = the release namespace, "other" = another namespace,
# "all" = every namespace (cluster-wide).
Check = Tuple[str, str, str]

ALLOWED: Dict[str, List[Check]] = {
    PLUGIN_SA: [
        ("get", IPPOOLS, "ns"), ("create", IPPOOLS, "ns"), ("update", IPPOOLS, "ns"),
        ("get", ORIPS, "ns"), ("create", ORIPS, "ns"), ("delete", ORIPS, "ns"),
    ],
    AGENT_SA: [
        ("get", "pods", "all"), ("list", "pods", "all"), ("watch", "pods", "all"),
        ("get", IPPOOLS, "ns"), ("list", IPPOOLS, "ns"), ("update", IPPOOLS, "ns"),
        ("get", ORIPS, "ns"), ("list", ORIPS, "ns"), ("delete", ORIPS, "ns"),
        ("create", "events", "other"), ("create", "events.events.k8s.io", "other"),
        ("create", f"serviceaccounts/{PLUGIN_SA}:token", "ns"),
    ],
    RECONCILER_SA: [
        ("get", "pods", "all"), ("list", "pods", "all"),
        ("get", IPPOOLS, "ns"), ("list", IPPOOLS, "ns"), ("update", IPPOOLS, "ns"),
        ("get", ORIPS, "ns"), ("list", ORIPS, "ns"), ("delete", ORIPS, "ns"),
        ("create", "events", "other"), ("create", "events.events.k8s.io", "other"),
    ],
}

NOBODY: List[Check] = [
    ("get", "secrets", "ns"), ("list", "secrets", "all"), ("*", "*", "all"),
    ("delete", IPPOOLS, "ns"), ("patch", IPPOOLS, "ns"), ("get", IPPOOLS, "other"),
    ("create", "pods", "ns"), ("delete", "pods", "ns"), ("get", "nodes", "all"),
    ("create", "leases.coordination.k8s.io", "ns"),
    ("create", f"serviceaccounts/{AGENT_SA}:token", "ns"),
    ("create", f"serviceaccounts/{RECONCILER_SA}:token", "ns"),
    ("get", "network-attachment-definitions.k8s.cni.cncf.io", "all"),
]

DENIED: Dict[str, List[Check]] = {
    PLUGIN_SA: [
        *NOBODY,
        ("list", IPPOOLS, "ns"), ("watch", IPPOOLS, "ns"), ("list", ORIPS, "ns"),
        ("get", "pods", "ns"), ("list", "pods", "all"), ("create", "events", "ns"),
        ("create", f"serviceaccounts/{PLUGIN_SA}:token", "ns"),
    ],
    AGENT_SA: [
        *NOBODY,
        ("create", IPPOOLS, "ns"), ("create", ORIPS, "ns"), ("list", ORIPS, "other"),
    ],
    RECONCILER_SA: [
        *NOBODY,
        ("watch", "pods", "all"), ("create", IPPOOLS, "ns"), ("create", ORIPS, "ns"),
        ("create", f"serviceaccounts/{PLUGIN_SA}:token", "ns"),
    ],
}


def can_i(release: Release, sa: str, check: Check) -> bool:
    verb, resource, scope = check
    args = ["auth", "can-i", verb]
    resource, _, subresource = resource.partition(":")
    args.append(resource)
    if subresource:
        args.append(f"--subresource={subresource}")
    if scope == "all":
        args.append("--all-namespaces")
    else:
        args += ["-n", release.namespace if scope == "ns" else "default"]
    args.append(f"--as=system:serviceaccount:{release.namespace}:{sa}")
    proc = release.cluster.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def _cases(table: Dict[str, List[Check]]) -> List[Any]:
    return [pytest.param(sa, check, id=f"{sa}-{check[0]}-{check[1]}-{check[2]}")
            for sa, checks in table.items() for check in checks]


@pytest.mark.parametrize(("sa", "check"), _cases(ALLOWED))
def test_service_account_can_do_what_it_needs(release: Release, sa: str, check: Check) -> None:
    assert can_i(release, sa, check)


@pytest.mark.parametrize(("sa", "check"), _cases(DENIED))
def test_service_account_cannot_do_what_it_does_not_need(
    release: Release, sa: str, check: Check
) -> None:
    assert not can_i(release, sa, check)


def test_real_tokens_agent_mints_plugin_token_and_plugin_is_confined(
    release: Release, tmp_path: Path
) -> None:
    """The installer's flow with real credentials: the agent's token mints the plugin's."""
    agent_cfg = release.cluster.create_service_account_kubeconfig(
        release.namespace, AGENT_SA, tmp_path / "agent.kubeconfig")

    def as_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return release.cluster.kubectl("-n", release.namespace, *args,
                                       kubeconfig=agent_cfg, check=False)

    minted = as_agent("create", "token", PLUGIN_SA, "--duration=10m")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    refused = as_agent("create", "token", RECONCILER_SA)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower()

    def as_plugin(*args: str, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        return release.cluster.kubectl("-n", release.namespace, f"--token={token}", *args,
                                       input=input, check=False)

    pool = ippool("10.77.0.0-24", "10.77.0.0/24",
                  {"1": {"id": "c1", "podref": "default/a", "ifname": "net1", "node": "n1"}},
                  {"allocatedCount": 1, "capacity": 253})
    created = as_plugin("create", "-f", "-", input=json.dumps(pool))
    assert created.returncode == 0, created.stderr
    got = as_plugin("get", IPPOOLS, "10.77.0.0-24", "-o", "json")
    assert got.returncode == 0, got.stderr
    current = json.loads(got.stdout)
    current["spec"]["allocations"]["2"] = {"id": "c2", "podref": "default/b", "node": "n2"}
    replaced = as_plugin("replace", "-f", "-", input=json.dumps(current))
    assert replaced.returncode == 0, replaced.stderr
    for denied in (("get", IPPOOLS), ("delete", IPPOOLS, "10.77.0.0-24"), ("get", "pods"),
                   ("get", "secrets")):
        proc = as_plugin(*denied)
        assert proc.returncode != 0, denied
        assert "forbidden" in proc.stderr.lower(), proc.stderr
    release.kubectl("delete", IPPOOLS, "10.77.0.0-24")


# ---------------------------------------------------------------- CRDs


UPSTREAM_POOLS = [
    # Written by upstream whereabouts: offset keys, no node, no status.
    ippool("10.10.0.0-16", "10.10.0.0/16", {
        "1": {"id": "0123abcd", "podref": "default/pod-a", "ifname": "net1"},
        "37": {"id": "4567ef01", "podref": "default/pod-b", "ifname": "net2"},
    }),
    ippool("named-range-10.10.0.0-16", "10.10.0.0/16",
           {"5": {"id": "89ab", "podref": "tenant/pod-c"}}),
    ippool("fd00---64", "fd00::/64", {
        "18446744073709551614": {"id": "cdef", "podref": "default/pod-d", "ifname": "net1"},
    }),
    ippool("192.168.2.224-28", "192.168.2.224/28", {}),
]


def test_crd_accepts_upstream_pools_unchanged(release: Release) -> None:
    for pool in UPSTREAM_POOLS:
        applied = release.apply(pool)
        assert applied.returncode == 0, applied.stderr
        stored = release.get_json(IPPOOLS, pool["metadata"]["name"])
        assert stored["spec"] == pool["spec"]
        assert "status" not in stored


def test_crd_keeps_node_field_and_status(release: Release) -> None:
    pool = ippool("10.20.0.0-24", "10.20.0.0/24", {
        "1": {"id": "a1", "podref": "default/pod-a", "ifname": "net1", "node": "worker-1"},
        "2": {"id": "b2", "podref": "default/pod-b", "ifname": "net1", "node": "worker-2"},
        "3": {"id": "c3", "podref": "default/pod-c"},
    }, {"allocatedCount": 3, "capacity": 253})
    created = release.kubectl("create", "-f", "-", input=json.dumps(pool), check=False)
    assert created.returncode == 0, created.stderr
    stored = release.get_json(IPPOOLS, "10.20.0.0-24")
    assert stored["spec"]["allocations"]["1"]["node"] == "worker-1"
    assert stored["spec"]["allocations"]["3"] == {"id": "c3", "podref": "default/pod-c"}
    assert stored["status"] == {"allocatedCount": 3, "capacity": 253}


def test_capacity_of_a_huge_ipv6_range_must_be_saturated_at_int64(release: Release) -> None:
    """The API server keeps integers as int64: the plugin must write at most 2**63-1."""
    saturated = ippool("fd01---64", "fd01::/64", {}, {"allocatedCount": 0, "capacity": 2**63 - 1})
    assert release.apply(saturated).returncode == 0
    too_big = ippool("fd02---64", "fd02::/64", {}, {"allocatedCount": 0, "capacity": 2**64 - 2})
    proc = release.apply(too_big)
    assert proc.returncode != 0
    assert "status.capacity" in proc.stderr


@pytest.mark.parametrize(("body", "field"), [
    (ippool("bad-1", "10.0.0.0/24", {"1": {"podref": "default/a"}}), "id"),
    (ippool("bad-2", "10.0.0.0/24", {"1": {"id": "c"}}), "podref"),
    ({"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPPool", "metadata": {"name": "bad-3"},
      "spec": {"allocations": {}}}, "spec.range"),
    ({"apiVersion": f"{GROUP}/v1alpha1", "kind": "IPPool", "metadata": {"name": "bad-4"},
      "spec": {"range": "10.0.0.0/24"}}, "spec.allocations"),
    (ippool("bad-5", "10.0.0.0/24", {}, {"allocatedCount": -1, "capacity": 0}), "allocatedCount"),
    (orip("10.0.0.9", {"ifname": "net1"}), "spec.podref"),
    ({"apiVersion": f"{GROUP}/v1alpha1", "kind": "OverlappingRangeIPReservation",
      "metadata": {"name": "10.0.0.10"}}, "spec"),
], ids=["alloc-without-id", "alloc-without-podref", "no-range", "no-allocations",
        "negative-count", "orip-without-podref", "orip-without-spec"])
def test_crd_rejects_objects_missing_required_fields(
    release: Release, body: Dict[str, Any], field: str
) -> None:
    proc = release.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0
    assert "Required value" in proc.stderr or "Invalid value" in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr


def test_crd_accepts_reservations_old_and_new(release: Release) -> None:
    for body in (orip("10.10.0.1", {"podref": "default/pod-a", "ifname": "net1"}),
                 orip("named-range-10.10.0.1", {"podref": "default/pod-a"}),
                 orip("fd00--1", {"containerid": "0123", "podref": "default/pod-a",
                                  "ifname": "net1"})):
        applied = release.apply(body)
        assert applied.returncode == 0, applied.stderr
        assert release.get_json(ORIPS, body["metadata"]["name"])["spec"] == body["spec"]


def test_kubectl_get_ippools_prints_range_and_allocated(release: Release) -> None:
    applied = release.apply(ippool("10.30.0.0-29", "10.30.0.0/29", {
        "1": {"id": "x", "podref": "default/p1", "node": "n1"},
        "2": {"id": "y", "podref": "default/p2", "node": "n1"},
    }, {"allocatedCount": 2, "capacity": 5}))
    assert applied.returncode == 0, applied.stderr
    table = release.kubectl("get", "ippools").stdout.splitlines()
    assert table[0].split() == ["NAME", "RANGE", "ALLOCATED", "AGE"]
    row = next(line.split() for line in table if line.startswith("10.30.0.0-29 "))
    assert row[1:3] == ["10.30.0.0/29", "2"]
    wide = release.kubectl("get", "ippools", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "RANGE", "ALLOCATED", "CAPACITY", "AGE"]
    row = next(line.split() for line in wide if line.startswith("10.30.0.0-29 "))
    assert row[1:4] == ["10.30.0.0/29", "2", "5"]
    reservations = release.kubectl("get", "overlappingrangeipreservations").stdout.splitlines()
    assert reservations[0].split() == ["NAME", "POD", "INTERFACE", "AGE"]


# ---------------------------------------------------------------- every rendering, server-validated


@pytest.mark.parametrize("values_file", sorted((CHART / "ci").glob("*-values.yaml")),
                         ids=lambda p: p.name)
def test_every_ci_rendering_passes_server_side_validation(
    local_cluster: LocalCluster, e2e_tools: ToolPaths, tmp_path: Path, values_file: Path
) -> None:
    rel = new_release(local_cluster, e2e_tools, tmp_path, "wa-dry")
    rendered = rel.helm("template", rel.name, str(CHART), "-f", str(values_file),
                        "--kube-version", K8S_VERSION).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:  # every file goes to the test namespace, whatever it was rendered for
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = rel.namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = rel.namespace
    proc = local_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                                 input=yaml.safe_dump_all(docs), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs)


# ---------------------------------------------------------------- upgrade and uninstall


def leftovers(release: Release) -> List[str]:
    """Every object of the release still in the cluster, by label and by name."""
    selector = f"app.kubernetes.io/instance={release.name}"
    names = release.kubectl(
        "get", "serviceaccounts,roles,rolebindings,daemonsets,cronjobs,jobs,configmaps",
        "-l", selector, "-o", "name").stdout.split()
    names += release.cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name").stdout.split()
    for sa in (PLUGIN_SA, AGENT_SA, RECONCILER_SA):
        if release.kubectl("get", "serviceaccount", sa, check=False).returncode == 0:
            names.append(f"serviceaccount/{sa}")
    if release.kubectl("get", "cronjob", CRONJOB, check=False).returncode == 0:
        names.append(f"cronjob.batch/{CRONJOB}")
    return sorted(set(names))


def test_upgrade_then_uninstall_leaves_no_strays(
    local_cluster: LocalCluster, e2e_tools: ToolPaths, tmp_path: Path
) -> None:
    rel = new_release(local_cluster, e2e_tools, tmp_path, "wa-life")
    rel.upgrade_install()
    rel.apply(ippool("10.40.0.0-24", "10.40.0.0/24", {"1": {"id": "c", "podref": "default/p"}}))

    # The documented manual run: a Job made from the CronJob, owned by it.
    rel.kubectl("create", "job", f"--from=cronjob/{CRONJOB}", "manual-cleanup")
    job = rel.get_json("job", "manual-cleanup")
    cronjob = rel.get_json("cronjob", CRONJOB)
    assert job["metadata"]["ownerReferences"][0]["uid"] == cronjob["metadata"]["uid"]
    job_pod = job["spec"]["template"]["spec"]
    assert job_pod["serviceAccountName"] == RECONCILER_SA
    assert job_pod["containers"][0]["command"][:2] == ["whereabouts", "reconcile"]
    # No garbage collector runs here; in a cluster the ownerReference removes it.
    rel.kubectl("delete", "job", "manual-cleanup")

    rel.upgrade_install("--set", "reconciler.schedule=@hourly", "--set", "nodeAgent.logLevel=debug")
    assert rel.get_json("cronjob", CRONJOB)["spec"]["schedule"] == "@hourly"
    ds = rel.get_json("daemonset", f"{rel.name}-whereabouts")
    command = ds["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--log-level") + 1] == "debug"

    # Turning the reconciler off removes the CronJob and everything only it used.
    rel.upgrade_install("--set", "reconciler.enabled=false")
    remaining = leftovers(rel)
    assert f"cronjob.batch/{CRONJOB}" not in remaining
    assert f"serviceaccount/{RECONCILER_SA}" not in remaining
    clusterrole = f"clusterrole.rbac.authorization.k8s.io/{rel.name}-whereabouts-reconciler"
    assert clusterrole not in remaining
    history = json.loads(rel.helm("history", rel.name, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3]

    rel.helm("uninstall", rel.name, "--timeout", "60s")
    assert leftovers(rel) == []
    assert rel.helm("status", rel.name, check=False).returncode != 0
    # CRDs and the data in them stay: pods on those networks still hold their addresses.
    for crd in (IPPOOLS, ORIPS):
        local_cluster.kubectl("get", "crd", crd)
    assert rel.get_json(IPPOOLS, "10.40.0.0-24")["spec"]["range"] == "10.40.0.0/24"
    rel.kubectl("delete", IPPOOLS, "10.40.0.0-24")


# ---------------------------------------------------------------- switching from upstream


def older_ippool_crd() -> Dict[str, Any]:
    """The chart's IPPool CRD as an older release had it: no node, no status, no columns."""
    crd = yaml.safe_load((CRDS / f"{GROUP}_ippools.yaml").read_text())
    version = crd["spec"]["versions"][0]
    version.pop("additionalPrinterColumns")
    props = version["schema"]["openAPIV3Schema"]["properties"]
    props.pop("status")
    del props["spec"]["properties"]["allocations"]["additionalProperties"]["properties"]["node"]
    return crd  # type: ignore[no-any-return]


def test_switching_from_an_older_crd_warns_then_keeps_existing_pools(
    e2e_tools: ToolPaths, tmp_path: Path
) -> None:
    """Own control plane: this replaces cluster-wide CRDs, which the shared cluster must keep."""
    if e2e_tools.missing_cluster():
        unavailable(f"missing {', '.join(e2e_tools.missing_cluster())} (run ci/e2e-tools)")
    if not os.access(e2e_tools.helm, os.X_OK):
        unavailable(f"missing {e2e_tools.helm} (run ci/e2e-tools)")
    with LocalCluster(workdir=tmp_path / "cluster", tools=e2e_tools) as cluster:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(older_ippool_crd()))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{IPPOOLS}", "--timeout=30s")
        cluster.kubectl("create", "namespace", "kube-system", check=False)
        rel = Release(cluster, e2e_tools.helm, tmp_path / "helm", "whereabouts", "kube-system")
        for pool in UPSTREAM_POOLS:
            assert rel.apply(pool).returncode == 0
        # The older schema drops what this version writes: a client that does not ask for
        # strict field validation (the plugin does not) gets 201 and loses the field.
        pools_path = f"/apis/{GROUP}/v1alpha1/namespaces/kube-system/ippools"
        allocation = {"id": "c", "podref": "default/p", "node": "n1"}
        status, _ = cluster.api("POST", pools_path,
                                ippool("10.50.0.0-24", "10.50.0.0/24", {"1": allocation}))
        assert status == 201
        assert "node" not in rel.get_json(IPPOOLS, "10.50.0.0-24")["spec"]["allocations"]["1"]

        notes = rel.upgrade_install().stdout  # helm skips CRDs that exist: the old one stays
        assert "WARNINGS:" in notes
        assert "older one (no allocations[].node field)" in notes

        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        for pool in UPSTREAM_POOLS:
            stored = rel.get_json(IPPOOLS, pool["metadata"]["name"])
            assert stored["spec"] == pool["spec"]
        applied = rel.apply(ippool("10.50.0.0-24", "10.50.0.0/24",
                                   {"1": {"id": "c", "podref": "default/p", "node": "n1"}},
                                   {"allocatedCount": 1, "capacity": 253}))
        assert applied.returncode == 0, applied.stderr
        assert rel.get_json(IPPOOLS, "10.50.0.0-24")["spec"]["allocations"]["1"]["node"] == "n1"

        notes = rel.upgrade_install().stdout
        assert "older one" not in notes


# ---------------------------------------------------------------- kind (Docker hosts only)
#
# ci/e2e-kind installs the chart with the freshly built image into a kind cluster whose nodes
# really run it. The tests below check what only running pods can show.


@dataclass
class KindCluster:
    kubeconfig: str
    namespace: str

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args],
                              capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc

    def nodes(self) -> List[str]:
        out = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout
        return out.split()


NODE_KUBECONFIG = "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"


def on_node(node: str, script: str) -> str:
    """Run a shell script on a kind node (a Docker container named after the node)."""
    proc = subprocess.run(["docker", "exec", node, "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{node}: {script}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def kind_cluster(request: pytest.FixtureRequest) -> KindCluster:
    option = request.config.getoption("--kubeconfig", default=None)
    kubeconfig = option or os.environ.get("KUBECONFIG")
    if not kubeconfig:
        unavailable("no kubeconfig of a kind cluster (run ci/e2e-kind)")
    return KindCluster(str(kubeconfig), os.environ.get("WHEREABOUTS_NAMESPACE", "kube-system"))


@pytest.mark.kind
def test_kind_plugin_is_installed_on_every_node(kind_cluster: KindCluster) -> None:
    (ds,) = json.loads(kind_cluster.kubectl(
        "-n", kind_cluster.namespace, "get", "daemonsets", "-o", "json",
        "-l", "app.kubernetes.io/name=whereabouts,app.kubernetes.io/component=node-agent",
    ).stdout)["items"]
    nodes = kind_cluster.nodes()
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == len(nodes)
    for node in nodes:
        shebang = on_node(node, "head -n 1 /opt/cni/bin/whereabouts")
        assert shebang.startswith("#!/"), shebang  # an absolute host interpreter, not env
        mode = on_node(node, f"stat -c %a {NODE_KUBECONFIG}").strip()
        assert mode == "600"
        version = on_node(node, "CNI_COMMAND=VERSION /opt/cni/bin/whereabouts </dev/null")
        assert "supportedVersions" in version


@pytest.mark.kind
def test_kind_node_kubeconfig_holds_the_plugin_identity(kind_cluster: KindCluster) -> None:
    node = kind_cluster.nodes()[0]
    config = yaml.safe_load(on_node(node, f"cat {NODE_KUBECONFIG}"))
    token = config["users"][0]["user"]["token"]
    ns = kind_cluster.namespace

    def can(verb: str, resource: str) -> bool:
        proc = kind_cluster.kubectl("--token", token, "auth", "can-i", verb, resource, "-n", ns,
                                    check=False)
        return proc.stdout.strip() == "yes"

    assert can("get", IPPOOLS)
    assert can("update", IPPOOLS)
    assert not can("list", "pods")
    assert not can("delete", IPPOOLS)
    assert not can("get", "secrets")


@pytest.mark.kind
def test_kind_manual_reconciler_run_completes(kind_cluster: KindCluster) -> None:
    ns = kind_cluster.namespace
    job = f"manual-cleanup-{secrets.token_hex(3)}"
    kind_cluster.kubectl("-n", ns, "create", "job", f"--from=cronjob/{CRONJOB}", job)
    try:
        done = kind_cluster.kubectl("-n", ns, "wait", "--for=condition=complete", f"job/{job}",
                                    "--timeout=180s", check=False)
        logs = kind_cluster.kubectl("-n", ns, "logs", f"job/{job}", check=False)
        assert done.returncode == 0, f"{done.stderr}\n{logs.stdout}{logs.stderr}"
    finally:
        kind_cluster.kubectl("-n", ns, "delete", "job", job, "--wait=false", check=False)
