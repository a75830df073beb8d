"""The Kubernetes datastore: upstream's custom resources, written with compare-and-swap.

Objects (group ``whereabouts.cni.cncf.io/v1alpha1``, all in one namespace):

* ``IPPool`` named ``PoolKey.name``; ``spec`` is upstream's (``range`` and the
  offset-keyed ``allocations``) plus an optional ``node`` per allocation; ``status``
  carries ``allocatedCount`` and ``capacity`` for ``kubectl get`` (pruned harmlessly
  where the CRD lacks it).
* ``OverlappingRangeIPReservation`` named ``ReservationKey.name``; ``spec`` is
  upstream's. Two annotations record the network name and address, because an IPv6
  name whose network name ends in hex digits can be split more than one way.

A pool write is a PUT of the whole object as read (labels, annotations, unknown fields
and undecodable allocations survive) with the resourceVersion it was read at; the API
server refuses it with 409 if anything changed. No lease, no patch.

The CNI path uses only get/create/update on ippools and get/create/delete on
reservations (the chart's Role for the plugin); listing is for the controllers.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Dict, Iterator, Mapping, Optional
from urllib.parse import quote, urlencode

from .. import log as logs
from ..errors import ConflictError, StoreError
from ..kube.api import ApiConflictError, ApiError, NotFoundError, Transport
from ..model import Pool, PoolKey, Reservation, ReservationKey
from . import codec

log = logs.get(__name__)

GROUP = "whereabouts.cni.cncf.io"
API_VERSION = f"{GROUP}/v1alpha1"
POOLS = "ippools"
RESERVATIONS = "overlappingrangeipreservations"
POOL_KIND = "IPPool"
RESERVATION_KIND = "OverlappingRangeIPReservation"
NETWORK_ANNOTATION = f"{GROUP}/network-name"
ADDRESS_ANNOTATION = f"{GROUP}/address"
# An object name that is never created: GETting it proves reachability, authentication
# and the plugin's "get" permission, without needing "list".
PING_NAME = "whereabouts-ping-probe"


class KubernetesStore:
    def __init__(self, transport: Transport, namespace: str, page_size: int = 500) -> None:
        self.transport = transport
        self.namespace = namespace
        self.page_size = page_size

    # ------------------------------------------------------------------ pools

    def read_pool(self, key: PoolKey) -> Pool:
        try:
            obj = self.transport.request("GET", self._path(POOLS, key.name))
        except NotFoundError:
            return Pool(key)
        _, allocations = codec.decode_spec(key.name, _spec(obj), key.network_name)
        return Pool(key, allocations, _resource_version(obj), obj)

    def write_pool(self, pool: Pool) -> Pool:
        name = pool.key.name
        raw = pool.raw or {}
        obj: Dict[str, Any] = dict(raw)
        obj["apiVersion"], obj["kind"] = API_VERSION, POOL_KIND
        spec = codec.encode_spec(pool, _spec(raw) if raw else None)
        obj["spec"] = spec
        status = raw.get("status")
        obj["status"] = {
            **(status if isinstance(status, Mapping) else {}),
            "allocatedCount": len(spec["allocations"]),
            "capacity": codec.capacity(pool.key.range),
        }
        try:
            if pool.version is None:
                obj["metadata"] = _metadata_for_create(raw, name, self.namespace)
                written = self.transport.request("POST", self._path(POOLS), obj)
            else:
                obj["metadata"] = _metadata_for_update(raw, name, self.namespace, pool.version)
                written = self.transport.request("PUT", self._path(POOLS, name), obj)
        except ApiConflictError as exc:
            raise self._invalid_or_conflict(exc, f"IPPool {name}") from exc
        except NotFoundError as exc:
            if pool.version is not None:
                # Deleted since it was read; the next read sees it absent and creates it.
                raise ConflictError(f"IPPool {name} was deleted since it was read") from exc
            raise StoreError(
                f"cannot create IPPool {name} in namespace {self.namespace}: {exc.msg}; is the "
                f"CRD {POOLS}.{GROUP} installed and does the namespace exist?"
            ) from exc
        return Pool(pool.key, dict(pool.allocations), _resource_version(written), written)

    def list_pools(self) -> list[Pool]:
        pools = []
        for obj in self._list(POOLS):
            name = str(obj.get("metadata", {}).get("name", ""))
            try:
                key, allocations = codec.decode_spec(name, _spec(obj))
            except StoreError as exc:
                log.warning("skipping IPPool %s: %s", name, exc.msg)
                continue
            # List items come without apiVersion and kind; a later PUT needs them.
            full = {"apiVersion": API_VERSION, "kind": POOL_KIND, **obj}
            pools.append(Pool(key, allocations, _resource_version(full), full))
        return pools

    # ------------------------------------------------------------- reservations

    def read_reservation(self, key: ReservationKey) -> Optional[Reservation]:
        try:
            obj = self.transport.request("GET", self._path(RESERVATIONS, key.name))
        except NotFoundError:
            return None
        owner = codec.decode_reservation(_spec(obj))
        return Reservation(key, owner, _resource_version(obj), _created(obj))

    def create_reservation(self, reservation: Reservation) -> Optional[Reservation]:
        key = reservation.key
        annotations = {ADDRESS_ANNOTATION: str(key.address)}
        if key.network_name:
            annotations[NETWORK_ANNOTATION] = key.network_name
        obj = {
            "apiVersion": API_VERSION,
            "kind": RESERVATION_KIND,
            "metadata": {"name": key.name, "namespace": self.namespace, "annotations": annotations},
            "spec": codec.encode_reservation(reservation.owner),
        }
        try:
            created = self.transport.request("POST", self._path(RESERVATIONS), obj)
        except ApiConflictError as exc:
            if exc.status == 409:
                return None
            raise self._invalid_or_conflict(exc, f"{RESERVATION_KIND} {key.name}") from exc
        except NotFoundError as exc:
            raise StoreError(
                f"cannot create {RESERVATION_KIND} {key.name} in namespace {self.namespace}: "
                f"{exc.msg}; is the CRD {RESERVATIONS}.{GROUP} installed?"
            ) from exc
        return Reservation(key, reservation.owner, _resource_version(created), _created(created))

    def delete_reservation(self, reservation: Reservation) -> bool:
        if reservation.version is None:
            return False
        options = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"resourceVersion": reservation.version},
        }
        path = self._path(RESERVATIONS, reservation.key.name)
        try:
            self.transport.request("DELETE", path, options)
        except (NotFoundError, ApiConflictError):
            return False
        return True

    def list_reservations(self) -> list[Reservation]:
        reservations = []
        for obj in self._list(RESERVATIONS):
            metadata = obj.get("metadata") or {}
            name = str(metadata.get("name", ""))
            annotations = metadata.get("annotations") or {}
            key = codec.reservation_key_from(
                name, annotations.get(NETWORK_ANNOTATION), annotations.get(ADDRESS_ANNOTATION)
            )
            if key is None:
                log.warning("skipping %s %s: its name is not an address", RESERVATION_KIND, name)
                continue
            owner = codec.decode_reservation(_spec(obj))
            reservations.append(Reservation(key, owner, _resource_version(obj), _created(obj)))
        return reservations

    # -------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        try:
            self.transport.request("GET", self._path(POOLS, PING_NAME))
        except NotFoundError as exc:
            # A Status "NotFound" names the missing object: the API, the CRD and our
            # permission are all there. A bare 404 means the resource type is unknown.
            if exc.details != "NotFound":
                raise StoreError(
                    f"the API server does not serve {POOLS}.{GROUP}: is the CRD installed?"
                ) from exc

    def close(self) -> None:
        self.transport.close()

    # ---------------------------------------------------------------- helpers

    def _path(self, plural: str, name: Optional[str] = None, **query: str) -> str:
        path = f"/apis/{API_VERSION}/namespaces/{quote(self.namespace, safe='')}/{plural}"
        if name is not None:
            path += "/" + quote(name, safe="")
        if query:
            path += "?" + urlencode(query)
        return path

    def _list(self, plural: str) -> Iterator[Mapping[str, Any]]:
        token = ""
        restarted = False
        while True:
            query = {"limit": str(self.page_size)}
            if token:
                query["continue"] = token
            try:
                page = self.transport.request("GET", self._path(plural, **query))
            except ApiError as exc:
                if exc.status != 410 or restarted:
                    raise
                # The continue token expired (etcd compacted past it): start over once.
                restarted, token = True, ""
                continue
            for item in page.get("items") or []:
                if isinstance(item, Mapping):
                    yield item
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def _invalid_or_conflict(self, exc: ApiConflictError, what: str) -> StoreError:
        if exc.status == 422:
            # Validation refused the object: retrying the same write cannot help.
            return StoreError(f"the API server rejected {what} as invalid: {exc.msg}")
        return exc


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _resource_version(obj: Mapping[str, Any]) -> str:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if not isinstance(version, str) or not version:
        raise StoreError("the API server returned an object without metadata.resourceVersion")
    return version


def _created(obj: Mapping[str, Any]) -> Optional[float]:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        log.warning("unparsable creationTimestamp %r", stamp)
        return None


def _metadata_for_create(raw: Mapping[str, Any], name: str, namespace: str) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {"name": name, "namespace": namespace}
    old = raw.get("metadata")
    if isinstance(old, Mapping):
        for field in ("labels", "annotations"):
            if old.get(field):
                metadata[field] = old[field]
    return metadata


def _metadata_for_update(
    raw: Mapping[str, Any], name: str, namespace: str, version: str
) -> Dict[str, Any]:
    old = raw.get("metadata")
    metadata: Dict[str, Any] = dict(old) if isinstance(old, Mapping) else {}
    # Omitted managedFields are kept by the server; sending them back only costs bytes.
    metadata.pop("managedFields", None)
    metadata.update(name=name, namespace=namespace, resourceVersion=version)
    return metadata
