"""The minimal HTTP/1.1 client parses what API servers and etcd's gateway send."""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

import pytest

from whereabouts.httpwire import Connection, HTTPError, RemoteDisconnected


def _serve(replies: List[bytes]) -> Tuple[int, List[bytes], threading.Thread]:
    """A TCP peer on loopback that answers each request with the next canned reply."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    seen: List[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            for reply in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                while len(rest) < length:
                    rest += conn.recv(65536)
                seen.append(head + b"\r\n\r\n" + rest)
                conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], seen, thread




def test_content_length_bodies_over_one_keep_alive_connection() -> None:
    port, seen, thread = _serve([
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 201 Created\r\ncontent-length: 7\r\nX-A: b\r\n\r\n{\"a\":1}",
    ])
    conn = Connection("127.0.0.1", port, 5)
    first = conn.request("GET", "/x", None, {"Accept": "application/json"})
    second = conn.request("POST", "/y", b'{"k":2}', {"Content-Type": "application/json"})
    thread.join(5)
    assert (first.status, first.body, first.will_close) == (200, b"{}", False)
    assert (second.status, second.body, second.headers["x-a"]) == (201, b'{"a":1}', "b")
    assert seen[1].endswith(b'\r\n\r\n{"k":2}') and b"Content-Length: 7" in seen[1]


def test_chunked_body_with_extensions_and_trailers_is_joined() -> None:
    port, _, thread = _serve([
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\n",
    ])
    response = Connection("127.0.0.1", port, 5).request("GET", "/", None, {})
    thread.join(5)
    assert (response.status, response.body) == (200, b"abcde")


def test_connection_close_and_no_length_reads_to_the_end() -> None:
    port, _, thread = _serve([b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nbroken"])
    conn = Connection("127.0.0.1", port, 5)
    response = conn.request("GET", "/", None, {})
    thread.join(5)
    assert (response.status, response.body, response.will_close) == (500, b"broken", True)


def test_a_peer_that_hangs_up_before_answering_is_remote_disconnected() -> None:
    port, _, thread = _serve([b""])
    conn = Connection("127.0.0.1", port, 5)
    with pytest.raises(RemoteDisconnected):
        conn.request("GET", "/", None, {})
    thread.join(5)


def test_garbage_status_line_is_an_http_error() -> None:
    port, _, thread = _serve([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(HTTPError, match="status line"):
        Connection("127.0.0.1", port, 5).request("GET", "/", None, {})
    thread.join(5)
