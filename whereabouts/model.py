"""Value types shared by every layer: owners, pools, overlapping-range reservations.

Allocations are keyed by their offset from the range's network address, the format
upstream whereabouts stores in ``IPPool.spec.allocations``; Python ints keep all 128
IPv6 bits.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Owner:
    """Who holds an address: one interface of one container of one pod."""

    container_id: str
    podref: str
    ifname: str
    node: Optional[str] = None

    def same_attachment(self, other: Owner) -> bool:
        """Same pod and interface (ADD idempotency; upstream matches podref + ifname)."""
        return self.podref == other.podref and self.ifname == other.ifname

    def same_container(self, other: Owner) -> bool:
        """Same container and interface (DEL matching, as upstream and the CNI spec)."""
        return self.container_id == other.container_id and self.ifname == other.ifname


def normalize_name(text: str) -> str:
    """Upstream's object-name normalisation: ``:`` and ``/`` become ``-``."""
    if text.endswith(":"):
        text += "0"
    return text.replace(":", "-").replace("/", "-")


@dataclass(frozen=True)
class PoolKey:
    """One allocation domain: a range within a named network."""

    network_name: str
    range: IPNetwork

    @property
    def name(self) -> str:
        """Upstream's IPPool name: ``[network_name-]<cidr with ':' and '/' as '-'>``."""
        base = normalize_name(str(self.range))
        return f"{self.network_name}-{base}" if self.network_name else base


@dataclass(frozen=True)
class Pool:
    """A snapshot of one pool as read from a store.

    ``version`` is the store's compare-and-swap token (None: the pool does not exist
    yet, and writing it creates it). ``raw`` is the backend's own representation, kept
    so a write preserves what this program does not model (labels, annotations).
    """

    key: PoolKey
    allocations: Mapping[int, Owner] = field(default_factory=dict)
    version: Optional[str] = None
    raw: Optional[Mapping[str, Any]] = field(default=None, compare=False, repr=False)

    def address(self, offset: int) -> IPAddress:
        return self.key.range.network_address + offset

    def offset(self, address: IPAddress) -> int:
        return int(address) - int(self.key.range.network_address)

    def with_allocations(self, allocations: Mapping[int, Owner]) -> Pool:
        return replace(self, allocations=dict(allocations))


@dataclass(frozen=True)
class ReservationKey:
    """An address reserved across overlapping ranges within one named network."""

    network_name: str
    address: IPAddress

    @property
    def name(self) -> str:
        """Upstream's OverlappingRangeIPReservation name (``NormalizeIP``)."""
        base = normalize_name(str(self.address))
        return f"{self.network_name}-{base}" if self.network_name else base


@dataclass(frozen=True)
class Reservation:
    key: ReservationKey
    owner: Owner
    version: Optional[str] = None
    created: Optional[float] = field(default=None, compare=False)
    """When the store created it (seconds since the epoch; Kubernetes
    ``metadata.creationTimestamp``), None when the store does not say. The reconciler
    uses it not to free a reservation an ADD in flight made before its pool write."""
