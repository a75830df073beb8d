"""The Helm chart, rendered by a real helm binary with every ci/*-values.yaml.

Checks what the chart promises in its README: the least-privilege RBAC table (exactly, per
ServiceAccount), the fixed reconciler CronJob, the installer's host mounts, the values schema
(unknown keys and wrong types are rejected) and the cross-field rules of templates/validate.yaml.

helm is found as e2e/localcluster.py finds it (built by ci/e2e-tools into the version-keyed
cache), or from $WHEREABOUTS_HELM or PATH. In CI a missing helm fails these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Set, Tuple

import pytest
import yaml

from e2e.localcluster import read_versions, tool_paths
from e2e.requirements import missing

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "whereabouts"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# The chart requires a recent cluster; a helm built without version ldflags assumes v1.20.
KUBE_VERSION = read_versions()["K8S_VERSION"]
DEFAULT_NS = "kube-system"
CRONJOB = "whereabouts-ip-reconciler"
CRD_GROUP = "whereabouts.cni.cncf.io"

Manifest = Dict[str, Any]
# (apiGroup, resource, verb, resourceName or "", scope) where scope is "cluster" or a namespace
Grant = Tuple[str, str, str, str, str]


def _unavailable(reason: str) -> NoReturn:
    missing(f"helm unavailable: {reason}")


def find_helm() -> Optional[str]:
    """$WHEREABOUTS_HELM, else the test bed's cached helm, else helm on PATH."""
    explicit = os.environ.get("WHEREABOUTS_HELM")
    if explicit:
        return explicit
    cached = tool_paths().helm
    if os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    found = find_helm()
    if found is None:
        _unavailable("no helm in $WHEREABOUTS_HELM, the e2e tools cache or PATH")
    return found


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def namespace_of(values_file: Optional[Path]) -> str:
    """A ci values file may name its release namespace in a `# namespace: <ns>` comment."""
    if values_file is not None:
        match = re.search(r"^#\s*namespace:\s*(\S+)", values_file.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return DEFAULT_NS


def template(
    helm: str, *args: str, namespace: str = DEFAULT_NS
) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, "template", "whereabouts", str(CHART), "--namespace", namespace,
                    "--kube-version", KUBE_VERSION, *args)


def render(helm: str, *args: str, namespace: str = DEFAULT_NS) -> List[Manifest]:
    proc = template(helm, *args, namespace=namespace)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render_file(helm: str, values_file: Path) -> List[Manifest]:
    return render(helm, "-f", str(values_file), namespace=namespace_of(values_file))


def load_values(values_file: Optional[Path] = None) -> Dict[str, Any]:
    """Chart defaults merged with a values file (maps merge, everything else replaces)."""

    def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file is not None:
        values = merge(values, yaml.safe_load(values_file.read_text()) or {})
    return values


def find(manifests: List[Manifest], kind: str, name: Optional[str] = None) -> List[Manifest]:
    return [m for m in manifests
            if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: List[Manifest], kind: str, name: Optional[str] = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def grants_by_service_account(manifests: List[Manifest]) -> Dict[str, Set[Grant]]:
    """What each ServiceAccount may do, expanded rule by rule from the bindings."""
    roles = {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m
             for m in manifests if m["kind"] in ("Role", "ClusterRole")}
    grants: Dict[str, Set[Grant]] = defaultdict(set)
    for binding in manifests:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role_ns = namespace if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else namespace
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            for name in rule.get("resourceNames") or [""]:
                                grants[subject["name"]].add((group, resource, verb, name, scope))
    return dict(grants)


def expected_grants(ns: str, plugin_sa: str) -> Dict[str, Set[Grant]]:
    """The RBAC table of the chart README, per role (not per ServiceAccount name)."""

    def expand(rows: List[Tuple[str, str, str, str, str]]) -> Set[Grant]:
        return {(g, r, v, n, s) for g, r, verbs, n, s in rows for v in verbs.split(",")}

    events = [("", "events", "create", "", "cluster"),
              ("events.k8s.io", "events", "create", "", "cluster")]
    return {
        "plugin": expand([
            (CRD_GROUP, "ippools", "get,create,update", "", ns),
            (CRD_GROUP, "overlappingrangeipreservations", "get,create,delete", "", ns),
        ]),
        "nodeAgent": expand([
            ("", "pods", "get,list,watch", "", "cluster"),
            *events,
            (CRD_GROUP, "ippools", "get,list,update", "", ns),
            (CRD_GROUP, "overlappingrangeipreservations", "get,list,delete", "", ns),
            ("", "serviceaccounts/token", "create", plugin_sa, ns),
        ]),
        "reconciler": expand([
            ("", "pods", "get,list", "", "cluster"),
            *events,
            (CRD_GROUP, "ippools", "get,list,update", "", ns),
            (CRD_GROUP, "overlappingrangeipreservations", "get,list,delete", "", ns),
        ]),
    }


def pod_spec(workload: Manifest) -> Dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def flag(command: List[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


@pytest.fixture(params=CI_VALUES, ids=lambda p: p.name)
def values_file(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


# ---------------------------------------------------------------- every ci values file


def test_there_are_enough_ci_values_files() -> None:
    assert len(CI_VALUES) >= 4, [p.name for p in CI_VALUES]


def test_lint_strict_passes(helm: str, values_file: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file),
                    "--namespace", namespace_of(values_file), "--kube-version", KUBE_VERSION)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_namespaced_objects_are_in_the_release_namespace(helm: str, values_file: Path) -> None:
    ns = namespace_of(values_file)
    for m in render_file(helm, values_file):
        if m["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in m["metadata"]
        else:
            assert m["metadata"]["namespace"] == ns, (m["kind"], m["metadata"]["name"])
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "whereabouts"


def test_no_rbac_rule_uses_a_wildcard_or_touches_secrets(helm: str, values_file: Path) -> None:
    for role in render_file(helm, values_file):
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule


def test_each_service_account_gets_exactly_the_readme_rbac_table(
    helm: str, values_file: Path
) -> None:
    values = load_values(values_file)
    manifests = render_file(helm, values_file)
    grants = grants_by_service_account(manifests)
    if not values["rbac"]["create"]:
        assert grants == {}
        assert not find(manifests, "ServiceAccount")
        return
    ns = namespace_of(values_file)
    accounts = values["serviceAccounts"]
    sa_names = {role: accounts[role]["name"] for role in ("plugin", "nodeAgent", "reconciler")}
    expected = expected_grants(ns, sa_names["plugin"])
    if not values["reconciler"]["enabled"]:
        del expected["reconciler"]
    assert grants == {sa_names[role]: rules for role, rules in expected.items()}
    assert {m["metadata"]["name"] for m in find(manifests, "ServiceAccount")} == {
        sa_names[role] for role in expected}


def test_plugin_service_account_never_mounts_a_token_into_pods(helm: str) -> None:
    plugin = one(render(helm), "ServiceAccount", "whereabouts-cni")
    assert plugin["automountServiceAccountToken"] is False


def test_reconciler_cronjob(helm: str, values_file: Path) -> None:
    values = load_values(values_file)
    r = values["reconciler"]
    manifests = render_file(helm, values_file)
    if not r["enabled"]:
        assert not find(manifests, "CronJob")
        return
    cronjob = one(manifests, "CronJob", CRONJOB)
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == r["schedule"]
    assert spec["suspend"] is r["suspend"]
    assert spec["startingDeadlineSeconds"] == r["startingDeadlineSeconds"]
    assert spec["successfulJobsHistoryLimit"] == r["successfulJobsHistoryLimit"]
    assert spec["failedJobsHistoryLimit"] == r["failedJobsHistoryLimit"]
    assert spec.get("timeZone", "") == r["timeZone"]
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == r["activeDeadlineSeconds"]
    assert job["backoffLimit"] == r["backoffLimit"]
    pod = pod_spec(cronjob)
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == values["serviceAccounts"]["reconciler"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    command = container["command"]
    assert command[:2] == ["whereabouts", "reconcile"]
    assert flag(command, "--grace-period") == r["gracePeriod"]
    assert flag(command, "--log-level") == r["logLevel"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["WHEREABOUTS_NAMESPACE"] == "metadata.namespace"


def test_daemonset_installs_into_the_configured_host_paths(helm: str, values_file: Path) -> None:
    values = load_values(values_file)
    manifests = render_file(helm, values_file)
    (ds,) = find(manifests, "DaemonSet")
    pod = pod_spec(ds)
    bin_dir = os.path.normpath(values["cniConf"]["binDir"])
    conf_dir = os.path.normpath(values["cniConf"]["confDir"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    host_paths = {v["hostPath"]["path"]: name for name, v in volumes.items() if "hostPath" in v}
    assert set(host_paths) == {bin_dir, conf_dir, "/usr"}

    def mounts(container: Dict[str, Any]) -> Dict[str, Tuple[str, bool]]:
        return {volumes[m["name"]]["hostPath"]["path"]: (m["mountPath"], m.get("readOnly", False))
                for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]}

    plugin_sa = values["serviceAccounts"]["plugin"]["name"]
    (install,) = pod["initContainers"]
    # Each host path appears under /host at the same path, so stripping --host-root gives
    # the host path back; /usr (interpreter discovery) is read-only.
    assert mounts(install) == {bin_dir: ("/host" + bin_dir, False),
                               conf_dir: ("/host" + conf_dir, False),
                               "/usr": ("/host/usr", True)}
    assert install["command"] == [
        "whereabouts", "install",
        "--cni-bin-dir", "/host" + bin_dir, "--cni-conf-dir", "/host" + conf_dir,
        "--host-root", "/host", "--pyz", "/opt/whereabouts/whereabouts.pyz",
        "--plugin-service-account", plugin_sa,
        "--log-level", values["nodeAgent"]["logLevel"],
    ]
    (agent,) = pod["containers"]
    assert mounts(agent) == {conf_dir: ("/host" + conf_dir, False)}
    assert agent["command"][:2] == ["whereabouts", "controlloop"]
    assert flag(agent["command"], "--node-name") == "$(NODENAME)"
    assert flag(agent["command"], "--cni-conf-dir") == "/host" + conf_dir
    assert flag(agent["command"], "--plugin-service-account") == plugin_sa
    for container in (install, agent):
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env == {"NODENAME": "spec.nodeName", "WHEREABOUTS_NAMESPACE": "metadata.namespace"}
        security = container["securityContext"]
        assert security.get("privileged", False) is False
        assert security["allowPrivilegeEscalation"] is False
    assert pod["serviceAccountName"] == values["serviceAccounts"]["nodeAgent"]["name"]
    assert pod.get("hostNetwork", False) is False
    assert pod.get("tolerations", []) == values["nodeAgent"]["tolerations"]
    assert pod.get("priorityClassName", "") == values["nodeAgent"]["priorityClassName"]


def test_selector_labels_are_a_stable_subset_of_pod_labels(helm: str, values_file: Path) -> None:
    (ds,) = find(render_file(helm, values_file), "DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                             "app.kubernetes.io/component"}
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_image_reference(helm: str, values_file: Path) -> None:
    image = load_values(values_file)["image"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    expected = (f"{image['repository']}@{image['digest']}" if image["digest"]
                else f"{image['repository']}:{image['tag'] or chart['appVersion']}")
    for m in render_file(helm, values_file):
        if m["kind"] in ("DaemonSet", "CronJob"):
            spec = pod_spec(m)
            for c in spec.get("initContainers", []) + spec["containers"]:
                assert c["image"] == expected
                assert c["imagePullPolicy"] == image["pullPolicy"]


# ---------------------------------------------------------------- defaults


def test_defaults_tolerate_every_taint_and_run_node_critical(helm: str) -> None:
    (ds,) = find(render(helm), "DaemonSet")
    pod = pod_spec(ds)
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_the_reconciler_name_does_not_follow_the_release_name(helm: str) -> None:
    proc = run_helm(helm, "template", "some-other-release", str(CHART), "-n", "net",
                    "--kube-version", KUBE_VERSION, "--set", "fullnameOverride=custom")
    assert proc.returncode == 0, proc.stderr
    manifests = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert one(manifests, "CronJob")["metadata"]["name"] == CRONJOB
    assert one(manifests, "DaemonSet")["metadata"]["name"] == "custom"


# ---------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(("args", "key"), [
    (["--set", "typo=1"], "typo"),
    (["--set", "nodeAgent.tolerationz[0].operator=Exists"], "tolerationz"),
    (["--set", "reconciler.resources.requests.gpu=1"], "gpu"),
    (["--set", "image.iamge=x"], "iamge"),
], ids=["top-level", "nodeAgent", "resources", "image"])
def test_schema_rejects_unknown_keys(helm: str, args: List[str], key: str) -> None:
    proc = template(helm, *args)
    assert proc.returncode != 0
    assert "additional properties" in proc.stderr
    assert key in proc.stderr


@pytest.mark.parametrize(("args", "key"), [
    (["--set", "reconciler.failedJobsHistoryLimit=lots"], "/reconciler/failedJobsHistoryLimit"),
    (["--set", "rbac.create=maybe"], "/rbac/create"),
    (["--set", "nodeAgent.logLevel=verbose"], "/nodeAgent/logLevel"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "reconciler.schedule=0 30 4 * * *"], "/reconciler/schedule"),
    (["--set", "reconciler.gracePeriod=soon"], "/reconciler/gracePeriod"),
    (["--set", "serviceAccounts.plugin.name=Not_A_Name"], "/serviceAccounts/plugin/name"),
    (["--set", "nodeAgent.tolerations[0].operator=Sometimes"], "/nodeAgent/tolerations/0/operator"),
], ids=["int", "bool", "log-level-enum", "pull-policy-enum", "six-field-cron", "duration",
        "dns-name", "toleration-operator"])
def test_schema_rejects_bad_types_and_values(helm: str, args: List[str], key: str) -> None:
    proc = template(helm, *args)
    assert proc.returncode != 0
    assert "schema" in proc.stderr
    assert key in proc.stderr, proc.stderr


def test_schema_accepts_the_default_values_file_as_is() -> None:
    import jsonschema
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(load_values())


def _objects_without_closed_properties(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        closed = node.get("additionalProperties") is False
        if node.get("type") == "object" and "properties" in node and not closed:
            yield path or "/"
        for key, value in node.items():
            yield from _objects_without_closed_properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects_without_closed_properties(value, f"{path}/{i}")


def test_schema_closes_every_object_it_describes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert list(_objects_without_closed_properties(schema)) == []


# ---------------------------------------------------------------- templates/validate.yaml


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "reconciler.schedule="],
     "reconciler.schedule must be set when reconciler.enabled is true"),
    (["--set", "cniConf.binDir=opt/cni/bin"],
     'cniConf.binDir must be an absolute host path, got "opt/cni/bin"'),
    (["--set", "cniConf.confDir=etc/cni/net.d"],
     'cniConf.confDir must be an absolute host path, got "etc/cni/net.d"'),
    (["--set", "cniConf.confDir=/etc/../cni"], "cniConf.confDir must not contain '..'"),
    (["--set", "cniConf.binDir=/"], "cniConf.binDir must not be the host's root directory"),
    (["--set", "cniConf.binDir=/etc/cni/net.d/"],
     "cniConf.binDir and cniConf.confDir must be different directories"),
    (["--set", "serviceAccounts.plugin.name=whereabouts-node-agent"],
     "serviceAccounts.plugin.name and serviceAccounts.nodeAgent.name must differ"),
    (["--set", "serviceAccounts.reconciler.name=whereabouts-cni"],
     "serviceAccounts.plugin.name and serviceAccounts.reconciler.name must differ"),
    (["--set", "serviceAccounts.reconciler.name=whereabouts-node-agent"],
     "serviceAccounts.nodeAgent.name and serviceAccounts.reconciler.name must differ when"),
], ids=["schedule-empty", "bin-relative", "conf-relative", "dotdot", "root", "same-dirs",
        "plugin-is-agent", "plugin-is-reconciler", "agent-is-reconciler"])
def test_cross_field_rules_fail_naming_the_key(helm: str, args: List[str], message: str) -> None:
    proc = template(helm, *args)
    assert proc.returncode != 0
    assert "whereabouts chart: invalid values" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_every_broken_rule_is_reported_at_once(helm: str) -> None:
    proc = template(helm, "--set", "reconciler.schedule=", "--set", "cniConf.binDir=bin")
    assert proc.returncode != 0
    assert "reconciler.schedule" in proc.stderr
    assert "cniConf.binDir" in proc.stderr


def test_empty_schedule_is_fine_when_the_reconciler_is_disabled(helm: str) -> None:
    manifests = render(helm, "--set", "reconciler.enabled=false", "--set", "reconciler.schedule=")
    assert not find(manifests, "CronJob")


def test_own_rbac_may_share_one_account_between_agent_and_reconciler(helm: str) -> None:
    manifests = render(helm, "--set", "rbac.create=false",
                       "--set", "serviceAccounts.nodeAgent.name=wa-workloads",
                       "--set", "serviceAccounts.reconciler.name=wa-workloads")
    assert pod_spec(one(manifests, "CronJob"))["serviceAccountName"] == "wa-workloads"
    assert pod_spec(one(manifests, "DaemonSet"))["serviceAccountName"] == "wa-workloads"


# ---------------------------------------------------------------- docs


def _documented_leaves(path: Path) -> Tuple[List[str], List[str]]:
    """(documented keys, undocumented leaf keys) of a values.yaml, as dotted paths.

    A key preceded by a `# --` comment documents its whole value; any other key must be a
    section whose children are all documented.
    """
    lines = path.read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")
    entries: List[Tuple[int, str, bool, str]] = []  # indent, key, documented, rest
    comment: List[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = key_re.match(line)
        if match and not line.lstrip().startswith("-"):
            documented = any(c.startswith("# --") for c in comment)
            indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
            entries.append((indent, key, documented, rest))
        if stripped:
            comment = []
    documented_paths: List[str] = []
    missing: List[str] = []
    stack: List[Tuple[int, str, bool]] = []
    for i, (indent, key, documented, rest) in enumerate(entries):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        covered = any(d for _, _, d in stack)
        dotted = ".".join([k for _, k, _ in stack] + [key])
        has_children = (rest == "" and i + 1 < len(entries) and entries[i + 1][0] > indent)
        if documented and not covered:
            documented_paths.append(dotted)
        elif not covered and not documented and not has_children:
            missing.append(dotted)
        stack.append((indent, key, documented))
    return documented_paths, missing


def test_every_value_has_a_doc_comment_and_a_readme_row() -> None:
    documented, missing = _documented_leaves(CHART / "values.yaml")
    assert missing == []
    assert len(documented) > 30
    readme = (CHART / "README.md").read_text()
    assert [key for key in documented if f"`{key}`" not in readme] == []


def readme_rbac_table(namespace: str) -> Dict[str, Set[Grant]]:
    """The README's RBAC table as grants: `| `sa` | kind | groups | resource | verbs |` rows."""
    row_re = re.compile(r"^\| `([\w-]+)` \| (Role|ClusterRole) \| (.+?) \| (.+?) \| ([a-z, ]+) \|$")
    grants: Dict[str, Set[Grant]] = defaultdict(set)
    for line in (CHART / "README.md").read_text().splitlines():
        match = row_re.match(line)
        if not match:
            continue
        sa, kind, groups, resource_cell, verbs = match.groups()
        resource = re.match(r"`([\w/]+)`", resource_cell).group(1)  # type: ignore[union-attr]
        names = re.findall(r"resourceNames: `([\w-]+)`", resource_cell) or [""]
        scope = "cluster" if kind == "ClusterRole" else namespace
        for group in re.findall(r"`([^`]*)`", groups):
            for verb in verbs.split(", "):
                for name in names:
                    grants[sa].add((group.strip('"'), resource, verb, name, scope))
    return dict(grants)


def test_readme_rbac_table_is_what_the_chart_grants(helm: str) -> None:
    table = readme_rbac_table(DEFAULT_NS)
    assert set(table) == {"whereabouts-cni", "whereabouts-node-agent", "whereabouts-reconciler"}
    assert table == grants_by_service_account(render(helm))
