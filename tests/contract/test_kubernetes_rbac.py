"""The CNI path works with exactly the chart's plugin RBAC, and fails clearly without it.

The plugin's Role is rendered from the chart by a real helm and applied to the real
API server; the store is opened through ``open_store`` from a kubeconfig holding a
token of the plugin's ServiceAccount, as the installer writes it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.contract.backends import REPO
from tests.contract.conftest import new_namespace, unavailable
from whereabouts.config import IPAMConfig
from whereabouts.errors import StoreError
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.storage.factory import open_store

pytestmark = pytest.mark.contract

PLUGIN_SA = "whereabouts-cni"
KEY = PoolKey("", ipaddress.ip_network("10.40.0.0/24"))
OWNER = Owner("c1", "default/pod-a", "net1", node="node-1")


def find_helm() -> Optional[str]:
    if os.environ.get("WHEREABOUTS_HELM"):
        return os.environ["WHEREABOUTS_HELM"]
    from e2e.localcluster import tool_paths

    cached = tool_paths().helm
    return str(cached) if os.access(cached, os.X_OK) else shutil.which("helm")


def render_plugin_rbac(namespace: str) -> str:
    helm = find_helm()
    if helm is None:
        unavailable("no helm binary (run ci/e2e-tools)")
    from e2e.localcluster import read_versions

    return subprocess.run(
        [
            helm,
            "template",
            "wa",
            str(REPO / "charts" / "whereabouts"),
            "--namespace",
            namespace,
            "--kube-version",
            read_versions()["K8S_VERSION"],
            "--show-only",
            "templates/plugin/rbac.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def plugin_kubeconfig(cluster: Any, namespace: str, path: Path, with_rbac: bool) -> Path:
    if with_rbac:
        cluster.kubectl("apply", "-f", "-", input=render_plugin_rbac(namespace))
    else:
        cluster.create_service_account(namespace, PLUGIN_SA)
    return Path(cluster.create_service_account_kubeconfig(namespace, PLUGIN_SA, path))


def test_plugin_role_is_enough_for_the_cni_path(kube_cluster: Any, tmp_path: Path) -> None:
    namespace = new_namespace(kube_cluster)
    kubeconfig = plugin_kubeconfig(kube_cluster, namespace, tmp_path / "plugin.kubeconfig", True)
    store = open_store(IPAMConfig(ranges=(), datastore="kubernetes", kubeconfig=str(kubeconfig)))
    try:
        store.ping()
        created = store.write_pool(store.read_pool(KEY).with_allocations({1: OWNER}))
        store.write_pool(created.with_allocations({1: OWNER, 2: OWNER}))
        assert dict(store.read_pool(KEY).allocations) == {1: OWNER, 2: OWNER}
        key = ReservationKey("", ipaddress.ip_address("10.40.0.1"))
        reservation = store.create_reservation(Reservation(key, OWNER))
        assert reservation is not None
        assert store.read_reservation(key) is not None
        assert store.delete_reservation(reservation)
        # Listing is the controllers' business: the plugin may not, and is told so.
        with pytest.raises(StoreError) as info:
            store.list_pools()
        assert "list" in info.value.msg and "ippools" in info.value.msg
        assert "403" in info.value.msg
    finally:
        store.close()


def test_ping_without_rbac_names_the_missing_permission(kube_cluster: Any, tmp_path: Path) -> None:
    namespace = new_namespace(kube_cluster)
    kubeconfig = plugin_kubeconfig(kube_cluster, namespace, tmp_path / "bare.kubeconfig", False)
    store = open_store(IPAMConfig(ranges=(), datastore="kubernetes", kubeconfig=str(kubeconfig)))
    try:
        with pytest.raises(StoreError) as info:
            store.ping()
        assert "get ippools.whereabouts.cni.cncf.io" in info.value.msg
        assert namespace in info.value.msg
        with pytest.raises(StoreError):
            store.write_pool(Pool(KEY, {1: OWNER}))
    finally:
        store.close()


def test_expired_or_bad_token_is_an_auth_error(kube_cluster: Any, tmp_path: Path) -> None:
    namespace = new_namespace(kube_cluster)
    kubeconfig = plugin_kubeconfig(kube_cluster, namespace, tmp_path / "plugin.kubeconfig", True)
    text = kubeconfig.read_text()
    token = text.split('"token": "', 1)[1].split('"', 1)[0]
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text(text.replace(token, token[:-4] + "AAAA"))
    store = open_store(IPAMConfig(ranges=(), datastore="kubernetes", kubeconfig=str(bad)))
    try:
        with pytest.raises(StoreError) as info:
            store.ping()
        assert "401" in info.value.msg
    finally:
        store.close()
