"""Fixtures of the Store contract suite: every backend against its real server.

* memory: the unit-test double, held to the same contract (in-process tests only).
* file: a temp directory.
* etcd: a real etcd process ($WHEREABOUTS_ETCD, the test bed's build from
  ci/e2e-tools, or /usr/bin/etcd), one per session; each test gets its own key prefix.
* kubernetes: a real kube-apiserver + etcd (e2e.localcluster.LocalCluster, RBAC on)
  with the chart's CRDs; each test gets its own namespace. Run once over the stdlib
  transport (the CNI path) and once over the official client (the controllers).

A server that cannot be started fails its tests (see e2e/requirements.py).
A test that only applies to some backends says which with ``@pytest.mark.backends(...)``
and is only generated for those (on CI every skip is a failure: see /conftest.py).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterator, NoReturn

import pytest

from e2e.requirements import missing
from tests.contract.backends import CRD_DIR, EtcdServer, StoreSpec, find_etcd, free_port
from whereabouts.storage.base import Store

BACKENDS = ["memory", "file", "etcd", "kubernetes", "kubernetes-official"]
_counter = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "contract: Store contract tests against real servers (etcd, kube-apiserver)"
    )
    config.addinivalue_line("markers", "backends(*names): run only on these Store backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_spec" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = list(marker.args) if marker else BACKENDS
        metafunc.parametrize("store_spec", names, indirect=True)


def unavailable(reason: str) -> NoReturn:
    missing(f"contract test server unavailable: {reason}")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    binary = find_etcd()
    if binary is None:
        unavailable(
            "no etcd binary ($WHEREABOUTS_ETCD, ci/e2e-tools, or apt-get install etcd-server)"
        )
    server = EtcdServer(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Any]:
    try:
        from e2e.localcluster import LocalCluster, tool_paths
    except ImportError as exc:
        unavailable(f"e2e.localcluster cannot be imported: {exc}")
    tools = tool_paths()
    missing = tools.missing_cluster()
    if missing:
        unavailable(f"missing {', '.join(missing)} (run ci/e2e-tools)")
    if not CRD_DIR.is_dir():
        unavailable(f"no CRDs at {CRD_DIR}")
    with LocalCluster(tools=tools) as cluster:
        cluster.kubectl("apply", "-f", str(CRD_DIR))
        cluster.kubectl(
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/ippools.whereabouts.cni.cncf.io",
            "crd/overlappingrangeipreservations.whereabouts.cni.cncf.io",
        )
        yield cluster


def new_namespace(cluster: Any) -> str:
    name = f"contract-{os.getpid()}-{next(_counter)}"
    status, body = cluster.api(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    assert status == 201, body
    return name


@pytest.fixture
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    backend = request.param
    if backend == "memory":
        return StoreSpec("memory")
    if backend == "file":
        return StoreSpec("file", data_dir=str(tmp_path / "data"))
    if backend == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        return StoreSpec(
            "etcd", etcd_host=server.host, etcd_prefix=f"/contract/{os.getpid()}-{next(_counter)}/"
        )
    if backend == "kubernetes-official":
        try:
            import kubernetes  # noqa: F401
        except ImportError:
            unavailable("the kubernetes package is not installed (pip install -e '.[dev]')")
    cluster = request.getfixturevalue("kube_cluster")
    return StoreSpec(backend, kubeconfig=str(cluster.kubeconfig), namespace=new_namespace(cluster))


@pytest.fixture
def store(store_spec: StoreSpec) -> Iterator[Store]:
    opened = store_spec.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def dead_spec(store_spec: StoreSpec, tmp_path: Path) -> StoreSpec:
    """The same backend pointed at a server that is not there (a port nobody listens on;
    for files, a data dir that cannot be created)."""
    if store_spec.backend == "memory":
        return store_spec.with_(down=True)
    if store_spec.backend == "file":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        return store_spec.with_(data_dir=str(blocker / "data"), timeout=1.0)
    port = free_port()
    if store_spec.backend == "etcd":
        return store_spec.with_(etcd_host=f"127.0.0.1:{port}", timeout=2.0)
    text = Path(store_spec.kubeconfig).read_text()
    dead = tmp_path / "dead.kubeconfig"
    cluster_port = text.split("https://127.0.0.1:", 1)[1].split('"', 1)[0].split("\n", 1)[0]
    dead.write_text(text.replace(f"https://127.0.0.1:{cluster_port}", f"https://127.0.0.1:{port}"))
    return store_spec.with_(kubeconfig=str(dead), timeout=2.0)
