"""Session fixtures of the real-component test bed (see docs/testbed.md).

A missing binary or privilege fails the tests that need it, locally as on CI
(e2e/requirements.py); ci/setup installs and builds everything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, List, NoReturn

import pytest

from e2e import netns
from e2e.localcluster import LocalCluster, ToolPaths, tool_paths
from e2e.requirements import missing

REPO = Path(__file__).resolve().parent.parent
WHEREABOUTS_PYZ = Path(os.environ.get("WHEREABOUTS_PYZ") or REPO / "dist" / "whereabouts.pyz")


def pytest_addoption(parser: pytest.Parser) -> None:
    # The kind provider (ci/e2e-kind) runs the suite against an existing cluster.
    parser.addoption("--kubeconfig", default=os.environ.get("KUBECONFIG", ""),
                     help="kubeconfig of an existing cluster (kind provider)")


def unavailable(reason: str) -> NoReturn:
    missing(f"e2e test bed unavailable: {reason}")


@pytest.fixture(scope="session")
def e2e_tools() -> ToolPaths:
    return tool_paths()


@pytest.fixture(scope="session")
def local_cluster(e2e_tools: ToolPaths) -> Iterator[LocalCluster]:
    """Real etcd + kube-apiserver (RBAC on) for the session; admin kubeconfig at .kubeconfig."""
    missing = e2e_tools.missing_cluster()
    if missing:
        unavailable(f"missing {', '.join(missing)} (run ci/e2e-tools)")
    with LocalCluster(tools=e2e_tools) as cluster:
        yield cluster


def _require_netns() -> None:
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("ping") is None:
        unavailable("iproute2 / iputils-ping not installed (run ci/e2e-tools)")


@pytest.fixture(scope="session")
def cni_bin_dir(e2e_tools: ToolPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CNI_PATH dir: reference plugins, cnitool, `whereabouts` (dist/whereabouts.pyz) if built."""
    missing = e2e_tools.missing_cni()
    if missing:
        unavailable(f"missing {', '.join(missing)} (run ci/e2e-tools)")
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    for plugin in e2e_tools.cni_plugins_dir.iterdir():
        if plugin.is_file() and os.access(plugin, os.X_OK):
            (bin_dir / plugin.name).symlink_to(plugin)
    if WHEREABOUTS_PYZ.is_file():
        # A copy, so a rebuild during the session cannot change the plugin under test.
        shutil.copy2(WHEREABOUTS_PYZ, bin_dir / "whereabouts")
        (bin_dir / "whereabouts").chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def bin_dir(
    cni_bin_dir: Path, whereabouts_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A node's CNI bin dir with the plugin installed as the installer does (per module)."""
    from e2e.scenarios import install_plugin_dir  # e2e.scenarios imports this module

    return install_plugin_dir(cni_bin_dir, whereabouts_bin, tmp_path_factory.mktemp("node-bin"))


@pytest.fixture(scope="session")
def helm_bin(e2e_tools: ToolPaths) -> Path:
    if not os.access(e2e_tools.helm, os.X_OK):
        unavailable(f"missing {e2e_tools.helm} (run ci/e2e-tools)")
    return e2e_tools.helm


@pytest.fixture(scope="session")
def whereabouts_bin(cni_bin_dir: Path) -> Path:
    """The plugin under test inside cni_bin_dir (needs `dist/whereabouts.pyz`)."""
    plugin = cni_bin_dir / "whereabouts"
    if not plugin.exists():
        unavailable(f"{WHEREABOUTS_PYZ} not built")
    return plugin


@pytest.fixture(scope="session")
def netns_factory() -> Iterator[Callable[[], netns.Topology]]:
    """Makes Topology objects with unique name prefixes (wa-<pid>-<n>); deleted at session end."""
    _require_netns()
    netns.cleanup_dead_owners("wa-")
    made: List[netns.Topology] = []

    def make() -> netns.Topology:
        # The pid in the prefix lets a later run sweep what a killed run left behind.
        topology = netns.Topology(prefix=f"wa-{os.getpid()}-{len(made) + 1}")
        made.append(topology)
        return topology

    try:
        yield make
    finally:
        for topology in made:
            topology.cleanup()
