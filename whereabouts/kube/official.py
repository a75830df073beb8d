"""``api.Transport`` over the official ``kubernetes`` client, for the controllers.

The controllers run long and may authenticate through any kubeconfig mechanism (exec
plugins, OIDC refresh, rotated in-cluster tokens), which the official client handles.
They still share ``storage.kubernetes`` with the CNI plugin: this adapter sends the same
path-based requests through the client's REST layer and maps failures to the same
errors. ``kubernetes`` is imported when an adapter is built, never at module import.

Works with the client's two code generations: before v35 ``ApiClient.call_api`` takes
the resource path and raises on non-2xx; from v35 it takes a serialised request
(``param_serialize``) and returns the response whatever its status.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl

from ..errors import StoreError, StoreUnavailableError
from .api import JSON, decode_body, error_body, error_for_status, retry_after_seconds


class OfficialTransport:
    def __init__(
        self,
        api_client: Any = None,
        *,
        kubeconfig: Optional[str] = None,
        context: Optional[str] = None,
        timeout: float = 30.0,
    ) -> None:
        """Use ``api_client`` as given, or build one from ``kubeconfig`` (and ``context``),
        or from the pod's ServiceAccount when neither is given."""
        self.timeout = timeout
        self.api_client = api_client if api_client is not None else _client(kubeconfig, context)

    @property
    def server(self) -> str:
        return str(getattr(self.api_client.configuration, "host", ""))

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        content_type: str = JSON,
    ) -> Dict[str, Any]:
        retried = False
        while True:
            status, headers, data = self._exchange(method, path, body, content_type)
            if 200 <= status < 300:
                return decode_body(data)
            if status == 429 and not retried:
                retried = True
                wait = retry_after_seconds(headers.get("retry-after"))
                if wait <= self.timeout:
                    time.sleep(wait)
                    continue
            raise error_for_status(status, method, path, error_body(data), self.server)

    def close(self) -> None:
        close = getattr(self.api_client, "close", None)
        if close is not None:
            close()

    def _exchange(
        self, method: str, path: str, body: Optional[Mapping[str, Any]], content_type: str
    ) -> Tuple[int, Dict[str, str], bytes]:
        from kubernetes.client.exceptions import ApiException

        resource_path, _, query = path.partition("?")
        query_params: List[Tuple[str, str]] = parse_qsl(query, keep_blank_values=True)
        headers = {"Accept": JSON, "Content-Type": content_type}
        client = self.api_client
        try:
            if hasattr(client, "param_serialize"):
                request = client.param_serialize(
                    method=method,
                    resource_path=resource_path,
                    query_params=query_params,
                    header_params=headers,
                    body=dict(body) if body is not None else None,
                    auth_settings=["BearerToken"],
                )
                response = client.call_api(*request, _request_timeout=self.timeout)
                data = response.read()
                return response.status, _lower(response.getheaders()), data or b""
            raw = client.call_api(
                resource_path,
                method,
                query_params=query_params,
                header_params=headers,
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )
            return raw.status, _lower(raw.getheaders()), raw.data or b""
        except ApiException as exc:
            if not exc.status:
                # status 0: the client failed before any response (TLS, bad request).
                raise StoreUnavailableError(
                    f"cannot reach the Kubernetes API server at {self.server}: {exc.reason}"
                ) from exc
            data = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            return exc.status, _lower(exc.headers or {}), data
        except (OSError, ValueError) as exc:
            raise StoreUnavailableError(
                f"cannot reach the Kubernetes API server at {self.server}: {exc}"
            ) from exc
        except Exception as exc:
            # urllib3's errors (MaxRetryError, ProtocolError, ...) share no stdlib base.
            if type(exc).__module__.startswith("urllib3"):
                raise StoreUnavailableError(
                    f"cannot reach the Kubernetes API server at {self.server}: {exc}"
                ) from exc
            raise


def _client(kubeconfig: Optional[str], context: Optional[str]) -> Any:
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise StoreError(
            "the controllers need the 'kubernetes' package (pip install 'whereabouts[kubernetes]')"
        ) from exc
    # Through Any: typed or not depending on the installed client version.
    loader: Any = config
    try:
        if kubeconfig:
            return loader.new_client_from_config(config_file=kubeconfig, context=context)
        configuration = client.Configuration()
        loader.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except loader.ConfigException as exc:
        raise StoreError(f"cannot configure the Kubernetes client: {exc}") from exc


def _lower(headers: Any) -> Dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(k).lower(): str(v) for k, v in items}


