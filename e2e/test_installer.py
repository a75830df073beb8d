"""`whereabouts install` against the real kube-apiserver: TokenRequest, kubeconfig, plugin STATUS.

The installer runs as the chart's init container would: as a ServiceAccount allowed only to
`create serviceaccounts/token` for the plugin's ServiceAccount, with the pod's environment
(NODENAME, WHEREABOUTS_NAMESPACE, KUBERNETES_SERVICE_HOST/PORT) and a ServiceAccount
directory (token, ca.crt, namespace). It runs from the zipapp under `-I -S` (no
site-packages: the stdlib-only path of a plain host) and writes into a temporary host root.
The plugin then answers CNI STATUS with the kubeconfig the installer wrote.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from e2e.conftest import WHEREABOUTS_PYZ, unavailable
from e2e.localcluster import LocalCluster
from whereabouts import install

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO / "charts" / "whereabouts" / "crds"
AGENT_SA = "node-agent"
PLUGIN_SA = "whereabouts-cni"
TOKEN_SECONDS = 3600
PYTHON = os.path.realpath(sys.executable)


@dataclass
class Node:
    """A temporary host root and the installer pod's view of the cluster."""

    namespace: str
    host: Path
    sa_dir: Path
    env: Dict[str, str]

    @property
    def bin_dir(self) -> Path:
        return self.host / "opt/cni/bin"

    @property
    def conf_dir(self) -> Path:
        return self.host / "etc/cni/net.d"

    @property
    def kubeconfig(self) -> Path:
        return self.conf_dir / "whereabouts.d/whereabouts.kubeconfig"

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [PYTHON, "-I", "-S", str(WHEREABOUTS_PYZ), "install",
               "--cni-bin-dir", str(self.bin_dir), "--cni-conf-dir", str(self.conf_dir),
               "--host-root", str(self.host), "--python", PYTHON,
               "--service-account-dir", str(self.sa_dir), *extra]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)

    def status(self) -> subprocess.CompletedProcess[str]:
        netconf = {
            "cniVersion": "1.1.0", "name": "installer-e2e", "type": "macvlan", "master": "eth0",
            "ipam": {"type": "whereabouts", "range": "10.123.0.0/24", "datastore": "kubernetes",
                     "kubernetes": {"kubeconfig": str(self.kubeconfig)}},
        }
        env = {"CNI_COMMAND": "STATUS", "CNI_PATH": str(self.bin_dir), "PATH": os.defpath}
        return subprocess.run([str(self.bin_dir / "whereabouts")], input=json.dumps(netconf),
                              env=env, capture_output=True, text=True, timeout=60, check=False)


def _apply(cluster: LocalCluster, objects: List[Dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": objects}))


def _role(namespace: str, name: str, rules: List[Dict[str, Any]],
          subject: str) -> List[Dict[str, Any]]:
    meta = {"name": name, "namespace": namespace}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}]},
    ]


@pytest.fixture(scope="module")
def crds(local_cluster: LocalCluster) -> None:
    local_cluster.kubectl("apply", "-f", str(CRDS))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/ippools.whereabouts.cni.cncf.io",
                          "crd/overlappingrangeipreservations.whereabouts.cni.cncf.io")


@pytest.fixture
def node(local_cluster: LocalCluster, crds: None, tmp_path: Path) -> Iterator[Node]:
    if not WHEREABOUTS_PYZ.is_file():
        unavailable(f"{WHEREABOUTS_PYZ} not built (ci/build-pyz)")
    namespace = f"wa-install-{secrets.token_hex(3)}"
    local_cluster.create_namespace(namespace)
    local_cluster.create_service_account(namespace, AGENT_SA)
    local_cluster.create_service_account(namespace, PLUGIN_SA)
    # The chart's split: the agent may mint the plugin's token and nothing else here; the
    # plugin may touch pools and reservations of this namespace only.
    mint = [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
             "resourceNames": [PLUGIN_SA], "verbs": ["create"]}]
    pools = [{"apiGroups": ["whereabouts.cni.cncf.io"], "resources": ["ippools"],
              "verbs": ["get", "create", "update", "list"]},
             {"apiGroups": ["whereabouts.cni.cncf.io"],
              "resources": ["overlappingrangeipreservations"],
              "verbs": ["get", "create", "delete"]}]
    _apply(local_cluster, _role(namespace, "agent-mints-plugin-token", mint, AGENT_SA)
           + _role(namespace, "plugin-pools", pools, PLUGIN_SA))
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(local_cluster.service_account_token(namespace, AGENT_SA))
    shutil.copy(local_cluster.ca_file, sa_dir / "ca.crt")
    (sa_dir / "namespace").write_text(namespace)
    env = {"PATH": os.defpath, "NODENAME": "installer-e2e-node", "WHEREABOUTS_NAMESPACE": namespace,
           "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(local_cluster.apiserver_port)}
    yield Node(namespace, tmp_path / "host", sa_dir, env)
    local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _kubeconfig(node: Node) -> Dict[str, Any]:
    return dict(yaml.safe_load(node.kubeconfig.read_text()))


def test_installer_mints_the_plugin_token_and_the_plugin_reports_ready(
    local_cluster: LocalCluster, node: Node
) -> None:
    proc = node.install("--plugin-service-account", PLUGIN_SA,
                        "--token-expiration-seconds", str(TOKEN_SECONDS))
    assert proc.returncode == 0, proc.stderr

    config = _kubeconfig(node)
    token = config["users"][0]["user"]["token"]
    claims = install.token_claims(token)
    assert claims["sub"] == f"system:serviceaccount:{node.namespace}:{PLUGIN_SA}"
    assert claims["exp"] - claims["iat"] == TOKEN_SECONDS
    assert "kubernetes.io" not in claims or "pod" not in claims["kubernetes.io"]  # not pod-bound
    assert config["contexts"][0]["context"]["namespace"] == node.namespace
    assert config["clusters"][0]["cluster"]["server"] == local_cluster.server
    flat = json.loads((node.conf_dir / "whereabouts.d/whereabouts.conf").read_text())
    assert flat["kubernetes"]["kubeconfig"] == "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"
    assert flat["node_name"] == "installer-e2e-node"

    # The host file carries the plugin's narrow rights, not the agent's and not cluster-wide.
    def can(*args: str) -> str:
        out = local_cluster.kubectl("auth", "can-i", *args, kubeconfig=node.kubeconfig, check=False)
        return out.stdout.strip()

    assert can("update", "ippools.whereabouts.cni.cncf.io") == "yes"
    assert can("list", "pods") == "no"
    assert can("create", f"serviceaccounts/{PLUGIN_SA}", "--subresource=token") == "no"
    assert can("list", "ippools.whereabouts.cni.cncf.io", "-n", "default") == "no"

    status = node.status()
    assert status.returncode == 0, f"{status.stdout}\n{status.stderr}"


def test_refresh_re_mints_when_due_and_the_new_token_works(node: Node) -> None:
    assert node.install("--plugin-service-account", PLUGIN_SA,
                        "--token-expiration-seconds", str(TOKEN_SECONDS)).returncode == 0
    old_token = _kubeconfig(node)["users"][0]["user"]["token"]

    def refresh(now: float) -> install.RefreshResult:
        return install.refresh_plugin_kubeconfig(
            node.conf_dir, PLUGIN_SA, service_account_dir=node.sa_dir, environ=node.env,
            expiration_seconds=TOKEN_SECONDS, now=now)

    fresh = refresh(time.time())
    assert not fresh.changed  # the installer's token is reused, not re-minted
    assert fresh.refresh_at == pytest.approx(install.token_claims(old_token)["iat"]
                                             + 0.8 * TOKEN_SECONDS)

    time.sleep(1.1)  # a new token differs from the old one by its iat
    due = refresh(fresh.refresh_at + 1)
    assert due.changed
    new_token = _kubeconfig(node)["users"][0]["user"]["token"]
    assert new_token != old_token
    assert oct(node.kubeconfig.stat().st_mode & 0o777) == oct(0o600)
    status = node.status()
    assert status.returncode == 0, f"{status.stdout}\n{status.stderr}"


def test_installer_without_the_mint_permission_fails_clearly(node: Node) -> None:
    proc = node.install("--plugin-service-account", "someone-else")
    assert proc.returncode == 1
    assert "HTTP 403" in proc.stderr
    assert "serviceaccounts/token" in proc.stderr
    assert not (node.bin_dir / "whereabouts").exists()
