"""The stdlib HTTPS transport to the API server, for the CNI plugin.

One keep-alive connection per transport (the plugin makes one per process), opened on
the first request. Failures become the errors of ``api.error_for_status``; a 429 is
retried once after its Retry-After when that fits in the deadline, a 401 once after
re-reading a token file (kubelet rotates projected tokens), and a request on a reused
connection the server has meanwhile closed once on a fresh one.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .. import __version__, httpwire
from ..errors import ObjectTooLargeError, StoreError, StoreUnavailableError
from .api import JSON, decode_body, error_body, error_for_status, retry_after_seconds
from .kubeconfig import ClusterAccess

USER_AGENT = f"whereabouts/{__version__} (python)"
# kube-apiserver's default --max-request-bytes.
MAX_REQUEST_BYTES = 3 * 1024 * 1024
_STALE_CONNECTION = (ConnectionResetError, BrokenPipeError)


class HTTPTransport:
    """``api.Transport`` over ``httpwire`` (http.client costs too much to import per exec).

    ``timeout`` bounds each socket operation; ``deadline`` (a ``time.monotonic()``
    value) is the latest moment a Retry-After wait may end. Threads share the one
    connection in turn.
    """

    def __init__(
        self, access: ClusterAccess, timeout: float = 10.0, deadline: Optional[float] = None
    ) -> None:
        self.access = access
        self.timeout = timeout
        self.deadline = deadline
        url = urlsplit(access.server)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise StoreError(f"{access.source}: server {access.server!r} is not an https URL")
        self._scheme = url.scheme
        self._host = url.hostname
        try:
            self._port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError as exc:
            raise StoreError(f"{access.source}: server {access.server!r} has a bad port") from exc
        # API servers behind a proxy path (e.g. Rancher's /k8s/clusters/<id>).
        self._base = url.path.rstrip("/")
        self._conn: Optional[httpwire.Connection] = None
        self._served = 0  # responses read on the current connection
        self._token: Optional[str] = None
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        content_type: str = JSON,
    ) -> Dict[str, Any]:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        if payload is not None and len(payload) > MAX_REQUEST_BYTES:
            # The API server answers 413 and hangs up while such a body is still being
            # sent, which would read as "unreachable" (try again) rather than "too large".
            raise ObjectTooLargeError(
                f"{method} {path}: the object is {len(payload)} bytes, over the API server's "
                f"request limit of {MAX_REQUEST_BYTES} bytes",
                size=len(payload),
            )
        with self._lock:
            return self._request(method, path, payload, content_type)

    def _request(
        self, method: str, path: str, payload: Optional[bytes], content_type: str
    ) -> Dict[str, Any]:
        retried_429 = retried_401 = False
        while True:
            status, headers, data = self._exchange(method, path, payload, content_type)
            if 200 <= status < 300:
                return decode_body(data)
            if status == 429 and not retried_429:
                retried_429 = True
                if self._wait(retry_after_seconds(headers.get("retry-after"))):
                    continue
            if status == 401 and not retried_401 and self.access.token_file:
                retried_401 = True
                self._token = None  # re-read: the file may hold a rotated token by now
                continue
            raise error_for_status(status, method, path, error_body(data), self.access.server)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --------------------------------------------------------------- internals

    def _wait(self, seconds: float) -> bool:
        limit = self.deadline if self.deadline is not None else time.monotonic() + self.timeout
        if time.monotonic() + seconds > limit:
            return False
        time.sleep(seconds)
        return True

    def _headers(self, content_type: str, has_body: bool) -> Dict[str, str]:
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        if has_body:
            headers["Content-Type"] = content_type
        if self._token is None:
            self._token = self.access.bearer_token() or ""
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        elif self.access.username:
            pair = f"{self.access.username}:{self.access.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    def _exchange(
        self, method: str, path: str, payload: Optional[bytes], content_type: str
    ) -> Tuple[int, Dict[str, str], bytes]:
        headers = self._headers(content_type, payload is not None)
        target = self._base + path
        reused = self._conn is not None and self._served > 0
        try:
            try:
                return self._send(method, target, payload, headers)
            except _STALE_CONNECTION:
                if not reused:
                    raise
                # The server closed our idle keep-alive connection: one fresh try.
                self.close()
                return self._send(method, target, payload, headers)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise StoreError(
                f"TLS verification of {self.access.server} failed: {exc.verify_message}; "
                f"check certificate-authority in {self.access.source}"
            ) from exc
        except OSError as exc:
            self.close()
            raise StoreUnavailableError(
                f"cannot reach the Kubernetes API server at {self.access.server}: "
                f"{httpwire.describe_error(exc)}"
            ) from exc

    def _send(
        self, method: str, target: str, payload: Optional[bytes], headers: Mapping[str, str]
    ) -> Tuple[int, Dict[str, str], bytes]:
        conn = self._connection()
        response = conn.request(method, target, payload, headers)
        self._served += 1
        if response.will_close:
            self.close()
        return response.status, response.headers, response.body

    def _connection(self) -> httpwire.Connection:
        if self._conn is None:
            context = self.access.ssl_context() if self._scheme == "https" else None
            # tls-server-name: verify the certificate against it, not the host dialled.
            self._conn = httpwire.Connection(
                self._host, self._port, self.timeout, context, self.access.tls_server_name
            )
            self._served = 0
        return self._conn
