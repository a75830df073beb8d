"""Integer range math over ``ipaddress`` values.

Addresses are handled as ints in the hot paths so cost grows with the number of
allocations and exclusions, never with the size of the range (a /8 or an IPv6 /64
costs the same as a /24).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, Tuple

from .model import IPAddress, IPNetwork

Interval = Tuple[int, int]
"""Inclusive ``(low, high)`` bounds of a block of addresses."""


def usable_bounds(network: IPNetwork) -> Interval:
    """First and last host of a network: never the network or broadcast address.

    Upstream applies the same rule to IPv6 (no ``::`` subnet-router anycast address,
    no all-ones address), and we keep it so pools written by either stay compatible.
    """
    return int(network.network_address) + 1, int(network.broadcast_address) - 1


def host_bits(network: IPNetwork) -> int:
    return network.max_prefixlen - network.prefixlen


def network_interval(network: IPNetwork) -> Interval:
    return int(network.network_address), int(network.broadcast_address)


def merge(intervals: Iterable[Interval]) -> List[Interval]:
    """Sort and coalesce overlapping or adjacent intervals."""
    merged: List[Interval] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def to_address(value: int, version: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def size(interval: Interval) -> int:
    return interval[1] - interval[0] + 1
