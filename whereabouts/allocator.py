"""Choose an address: the lowest free one of a range. Pure; no I/O.

Blocked addresses are the pool's holders, the excluded blocks, the gateway and, for
IPv4, every address ending in ``.0`` (the original README promises these are never
handed out). Holders are kept as a sorted list and runs of consecutive holders are
skipped with binary search, so a densely packed pool costs O(log n) per run, not
O(n) per address.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import AbstractSet, Iterable, List, Optional, Sequence

from .errors import RangeExhaustedError
from .iprange import Interval, merge, usable_bounds
from .model import IPAddress, IPNetwork


def lowest_free(
    first: int,
    last: int,
    held: Sequence[int],
    blocked: Sequence[Interval] = (),
    skip_dot_zero: bool = False,
) -> Optional[int]:
    """The lowest address in ``[first, last]`` that is neither held nor blocked.

    ``held`` must be sorted and free of duplicates; ``blocked`` sorted and merged.
    """
    candidate = first
    block_index = 0
    while candidate <= last:
        while block_index < len(blocked) and blocked[block_index][1] < candidate:
            block_index += 1
        if block_index < len(blocked) and blocked[block_index][0] <= candidate:
            candidate = blocked[block_index][1] + 1
            continue
        if skip_dot_zero and candidate & 0xFF == 0:
            candidate += 1
            continue
        start = bisect_left(held, candidate)
        if start < len(held) and held[start] == candidate:
            candidate = _end_of_run(held, start) + 1
            continue
        return candidate
    return None


def _end_of_run(held: Sequence[int], start: int) -> int:
    """The last value of the run of consecutive integers beginning at ``held[start]``."""
    low, high = start, len(held) - 1
    base = held[start]
    # held[j] - base == j - start holds for a prefix of indices; find its end.
    while low < high:
        mid = (low + high + 1) // 2
        if held[mid] - base == mid - start:
            low = mid
        else:
            high = mid - 1
    return held[low]


def choose(
    network: IPNetwork,
    first: IPAddress,
    last: IPAddress,
    held_offsets: Iterable[int],
    exclude: Sequence[IPNetwork] = (),
    avoid: AbstractSet[IPAddress] = frozenset(),
) -> IPAddress:
    """The lowest free address of a range, as an ``ipaddress`` object.

    ``held_offsets`` are the pool's keys: offsets from the network address (unique).
    ``avoid`` are extra addresses to pass over (the gateway, collisions with
    overlapping ranges). Raises RangeExhaustedError naming the range when nothing is free.
    """
    base = int(network.network_address)
    low, high = usable_bounds(network)
    low, high = max(low, int(first)) - base, min(high, int(last)) - base
    blocked: List[Interval] = [
        (int(n.network_address) - base, int(n.broadcast_address) - base) for n in exclude
    ]
    blocked.extend((int(a) - base, int(a) - base) for a in avoid)
    holders = sorted(held_offsets)
    # Only holders inside the bounds matter; slicing keeps the run search tight.
    holders = holders[bisect_left(holders, low) : bisect_right(holders, high)]
    # In offset space ``.0`` is still ``offset & 0xFF == 0``: an IPv4 network of a
    # prefix longer than /24 never contains a .0 other than its network address,
    # and shorter prefixes start on a multiple of 256.
    found = lowest_free(low, high, holders, merge(blocked), skip_dot_zero=network.version == 4)
    if found is None:
        excluded = ", ".join(str(n) for n in exclude) or "none"
        raise RangeExhaustedError(
            f"no free address in range {network} ({first} - {last}, excluded: {excluded})",
            details=f"{len(holders)} addresses allocated",
        )
    return network.network_address + found
