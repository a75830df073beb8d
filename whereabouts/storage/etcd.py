"""The etcd datastore, over etcd's v3 JSON gateway (no client library, no gRPC).

Keys (``prefix`` defaults to ``/whereabouts/``)::

    <prefix>ippools/<pool name>        IPPool.spec JSON
    <prefix>reservations/<name>        ORIP.spec JSON ({podref, ifname, containerid}) plus
                                       network_name and address (listing needs no
                                       guessing from the name) and created (epoch s)

Compare-and-swap is one ``txn`` per write: the compare is ``mod_revision == version`` (or
``create_revision == 0`` to create), so there is no lock and no lease. A pool's version
is its key's ``mod_revision``; revisions are cluster-wide and never reused, so a
reservation deleted and created again never matches a stale version.

The gateway speaks plain HTTP/1.1 with JSON bodies, keys and values base64-encoded, and
int64 fields as strings. Paths are ``/v3/...`` (etcd 3.4 and later).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .. import httpwire
from .. import log as logs
from ..errors import ConflictError, ObjectTooLargeError, StoreError, StoreUnavailableError
from ..model import Pool, PoolKey, Reservation, ReservationKey
from . import codec

if TYPE_CHECKING:
    import ssl

    from ..config import EtcdConfig

log = logs.get(__name__)

DEFAULT_PORT = 2379
# Errors the connection itself raises: the server is down, unreachable or went away.
_NETWORK_ERRORS = (OSError,)
# A reused keep-alive connection the server already closed fails with one of these
# before any byte of the request is processed.
_STALE_CONNECTION = (ConnectionResetError, BrokenPipeError)


class _GatewayError(Exception):
    def __init__(self, status: int, code: Optional[int], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class EtcdStore:
    def __init__(
        self,
        config: EtcdConfig,
        prefix: str = "/whereabouts/",
        timeout: float = 10.0,
        page_size: int = 500,
    ) -> None:
        self.config = config
        self.prefix = prefix
        self.timeout = timeout
        self.page_size = page_size
        self._endpoints = parse_endpoints(config)
        self._current = 0
        self._conn: Optional[httpwire.Connection] = None
        self._fresh = False
        self._ssl: Optional[ssl.SSLContext] = None
        self._token: Optional[str] = None
        self._authenticated = False
        # One connection: requests from several threads take turns on it.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pools

    def read_pool(self, key: PoolKey) -> Pool:
        kv = self._get(self._pool_key(key.name))
        if kv is None:
            return Pool(key)
        spec = _json_value(kv, key.name)
        _, allocations = codec.decode_spec(key.name, spec, key.network_name)
        return Pool(key, allocations, str(kv["mod_revision"]), spec)

    def write_pool(self, pool: Pool) -> Pool:
        name = pool.key.name
        etcd_key = self._pool_key(name)
        spec = codec.encode_spec(pool, pool.raw)
        value = json.dumps(spec, separators=(",", ":")).encode()
        try:
            ok, revision = self._txn_put(etcd_key, value, pool.version)
        except ObjectTooLargeError as exc:
            raise ObjectTooLargeError(
                f"pool {name} ({len(value)} bytes, {len(pool.allocations)} allocations) is "
                f"too large for etcd: {exc.msg}; etcd refuses requests over --max-request-bytes "
                "(1.5 MiB by default): raise that limit or split the range",
                size=len(value),
            ) from exc
        if not ok:
            raise ConflictError(f"pool {name} changed since it was read (version {pool.version})")
        return Pool(pool.key, dict(pool.allocations), revision, spec)

    def list_pools(self) -> list[Pool]:
        pools = []
        start = self.prefix + "ippools/"
        for kv in self._scan(start):
            name = _b64decode(kv["key"])[len(start) :]
            try:
                spec = _json_value(kv, name)
                key, allocations = codec.decode_spec(name, spec)
            except StoreError as exc:
                log.warning("skipping etcd pool %s: %s", name, exc.msg)
                continue
            pools.append(Pool(key, allocations, str(kv["mod_revision"]), spec))
        return pools

    # ------------------------------------------------------------- reservations

    def read_reservation(self, key: ReservationKey) -> Optional[Reservation]:
        kv = self._get(self._reservation_key(key.name))
        if kv is None:
            return None
        spec = _json_value(kv, key.name)
        owner = codec.decode_reservation(spec)
        return Reservation(key, owner, str(kv["mod_revision"]), codec.created_of(spec))

    def create_reservation(self, reservation: Reservation) -> Optional[Reservation]:
        key = reservation.key
        spec: Dict[str, Any] = codec.encode_reservation(reservation.owner)
        # etcd keeps no timestamps: the creation time travels in the value.
        created = time.time()
        spec.update(network_name=key.network_name, address=str(key.address), created=created)
        value = json.dumps(spec, separators=(",", ":")).encode()
        ok, revision = self._txn_put(self._reservation_key(key.name), value, None)
        return Reservation(key, reservation.owner, revision, created) if ok else None

    def delete_reservation(self, reservation: Reservation) -> bool:
        if reservation.version is None:
            return False
        etcd_key = _b64(self._reservation_key(reservation.key.name))
        body = {
            "compare": [_compare_mod(etcd_key, reservation.version)],
            "success": [{"request_delete_range": {"key": etcd_key}}],
        }
        response = self._post("/v3/kv/txn", body)
        if not response.get("succeeded"):
            return False
        deleted = response["responses"][0].get("response_delete_range", {}).get("deleted", "0")
        return int(deleted) > 0

    def list_reservations(self) -> list[Reservation]:
        reservations = []
        start = self.prefix + "reservations/"
        for kv in self._scan(start):
            name = _b64decode(kv["key"])[len(start) :]
            try:
                spec = _json_value(kv, name)
            except StoreError as exc:
                log.warning("skipping etcd reservation %s: %s", name, exc.msg)
                continue
            key = codec.reservation_key_in(name, spec)
            if key is None:
                log.warning("skipping etcd reservation %s: name is not an address", name)
                continue
            owner = codec.decode_reservation(spec)
            version = str(kv["mod_revision"])
            reservations.append(Reservation(key, owner, version, codec.created_of(spec)))
        return reservations

    # -------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        """One count-only range over the pools: proves reachability, auth and read access."""
        start = self.prefix + "ippools/"
        self._post(
            "/v3/kv/range",
            {"key": _b64(start), "range_end": _b64(_prefix_end(start)), "count_only": True},
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ kv ops

    def _pool_key(self, name: str) -> str:
        return f"{self.prefix}ippools/{name}"

    def _reservation_key(self, name: str) -> str:
        return f"{self.prefix}reservations/{name}"

    def _get(self, key: str) -> Optional[Dict[str, Any]]:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return dict(kvs[0]) if kvs else None

    def _txn_put(self, key: str, value: bytes, version: Optional[str]) -> Tuple[bool, str]:
        """Put ``value`` if the key's mod_revision is ``version`` (None: key absent).
        Returns (succeeded, the new mod_revision)."""
        k = _b64(key)
        if version is None:
            compare = {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        else:
            compare = _compare_mod(k, version)
        body = {
            "compare": [compare],
            "success": [{"request_put": {"key": k, "value": _b64(value)}}],
        }
        response = self._post("/v3/kv/txn", body)
        # The txn's revision is the put's mod_revision: one txn is one revision.
        return bool(response.get("succeeded")), str(response["header"]["revision"])

    def _scan(self, start: str) -> List[Dict[str, Any]]:
        """Every key under ``start``, page by page, at one revision (a consistent view)."""
        end = _b64(_prefix_end(start))
        key = _b64(start)
        revision: Optional[str] = None
        found: List[Dict[str, Any]] = []
        while True:
            body: Dict[str, Any] = {"key": key, "range_end": end, "limit": str(self.page_size)}
            if revision is not None:
                body["revision"] = revision
            response = self._post("/v3/kv/range", body)
            revision = revision or str(response["header"]["revision"])
            kvs = response.get("kvs") or []
            found.extend(kvs)
            if not response.get("more") or not kvs:
                return found
            key = _b64(base64.b64decode(kvs[-1]["key"]) + b"\0")

    # --------------------------------------------------------------- transport

    def _post(self, path: str, body: Mapping[str, Any]) -> Dict[str, Any]:
        with self._lock:
            return self._post_locked(path, body)

    def _post_locked(self, path: str, body: Mapping[str, Any]) -> Dict[str, Any]:
        if not self._authenticated:
            self._authenticate()
        try:
            return self._roundtrip(path, body, self._token)
        except _GatewayError as exc:
            if exc.status == 401 and self.config.username:
                # Simple tokens expire (5 min by default): authenticate once more.
                self._authenticate()
                try:
                    return self._roundtrip(path, body, self._token)
                except _GatewayError as again:
                    raise self._error(again) from again
            raise self._error(exc) from exc

    def _authenticate(self) -> None:
        self._token = None
        if not self.config.username:
            self._authenticated = True
            return
        credentials = {"name": self.config.username, "password": self.config.password or ""}
        try:
            response = self._roundtrip("/v3/auth/authenticate", credentials, None)
        except _GatewayError as exc:
            if "authentication is not enabled" in exc.message:
                log.info("etcd: authentication is not enabled; etcd_username is ignored")
                self._authenticated = True
                return
            if exc.status in (400, 401, 403, 412):
                raise StoreError(
                    f"etcd at {self._endpoint_text()} refused user {self.config.username!r}: "
                    f"{exc.message}"
                ) from exc
            raise self._error(exc) from exc
        token = response.get("token")
        self._token = token if isinstance(token, str) else None
        self._authenticated = True

    def _roundtrip(
        self, path: str, body: Mapping[str, Any], token: Optional[str]
    ) -> Dict[str, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = token
        errors: List[str] = []
        for _ in range(len(self._endpoints)):
            try:
                status, data = self._send(path, payload, headers)
            except _NETWORK_ERRORS as exc:
                errors.append(f"{self._endpoint_text()}: {httpwire.describe_error(exc)}")
                self.close()
                self._current = (self._current + 1) % len(self._endpoints)
                continue
            return _decode_response(status, data)
        raise StoreUnavailableError(f"etcd is unreachable ({'; '.join(errors)})")

    def _send(self, path: str, payload: bytes, headers: Mapping[str, str]) -> Tuple[int, bytes]:
        conn = self._connection()
        reused = not self._fresh
        self._fresh = False
        try:
            response = conn.request("POST", path, payload, headers)
        except _STALE_CONNECTION:
            if not reused:
                raise
            # The server closed the idle keep-alive connection; one fresh try.
            self.close()
            conn = self._connection()
            self._fresh = False
            response = conn.request("POST", path, payload, headers)
        if response.will_close:
            self.close()
        return response.status, response.body

    def _connection(self) -> httpwire.Connection:
        if self._conn is None:
            scheme, host, port = self._endpoints[self._current]
            context = self._ssl_context() if scheme == "https" else None
            self._conn = httpwire.Connection(host, port, self.timeout, context)
            self._fresh = True
        return self._conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            import ssl  # only TLS endpoints pay for it

            cfg = self.config
            try:
                context = ssl.create_default_context(cafile=cfg.ca_cert_file or None)
                if cfg.cert_file:
                    context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise StoreError(f"etcd TLS files cannot be loaded: {exc}") from exc
            self._ssl = context
        return self._ssl

    def _endpoint_text(self) -> str:
        scheme, host, port = self._endpoints[self._current]
        return f"{scheme}://{_host_text(host)}:{port}"

    def _error(self, exc: _GatewayError) -> StoreError:
        where = f"etcd at {self._endpoint_text()}"
        text = exc.message
        if "too large" in text or "larger than max" in text:
            return ObjectTooLargeError(f"{where}: {text}")
        if exc.status == 401 or exc.code == 16:
            return StoreError(f"{where}: not authenticated: {text} (check etcd_username/password)")
        if exc.status == 403 or exc.code == 7:
            return StoreError(f"{where}: permission denied: {text} (check the user's etcd role)")
        # gRPC Unavailable/DeadlineExceeded/Aborted, or any 5xx: worth retrying later.
        if exc.status >= 500 or exc.code in (4, 10, 14):
            return StoreUnavailableError(f"{where}: {text}")
        return StoreError(f"{where}: HTTP {exc.status}: {text}")


def parse_endpoints(config: EtcdConfig) -> List[Tuple[str, str, int]]:
    """``etcd_host`` as (scheme, host, port) tuples. Accepts "host:port", "host", URLs,
    and a comma-separated list of those (tried in order when one is unreachable). TLS is
    used for https:// URLs, and for bare host:port when any TLS file is configured."""
    tls = bool(config.ca_cert_file or config.cert_file or config.key_file)
    endpoints = []
    for item in config.host.split(","):
        text = item.strip()
        if not text:
            continue
        url = urlsplit(text if "://" in text else ("https://" if tls else "http://") + text)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise StoreError(f"etcd_host {item.strip()!r} is not host:port or an http(s) URL")
        try:
            port = url.port or DEFAULT_PORT
        except ValueError as exc:
            raise StoreError(f"etcd_host {item.strip()!r} has an invalid port") from exc
        endpoints.append((url.scheme, url.hostname, port))
    if not endpoints:
        raise StoreError("etcd_host is empty")
    return endpoints


def _decode_response(status: int, data: bytes) -> Dict[str, Any]:
    try:
        decoded = json.loads(data) if data else {}
    except ValueError:
        decoded = None
    if status == 200 and isinstance(decoded, dict):
        return decoded
    if isinstance(decoded, dict):
        message = str(decoded.get("message") or decoded.get("error") or decoded)
        code = decoded.get("code")
        raise _GatewayError(status, code if isinstance(code, int) else None, message)
    text = data.decode("utf-8", "replace").strip()[:200]
    if status == 404:
        text = f"{text} (no v3 JSON gateway at this address: etcd older than 3.4?)"
    raise _GatewayError(status, None, text or f"HTTP {status}")


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _b64(value: Any) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def _b64decode(value: str) -> str:
    return base64.b64decode(value).decode("utf-8", "replace")


def _prefix_end(prefix: str) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def _compare_mod(key: str, version: str) -> Dict[str, str]:
    return {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": version}


def _json_value(kv: Mapping[str, Any], name: str) -> Dict[str, Any]:
    try:
        value = json.loads(base64.b64decode(kv.get("value", "")))
    except ValueError as exc:
        raise StoreError(f"etcd value of {name} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreError(f"etcd value of {name} is not a JSON object")
    return value
