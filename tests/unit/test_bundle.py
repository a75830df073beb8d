"""ci/bundle: the offline tarball holds the tested zipapp, a valid chart, checksums that verify,
and is byte-for-byte reproducible.

Needs helm (ci/e2e-tools builds it): skipped locally without it, a failure in CI (CI=true).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator

import pytest

from e2e.requirements import missing

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "ci" / "bundle"
DIST_PYZ = REPO / "dist" / "whereabouts.pyz"
EXIT_NO_HELM = 3


def _load_bundle_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("ci_bundle", str(BUNDLE))
    spec = importlib.util.spec_from_loader("ci_bundle", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_bundle"] = module  # dataclasses resolve their module through sys.modules
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tested_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/whereabouts.pyz (what the tests ran), else a fresh build in a temp dir."""
    if DIST_PYZ.is_file():
        return DIST_PYZ
    out = tmp_path_factory.mktemp("pyz") / "whereabouts.pyz"
    subprocess.run([sys.executable, str(REPO / "ci/build-pyz"), "--output", str(out),
                    "--no-smoke"], check=True, capture_output=True)
    return out


def _run_bundle(out_dir: Path, pyz: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BUNDLE), "--output-dir", str(out_dir),
                           "--pyz", str(pyz)], capture_output=True, text=True, timeout=300,
                          check=False)
    if proc.returncode == EXIT_NO_HELM:
        missing(f"helm not available for ci/bundle: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory,
           tested_pyz: Path) -> Iterator[Dict[str, bytes]]:
    out = tmp_path_factory.mktemp("bundle")
    pyz_before = tested_pyz.read_bytes()
    _run_bundle(out, tested_pyz)
    (tarball,) = out.glob("whereabouts-*-bundle.tar.gz")
    with tarfile.open(tarball) as archive:
        members = archive.getmembers()
        for member in members:
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.mtime == 1577836800
        assert [m.name for m in members] == sorted(m.name for m in members if m.isdir()) + \
            sorted(m.name for m in members if not m.isdir())
        files = {}
        for member in members:
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None:
                files[member.name.split("/", 1)[1]] = handle.read()
    assert tested_pyz.read_bytes() == pyz_before, "the zipapp changed while bundling"
    yield files


def test_sha256sums_cover_and_verify_every_file(bundle: Dict[str, bytes]) -> None:
    listed = {}
    for line in bundle["SHA256SUMS"].decode().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == set(bundle) - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256(bundle[name]).hexdigest() == digest, name


def test_bundled_zipapp_is_the_tested_one(bundle: Dict[str, bytes], tested_pyz: Path) -> None:
    assert bundle["whereabouts.pyz"] == tested_pyz.read_bytes()


def test_crds_examples_and_instructions_are_included(bundle: Dict[str, bytes]) -> None:
    for crd in (REPO / "charts/whereabouts/crds").glob("*.yaml"):
        assert bundle[f"crds/{crd.name}"] == crd.read_bytes()
    assert "examples/macvlan-kubernetes.yaml" in bundle
    assert b"sha256sum -c SHA256SUMS" in bundle["INSTALL.txt"]
    assert b"python3" in bundle["INSTALL.txt"]


def test_chart_archive_is_reproducible_and_complete(bundle: Dict[str, bytes]) -> None:
    (name,) = [n for n in bundle if n.startswith("chart/")]
    with tarfile.open(fileobj=io.BytesIO(bundle[name])) as chart:
        names = chart.getnames()
        assert all(m.mtime == 1577836800 and m.uid == 0 for m in chart.getmembers())
    assert "whereabouts/Chart.yaml" in names
    assert "whereabouts/values.schema.json" in names
    assert any(n.startswith("whereabouts/crds/") for n in names)
    assert not any(n.startswith("whereabouts/ci/") for n in names)  # .helmignore honoured


def test_two_runs_give_identical_bytes(tmp_path: Path, tested_pyz: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _run_bundle(first, tested_pyz)
    time.sleep(1.1)  # helm stamps seconds: a later run would differ if the stamps leaked in
    proc = _run_bundle(second, tested_pyz)
    (a,) = first.glob("*.tar.gz")
    (b,) = second.glob("*.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(tested_pyz.read_bytes()).hexdigest() in proc.stderr


def test_stale_dist_pyz_is_detected(tmp_path: Path) -> None:
    module = _load_bundle_module()
    source = tmp_path / "mod.py"
    pyz = tmp_path / "whereabouts.pyz"
    source.write_text("x = 1\n")
    assert not module.pyz_is_fresh(pyz, [source])
    pyz.write_bytes(b"zip")
    past = time.time() - 100
    os.utime(source, (past, past))
    assert module.pyz_is_fresh(pyz, [source])
    source.touch()
    assert not module.pyz_is_fresh(pyz, [source])
