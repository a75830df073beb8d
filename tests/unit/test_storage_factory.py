"""open_store picks the backend the configuration names, importing only that one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from whereabouts.config import EtcdConfig, IPAMConfig
from whereabouts.errors import StoreError
from whereabouts.storage.etcd import EtcdStore, parse_endpoints
from whereabouts.storage.factory import open_store
from whereabouts.storage.file import FileStore


def cfg(**kwargs: object) -> IPAMConfig:
    return IPAMConfig(ranges=(), **kwargs)  # type: ignore[arg-type]


def test_file_and_etcd(tmp_path: Path) -> None:
    assert isinstance(open_store(cfg(datastore="file", data_dir=str(tmp_path))), FileStore)
    store = open_store(cfg(datastore="etcd", etcd=EtcdConfig(host="127.0.0.1:2379")))
    assert isinstance(store, EtcdStore)
    with pytest.raises(StoreError, match="etcd_host"):
        open_store(cfg(datastore="etcd"))


def test_kubernetes_without_kubeconfig_says_where_it_should_come_from() -> None:
    with pytest.raises(StoreError) as info:
        open_store(cfg(datastore="kubernetes"), env={})
    assert "kubeconfig is not set" in info.value.msg
    assert "flat file" in info.value.msg


def test_kubernetes_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from whereabouts.kube import kubeconfig

    (tmp_path / "token").write_text("t")
    (tmp_path / "namespace").write_text("wb")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    store = open_store(cfg(datastore="kubernetes"), env=env)
    assert store.namespace == "wb"  # type: ignore[attr-defined]


def test_only_the_chosen_backend_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from whereabouts.config import IPAMConfig\n"
        "from whereabouts.storage.factory import open_store\n"
        f"open_store(IPAMConfig(ranges=(), datastore='file', data_dir={str(tmp_path)!r})).ping()\n"
        "heavy = [m for m in ('ssl', 'http.client', 'whereabouts.storage.etcd',\n"
        "         'whereabouts.storage.kubernetes', 'whereabouts.kube.transport')\n"
        "         if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("host", "tls", "expected"),
    [
        ("127.0.0.1:2379", False, [("http", "127.0.0.1", 2379)]),
        ("etcd.local", False, [("http", "etcd.local", 2379)]),
        ("https://etcd:2379", False, [("https", "etcd", 2379)]),
        ("[fd00::1]:2379", True, [("https", "fd00::1", 2379)]),
        ("a:1, http://b:2", False, [("http", "a", 1), ("http", "b", 2)]),
    ],
)
def test_etcd_host_forms(host: str, tls: bool, expected: list) -> None:  # type: ignore[type-arg]
    config = EtcdConfig(host=host, ca_cert_file="/ca.pem" if tls else None)
    assert parse_endpoints(config) == expected


@pytest.mark.parametrize("host", ["", "ftp://x:1", "x:notaport"])
def test_bad_etcd_hosts(host: str) -> None:
    with pytest.raises(StoreError):
        parse_endpoints(EtcdConfig(host=host))
