"""``whereabouts install``: put the plugin and its configuration on a node.

Writes, each atomically (temp file in the same directory, fsync, rename) and only when the
content differs, so re-running is a no-op and a runtime executing the plugin meanwhile sees
either the old or the new file, never a mix:

- ``<cni-bin-dir>/whereabouts``: the zipapp, shebang rewritten to ``#!<host python> -sES`` (0755)
- ``<cni-conf-dir>/whereabouts.d/whereabouts.conf``: the flat file (JSON, 0600)
- ``<cni-conf-dir>/whereabouts.d/whereabouts.kubeconfig``: datastore kubernetes only (0600)
- ``<cni-conf-dir>/whereabouts.d/nodename``: the node name (read by upstream-style tooling)

In a pod the kubeconfig holds a token of the *plugin* ServiceAccount, minted through the
TokenRequest API as the pod's own ServiceAccount, not the pod's token: the host file then
carries only the plugin's narrow rights, and stays valid when the DaemonSet pod goes away
(upstream embeds the pod-bound token, which dies with the pod). The node agent keeps it
fresh by calling :func:`refresh_plugin_kubeconfig` in a loop.

Stdlib only: the installer also runs from the zipapp on hosts that have nothing but python3.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import logging
import os
import posixpath
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .config import DATASTORES, DEFAULT_DATA_DIR
from .errors import StoreError
from .hostpython import HostPython, HostPythonError, find_host_python
from .kube.kubeconfig import load_kubeconfig
from .kube.yamlsubset import loads as yaml_loads

log = logging.getLogger("whereabouts.install")

PLUGIN_NAME = "whereabouts"
CONF_SUBDIR = "whereabouts.d"
FLAT_FILE = "whereabouts.conf"
KUBECONFIG_FILE = "whereabouts.kubeconfig"
NODENAME_FILE = "nodename"
SECRET_MODE = 0o600
BINARY_MODE = 0o755

DEFAULT_PYZ = Path("/opt/whereabouts/whereabouts.pyz")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_HOST_CONF_DIR = "/etc/cni/net.d"

DEFAULT_TOKEN_SECONDS = 86400  # one day: survives an API outage of hours without re-minting
MIN_TOKEN_SECONDS = 600  # the TokenRequest API's lower bound
REFRESH_FRACTION = 0.8  # renew at 80% of the lifetime, like the kubelet does for projected tokens
DEFAULT_POLL_SECONDS = 10.0  # how often the CA/token files are stat()ed (a stat is microseconds)
RETRY_SECONDS = 10.0  # suggested pause after a failed refresh (the old token is still valid)
HTTP_TIMEOUT = 30.0
STALE_TEMP_SECONDS = 300.0


class InstallError(Exception):
    """A problem the user must fix; the message says what and how."""


# ---------------------------------------------------------------- files


def write_atomic(
    path: Path, data: bytes, mode: int, verify: Optional[Callable[[Path], None]] = None
) -> bool:
    """Make ``path`` hold ``data`` with ``mode``; False (nothing written) if it already does.

    The temp file lives in the same directory (rename is atomic only within one file
    system) and gets its mode before any byte is written, so a secret is never readable by
    others. A process executing the old file keeps its inode. ``verify`` may check the temp
    file (e.g. execute it) before it replaces anything.
    """
    if _holds(path, data):
        if (path.stat().st_mode & 0o7777) != mode:
            os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temp files a killed writer left behind; young ones may belong to a live writer."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.lstat().st_mtime < cutoff:
                stale.unlink()


def _holds(path: Path, data: bytes) -> bool:
    try:
        if path.is_symlink() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


Stamp = Optional[Tuple[int, int, int]]


def file_stamp(path: Path) -> Stamp:
    """(inode, mtime_ns, size), following symlinks: the kubelet swaps projected files by symlink."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _read_text(path: Path, what: str) -> str:
    return _read_bytes(path, what).decode(errors="replace").strip()


# ---------------------------------------------------------------- host paths


def host_view(path: Path, host_root: Path) -> Optional[str]:
    """The host's name for a path the installer sees under ``host_root``; None if outside."""
    absolute = os.path.abspath(path)
    root = os.path.abspath(host_root)
    if root == "/":
        return absolute
    if absolute == root:
        return "/"
    if not absolute.startswith(root + "/"):
        return None
    return "/" + os.path.relpath(absolute, root)


def conf_subdir(cni_conf_dir: Path) -> Path:
    return Path(cni_conf_dir) / CONF_SUBDIR


def kubeconfig_path(cni_conf_dir: Path) -> Path:
    return conf_subdir(cni_conf_dir) / KUBECONFIG_FILE


# ---------------------------------------------------------------- YAML (the kubeconfig subset)

_PLAIN = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_/+=.:@-]*")
_NOT_PLAIN = re.compile(r"(?i)(true|false|yes|no|on|off|y|n|null|~|[-+]?[0-9][0-9_.e+-]*)")


def yaml_dump(document: Mapping[str, Any]) -> str:
    """Block-style YAML as kubectl writes it (plain scalars where unambiguous, else JSON-quoted)."""
    return "\n".join(_dump_map(document, 0)) + "\n"


def _dump_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and not _NOT_PLAIN.fullmatch(value)
        return value if plain and not value.endswith(":") else json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} into a kubeconfig")


def _dump_map(mapping: Mapping[str, Any], indent: int) -> List[str]:
    pad = " " * indent
    lines: List[str] = []
    for key, value in mapping.items():
        name = _dump_scalar(str(key))
        if isinstance(value, dict) and value:
            lines += [f"{pad}{name}:", *_dump_map(value, indent + 2)]
        elif isinstance(value, list) and value:
            # kubectl's style: the "- " of a sequence sits at its key's indentation.
            lines += [f"{pad}{name}:", *_dump_seq(value, indent)]
        else:
            lines.append(f"{pad}{name}: {_dump_scalar(value)}")
    return lines


def _dump_seq(items: Sequence[Any], indent: int) -> List[str]:
    pad = " " * indent
    lines: List[str] = []
    for item in items:
        if isinstance(item, dict) and item:
            block = _dump_map(item, indent + 2)
            lines += [f"{pad}- {block[0].lstrip()}", *block[1:]]
        else:
            lines.append(f"{pad}- {_dump_scalar(item)}")
    return lines


def load_document(text: str, source: Path) -> Any:
    """A kubeconfig as the plugin itself reads it (JSON, else the stdlib YAML subset)."""
    try:
        return json.loads(text) if text.lstrip().startswith("{") else yaml_loads(text)
    except ValueError as exc:  # YAMLError is a ValueError
        raise InstallError(f"{source}: cannot parse: {exc}") from exc


# ---------------------------------------------------------------- kubeconfig


def render_kubeconfig(cluster: Mapping[str, Any], user: Mapping[str, Any], namespace: str) -> bytes:
    """The plugin's kubeconfig in upstream's shape (local / whereabouts / whereabouts-context)."""
    context: Dict[str, Any] = {"cluster": "local", "user": "whereabouts"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": dict(cluster)}],
        "users": [{"name": "whereabouts", "user": dict(user)}],
        "contexts": [{"name": "whereabouts-context", "context": context}],
        "current-context": "whereabouts-context",
    }
    header = (
        "# Kubeconfig of the whereabouts CNI plugin, written by `whereabouts install`.\n"
        "# The node agent rewrites it when the token is renewed; local edits are lost.\n"
    )
    return (header + yaml_dump(document)).encode()


def _pem(data: Optional[str], path: Optional[str], what: str) -> Optional[bytes]:
    if data:
        return data.encode()
    if path:
        return _read_bytes(Path(path), what)
    return None


def flatten_kubeconfig(
    source: Path, context_name: Optional[str] = None
) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
    """(cluster, user, namespace) of one context, every referenced file inlined.

    Read with the plugin's own loader, so a kubeconfig it cannot use fails here, at install
    time, not at the first pod. The copy must not depend on files beside the original
    (kubectl's relative paths, a home directory, a rotating tokenFile).
    """
    try:
        access = load_kubeconfig(str(source.expanduser()), context_name)
    except StoreError as exc:
        raise InstallError(str(exc.msg)) from exc
    cluster: Dict[str, Any] = {"server": access.server}
    ca = _pem(access.ca_data, access.ca_file, "certificate-authority")
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    if access.insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    if access.tls_server_name:
        cluster["tls-server-name"] = access.tls_server_name
    user: Dict[str, Any] = {}
    if access.token_file:
        log.warning("%s: tokenFile %s copied once; the copy is not refreshed when it rotates",
                    source, access.token_file)
    token = access.bearer_token()
    if token:
        user["token"] = token
    for key, data, path in (
        ("client-certificate-data", access.client_cert_data, access.client_cert_file),
        ("client-key-data", access.client_key_data, access.client_key_file),
    ):
        pem = data or (_read_bytes(Path(path), key) if path else None)
        if pem:
            user[key] = base64.b64encode(pem).decode()
    if access.username:
        user.update(username=access.username, password=access.password or "")
    return cluster, user, access.namespace


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class PodIdentity:
    """How the installer pod reaches the API server, and who it is."""

    server: str
    ca_file: Path
    token_file: Path
    namespace: str


def api_server_url(environ: Mapping[str, str]) -> str:
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    if not host:
        raise InstallError(
            "KUBERNETES_SERVICE_HOST is not set: not running in a pod. On a plain host pass "
            "--kubeconfig PATH, or use --datastore file|etcd"
        )
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 service address
    return f"https://{host}:{port}"


def pod_identity(
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    environ: Optional[Mapping[str, str]] = None,
    api_server: Optional[str] = None,
    namespace: Optional[str] = None,
) -> PodIdentity:
    env = os.environ if environ is None else environ
    server = api_server or api_server_url(env)
    ns = namespace or env.get("WHEREABOUTS_NAMESPACE", "").strip()
    if not ns:
        ns_file = service_account_dir / "namespace"
        ns = _read_text(ns_file, "namespace file") if ns_file.exists() else ""
    if not ns:
        raise InstallError("no namespace: set WHEREABOUTS_NAMESPACE or pass --namespace")
    return PodIdentity(server, service_account_dir / "ca.crt", service_account_dir / "token", ns)


@dataclass(frozen=True)
class TokenTimes:
    issued_at: float
    expires_at: float

    @property
    def refresh_at(self) -> float:
        return self.issued_at + REFRESH_FRACTION * (self.expires_at - self.issued_at)


def token_claims(token: str) -> Dict[str, Any]:
    """The JWT payload, unverified: used only to schedule renewal and to check the subject."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def token_times(token: str) -> Optional[TokenTimes]:
    claims = token_claims(token)
    issued, expires = claims.get("iat"), claims.get("exp")
    if isinstance(issued, (int, float)) and isinstance(expires, (int, float)) and expires > issued:
        return TokenTimes(float(issued), float(expires))
    return None


def service_account_subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _rfc3339(value: str) -> Optional[float]:
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None
    return parsed.replace(tzinfo=timezone.utc).timestamp()


def api_post(identity: PodIdentity, path: str, body: Mapping[str, Any]) -> Tuple[int, Any]:
    """POST as the pod's ServiceAccount (plain http.client + ssl: no client library needed)."""
    url = urllib.parse.urlsplit(identity.server)
    if url.scheme != "https" or not url.hostname:
        raise InstallError(f"API server URL {identity.server!r} is not https://host[:port]")
    try:
        context = ssl.create_default_context(cafile=str(identity.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise InstallError(f"cannot load the CA {identity.ca_file}: {exc}") from exc
    headers = {
        "Authorization": f"Bearer {_read_text(identity.token_file, 'ServiceAccount token')}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"whereabouts-install/{__version__}",
    }
    conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=context,
                                       timeout=HTTP_TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise InstallError(f"POST {identity.server}{path}: {exc}") from exc
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def request_token(
    identity: PodIdentity, service_account: str, expiration_seconds: int
) -> Tuple[str, TokenTimes]:
    """Mint a token for ``service_account`` through the TokenRequest API.

    Not bound to the installer pod (upstream's flaw): a pod-bound token dies with the pod and
    leaves the node's plugin without credentials until the replacement pod runs.
    """
    quote = urllib.parse.quote
    path = (f"/api/v1/namespaces/{quote(identity.namespace, safe='')}/serviceaccounts/"
            f"{quote(service_account, safe='')}/token")
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": int(expiration_seconds)},
    }
    started = time.time()
    status, reply = api_post(identity, path, body)
    if status not in (200, 201) or not isinstance(reply, dict):
        message = reply.get("message") if isinstance(reply, dict) else reply
        hint = (" (the installer's ServiceAccount needs `create` on serviceaccounts/token for "
                f"resourceName {service_account!r})") if status == 403 else ""
        raise InstallError(f"TokenRequest for ServiceAccount {identity.namespace}/"
                           f"{service_account} failed: HTTP {status}: {message}{hint}")
    token = str((reply.get("status") or {}).get("token") or "")
    if not token:
        raise InstallError("TokenRequest answered without a token")
    times = token_times(token)
    if times is None:  # not a JWT we can read: trust the API's expiry and our clock
        expires = _rfc3339(str(reply["status"].get("expirationTimestamp")))
        times = TokenTimes(started, expires or started + expiration_seconds)
    return token, times


# ---------------------------------------------------------------- refresh


@dataclass(frozen=True)
class RefreshState:
    """What the last refresh saw; pass it back so the next call can stop after three stat()s."""

    stamps: Tuple[Stamp, Stamp, Stamp]  # CA file, pod token file, written kubeconfig
    refresh_at: float  # when the plugin token must be re-minted (inf: nothing to re-mint)
    expires_at: Optional[float]
    settings: Tuple[str, str, str, int]  # server, namespace, service account, expiration


@dataclass(frozen=True)
class RefreshResult:
    changed: bool  # the kubeconfig was (re)written
    path: Path
    expires_at: Optional[float]  # expiry of the token now in the kubeconfig, if known
    refresh_at: float
    state: RefreshState
    poll_seconds: float

    def next_refresh_delay(self, now: Optional[float] = None) -> float:
        """Seconds until the next call is useful: the next file poll or the renewal time."""
        current = time.time() if now is None else now
        return max(1.0, min(self.poll_seconds, self.refresh_at - current))


Minter = Callable[[PodIdentity, str, int], Tuple[str, TokenTimes]]


def refresh_plugin_kubeconfig(
    cni_conf_dir: Path,
    plugin_service_account: str = "",
    *,
    state: Optional[RefreshState] = None,
    namespace: Optional[str] = None,
    api_server: Optional[str] = None,
    expiration_seconds: int = DEFAULT_TOKEN_SECONDS,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    environ: Optional[Mapping[str, str]] = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    now: Optional[float] = None,
    force: bool = False,
    mint: Minter = request_token,
) -> RefreshResult:
    """Keep ``<cni_conf_dir>/whereabouts.d/whereabouts.kubeconfig`` valid; run in a pod.

    With ``plugin_service_account`` the file holds a token of that ServiceAccount, re-minted
    at 80% of its lifetime (the schedule is read from the token in the file, so a restarted
    caller without ``state`` does not re-mint early); without it, the pod's own projected
    token, copied again whenever the kubelet rotates it. Either way the file is rewritten
    only when its content changes (CA rotated, token renewed, file deleted).

    With the previous result's ``state`` and nothing changed, the call costs three stat()s.
    Raises InstallError when the API server or a file cannot be read; the file then keeps
    its previous, still valid token: retry after RETRY_SECONDS.
    """
    current = time.time() if now is None else now
    identity = pod_identity(service_account_dir, environ, api_server, namespace)
    path = kubeconfig_path(Path(cni_conf_dir))
    settings = (identity.server, identity.namespace, plugin_service_account, expiration_seconds)
    stamps = (file_stamp(identity.ca_file), file_stamp(identity.token_file), file_stamp(path))
    if (state is not None and not force and state.stamps == stamps and state.settings == settings
            and current < state.refresh_at):
        return RefreshResult(False, path, state.expires_at, state.refresh_at, state, poll_seconds)
    ca = base64.b64encode(_read_bytes(identity.ca_file, "CA")).decode()
    cluster = {"server": identity.server, "certificate-authority-data": ca}
    if plugin_service_account:
        token, times = _plugin_token(identity, path, plugin_service_account, cluster,
                                     expiration_seconds=expiration_seconds, now=current,
                                     force=force, mint=mint)
        refresh_at = times.refresh_at
        expires_at: Optional[float] = times.expires_at
    else:
        token = _read_text(identity.token_file, "ServiceAccount token")
        own = token_times(token)
        refresh_at, expires_at = float("inf"), own.expires_at if own else None  # kubelet renews it
    content = render_kubeconfig(cluster, {"token": token}, identity.namespace)
    changed = write_atomic(path, content, SECRET_MODE)
    if changed:
        log.info("wrote %s (token expires %s)", path, _when(expires_at))
    new_state = RefreshState(
        (file_stamp(identity.ca_file), file_stamp(identity.token_file), file_stamp(path)),
        refresh_at, expires_at, settings,
    )
    return RefreshResult(changed, path, expires_at, refresh_at, new_state, poll_seconds)


def _plugin_token(
    identity: PodIdentity, path: Path, service_account: str, cluster: Mapping[str, str], *,
    expiration_seconds: int, now: float, force: bool, mint: Minter,
) -> Tuple[str, TokenTimes]:
    """The token in the file if it is for this cluster and account and not due; else mint."""
    if not force:
        existing = _current_token(path, cluster)
        times = token_times(existing) if existing else None
        subject = token_claims(existing).get("sub") if existing else None
        wanted = service_account_subject(identity.namespace, service_account)
        if existing and times and subject == wanted and now < times.refresh_at:
            return existing, times
    token, times = mint(identity, service_account, expiration_seconds)
    log.info("minted a token for ServiceAccount %s/%s, valid until %s",
             identity.namespace, service_account, _when(times.expires_at))
    return token, times


def _current_token(path: Path, cluster: Mapping[str, str]) -> Optional[str]:
    """The token of the kubeconfig at ``path`` if it was written for ``cluster``.

    A node re-joined to a rebuilt cluster may keep a file whose token names the same
    account but was signed by the old cluster: a different server or CA means re-mint.
    """
    try:
        document = load_document(path.read_text(), path)
        written = document["clusters"][0]["cluster"]
        token = document["users"][0]["user"]["token"]
    except (OSError, InstallError, LookupError, TypeError):
        return None
    if any(written.get(key) != value for key, value in cluster.items()):
        return None
    return token if isinstance(token, str) and token else None


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "unknown"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the plugin binary


def running_zipapp() -> Optional[Path]:
    """The zipapp this code runs from (``python3 whereabouts.pyz install``), if any."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    return Path(archive) if isinstance(archive, str) else None


def read_pyz(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read the plugin zipapp {path}: {exc.strerror or exc}") from exc
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as exc:
        raise InstallError(f"{path} is not a zipapp: {exc}") from exc
    if not {"__main__.py", "whereabouts/__init__.py"} <= names:
        raise InstallError(f"{path} is not the whereabouts zipapp")
    return data


def plugin_bytes(pyz: bytes, python: HostPython) -> bytes:
    """The zipapp behind a new shebang; the archive stays valid (zip offsets count from its end)."""
    body = pyz.split(b"\n", 1)[1] if pyz.startswith(b"#!") else pyz
    return f"{python.shebang}\n".encode() + body


def verify_plugin(path: Path) -> None:
    """Execute the new plugin (CNI VERSION) before it replaces the old one; host root / only."""
    try:
        proc = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION", "PATH": os.defpath},
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"the new plugin does not run: {exc}") from exc
    if proc.returncode != 0 or "supportedVersions" not in proc.stdout:
        raise InstallError(f"the new plugin failed its VERSION check (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")


def install_plugin(bin_dir: Path, pyz: bytes, python: HostPython, verify: bool) -> bool:
    target = bin_dir / PLUGIN_NAME
    changed = write_atomic(target, plugin_bytes(pyz, python), BINARY_MODE,
                           verify_plugin if verify else None)
    log.info("%s %s (%s, Python %s)", "installed" if changed else "unchanged", target,
             python.shebang, ".".join(map(str, python.version)) if python.version else "unverified")
    return changed


# ---------------------------------------------------------------- flat file


@dataclass(frozen=True)
class Options:
    cni_bin_dir: Path
    cni_conf_dir: Path
    host_root: Path
    host_conf_dir: str
    pyz: Optional[Path]
    python: Optional[str]
    datastore: str
    kubeconfig: Optional[Path]
    kube_context: Optional[str]
    plugin_service_account: str
    token_seconds: int
    namespace: Optional[str]
    api_server: Optional[str]
    service_account_dir: Path
    node_name: str
    etcd: Dict[str, str]
    data_dir: str
    verify: bool


def flat_config(opts: Options) -> Dict[str, Any]:
    """The flat file: keys the netconf leaves unset; paths as the host (the plugin) sees them."""
    host_dir = posixpath.join(opts.host_conf_dir, CONF_SUBDIR)
    config: Dict[str, Any] = {"datastore": opts.datastore}
    if opts.datastore == "kubernetes":
        config["kubernetes"] = {"kubeconfig": posixpath.join(host_dir, KUBECONFIG_FILE)}
    elif opts.datastore == "etcd":
        config.update({f"etcd_{key}": value for key, value in opts.etcd.items() if value})
    else:
        config["data_dir"] = opts.data_dir
    if opts.node_name:
        config["node_name"] = opts.node_name
    config["configuration_path"] = host_dir
    return config


def write_flat_file(opts: Options) -> bool:
    data = (json.dumps(flat_config(opts), indent=2) + "\n").encode()
    directory = conf_subdir(opts.cni_conf_dir)
    changed = write_atomic(directory / FLAT_FILE, data, SECRET_MODE)
    if opts.node_name:
        # Upstream's getNodeName reads <configuration_path>/nodename; kept for its tooling.
        changed |= write_atomic(directory / NODENAME_FILE, opts.node_name.encode(), 0o644)
    return changed


def write_kubeconfig(opts: Options, environ: Mapping[str, str]) -> bool:
    if opts.kubeconfig is not None:
        cluster, user, namespace = flatten_kubeconfig(opts.kubeconfig, opts.kube_context)
        namespace = opts.namespace or environ.get("WHEREABOUTS_NAMESPACE") or namespace
        content = render_kubeconfig(cluster, user, namespace)
        return write_atomic(kubeconfig_path(opts.cni_conf_dir), content, SECRET_MODE)
    result = refresh_plugin_kubeconfig(
        opts.cni_conf_dir, opts.plugin_service_account, namespace=opts.namespace,
        api_server=opts.api_server, expiration_seconds=opts.token_seconds,
        service_account_dir=opts.service_account_dir, environ=environ,
    )
    return result.changed


# ---------------------------------------------------------------- install / uninstall


def install(opts: Options, environ: Mapping[str, str]) -> None:
    """Interpreter first (fail before writing), credentials next, the binary last: the
    runtime finds the plugin only once the files it needs are in place."""
    python = find_host_python(str(opts.host_root), opts.python)
    if python.version is None:
        log.warning("--python %s is not visible under %s: its version is unchecked",
                    python.path, opts.host_root)
    pyz = read_pyz(_pyz_path(opts.pyz))
    if opts.datastore == "kubernetes":
        write_kubeconfig(opts, environ)
    write_flat_file(opts)
    install_plugin(opts.cni_bin_dir, pyz, python, opts.verify and _is_root(opts.host_root))


def uninstall(opts: Options) -> List[Path]:
    """Remove what install wrote; a binary that is not a whereabouts zipapp is left alone."""
    removed: List[Path] = []
    binary = opts.cni_bin_dir / PLUGIN_NAME
    if binary.exists():
        try:
            read_pyz(binary)
        except InstallError:
            log.warning("%s is not the whereabouts zipapp: left in place", binary)
        else:
            binary.unlink()
            removed.append(binary)
    directory = conf_subdir(opts.cni_conf_dir)
    for name in (FLAT_FILE, KUBECONFIG_FILE, NODENAME_FILE):
        if (directory / name).exists():
            (directory / name).unlink()
            removed.append(directory / name)
    with contextlib.suppress(OSError):  # not empty: someone else's files
        directory.rmdir()
    return removed


def _pyz_path(explicit: Optional[Path]) -> Path:
    if explicit is not None:
        return explicit
    return running_zipapp() or DEFAULT_PYZ


def _is_root(path: Path) -> bool:
    return os.path.abspath(path) == "/"


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whereabouts install",
        description="Install the whereabouts CNI plugin and its configuration on this node.",
        epilog="In a pod (the Helm chart's init container) the kubeconfig is built from the pod's "
        "ServiceAccount; on a plain host pass --kubeconfig, or --datastore file|etcd.",
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument("--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"),
                       help="where the runtime finds CNI plugins, as this process sees it")
    paths.add_argument("--cni-conf-dir", type=Path, default=Path(DEFAULT_HOST_CONF_DIR),
                       help="CNI configuration directory, as this process sees it")
    paths.add_argument("--host-root", type=Path, default=Path("/"),
                       help="where the host's file system is mounted (/host in the chart)")
    paths.add_argument("--host-cni-conf-dir", help="the CNI configuration directory as the host "
                       "sees it (default: --cni-conf-dir without the --host-root prefix)")
    paths.add_argument("--pyz", type=Path, help="the plugin zipapp (default: the running zipapp, "
                       f"else {DEFAULT_PYZ})")
    paths.add_argument("--python", help="host interpreter for the plugin's shebang (absolute host "
                       "path; default: a python3 >= 3.9 found under --host-root)")
    store = parser.add_argument_group("datastore")
    store.add_argument("--datastore", choices=DATASTORES, default="kubernetes")
    store.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help="datastore file: the host directory of the allocation files")
    for key in ("host", "username", "password", "key-file", "cert-file", "ca-cert-file"):
        where = " (a path on the host)" if key.endswith("file") else ""
        store.add_argument(f"--etcd-{key}", default="",
                           help=f"datastore etcd: etcd_{key.replace('-', '_')}{where}")
    kube = parser.add_argument_group("kubernetes credentials")
    kube.add_argument("--kubeconfig", type=Path, help="copy (flattened) this kubeconfig instead "
                      "of building one from the pod's ServiceAccount")
    kube.add_argument("--kube-context", help="context of --kubeconfig (default: current-context)")
    kube.add_argument("--plugin-service-account", default="", help="mint the plugin's token for "
                      "this ServiceAccount (TokenRequest API); empty: copy the pod's own token")
    kube.add_argument("--token-expiration-seconds", type=int, default=DEFAULT_TOKEN_SECONDS,
                      help="lifetime of the minted token; renewed at 80%% of it")
    kube.add_argument("--namespace", help="namespace of the pools (default: "
                      "$WHEREABOUTS_NAMESPACE, else the pod's namespace)")
    kube.add_argument("--api-server", help="API server URL written into the kubeconfig "
                      "(default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
    kube.add_argument("--service-account-dir", type=Path, default=SERVICE_ACCOUNT_DIR,
                      help="the pod's token, ca.crt and namespace")
    parser.add_argument("--node-name", help="this node's Kubernetes name (default: $NODENAME, "
                        "else the host name)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not run the new plugin before installing it (host root / only)")
    parser.add_argument("--uninstall", action="store_true", help="remove what install wrote")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "verbose", "info", "warning", "error", "panic"))
    return parser


def options_from_args(ns: argparse.Namespace, environ: Mapping[str, str]) -> Options:
    if ns.token_expiration_seconds < MIN_TOKEN_SECONDS:
        raise InstallError(f"--token-expiration-seconds must be at least {MIN_TOKEN_SECONDS}")
    if ns.datastore == "etcd" and not ns.etcd_host:
        raise InstallError("--datastore etcd needs --etcd-host")
    host_conf_dir = ns.host_cni_conf_dir or host_view(ns.cni_conf_dir, ns.host_root)
    if host_conf_dir is None:
        raise InstallError(f"--cni-conf-dir {ns.cni_conf_dir} is not under --host-root "
                           f"{ns.host_root}; pass --host-cni-conf-dir")
    etcd_keys = ("host", "username", "password", "key_file", "cert_file", "ca_cert_file")
    return Options(
        cni_bin_dir=ns.cni_bin_dir, cni_conf_dir=ns.cni_conf_dir, host_root=ns.host_root,
        host_conf_dir=host_conf_dir, pyz=ns.pyz, python=ns.python, datastore=ns.datastore,
        kubeconfig=ns.kubeconfig, kube_context=ns.kube_context,
        plugin_service_account=ns.plugin_service_account,
        token_seconds=ns.token_expiration_seconds, namespace=ns.namespace,
        api_server=ns.api_server, service_account_dir=ns.service_account_dir,
        node_name=ns.node_name or _node_name(environ),
        etcd={key: getattr(ns, f"etcd_{key}") for key in etcd_keys},
        data_dir=ns.data_dir, verify=not ns.no_verify,
    )


def _node_name(environ: Mapping[str, str]) -> str:
    name = environ.get("NODENAME", "").strip()
    if name:
        return name
    if environ.get("KUBERNETES_SERVICE_HOST"):
        log.warning("NODENAME is not set (the pod spec should set it from spec.nodeName); "
                    "using the host name")
    # The kubelet's default node name: the host name, lower-cased.
    return socket.gethostname().lower()


def _configure_logging(level: str) -> None:
    levels = {"debug": logging.DEBUG, "verbose": logging.INFO, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR, "panic": logging.CRITICAL}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] install: %(message)s"))
    root = logging.getLogger("whereabouts")
    root.handlers[:] = [handler]
    root.setLevel(levels[level])
    root.propagate = False


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    _configure_logging(ns.log_level)
    try:
        opts = options_from_args(ns, env)
        if ns.uninstall:
            for path in uninstall(opts):
                log.info("removed %s", path)
            return 0
        install(opts, env)
    except (InstallError, HostPythonError) as exc:
        sys.stderr.write(f"whereabouts install: error: {exc}\n")
        return 1
    return 0
