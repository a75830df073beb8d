"""Where the API server is and how to authenticate: a kubeconfig file, or in-cluster.

Only what a static credential needs is supported: a token (inline or ``tokenFile``), a
client certificate, or basic auth; ``exec`` and ``auth-provider`` plugins need the
official client (the controllers use it) and are reported as errors here. Paths in a
kubeconfig are relative to the file, as kubectl resolves them.

The namespace of the current context is where the plugin keeps its objects, as
upstream does; without one, ``kube-system``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..errors import StoreError

if TYPE_CHECKING:
    import ssl

DEFAULT_NAMESPACE = "kube-system"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_TRUE = ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "1")


@dataclass(frozen=True)
class ClusterAccess:
    """One API server and one identity."""

    server: str
    namespace: str = DEFAULT_NAMESPACE
    ca_file: Optional[str] = None
    ca_data: Optional[str] = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: Optional[str] = None
    token: Optional[str] = None
    token_file: Optional[str] = None
    client_cert_file: Optional[str] = None
    client_key_file: Optional[str] = None
    client_cert_data: Optional[bytes] = None
    client_key_data: Optional[bytes] = None
    username: Optional[str] = None
    password: Optional[str] = None
    source: str = ""
    """Where this came from (a kubeconfig path or "in-cluster"), for error messages."""

    def bearer_token(self) -> Optional[str]:
        """The token, read from ``token_file`` each time (kubelet rotates projected tokens)."""
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise StoreError(f"cannot read token file {self.token_file}: {exc}") from exc
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context trusting the cluster CA and presenting the client certificate."""
        import ssl  # here, not at import: loading a kubeconfig must stay cheap

        try:
            context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
            if self.insecure_skip_tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.client_cert_file or self.client_cert_data:
                self._load_client_cert(context)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise StoreError(f"TLS set-up from {self.source} failed: {exc}") from exc
        return context

    def _load_client_cert(self, context: ssl.SSLContext) -> None:
        if self.client_cert_data is None and self.client_key_data is None:
            context.load_cert_chain(self.client_cert_file or "", self.client_key_file)
            return
        # ssl loads certificates only from files: write the inline PEM to a private temp
        # file (mkstemp makes it 0600), load it and remove it at once.
        import tempfile

        cert = self.client_cert_data or _read_bytes(self.client_cert_file)
        key = self.client_key_data or _read_bytes(self.client_key_file)
        fd, path = tempfile.mkstemp(prefix="whereabouts-client-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(cert.rstrip(b"\n") + b"\n" + key)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)


def load_kubeconfig(path: str, context: Optional[str] = None) -> ClusterAccess:
    """The access the kubeconfig at ``path`` describes for ``context`` (default: its
    current-context)."""
    from .yamlsubset import YAMLError, loads  # in-cluster access never needs the parser

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise StoreError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    try:
        # JSON (what many generators write) is decoded exactly by the json module.
        doc = json.loads(text) if text.lstrip().startswith("{") else loads(text)
    except (YAMLError, ValueError) as exc:
        raise StoreError(f"kubeconfig {path} cannot be parsed: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise StoreError(f"kubeconfig {path} is empty or not a mapping")
    return _from_document(doc, path, context)


def _from_document(doc: Mapping[str, Any], path: str, wanted: Optional[str]) -> ClusterAccess:
    base = os.path.dirname(os.path.abspath(path))
    contexts = _named(doc, "contexts", path)
    name = wanted or _str(doc.get("current-context"))
    if not name:
        if len(contexts) != 1:
            raise StoreError(f"kubeconfig {path} has no current-context")
        name = next(iter(contexts))
    if name not in contexts:
        raise StoreError(f"kubeconfig {path}: context {name!r} is not defined")
    ctx = contexts[name]
    cluster_name, user_name = _str(ctx.get("cluster")), _str(ctx.get("user"))
    clusters = _named(doc, "clusters", path)
    if cluster_name not in clusters:
        raise StoreError(
            f"kubeconfig {path}: cluster {cluster_name!r} of context {name!r} is not defined"
        )
    cluster = clusters[cluster_name]
    users = _named(doc, "users", path)
    user: Mapping[str, Any] = {}
    if user_name:
        if user_name not in users:
            raise StoreError(
                f"kubeconfig {path}: user {user_name!r} of context {name!r} is not defined"
            )
        user = users[user_name]
    server = _str(cluster.get("server")).rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise StoreError(f"kubeconfig {path}: cluster {cluster_name!r} has no https:// server")

    def file_field(mapping: Mapping[str, Any], key: str) -> Optional[str]:
        value = _str(mapping.get(key))
        return os.path.join(base, os.path.expanduser(value)) if value else None

    def data_field(mapping: Mapping[str, Any], key: str) -> Optional[bytes]:
        value = _str(mapping.get(key))
        if not value:
            return None
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise StoreError(f"kubeconfig {path}: {key} is not base64") from exc

    token = _str(user.get("token")) or None
    token_file = file_field(user, "tokenFile")
    cert_data = data_field(user, "client-certificate-data")
    key_data = data_field(user, "client-key-data")
    cert_file = None if cert_data else file_field(user, "client-certificate")
    key_file = None if key_data else file_field(user, "client-key")
    username = _str(user.get("username")) or None
    has_credential = token or token_file or cert_data or cert_file or username
    if not has_credential and (user.get("exec") or user.get("auth-provider")):
        raise StoreError(
            f"kubeconfig {path}: user {user_name!r} authenticates through an exec or "
            "auth-provider plugin, which the CNI plugin does not run; use a token or client "
            "certificate (the installer writes such a kubeconfig)"
        )
    ca_data = data_field(cluster, "certificate-authority-data")
    return ClusterAccess(
        server=server,
        namespace=_str(ctx.get("namespace")) or DEFAULT_NAMESPACE,
        ca_file=None if ca_data else file_field(cluster, "certificate-authority"),
        ca_data=ca_data.decode("ascii", "replace") if ca_data else None,
        insecure_skip_tls_verify=_bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=_str(cluster.get("tls-server-name")) or None,
        token=None if token_file and not token else token,
        token_file=None if token else token_file,
        client_cert_file=cert_file,
        client_key_file=key_file,
        client_cert_data=cert_data,
        client_key_data=key_data,
        username=username,
        password=_str(user.get("password")) or None,
        source=path,
    )


def in_cluster_available(env: Mapping[str, str] = os.environ, root: Optional[str] = None) -> bool:
    token = os.path.join(root or SERVICE_ACCOUNT_DIR, "token")
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(token)


def in_cluster(env: Mapping[str, str] = os.environ, root: Optional[str] = None) -> ClusterAccess:
    """The pod's own ServiceAccount: the API server from the service env variables, the
    token (re-read on every request), CA and namespace from the mounted secret."""
    root = root or SERVICE_ACCOUNT_DIR
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise StoreError("not running in a pod: KUBERNETES_SERVICE_HOST is not set")
    if ":" in host:
        host = f"[{host}]"
    namespace = DEFAULT_NAMESPACE
    try:
        with open(os.path.join(root, "namespace"), encoding="utf-8") as f:
            namespace = f.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        pass
    ca = os.path.join(root, "ca.crt")
    return ClusterAccess(
        server=f"https://{host}:{port}",
        namespace=namespace,
        ca_file=ca if os.path.exists(ca) else None,
        token_file=os.path.join(root, "token"),
        source="in-cluster",
    )


def _named(doc: Mapping[str, Any], key: str, path: str) -> dict[str, Mapping[str, Any]]:
    """A kubeconfig list of {name, <kind>} as name -> the inner mapping."""
    kind = key[:-1]
    entries = doc.get(key) or []
    if not isinstance(entries, list):
        raise StoreError(f"kubeconfig {path}: {key} is not a list")
    named: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, Mapping):
            inner = entry.get(kind)
            named[_str(entry.get("name"))] = inner if isinstance(inner, Mapping) else {}
    return named


def _bool(value: Any) -> bool:
    # JSON kubeconfigs carry a boolean; YAML ones a plain scalar this parser keeps as text.
    return value is True or (isinstance(value, str) and value in _TRUE)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _read_bytes(path: Optional[str]) -> bytes:
    if not path:
        return b""
    with open(path, "rb") as f:
        return f.read()
