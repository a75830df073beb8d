"""Pods as the cleanup decision sees them: API objects (JSON dicts) to PodView.

Stdlib only; the controllers read pods as plain JSON through the transport and the
watch stream, never as generated client models (smaller, faster, and tolerant of
fields the client library does not know). ``KubePods`` and ``KubeEvents`` are the
controllers' pod look-ups, lists and events over any ``kube.api.Transport``.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import socket
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Set, Tuple
from urllib.parse import quote, urlencode

from ..kube.api import ApiError, NotFoundError, Transport
from ..model import IPAddress
from ..reconcile import PodView, parse_ips
from . import EVENT_REASON, Freed

log = logging.getLogger(__name__)

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# Multus before v3.7 wrote this name; read it only when the current one is absent.
LEGACY_NETWORK_STATUS = "k8s.v1.cni.cncf.io/networks-status"
SANDBOX_CONDITION = "PodReadyToStartContainers"

_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:?\d\d)?$"
)


def podref(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def split_podref(ref: str) -> Tuple[str, str]:
    namespace, _, name = ref.partition("/")
    return namespace, name


def parse_time(value: Any) -> Optional[float]:
    """RFC 3339 (``metav1.Time`` / ``MicroTime``) to seconds since the epoch."""
    if not isinstance(value, str):
        return None
    m = _TIME.match(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = float("0." + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    offset = 0
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second,
                                   tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return moment.timestamp() + fraction - offset


def parse_network_status(text: Any) -> Optional[Dict[str, FrozenSet[IPAddress]]]:
    """The annotation's IPs by interface; None when it is missing or is not a JSON list.

    Entries are ``{"name", "interface", "ips", "mac", "default", "dns"}``; entries
    without ``interface`` (old Multus) are gathered under "". Unreadable entries are
    skipped, not fatal: the decision only ever keeps more because of them.
    """
    if not isinstance(text, str):
        return None
    try:
        entries = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    found: Dict[str, Set[IPAddress]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        interface = entry.get("interface")
        name = interface if isinstance(interface, str) else ""
        ips = entry.get("ips")
        found.setdefault(name, set()).update(parse_ips(ips if isinstance(ips, list) else ()))
    return {name: frozenset(ips) for name, ips in found.items()}


def pod_view(obj: Mapping[str, Any]) -> Optional[PodView]:
    """A Pod (JSON as the API returns it) as a PodView; None if it names no pod."""
    meta = _mapping(obj.get("metadata"))
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    annotations = _mapping(meta.get("annotations"))
    raw_status = annotations.get(NETWORK_STATUS)
    if raw_status is None:
        raw_status = annotations.get(LEGACY_NETWORK_STATUS)
    interfaces = parse_network_status(raw_status)
    if raw_status is not None and interfaces is None:
        log.warning("pod %s/%s: unparsable %s annotation; treated as absent",
                    namespace, name, NETWORK_STATUS)
    sandbox_ready, sandbox_since = _condition(status, SANDBOX_CONDITION)
    node = spec.get("nodeName")
    phase = status.get("phase")
    uid = meta.get("uid")
    return PodView(
        podref=podref(namespace, name),
        uid=uid if isinstance(uid, str) else "",
        phase=phase if isinstance(phase, str) else "",
        node=node if isinstance(node, str) and node else None,
        creation_timestamp=parse_time(meta.get("creationTimestamp")),
        deletion_timestamp=parse_time(meta.get("deletionTimestamp")),
        has_network_status=interfaces is not None,
        interfaces=interfaces or {},
        sandbox_ready=sandbox_ready,
        sandbox_ready_since=sandbox_since if sandbox_ready else None,
    )


def _condition(status: Mapping[str, Any], kind: str) -> Tuple[Optional[bool], Optional[float]]:
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return None, None
    for condition in conditions:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return (condition.get("status") == "True",
                    parse_time(condition.get("lastTransitionTime")))
    return None, None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def resource_version(obj: Mapping[str, Any]) -> Optional[str]:
    rv = _mapping(obj.get("metadata")).get("resourceVersion")
    return rv if isinstance(rv, str) and rv else None


# ---------------------------------------------------------------- the API, as JSON


class PodsGone(Exception):
    """410 Gone: a list continue token or a watch resourceVersion has expired."""


class KubePods:
    """Pods read through an ``api.Transport`` (the controllers use the official one)."""

    def __init__(self, transport: Transport, page_size: int = 500) -> None:
        self.transport = transport
        self.page_size = page_size

    def get(self, ref: str) -> Optional[PodView]:
        namespace, name = split_podref(ref)
        if not namespace or not name:
            return None
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
        try:
            obj = self.transport.request("GET", path)
        except NotFoundError:
            return None
        return pod_view(obj)

    def list(
        self,
        field_selector: Optional[str] = None,
        wanted: Optional[Callable[[PodView], bool]] = None,
    ) -> Tuple[Dict[str, PodView], str]:
        """Every pod (or those ``field_selector`` selects) that ``wanted`` accepts, by
        podref, and the list's resourceVersion (to watch from). Paged; a consistent
        snapshot: an expired continue token restarts the list once."""
        pods: Dict[str, PodView] = {}
        token, restarted = "", False
        while True:
            query = {"limit": str(self.page_size)}
            if field_selector:
                query["fieldSelector"] = field_selector
            if token:
                query["continue"] = token
            try:
                page = self.transport.request("GET", "/api/v1/pods?" + urlencode(query))
            except ApiError as exc:
                if exc.status != 410 or restarted:
                    raise
                log.info("pod list continue token expired; listing again")
                pods.clear()
                token, restarted = "", True
                continue
            for item in page.get("items") or ():
                view = pod_view(item) if isinstance(item, Mapping) else None
                if view is not None and (wanted is None or wanted(view)):
                    pods[view.podref] = view
            meta = _mapping(page.get("metadata"))
            token = str(meta.get("continue") or "")
            if not token:
                return pods, str(meta.get("resourceVersion") or "")


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeEvents:
    """Records ``IPAddressGarbageCollected`` on the pod. Best effort: a failure is logged
    (once, if it is a refusal) and never stops the caller."""

    def __init__(
        self,
        transport: Transport,
        component: str,
        host: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> None:
        self.transport = transport
        self.component = component
        self.host = host or socket.gethostname()
        self.enabled = True
        self.limit = limit  # events per instance at most (a reconciler pass after a storm)
        self.sent = 0

    def emit(self, freed: Freed) -> None:
        if not self.enabled:
            return
        if self.limit is not None and self.sent >= self.limit:
            self.enabled = False
            log.info("recorded %d events; the rest of this pass is in the log only", self.sent)
            return
        self.sent += 1
        namespace, name = split_podref(freed.podref)
        if not namespace or not name:
            return
        involved: Dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                                    "namespace": namespace, "name": name}
        if freed.uid:
            involved["uid"] = freed.uid
        now = _now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": involved,
            "reason": EVENT_REASON,
            # upstream's wording, so alerts and searches keep working
            "message": f"successful cleanup of IP address [{freed.address}] from network "
                       f"{freed.pool} ({freed.ifname or 'no interface'}: {freed.reason})",
            "type": "Normal",
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        try:
            self.transport.request("POST", path, body)
        except ApiError as exc:
            if exc.status == 403:
                self.enabled = False
                log.warning("not allowed to create events (%s); no more events will be "
                            "recorded", exc.msg)
            else:
                log.warning("could not record event for %s: %s", freed.podref, exc.msg)
        except Exception as exc:
            log.warning("could not record event for %s: %s", freed.podref, exc)
