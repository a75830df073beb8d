"""`whereabouts install` against a temporary host root: files, modes, contents, atomicity,
interpreter discovery, token refresh. TokenRequest itself runs against the real API server in
e2e/test_installer.py; here a stub mints the tokens."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from whereabouts import hostpython, install
from whereabouts.hostpython import HostPythonError, find_host_python, resolve_in_root
from whereabouts.kube.kubeconfig import load_kubeconfig
from whereabouts.kube.yamlsubset import loads as yaml_subset_loads

REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


# ---------------------------------------------------------------- helpers


def _elf(path: Path) -> Path:
    """A stand-in host interpreter: ELF magic is all the installer checks without running it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF" + b"\0" * 60)
    path.chmod(0o755)
    return path


def _symlink(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _pyz(path: Path, marker: str = "v1") -> Path:
    """A minimal whereabouts-shaped zipapp (the installer only checks its layout)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", f"print({marker!r})\n")
        archive.writestr("whereabouts/__init__.py", "")
    data = path.read_bytes()
    path.write_bytes(b"#!/usr/bin/env python3\n" + data)
    return path


def _jwt(claims: Dict[str, Any]) -> str:
    def part(obj: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


class Host:
    """A node's file system under tmp_path/host plus a pod's ServiceAccount dir."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "host"
        self.bin = self.root / "opt/cni/bin"
        self.conf = self.root / "etc/cni/net.d"
        self.sa = tmp / "serviceaccount"
        self.sa.mkdir()
        pem = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
        (self.sa / "ca.crt").write_text(pem)
        (self.sa / "token").write_text("pod-token-1")
        (self.sa / "namespace").write_text("pod-ns")
        self.pyz = _pyz(tmp / "whereabouts.pyz")
        self.env = {"NODENAME": "node-1", "WHEREABOUTS_NAMESPACE": "wb",
                    "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    @property
    def plugin(self) -> Path:
        return self.bin / "whereabouts"

    @property
    def flat_file(self) -> Path:
        return self.conf / "whereabouts.d/whereabouts.conf"

    @property
    def kubeconfig(self) -> Path:
        return self.conf / "whereabouts.d/whereabouts.kubeconfig"

    def with_python(self) -> Host:
        _elf(self.root / "usr/bin/python3.11")
        _symlink(self.root / "usr/bin/python3", "python3.11")
        return self

    def args(self, *extra: str) -> List[str]:
        return ["--cni-bin-dir", str(self.bin), "--cni-conf-dir", str(self.conf),
                "--host-root", str(self.root), "--pyz", str(self.pyz),
                "--service-account-dir", str(self.sa), *extra]

    def run(self, *extra: str, env: Optional[Dict[str, str]] = None) -> int:
        return install.main(self.args(*extra), environ=self.env if env is None else env)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path).with_python()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _identity(path: Path) -> Tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------- install: files, modes, content


def test_install_writes_plugin_flat_file_and_kubeconfig(host: Host) -> None:
    assert host.run() == 0

    assert _mode(host.plugin) == 0o755
    data = host.plugin.read_bytes()
    assert data.startswith(b"#!/usr/bin/python3 -sES\n")
    assert data.split(b"\n", 1)[1] == host.pyz.read_bytes().split(b"\n", 1)[1]
    assert zipfile.is_zipfile(host.plugin)

    assert _mode(host.flat_file) == 0o600
    assert json.loads(host.flat_file.read_text()) == {
        "datastore": "kubernetes",
        "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
        "node_name": "node-1",
        "configuration_path": "/etc/cni/net.d/whereabouts.d",
    }
    assert (host.conf / "whereabouts.d/nodename").read_text() == "node-1"

    assert _mode(host.kubeconfig) == 0o600
    doc = yaml.safe_load(host.kubeconfig.read_text())
    assert doc["current-context"] == "whereabouts-context"
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.96.0.1:443"
    ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == (host.sa / "ca.crt").read_bytes()
    assert doc["users"][0]["user"] == {"token": "pod-token-1"}
    assert doc["contexts"][0]["context"]["namespace"] == "wb"


def test_kubeconfig_is_readable_by_the_plugins_own_loader(host: Host) -> None:
    host.env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    assert host.run() == 0
    access = load_kubeconfig(str(host.kubeconfig))
    assert access.server == "https://[fd00::1]:443"
    assert access.token == "pod-token-1"
    assert access.namespace == "wb"
    assert access.ca_data == (host.sa / "ca.crt").read_text()


def test_second_install_rewrites_nothing(host: Host) -> None:
    assert host.run() == 0
    files = [host.plugin, host.flat_file, host.kubeconfig, host.conf / "whereabouts.d/nodename"]
    before = [_identity(path) for path in files]
    time.sleep(0.01)
    assert host.run() == 0
    assert [_identity(path) for path in files] == before


def test_changed_zipapp_replaces_the_plugin_with_a_new_inode(host: Host) -> None:
    assert host.run() == 0
    old_inode = host.plugin.stat().st_ino
    _pyz(host.pyz, marker="v2")
    assert host.run() == 0
    assert host.plugin.stat().st_ino != old_inode
    with zipfile.ZipFile(host.plugin) as archive:
        assert archive.read("__main__.py") == b"print('v2')\n"
    assert not [p for p in host.bin.iterdir() if p.name != "whereabouts"], "temp file left behind"


def test_temp_file_of_a_killed_writer_is_removed(host: Host) -> None:
    host.bin.mkdir(parents=True)
    stale = host.bin / ".whereabouts.abc123.tmp"
    young = host.bin / ".whereabouts.def456.tmp"
    stale.write_text("half")
    young.write_text("in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert host.run() == 0
    assert not stale.exists()
    assert young.exists()


def test_wrong_mode_is_repaired_without_rewriting(host: Host) -> None:
    assert host.run() == 0
    host.kubeconfig.chmod(0o644)
    inode = host.kubeconfig.stat().st_ino
    assert host.run() == 0
    assert _mode(host.kubeconfig) == 0o600
    assert host.kubeconfig.stat().st_ino == inode


def _wait_for_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == expected, f"old plugin printed {line!r}"


def test_running_shell_plugin_survives_replacement(host: Host) -> None:
    """sh reads a script while executing it: an in-place rewrite would feed it the zip bytes."""
    host.bin.mkdir(parents=True)
    host.plugin.write_text("#!/bin/sh\necho started\nsleep 1\necho finished\n")
    host.plugin.chmod(0o755)
    old_inode = host.plugin.stat().st_ino
    proc = subprocess.Popen([str(host.plugin)], stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, "started")
        assert host.run() == 0
        assert host.plugin.read_bytes().startswith(b"#!/usr/bin/python3 -sES\n")
        assert host.plugin.stat().st_ino != old_inode
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert out.strip() == "finished"


PINNED_MAIN = """import os, sys
try:
    sys.path[0] = "/proc/self/fd/%d" % os.open(sys.path[0], os.O_RDONLY)
except OSError:
    pass
import time
print("started", flush=True)
time.sleep(1)
import lazy
print(lazy.MESSAGE)
"""


def test_running_zipapp_plugin_survives_replacement(host: Host, tmp_path: Path) -> None:
    """A zipapp imports lazily by re-opening its path: the archive must pin its inode first.

    zipimport caches the old central directory and re-opens the file *by name* for each
    import, so after any replacement it would read the new file at the old offsets ("bad
    local file header"). Holding an fd and importing through /proc/self/fd/N keeps the old
    inode; ci/build-pyz's __main__ needs the same three lines.
    """
    host.bin.mkdir(parents=True)
    with zipfile.ZipFile(host.plugin, "w") as archive:
        archive.writestr("__main__.py", PINNED_MAIN)
        archive.writestr("lazy.py", "MESSAGE = 'old lazy module'\n")
    data = host.plugin.read_bytes()
    host.plugin.write_bytes(f"#!{os.path.realpath(sys.executable)} -sES\n".encode() + data)
    host.plugin.chmod(0o755)
    proc = subprocess.Popen([str(host.plugin)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for_line(proc, "started")
        assert host.run() == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "old lazy module"


def test_plugin_runs_after_shebang_rewrite(tmp_path: Path) -> None:
    """With host root / the installer executes the new plugin (CNI VERSION) before the rename."""
    pyz = tmp_path / "whereabouts.pyz"
    subprocess.run([sys.executable, str(REPO / "ci/build-pyz"), "--output", str(pyz), "--no-smoke"],
                   check=True, capture_output=True)
    python = os.path.realpath(sys.executable)
    rc = install.main(["--cni-bin-dir", str(tmp_path / "bin"),
                       "--cni-conf-dir", str(tmp_path / "conf"),
                       "--pyz", str(pyz), "--python", python, "--datastore", "file"], environ={})
    assert rc == 0
    plugin = tmp_path / "bin/whereabouts"
    assert plugin.read_bytes().startswith(f"#!{python} -sES\n".encode())
    out = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                         text=True, check=True)
    assert "1.1.0" in json.loads(out.stdout)["supportedVersions"]
    flat = json.loads((tmp_path / "conf/whereabouts.d/whereabouts.conf").read_text())
    assert flat["configuration_path"] == str(tmp_path / "conf/whereabouts.d")


def test_broken_interpreter_fails_the_check_and_keeps_the_old_plugin(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "whereabouts").write_text("old")
    fake = _elf(tmp_path / "python3.11")  # ELF magic, but not a working program
    rc = install.main(["--cni-bin-dir", str(bin_dir), "--cni-conf-dir", str(tmp_path / "conf"),
                       "--pyz", str(_pyz(tmp_path / "w.pyz")), "--python", str(fake),
                       "--datastore", "file"], environ={})
    assert rc == 1
    assert (bin_dir / "whereabouts").read_text() == "old"
    assert [p.name for p in bin_dir.iterdir()] == ["whereabouts"]


# ---------------------------------------------------------------- datastores and paths


def test_file_datastore_writes_no_kubeconfig(host: Host) -> None:
    assert host.run("--datastore", "file", "--data-dir", "/var/lib/wa", env={}) == 0
    flat = json.loads(host.flat_file.read_text())
    assert flat["datastore"] == "file"
    assert flat["data_dir"] == "/var/lib/wa"
    assert "kubernetes" not in flat
    assert flat["node_name"]  # the host name when NODENAME is unset
    assert not host.kubeconfig.exists()


def test_etcd_datastore_options_go_into_the_flat_file(host: Host) -> None:
    rc = host.run("--datastore", "etcd", "--etcd-host", "https://10.0.0.5:2379",
                  "--etcd-ca-cert-file", "/etc/etcd/ca.crt", "--etcd-username", "wa")
    assert rc == 0
    flat = json.loads(host.flat_file.read_text())
    assert flat == {
        "datastore": "etcd", "etcd_host": "https://10.0.0.5:2379", "etcd_username": "wa",
        "etcd_ca_cert_file": "/etc/etcd/ca.crt", "node_name": "node-1",
        "configuration_path": "/etc/cni/net.d/whereabouts.d",
    }
    assert _mode(host.flat_file) == 0o600
    assert not host.kubeconfig.exists()


def test_etcd_needs_a_host(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    assert host.run("--datastore", "etcd") == 1
    assert "--etcd-host" in capsys.readouterr().err


def test_host_conf_dir_can_be_given(host: Host) -> None:
    assert host.run("--host-cni-conf-dir", "/etc/kubernetes/cni/net.d") == 0
    flat = json.loads(host.flat_file.read_text())
    assert flat["configuration_path"] == "/etc/kubernetes/cni/net.d/whereabouts.d"
    assert flat["kubernetes"]["kubeconfig"].startswith("/etc/kubernetes/cni/net.d/whereabouts.d/")


def test_conf_dir_outside_the_host_root_is_an_error(host: Host, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = host.args()
    args[args.index("--cni-conf-dir") + 1] = str(tmp_path / "elsewhere")
    assert install.main(args, environ=host.env) == 1
    assert "--host-cni-conf-dir" in capsys.readouterr().err


@pytest.mark.parametrize(("path", "root", "expected"), [
    ("/host/etc/cni/net.d", "/host", "/etc/cni/net.d"),
    ("/host/", "/host", "/"),
    ("/hostile/etc", "/host", None),
    ("/etc/cni/net.d", "/", "/etc/cni/net.d"),
])
def test_host_view(path: str, root: str, expected: Optional[str]) -> None:
    assert install.host_view(Path(path), Path(root)) == expected


def test_not_in_a_pod_without_kubeconfig_says_what_to_do(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    assert host.run(env={"NODENAME": "n"}) == 1
    err = capsys.readouterr().err
    assert "--kubeconfig" in err
    assert "--datastore file" in err
    assert not host.plugin.exists()


def test_not_a_zipapp_is_refused(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.pyz.write_text("#!/bin/sh\necho hi\n")
    assert host.run() == 1
    assert "not a zipapp" in capsys.readouterr().err
    assert not host.plugin.exists()


def test_uninstall_removes_what_install_wrote(host: Host) -> None:
    assert host.run() == 0
    (host.conf / "other.conflist").write_text("{}")
    assert host.run("--uninstall") == 0
    assert not host.plugin.exists()
    assert not (host.conf / "whereabouts.d").exists()
    assert (host.conf / "other.conflist").exists()


def test_uninstall_leaves_a_foreign_binary(host: Host) -> None:
    host.bin.mkdir(parents=True)
    host.plugin.write_bytes(b"\x7fELF upstream go binary")
    assert host.run("--uninstall") == 0
    assert host.plugin.exists()


# ---------------------------------------------------------------- --kubeconfig (plain hosts)

KUBECTL_STYLE = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority: pki/ca.crt
    server: https://192.168.1.10:6443
  name: prod
- cluster:
    insecure-skip-tls-verify: true
    server: https://127.0.0.1:6443
  name: dev
contexts:
- context:
    cluster: prod
    namespace: kube-system
    user: admin
  name: prod-admin
- context:
    cluster: dev
    user: dev
  name: dev
current-context: prod-admin
kind: Config
preferences: {}
users:
- name: admin
  user:
    client-certificate: pki/admin.crt
    client-key: pki/admin.key
- name: dev
  user:
    token: "dev-token"  # a comment
"""


def _kubectl_config(tmp_path: Path) -> Path:
    pki = tmp_path / "kube/pki"
    pki.mkdir(parents=True)
    (pki / "ca.crt").write_text("CA PEM\n")
    (pki / "admin.crt").write_text("CERT PEM\n")
    (pki / "admin.key").write_text("KEY PEM\n")
    config = tmp_path / "kube/config"
    config.write_text(KUBECTL_STYLE)
    return config


def test_kubeconfig_is_flattened_with_files_inlined(host: Host, tmp_path: Path) -> None:
    config = _kubectl_config(tmp_path)
    assert host.run("--kubeconfig", str(config), env={"NODENAME": "n"}) == 0
    doc = yaml.safe_load(host.kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://192.168.1.10:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"CA PEM\n"
    user = doc["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == b"CERT PEM\n"
    assert base64.b64decode(user["client-key-data"]) == b"KEY PEM\n"
    assert doc["contexts"][0]["context"]["namespace"] == "kube-system"
    assert _mode(host.kubeconfig) == 0o600
    access = load_kubeconfig(str(host.kubeconfig))
    assert access.client_cert_data == b"CERT PEM\n"


def test_kubeconfig_context_can_be_chosen(host: Host, tmp_path: Path) -> None:
    config = _kubectl_config(tmp_path)
    rc = host.run("--kubeconfig", str(config), "--kube-context", "dev", "--namespace", "wa",
                  env={"NODENAME": "n"})
    assert rc == 0
    access = load_kubeconfig(str(host.kubeconfig))
    assert access.server == "https://127.0.0.1:6443"
    assert (access.token, access.namespace) == ("dev-token", "wa")
    assert access.insecure_skip_tls_verify


def test_unknown_context_is_an_error(host: Host, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = _kubectl_config(tmp_path)
    assert host.run("--kubeconfig", str(config), "--kube-context", "nope", env={}) == 1
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("value", [
    "plain", "true", "no", "123", "1e3", "", "a: b", "-dash", "https://[fd00::1]:6443",
    "https://10.0.0.1:6443", "x#y", "ends:", "@at", "quote\"s", "kube-system",
])
def test_yaml_dump_round_trips(value: str) -> None:
    text = install.yaml_dump({"k": value, "l": [{"name": value, "v": {"x": value}}], "e": {}})
    for loaded in (yaml.safe_load(text), yaml_subset_loads(text)):
        assert loaded["k"] == value
        assert loaded["l"][0]["name"] == value
        assert loaded["l"][0]["v"]["x"] == value


@pytest.mark.parametrize(("env", "url"), [
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
     "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"},
     "https://[fd00:10:96::1]:6443"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "https://10.96.0.1:443"),
])
def test_api_server_url(env: Dict[str, str], url: str) -> None:
    assert install.api_server_url(env) == url


# ---------------------------------------------------------------- the host interpreter


def test_python3_symlink_resolves_inside_the_host_root(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _elf(root / "usr/bin/python3.11")
    _symlink(root / "usr/bin/python3", "python3.11")
    found = find_host_python(str(root))
    assert (found.path, found.real_path) == ("/usr/bin/python3", "/usr/bin/python3.11")
    assert found.version == (3, 11)
    assert found.shebang == "#!/usr/bin/python3 -sES"


def test_absolute_symlink_never_escapes_to_the_container(tmp_path: Path) -> None:
    """/usr/bin/python3 -> /usr/bin/python3.11 must mean the host's file, which is missing
    here, even though the installer's own /usr/bin may have one."""
    root = tmp_path / "host"
    _symlink(root / "usr/bin/python3", "/usr/bin/python3.11")
    assert resolve_in_root(str(root), "/usr/bin/python3") is None
    _elf(root / "usr/bin/python3.12")
    _symlink(root / "usr/bin/python3.11", "../../usr/bin/../../../../usr/bin/python3.12")
    assert resolve_in_root(str(root), "/usr/bin/python3") == "/usr/bin/python3.12"


def test_symlink_loop_is_not_found(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _symlink(root / "usr/bin/python3", "python3.x")
    _symlink(root / "usr/bin/python3.x", "python3")
    assert resolve_in_root(str(root), "/usr/bin/python3") is None


def test_version_from_the_stdlib_directory(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _elf(root / "usr/libexec/platform-python")
    (root / "usr/lib64/python3.9").mkdir(parents=True)
    (root / "usr/lib64/python3.9/os.py").write_text("")
    (root / "usr/lib/python3").mkdir(parents=True)  # Debian's dist-packages dir: no version
    found = find_host_python(str(root))
    assert (found.path, found.version) == ("/usr/libexec/platform-python", (3, 9))


def test_too_old_python_is_rejected_and_a_newer_versioned_one_is_used(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _elf(root / "usr/bin/python3.8")
    _symlink(root / "usr/bin/python3", "python3.8")
    with pytest.raises(HostPythonError, match=r"/usr/bin/python3: Python 3\.8 is older than 3\.9"):
        find_host_python(str(root))
    _elf(root / "usr/bin/python3.10")
    assert find_host_python(str(root)).path == "/usr/bin/python3.10"


def test_pyenv_shim_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "host"
    shim = root / "usr/local/bin/python3"
    shim.parent.mkdir(parents=True)
    shim.write_text('#!/usr/bin/env bash\nexec "$(pyenv root)/libexec/pyenv" exec python3 "$@"\n')
    shim.chmod(0o755)
    with pytest.raises(HostPythonError, match=r"/usr/local/bin/python3: .*script.*shim"):
        find_host_python(str(root))
    with pytest.raises(HostPythonError, match="shim"):
        find_host_python(str(root), override="/usr/local/bin/python3")


def test_shim_directory_is_refused_even_for_a_binary(tmp_path: Path) -> None:
    shim = _elf(tmp_path / ".pyenv/shims/python3")
    found, reason = hostpython.examine("/", str(shim))
    assert found is None
    assert "shim" in reason


def test_host_root_slash_asks_the_interpreter_its_version(tmp_path: Path) -> None:
    fake = _elf(tmp_path / "python3")
    calls: List[List[str]] = []

    def run(cmd: List[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "Python 3.13.1\n", "")

    found = find_host_python("/", candidates=[str(fake)], run=run)
    assert found.version == (3, 13)
    assert calls == [[str(fake), "--version"]]


def test_real_interpreter_on_this_machine() -> None:
    python = os.path.realpath(sys.executable)
    found = find_host_python("/", override=python)
    assert found.version == sys.version_info[:2]


def test_unmounted_override_is_trusted(tmp_path: Path) -> None:
    found = find_host_python(str(tmp_path), override="/opt/python/bin/python3.12")
    assert (found.path, found.version) == ("/opt/python/bin/python3.12", None)
    with pytest.raises(HostPythonError, match="absolute"):
        find_host_python(str(tmp_path), override="python3")


def test_no_python_exits_non_zero_and_says_what_to_do(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    host = Host(tmp_path)  # no interpreter on this host
    assert host.run() == 1
    err = capsys.readouterr().err
    assert "no Python >= 3.9 interpreter found" in err
    assert "apt-get install -y python3-minimal" in err
    assert "docker exec <node>" in err
    assert "--python" in err
    assert not host.plugin.exists()
    assert not host.kubeconfig.exists()


# ---------------------------------------------------------------- token refresh


def _refresh(host: Host, sa: str = "", **kwargs: Any) -> install.RefreshResult:
    return install.refresh_plugin_kubeconfig(host.conf, sa, service_account_dir=host.sa,
                                             environ=host.env, **kwargs)


def _token_in_file(host: Host) -> str:
    return str(yaml.safe_load(host.kubeconfig.read_text())["users"][0]["user"]["token"])


def _rotate_projected_token(sa_dir: Path, token: str) -> None:
    """What the kubelet does: new files in a timestamped dir, then an atomic symlink swap."""
    data = sa_dir / f"..{time.monotonic_ns()}"
    data.mkdir()
    (data / "token").write_text(token)
    link = sa_dir / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, sa_dir / "..data")
    if not (sa_dir / "token").is_symlink():
        (sa_dir / "token").unlink()
        (sa_dir / "token").symlink_to("..data/token")


def test_own_token_rotation_rewrites_and_an_idle_poll_does_not(host: Host) -> None:
    first = _refresh(host)
    assert first.changed
    assert _token_in_file(host) == "pod-token-1"
    before = _identity(host.kubeconfig)

    idle = _refresh(host, state=first.state)
    assert not idle.changed
    assert _identity(host.kubeconfig) == before
    assert idle.next_refresh_delay() == install.DEFAULT_POLL_SECONDS

    _rotate_projected_token(host.sa, "pod-token-2")
    rotated = _refresh(host, state=idle.state)
    assert rotated.changed
    assert _token_in_file(host) == "pod-token-2"
    assert host.kubeconfig.stat().st_ino != before[0]
    assert _mode(host.kubeconfig) == 0o600


def test_stateless_refresh_with_nothing_changed_does_not_rewrite(host: Host) -> None:
    _refresh(host)
    before = _identity(host.kubeconfig)
    assert not _refresh(host).changed
    assert _identity(host.kubeconfig) == before


def test_ca_rotation_rewrites(host: Host) -> None:
    first = _refresh(host)
    (host.sa / "ca.crt").write_text("NEW CA\n")
    again = _refresh(host, state=first.state)
    assert again.changed
    doc = yaml.safe_load(host.kubeconfig.read_text())
    ca = doc["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(ca) == b"NEW CA\n"


def test_deleted_kubeconfig_is_restored_on_the_next_poll(host: Host) -> None:
    first = _refresh(host)
    host.kubeconfig.unlink()
    assert _refresh(host, state=first.state).changed
    assert host.kubeconfig.exists()


class Minter:
    """Stands in for the TokenRequest API: JWTs with iat/exp/sub like the real ones."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str, int]] = []
        self.now = NOW

    def __call__(self, identity: install.PodIdentity, sa: str,
                 seconds: int) -> Tuple[str, install.TokenTimes]:
        self.calls.append((identity.namespace, sa, seconds))
        claims = {"iat": int(self.now), "exp": int(self.now) + seconds,
                  "sub": install.service_account_subject(identity.namespace, sa),
                  "n": len(self.calls)}
        return _jwt(claims), install.TokenTimes(self.now, self.now + seconds)


def test_plugin_token_is_minted_reused_and_renewed_at_80_percent(host: Host) -> None:
    mint = Minter()
    first = _refresh(host, "whereabouts-cni", mint=mint, now=NOW, expiration_seconds=3600)
    assert first.changed
    assert mint.calls == [("wb", "whereabouts-cni", 3600)]
    assert first.expires_at == NOW + 3600
    assert first.refresh_at == NOW + 0.8 * 3600
    assert first.next_refresh_delay(now=NOW) == install.DEFAULT_POLL_SECONDS
    assert first.next_refresh_delay(now=first.refresh_at - 3) == 3
    token = _token_in_file(host)
    assert install.token_claims(token)["sub"] == "system:serviceaccount:wb:whereabouts-cni"

    # A restarted agent (no state) reads the schedule from the token: no early re-mint.
    later = _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 1000, expiration_seconds=3600)
    assert not later.changed
    assert len(mint.calls) == 1
    assert later.refresh_at == first.refresh_at

    before = _identity(host.kubeconfig)
    idle = _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 1001, state=later.state,
                    expiration_seconds=3600)
    assert not idle.changed
    assert _identity(host.kubeconfig) == before

    mint.now = NOW + 2900
    due = _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 2900, state=idle.state,
                   expiration_seconds=3600)
    assert due.changed
    assert len(mint.calls) == 2
    assert _token_in_file(host) != token
    assert due.refresh_at == NOW + 2900 + 0.8 * 3600


def test_pod_token_rotation_does_not_re_mint_the_plugin_token(host: Host) -> None:
    mint = Minter()
    first = _refresh(host, "whereabouts-cni", mint=mint, now=NOW)
    _rotate_projected_token(host.sa, "pod-token-2")
    again = _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 5, state=first.state)
    assert not again.changed
    assert len(mint.calls) == 1


def test_other_service_account_in_the_file_is_replaced(host: Host) -> None:
    mint = Minter()
    _refresh(host, "old-name", mint=mint, now=NOW)
    _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 1)
    assert [call[1] for call in mint.calls] == ["old-name", "whereabouts-cni"]
    assert install.token_claims(_token_in_file(host))["sub"].endswith(":whereabouts-cni")


def test_token_of_another_cluster_is_not_reused(host: Host) -> None:
    mint = Minter()
    first = _refresh(host, "whereabouts-cni", mint=mint, now=NOW)
    (host.sa / "ca.crt").write_text("CA OF A REBUILT CLUSTER\n")
    again = _refresh(host, "whereabouts-cni", mint=mint, now=NOW + 5, state=first.state)
    assert again.changed
    assert len(mint.calls) == 2


def test_failed_mint_keeps_the_old_kubeconfig(host: Host) -> None:
    mint = Minter()
    first = _refresh(host, "whereabouts-cni", mint=mint, now=NOW, expiration_seconds=3600)
    content = host.kubeconfig.read_bytes()

    def failing(*_: Any) -> Tuple[str, install.TokenTimes]:
        raise install.InstallError("TokenRequest failed: HTTP 503")

    with pytest.raises(install.InstallError, match="503"):
        _refresh(host, "whereabouts-cni", mint=failing, now=NOW + 3000, state=first.state,
                 expiration_seconds=3600)
    assert host.kubeconfig.read_bytes() == content


def test_token_claims_of_garbage_are_empty() -> None:
    assert install.token_claims("not-a-jwt") == {}
    assert install.token_claims("a.!!!.c") == {}
    assert install.token_times("a.b.c") is None
