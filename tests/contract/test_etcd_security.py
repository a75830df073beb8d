"""EtcdStore against real etcd servers with authentication and with mutual TLS.

Each test starts its own etcd (the shared one stays open for the contract suite).
"""

from __future__ import annotations

import base64
import ipaddress
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from e2e.pki import TestCA
from tests.contract.backends import EtcdServer, _etcd_post, find_etcd, free_port
from tests.contract.conftest import unavailable
from whereabouts.config import EtcdConfig
from whereabouts.errors import StoreError
from whereabouts.model import Owner, Pool, PoolKey, Reservation, ReservationKey
from whereabouts.storage.etcd import EtcdStore

pytestmark = pytest.mark.contract

KEY = PoolKey("", ipaddress.ip_network("10.50.0.0/24"))
OWNER = Owner("c1", "ns/a", "net1")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def exercise(store: EtcdStore) -> None:
    store.ping()
    pool = store.write_pool(store.read_pool(KEY).with_allocations({1: OWNER}))
    store.write_pool(pool.with_allocations({1: OWNER, 2: OWNER}))
    assert dict(store.read_pool(KEY).allocations) == {1: OWNER, 2: OWNER}
    key = ReservationKey("", ipaddress.ip_address("10.50.0.1"))
    created = store.create_reservation(Reservation(key, OWNER))
    assert created is not None and store.delete_reservation(created)
    assert [p.key for p in store.list_pools()] == [KEY]


@pytest.fixture
def etcd_binary() -> str:
    binary = find_etcd()
    if binary is None:
        unavailable("no etcd binary")
    return binary


@pytest.fixture
def auth_etcd(etcd_binary: str) -> Iterator[EtcdServer]:
    # Simple tokens live one second here, so a test can outlive one.
    server = EtcdServer(etcd_binary, ["--auth-token=simple", "--auth-token-ttl=1"]).start()
    try:

        def post(path: str, body: Dict[str, Any]) -> None:
            _etcd_post(server.host, path, body)

        post("/v3/auth/role/add", {"name": "root"})
        post("/v3/auth/user/add", {"name": "root", "password": "rootpw"})
        post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        post("/v3/auth/role/add", {"name": "whereabouts"})
        post(
            "/v3/auth/role/grant",
            {
                "name": "whereabouts",
                "perm": {
                    "permType": "READWRITE",
                    "key": _b64("/whereabouts/"),
                    "range_end": _b64("/whereabouts0"),
                },
            },
        )
        post("/v3/auth/user/add", {"name": "wb", "password": "wbpw"})
        post("/v3/auth/user/grant", {"user": "wb", "role": "whereabouts"})
        post("/v3/auth/enable", {})
        yield server
    finally:
        server.stop()


def test_username_and_password(auth_etcd: EtcdServer) -> None:
    store = EtcdStore(EtcdConfig(host=auth_etcd.host, username="wb", password="wbpw"))
    try:
        exercise(store)
        time.sleep(2.5)  # the token expired: the store authenticates again by itself
        exercise(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("config", "prefix", "text"),
    [
        ({"username": "wb", "password": "wrong"}, "/whereabouts/", "refused user 'wb'"),
        ({}, "/whereabouts/", "etcd at http://127.0.0.1"),
        ({"username": "wb", "password": "wbpw"}, "/elsewhere/", "permission denied"),
    ],
)
def test_auth_failures_are_clear(
    auth_etcd: EtcdServer, config: Dict[str, Any], prefix: str, text: str
) -> None:
    store = EtcdStore(EtcdConfig(host=auth_etcd.host, **config), prefix=prefix)
    try:
        with pytest.raises(StoreError) as info:
            store.write_pool(Pool(KEY, {1: OWNER}))
        assert text in info.value.msg
    finally:
        store.close()


@pytest.fixture
def pki(tmp_path: Path) -> Dict[str, str]:
    ca = TestCA(tmp_path, "etcd-ca")
    # etcd's JSON gateway dials etcd's own gRPC port with the server certificate, so with
    # --client-cert-auth that certificate must also allow client auth.
    ca.issue("server", "server",
             "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    ca.issue("client", "client", "extendedKeyUsage=clientAuth\n")
    return {
        n: str(tmp_path / f)
        for n, f in (
            ("ca", "ca.crt"),
            ("cert", "client.crt"),
            ("key", "client.key"),
            ("server_cert", "server.crt"),
            ("server_key", "server.key"),
        )
    }


def test_mutual_tls(etcd_binary: str, pki: Dict[str, str]) -> None:
    server = EtcdServer(
        etcd_binary,
        [
            f"--cert-file={pki['server_cert']}",
            f"--key-file={pki['server_key']}",
            "--client-cert-auth",
            f"--trusted-ca-file={pki['ca']}",
        ],
        tls={"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]},
    ).start()
    try:
        # host:port plus certificate files means TLS, as does an https:// URL.
        for host in (server.host, server.url):
            store = EtcdStore(
                EtcdConfig(
                    host=host, ca_cert_file=pki["ca"], cert_file=pki["cert"], key_file=pki["key"]
                )
            )
            try:
                exercise(store)
            finally:
                store.close()
            _etcd_clear(store)
        no_cert = EtcdStore(EtcdConfig(host=server.url, ca_cert_file=pki["ca"]), timeout=3)
        with pytest.raises(StoreError):
            no_cert.ping()
        no_cert.close()
    finally:
        server.stop()


def test_failover_to_the_next_endpoint(etcd_server: EtcdServer) -> None:
    """etcd_host may list several members; an unreachable one is skipped."""
    store = EtcdStore(EtcdConfig(host=f"127.0.0.1:{free_port()}, {etcd_server.host}"), timeout=2)
    try:
        store.ping()
        assert store.read_pool(KEY).version is None
    finally:
        store.close()


def _etcd_clear(store: EtcdStore) -> None:
    store._post("/v3/kv/deleterange", {"key": _b64("/"), "range_end": _b64("\0")})
