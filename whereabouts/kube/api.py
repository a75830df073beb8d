"""The Kubernetes API as this package uses it: one path-based request method.

``Transport`` is what ``storage.kubernetes`` talks to. Two implementations exist: the
stdlib ``transport.HTTPTransport`` for the CNI plugin (fast start, zipapp-safe) and
``official.OfficialTransport`` over the ``kubernetes`` client for the controllers (every
kubeconfig auth plugin). Both turn HTTP failures into the same errors, decided here:

=====================  ===============================================================
404                    NotFoundError
409, 422               ApiConflictError (a ConflictError; ``reason`` says which:
                       "Conflict", "AlreadyExists", "Invalid", ...)
401, 403               StoreError naming the verb, resource and namespace refused
413, "too large"       ObjectTooLargeError
429                    retried once after Retry-After inside the deadline by the
                       transport, then StoreUnavailableError
5xx, connection        StoreUnavailableError
other 4xx              StoreError
=====================  ===============================================================
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

from ..errors import ConflictError, ObjectTooLargeError, StoreError, StoreUnavailableError

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Transport(Protocol):
    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        content_type: str = JSON,
    ) -> Dict[str, Any]:
        """Send one request; ``path`` includes any query string. Returns the decoded JSON
        body ({} when empty). Raises the errors in this module's table."""

    def close(self) -> None:
        """Release the connection."""


class NotFoundError(StoreError):
    """404: the object (or, for a collection, its type or namespace) does not exist."""


class ApiConflictError(ConflictError):
    """409 or 422. ``reason`` is the Status reason: "Conflict" (stale resourceVersion),
    "AlreadyExists" (create of an existing name), "Invalid" (rejected by validation or a
    failed JSON-patch test), ...; ``status`` is the HTTP status."""

    def __init__(self, msg: str, reason: str, status: int) -> None:
        super().__init__(msg, details=reason)
        self.reason = reason
        self.status = status


class ApiError(StoreError):
    """Any other refusal; ``status`` is the HTTP status, ``reason`` the Status reason."""

    def __init__(self, msg: str, reason: str, status: int) -> None:
        super().__init__(msg, details=reason)
        self.reason = reason
        self.status = status


def describe(method: str, path: str) -> Tuple[str, str, str]:
    """(verb, resource, namespace) of a request, in RBAC terms, for error messages."""
    route, _, query = path.partition("?")
    parts = [p for p in route.split("/") if p]
    # /api/v1/... or /apis/<group>/<version>/...
    group = ""
    if parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        rest = parts[2:]
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else "(api)"
    named = len(rest) >= 2
    verb = _VERBS.get(method.upper(), method.lower())
    if verb == "get" and not named:
        verb = "watch" if "watch=true" in query or "watch=1" in query else "list"
    if group:
        resource = f"{resource}.{group}"
    return verb, resource, namespace


def error_for_status(
    status: int, method: str, path: str, payload: Any, server: str = ""
) -> StoreError:
    """The error for a non-2xx response. ``payload`` is the decoded body (a Status object
    as a dict, or text)."""
    verb, resource, namespace = describe(method, path)
    where = f" in namespace {namespace}" if namespace else ""
    at = f" at {server}" if server else ""
    reason = ""
    message = ""
    if isinstance(payload, Mapping):
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or "")
    elif payload:
        message = str(payload).strip()[:300]
    message = message or f"HTTP {status}"
    if status == 404:
        return NotFoundError(f"{verb} {resource}{where}: not found ({message})", details=reason)
    if status in (409, 422):
        return ApiConflictError(
            f"{verb} {resource}{where}: {reason or status}: {message}",
            reason or str(status),
            status,
        )
    if status == 413 or "too large" in message.lower():
        return ObjectTooLargeError(
            f"{verb} {resource}{where}: the API server refused the object for its size "
            f"({message}); a pool holds every allocation of its range, so split the range",
        )
    if status == 401:
        return ApiError(
            f"the Kubernetes API server{at} did not accept the credentials "
            f"(401 Unauthorized) to {verb} {resource}{where}: {message}; the kubeconfig's "
            "token or certificate is invalid or expired (the node agent renews it)",
            reason or "Unauthorized",
            status,
        )
    if status == 403:
        return ApiError(
            f"not allowed to {verb} {resource}{where} (403 Forbidden): {message}; grant "
            f"'{verb}' on {resource} to this identity (the chart's RBAC does) or use the "
            "kubeconfig the installer wrote",
            reason or "Forbidden",
            status,
        )
    if status == 429 or status >= 500:
        return StoreUnavailableError(
            f"the Kubernetes API server{at} could not {verb} {resource}{where} now "
            f"(HTTP {status}): {message}",
            details=reason,
        )
    return ApiError(f"{verb} {resource}{where}: HTTP {status}: {message}", reason, status)


def retry_after_seconds(value: Optional[str]) -> float:
    """Retry-After as seconds; the HTTP-date form and junk mean one second."""
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def decode_body(data: bytes) -> Dict[str, Any]:
    """A 2xx response body as ``Transport.request`` returns it: {} when empty, a JSON
    list wrapped as ``{"items": [...]}``."""
    if not data:
        return {}
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"the API server answered with invalid JSON: {exc}") from exc
    return decoded if isinstance(decoded, dict) else {"items": decoded}


def error_body(data: bytes) -> Any:
    """An error response body for ``error_for_status``: its JSON, else its text."""
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
