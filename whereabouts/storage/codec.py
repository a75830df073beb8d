"""Pools and reservations to and from the JSON every backend stores.

All three backends store a pool as upstream's ``IPPool.spec`` shape, so one codec serves
them: ``{"range": "<canonical CIDR>", "allocations": {"<decimal offset>": {"id",
"podref", "ifname", "node"?}}}``. Reservations are ``OverlappingRangeIPReservation.spec``:
``{"podref", "ifname", "containerid"}``.

Unlike upstream, an allocation this program cannot decode is not dropped on the next
write: it is logged, left out of ``Pool.allocations`` and written back verbatim. Dropping
it would free an address some other writer still believes it holds.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Mapping, Optional, Tuple

from .. import log as logs
from ..errors import StoreError
from ..iprange import usable_bounds
from ..model import IPAddress, IPNetwork, Owner, Pool, PoolKey, ReservationKey, normalize_name

log = logs.get(__name__)

# status.capacity is an integer in the CRD, which the API server holds as an int64.
_INT64_MAX = 2**63 - 1


def decode_allocations(
    spec: Mapping[str, Any], network: IPNetwork, pool_name: str
) -> Tuple[Dict[int, Owner], Dict[str, Any]]:
    """``spec.allocations`` as (offset -> Owner, undecodable entries kept verbatim).

    An entry decodes when its key is a decimal integer inside the range (upstream parses
    keys with ParseInt, so "+7" and "007" mean offset 7) and its value is an object.
    """
    raw = spec.get("allocations")
    decoded: Dict[int, Owner] = {}
    kept: Dict[str, Any] = {}
    if raw is None:
        return decoded, kept
    if not isinstance(raw, Mapping):
        # Nothing in it can be kept beside our entries; the pool reads as empty and the
        # next write replaces the field.
        log.warning("pool %s: spec.allocations is not an object; ignored", pool_name)
        return decoded, kept
    size = network.num_addresses
    for key, value in raw.items():
        offset = _parse_offset(key)
        if offset is None or not 0 <= offset < size or not isinstance(value, Mapping):
            log.warning("pool %s: cannot decode allocation %r; it is kept as is", pool_name, key)
            kept[key] = value
            continue
        if offset in decoded:
            # Two spellings of one offset ("7" and "007"): the first one read owns it.
            log.warning("pool %s: duplicate allocation key %r; it is kept as is", pool_name, key)
            kept[key] = value
            continue
        decoded[offset] = _owner_from(value)
    return decoded, kept


def _parse_offset(key: str) -> Optional[int]:
    text = key[1:] if key[:1] in "+-" else key
    if not text or not text.isascii() or not text.isdigit():
        return None
    return -int(text) if key[:1] == "-" else int(text)


def _owner_from(value: Mapping[str, Any]) -> Owner:
    node = value.get("node")
    return Owner(
        container_id=_text(value.get("id")),
        podref=_text(value.get("podref")),
        ifname=_text(value.get("ifname")),
        node=node if isinstance(node, str) and node else None,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def encode_owner(owner: Owner) -> Dict[str, str]:
    entry = {"id": owner.container_id, "podref": owner.podref}
    # Entries written before upstream v0.8 have no ifname; keep them byte-for-byte.
    if owner.ifname:
        entry["ifname"] = owner.ifname
    if owner.node:
        entry["node"] = owner.node
    return entry


def undecodable_allocations(spec: Mapping[str, Any], network: IPNetwork) -> Dict[str, Any]:
    """The entries ``decode_allocations`` keeps verbatim, found without decoding owners:
    a write needs only these, and decoding every entry again doubled its cost."""
    raw = spec.get("allocations")
    if not isinstance(raw, Mapping):
        return {}
    size = network.num_addresses
    seen = set()
    kept: Dict[str, Any] = {}
    for key, value in raw.items():
        offset = _parse_offset(key)
        if offset is None or not 0 <= offset < size or not isinstance(value, Mapping) or (
            offset in seen
        ):
            kept[key] = value
        else:
            seen.add(offset)
    return kept


def encode_spec(pool: Pool, base_spec: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The pool as ``IPPool.spec``, keeping unknown fields and undecodable allocations of
    ``base_spec`` (the spec as last read)."""
    spec: Dict[str, Any] = dict(base_spec or {})
    allocations: Dict[str, Any] = {}
    if base_spec is not None:
        allocations.update(undecodable_allocations(base_spec, pool.key.range))
    for offset in sorted(pool.allocations):
        allocations[str(offset)] = encode_owner(pool.allocations[offset])
    spec["range"] = str(pool.key.range)
    spec["allocations"] = allocations
    return spec


def decode_spec(
    name: str, spec: Mapping[str, Any], network_name: Optional[str] = None
) -> Tuple[PoolKey, Dict[int, Owner]]:
    """A stored spec back into its key and allocations. ``network_name`` is derived from
    the object name when not given (the name is ``[network_name-]<normalised range>``)."""
    network = parse_range(spec.get("range"), name)
    if network_name is None:
        network_name = network_name_from(name, network)
    allocations, _ = decode_allocations(spec, network, name)
    return PoolKey(network_name, network), allocations


def parse_range(value: Any, name: str) -> IPNetwork:
    if not isinstance(value, str):
        raise StoreError(f"pool {name}: spec.range is missing")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise StoreError(f"pool {name}: spec.range {value!r} is not a CIDR") from exc


def network_name_from(name: str, network: IPNetwork) -> str:
    """The network_name part of a pool's object name; "" when the name is the range alone
    or does not follow the scheme (e.g. upstream node-slice pools)."""
    suffix = normalize_name(str(network))
    if name.endswith("-" + suffix):
        return name[: -len(suffix) - 1]
    return ""


def capacity(network: IPNetwork) -> int:
    """Addresses a range can hand out ignoring range_start/end and exclude (the store
    does not see those), capped to what an int64 status field holds."""
    low, high = usable_bounds(network)
    return max(0, min(high - low + 1, _INT64_MAX))


def encode_reservation(owner: Owner) -> Dict[str, str]:
    """``OverlappingRangeIPReservation.spec``. ``containerid`` is written although upstream
    stopped in v0.8.0: CRDs from before then require it, and it costs nothing."""
    spec = {"podref": owner.podref, "ifname": owner.ifname, "containerid": owner.container_id}
    if owner.node:
        spec["node"] = owner.node
    return spec


def created_of(value: Mapping[str, Any]) -> Optional[float]:
    """The "created" timestamp file and etcd records carry (seconds since the epoch)."""
    created = value.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return None


def decode_reservation(spec: Mapping[str, Any]) -> Owner:
    return Owner(
        container_id=_text(spec.get("containerid")),
        podref=_text(spec.get("podref")),
        ifname=_text(spec.get("ifname")),
        node=_text(spec.get("node")) or None,
    )


def reservation_key_from(
    name: str, network_name: Optional[str] = None, address: Optional[str] = None
) -> Optional[ReservationKey]:
    """The key of a reservation named ``name``.

    Given the network name and address recorded beside the object, they are used as is.
    Otherwise the name is split: the address is the longest tail that is an address in
    upstream's normalised spelling. An IPv6 name whose network name ends in hex digits can
    split two ways; the chosen key still reproduces ``name`` exactly, so deletes by name
    hit the right object.
    """
    if address is not None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None:
            key = ReservationKey(network_name or "", ip)
            if key.name == name:
                return key
    candidates = [(-1, name)] + [(i, name[i + 1 :]) for i, c in enumerate(name) if c == "-"]
    for index, tail in candidates:
        ip = _parse_normalized_ip(tail)
        if ip is not None:
            return ReservationKey(name[:index] if index >= 0 else "", ip)
    return None


def reservation_key_in(name: str, spec: Mapping[str, Any]) -> Optional[ReservationKey]:
    """The key of a reservation named ``name`` whose stored ``spec`` may record its
    ``network_name`` and ``address`` (non-strings are ignored)."""
    network, address = spec.get("network_name"), spec.get("address")
    return reservation_key_from(
        name,
        network if isinstance(network, str) else None,
        address if isinstance(address, str) else None,
    )


def _parse_normalized_ip(text: str) -> Optional[IPAddress]:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.replace("-", ":"))
    except ValueError:
        return None
    return ip if normalize_name(str(ip)) == text else None
