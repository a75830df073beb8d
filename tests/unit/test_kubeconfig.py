"""Kubeconfigs as kubectl writes them, in-cluster access, and the TLS material they yield."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator

import pytest

from e2e.pki import TestCA
from e2e.requirements import missing
from whereabouts.errors import StoreError
from whereabouts.kube.kubeconfig import (
    DEFAULT_NAMESPACE,
    in_cluster,
    in_cluster_available,
    load_kubeconfig,
)
from whereabouts.kube.yamlsubset import loads

KUBECTL = shutil.which("kubectl")


@pytest.fixture
def needs_tools() -> None:
    """kubectl and openssl write the real kubeconfigs these tests read."""
    if KUBECTL is None:
        missing("kubectl is required")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A CA and a client certificate signed by it."""
    d = tmp_path_factory.mktemp("pki")
    TestCA(d).issue("client", "whereabouts")
    return {name: d / name for name in ("ca.crt", "client.crt", "client.key")}


def kubectl(config: Path, *args: str) -> None:
    assert KUBECTL
    subprocess.run(
        [KUBECTL, f"--kubeconfig={config}", "config", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=config.parent,
    )


def flattened(config: Path, out: Path) -> Path:
    """`kubectl config view --raw --flatten`: what installers usually ship."""
    assert KUBECTL
    text = subprocess.run(
        [KUBECTL, f"--kubeconfig={config}", "config", "view", "--raw", "--flatten"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out.write_text(text)
    return out


@pytest.fixture
def no_temp_leftovers(tmp_path: Path) -> Iterator[Path]:
    """Point tempfile at a private dir and check nothing is left in it afterwards."""
    private = tmp_path / "tmp"
    private.mkdir()
    old = tempfile.tempdir
    tempfile.tempdir = str(private)
    try:
        yield private
    finally:
        tempfile.tempdir = old
    assert list(private.iterdir()) == []


@pytest.mark.usefixtures("needs_tools")
def test_token_kubeconfig_written_by_kubectl(tmp_path: Path, pki: Dict[str, Path]) -> None:
    raw = tmp_path / "raw"
    kubectl(
        raw,
        "set-cluster",
        "c1",
        "--server=https://10.0.0.1:6443",
        f"--certificate-authority={pki['ca.crt']}",
        "--embed-certs=true",
    )
    kubectl(raw, "set-credentials", "u1", "--token=s3cr3t.t0ken")
    kubectl(raw, "set-context", "ctx", "--cluster=c1", "--user=u1", "--namespace=whereabouts")
    kubectl(raw, "use-context", "ctx")
    path = flattened(raw, tmp_path / "config")
    access = load_kubeconfig(str(path))
    assert access.server == "https://10.0.0.1:6443"
    assert access.namespace == "whereabouts"
    assert access.token == "s3cr3t.t0ken"
    assert access.ca_data == pki["ca.crt"].read_text()
    assert access.bearer_token() == "s3cr3t.t0ken"
    import yaml
    assert loads(path.read_text()) == yaml.safe_load(path.read_text())
    access.ssl_context()


@pytest.mark.usefixtures("needs_tools")
def test_client_certificate_data_is_loaded_through_a_removed_temp_file(
    tmp_path: Path, pki: Dict[str, Path], no_temp_leftovers: Path
) -> None:
    raw = tmp_path / "raw"
    kubectl(
        raw,
        "set-cluster",
        "c1",
        "--server=https://[fd00::1]:6443",
        f"--certificate-authority={pki['ca.crt']}",
        "--embed-certs=true",
    )
    kubectl(
        raw,
        "set-credentials",
        "u1",
        f"--client-certificate={pki['client.crt']}",
        f"--client-key={pki['client.key']}",
        "--embed-certs=true",
    )
    kubectl(raw, "set-context", "ctx", "--cluster=c1", "--user=u1")
    kubectl(raw, "use-context", "ctx")
    access = load_kubeconfig(str(flattened(raw, tmp_path / "config")))
    assert access.namespace == DEFAULT_NAMESPACE
    assert access.client_cert_data == pki["client.crt"].read_bytes()
    assert access.client_key_data == pki["client.key"].read_bytes()
    context = access.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.usefixtures("needs_tools")
def test_file_references_are_relative_to_the_kubeconfig(
    tmp_path: Path, pki: Dict[str, Path]
) -> None:
    home = tmp_path / "conf"
    home.mkdir()
    for name, source in pki.items():
        shutil.copy(source, home / name)
    config = home / "config"
    kubectl(
        config,
        "set-cluster",
        "c1",
        "--server=https://api.example:443",
        "--certificate-authority=ca.crt",
        "--tls-server-name=kubernetes",
    )
    kubectl(
        config,
        "set-credentials",
        "u1",
        "--client-certificate=client.crt",
        "--client-key=client.key",
    )
    kubectl(config, "set-context", "ctx", "--cluster=c1", "--user=u1", "--namespace=ns1")
    kubectl(config, "use-context", "ctx")
    # kubectl stores the paths as given (relative): they resolve against the file's dir.
    assert "certificate-authority: ca.crt" in config.read_text()
    access = load_kubeconfig(str(config))
    assert access.ca_file == str(home / "ca.crt")
    assert access.client_cert_file == str(home / "client.crt")
    assert access.client_key_file == str(home / "client.key")
    assert access.tls_server_name == "kubernetes"
    access.ssl_context()


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def config_doc(
    user: Dict[str, object], cluster: Dict[str, object], namespace: str = ""
) -> Dict[str, object]:
    context: Dict[str, object] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "x",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "x", "context": context},
            {"name": "other", "context": {"cluster": "c"}},
        ],
    }


def test_json_kubeconfig_as_the_test_bed_writes_it(tmp_path: Path) -> None:
    doc = config_doc(
        {"token": "t"},
        {"server": "https://127.0.0.1:6443/", "insecure-skip-tls-verify": True},
        "ns",
    )
    access = load_kubeconfig(str(write(tmp_path / "k.json", doc)))
    assert access.server == "https://127.0.0.1:6443"
    assert access.insecure_skip_tls_verify
    assert access.ssl_context().verify_mode == ssl.CERT_NONE


def test_named_context_and_a_context_without_user(tmp_path: Path) -> None:
    path = write(tmp_path / "k", config_doc({"token": "t"}, {"server": "https://h"}, "ns"))
    access = load_kubeconfig(str(path), context="other")
    assert access.namespace == DEFAULT_NAMESPACE and access.token is None


def test_token_file_is_read_on_every_use(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    yaml_text = (
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://h:6443\n"
        "users:\n- name: u\n  user:\n    tokenFile: token\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\n"
    )
    access = load_kubeconfig(str(write(tmp_path / "k", yaml_text)))
    assert access.bearer_token() == "one"
    token.write_text("two\n")
    assert access.bearer_token() == "two"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("", "empty"),
        ("a: [", "cannot be parsed"),
        ({"current-context": "missing", "contexts": []}, "not defined"),
        (config_doc({"exec": {"command": "aws"}}, {"server": "https://h"}), "exec"),
        (config_doc({"token": "t"}, {"server": "h:6443"}), "https://"),
        (
            config_doc({"token": "t", "client-certificate-data": "!!"}, {"server": "https://h"}),
            "base64",
        ),
    ],
)
def test_bad_kubeconfigs_say_what_is_wrong(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(StoreError) as info:
        load_kubeconfig(str(write(tmp_path / "k", doc)))
    assert message in info.value.msg


def test_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read kubeconfig"):
        load_kubeconfig(str(tmp_path / "nope"))


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("whereabouts\n")
    (tmp_path / "ca.crt").write_text("")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_available(env, str(tmp_path))
    assert not in_cluster_available({}, str(tmp_path))
    access = in_cluster(env, str(tmp_path))
    assert access.server == "https://[fd00::1]:443"
    assert access.namespace == "whereabouts"
    assert access.bearer_token() == "sa-token"
    assert access.ca_file == str(tmp_path / "ca.crt")
