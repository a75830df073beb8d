"""The stdlib transport's HTTP edge cases: status mapping, Retry-After, token re-reading,
keep-alive reuse and reconnects.

These are answers a healthy kube-apiserver rarely gives on cue, so a scripted loopback
HTTP peer plays them; everything the transport does against the real API server is
covered by tests/contract (real kube-apiserver) and the e2e suite.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from whereabouts.errors import (
    ConflictError,
    ObjectTooLargeError,
    StoreError,
    StoreUnavailableError,
)
from whereabouts.kube.api import ApiConflictError, NotFoundError, describe
from whereabouts.kube.kubeconfig import ClusterAccess
from whereabouts.kube.transport import HTTPTransport

POOLS = "/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/kube-system/ippools"

Reply = Tuple[int, Dict[str, str], Any]


class ScriptedPeer:
    def __init__(self) -> None:
        self.replies: List[Reply] = []
        self.requests: List[Dict[str, Any]] = []
        self.close_after_reply = False
        self.connections = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                api.connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                api.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body) if body else None,
                    }
                )
                status, headers, payload = api.replies.pop(0) if api.replies else (200, {}, {})
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if api.close_after_reply:
                    # Close without "Connection: close": the client believes the
                    # connection is still good, as after a server's idle timeout.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Keep-alive handler threads wait for their client; do not wait for them.
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[ScriptedPeer]:
    scripted = ScriptedPeer()
    yield scripted
    scripted.stop()


def transport(api: ScriptedPeer, **kwargs: Any) -> HTTPTransport:
    access = ClusterAccess(
        server=f"http://127.0.0.1:{api.port}/prefix",
        token=kwargs.pop("token", "t0"),
        token_file=kwargs.pop("token_file", None),
        source="test",
    )
    return HTTPTransport(access, **kwargs)


def status(code: int, reason: str, message: str = "msg") -> Reply:
    return code, {}, {"kind": "Status", "code": code, "reason": reason, "message": message}


def test_success_headers_and_keep_alive(api: ScriptedPeer) -> None:
    t = transport(api)
    api.replies = [(200, {}, {"metadata": {"resourceVersion": "5"}}), (201, {}, {})]
    assert t.request("GET", f"{POOLS}/a")["metadata"]["resourceVersion"] == "5"
    assert t.request("POST", POOLS, {"spec": {}}) == {}
    first, second = api.requests
    assert first["path"] == f"/prefix{POOLS}/a"
    assert first["headers"]["Authorization"] == "Bearer t0"
    assert "Content-Type" not in first["headers"]
    assert second["headers"]["Content-Type"] == "application/json"
    assert second["body"] == {"spec": {}}
    assert api.connections == 1
    t.close()


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (status(404, "NotFound"), NotFoundError, "not found"),
        (status(409, "AlreadyExists"), ApiConflictError, "AlreadyExists"),
        (status(409, "Conflict"), ConflictError, "Conflict"),
        (status(422, "Invalid"), ConflictError, "Invalid"),
        (
            status(413, "RequestEntityTooLarge", "Request entity too large"),
            ObjectTooLargeError,
            "size",
        ),
        (status(500, "", "etcdserver: request is too large"), ObjectTooLargeError, "too large"),
        (status(503, "ServiceUnavailable"), StoreUnavailableError, "503"),
        (status(401, "Unauthorized"), StoreError, "401"),
        (status(403, "Forbidden"), StoreError, "not allowed to update ippools"),
        (status(400, "BadRequest"), StoreError, "HTTP 400"),
        ((502, {}, b"<html>bad gateway</html>"), StoreUnavailableError, "bad gateway"),
    ],
)
def test_status_mapping(api: ScriptedPeer, reply: Reply, error: type, text: str) -> None:
    api.replies = [reply]
    with pytest.raises(error) as info:
        transport(api).request("PUT", f"{POOLS}/a", {})
    assert text in str(info.value)


def test_conflict_keeps_its_reason(api: ScriptedPeer) -> None:
    api.replies = [status(409, "AlreadyExists")]
    with pytest.raises(ApiConflictError) as info:
        transport(api).request("POST", POOLS, {})
    assert (info.value.reason, info.value.status) == ("AlreadyExists", 409)


def test_429_is_retried_once_after_retry_after(api: ScriptedPeer) -> None:
    api.replies = [(429, {"Retry-After": "0"}, {}), (200, {}, {"ok": True})]
    assert transport(api).request("GET", f"{POOLS}/a") == {"ok": True}
    api.replies = [(429, {"Retry-After": "0"}, {}), (429, {"Retry-After": "0"}, {})]
    with pytest.raises(StoreUnavailableError):
        transport(api).request("GET", f"{POOLS}/a")


def test_429_past_the_deadline_is_not_waited_for(api: ScriptedPeer) -> None:
    api.replies = [(429, {"Retry-After": "30"}, {})]
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        transport(api, deadline=time.monotonic() + 1).request("GET", f"{POOLS}/a")
    assert time.monotonic() - started < 1
    assert len(api.requests) == 1


def test_401_rereads_a_rotated_token_file_once(api: ScriptedPeer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old")
    t = transport(api, token=None, token_file=str(token))
    api.replies = [(200, {}, {})]
    t.request("GET", f"{POOLS}/a")
    token.write_text("new")
    api.replies = [status(401, "Unauthorized"), (200, {}, {})]
    t.request("GET", f"{POOLS}/a")
    assert [r["headers"]["Authorization"] for r in api.requests] == [
        "Bearer old",
        "Bearer old",
        "Bearer new",
    ]


def test_a_connection_the_server_closed_is_replaced(api: ScriptedPeer) -> None:
    t = transport(api)
    api.close_after_reply = True
    for _ in range(3):
        api.replies = [(200, {}, {"ok": True})]
        assert t.request("POST", POOLS, {}) == {"ok": True}
    assert len(api.requests) == 3
    assert api.connections == 3


def test_nothing_listening_is_unavailable_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = HTTPTransport(ClusterAccess(server=f"https://127.0.0.1:{port}", source="test"), timeout=2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="Connection refused"):
        t.request("GET", f"{POOLS}/a")
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", f"{POOLS}/a", ("get", "ippools.whereabouts.cni.cncf.io", "kube-system")),
        ("GET", f"{POOLS}?limit=1", ("list", "ippools.whereabouts.cni.cncf.io", "kube-system")),
        ("GET", f"{POOLS}?watch=true", ("watch", "ippools.whereabouts.cni.cncf.io", "kube-system")),
        ("PUT", f"{POOLS}/a", ("update", "ippools.whereabouts.cni.cncf.io", "kube-system")),
        ("DELETE", "/api/v1/namespaces/x/pods/p", ("delete", "pods", "x")),
        ("GET", "/api/v1/nodes", ("list", "nodes", "")),
    ],
)
def test_describe_names_the_rbac_verb(
    method: str, path: str, expected: Tuple[str, str, str]
) -> None:
    assert describe(method, path) == expected


def test_server_must_be_a_url() -> None:
    with pytest.raises(StoreError):
        HTTPTransport(ClusterAccess(server="127.0.0.1:6443", source="test"))


def test_a_body_over_the_api_servers_request_limit_is_refused_as_too_large(
    api: ScriptedPeer,
) -> None:
    client = transport(api)
    huge = {"spec": {"allocations": {str(i): {"id": "x" * 40} for i in range(80_000)}}}
    with pytest.raises(ObjectTooLargeError, match="request limit"):
        client.request("PUT", "/apis/x", huge)
    assert api.requests == []
