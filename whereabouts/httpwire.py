"""A minimal HTTP/1.1 client connection for the exec path.

``http.client`` imports the ``email`` package to parse headers, which costs more than
everything else the plugin imports for one request. The API server and etcd's gateway
need only this much: one keep-alive connection, a request with a body, a response with
Content-Length or chunked transfer encoding.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple

if TYPE_CHECKING:
    import ssl

_MAX_LINE = 65536
_MAX_HEADERS = 200


def describe_error(exc: BaseException) -> str:
    """A short text for a failed exchange: "timed out", the OS error's strerror, else
    the exception's text (or its type's name)."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class HTTPError(OSError):
    """The peer broke the protocol (malformed status line, headers or body)."""


class RemoteDisconnected(ConnectionResetError):
    """The peer closed the connection before answering (a stale keep-alive connection)."""


class Response:
    __slots__ = ("body", "headers", "status", "will_close")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes, will_close: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.will_close = will_close


class Connection:
    """One connection to ``host:port``, opened on the first request, TLS when a context
    is given (verified against ``server_name``, default ``host``)."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: Optional[ssl.SSLContext] = None,
        server_name: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.context = context
        self.server_name = server_name or host
        self._sock: Optional[socket.socket] = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            try:
                sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
            except BaseException:
                sock.close()
                raise
        return sock

    def request(
        self, method: str, target: str, body: Optional[bytes], headers: Mapping[str, str]
    ) -> Response:
        if self._sock is None:
            self._sock = self._connect()
            self._buffer = b""
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body) if body else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._sock.sendall(head + body if body else head)
        return self._read_response(method)

    # ------------------------------------------------------------------ reading

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise RemoteDisconnected("connection closed by the server")
        self._buffer += chunk

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
                return line
            if len(self._buffer) > _MAX_LINE:
                raise HTTPError("response line too long")
            self._fill()

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _read_response(self, method: str) -> Response:
        status, headers = self._head()
        while 100 <= status < 200:  # interim responses carry no body
            status, headers = self._head()
        will_close = headers.get("connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            try:
                body = self._exactly(int(headers["content-length"]))
            except ValueError as exc:
                raise HTTPError("bad Content-Length") from exc
        else:
            body = self._until_close()
            will_close = True
        if will_close:
            self.close()
        return Response(status, headers, body, will_close)

    def _head(self) -> Tuple[int, Dict[str, str]]:
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise HTTPError(f"malformed status line {parts!r}")
        headers: Dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = self._line()
            if not line:
                return int(parts[1]), headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HTTPError(f"malformed header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        raise HTTPError("too many response headers")

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise HTTPError(f"bad chunk size {size_text!r}") from exc
            if size == 0:
                while self._line():  # trailers end with an empty line
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            self._exactly(2)  # the CRLF after each chunk

    def _until_close(self) -> bytes:
        while True:
            try:
                self._fill()
            except RemoteDisconnected:
                data, self._buffer = self._buffer, b""
                return data
