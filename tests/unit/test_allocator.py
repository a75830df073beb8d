"""The allocator hands out the lowest free address and never a forbidden one."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whereabouts.allocator import choose, lowest_free
from whereabouts.errors import RangeExhaustedError


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _choose_all(net_text: str, count: int, **kwargs: object) -> list[str]:
    net = _net(net_text)
    held: set[int] = set()
    out = []
    for _ in range(count):
        address = choose(net, net.network_address, net.broadcast_address, held, **kwargs)  # type: ignore[arg-type]
        held.add(int(address) - int(net.network_address))
        out.append(str(address))
    return out


def test_first_address_skips_the_network_address() -> None:
    assert _choose_all("192.168.1.32/28", 1) == ["192.168.1.33"]


def test_slash_30_yields_exactly_two_addresses() -> None:
    assert _choose_all("10.0.0.0/30", 2) == ["10.0.0.1", "10.0.0.2"]
    with pytest.raises(RangeExhaustedError, match=r"10\.0\.0\.0/30"):
        _choose_all("10.0.0.0/30", 3)


def test_ipv4_addresses_ending_in_dot_zero_are_never_handed_out() -> None:
    out = _choose_all("10.0.0.0/23", 260)
    assert "10.0.1.0" not in out
    assert out[254:256] == ["10.0.0.255", "10.0.1.1"]


def test_ipv6_addresses_ending_in_zero_octet_are_allowed() -> None:
    out = _choose_all("fd00::/120", 3)
    assert out == ["fd00::1", "fd00::2", "fd00::3"]


def test_excluded_block_is_skipped_whole() -> None:
    net = _net("192.168.2.224/28")
    excl = (_net("192.168.2.228/30"),)
    out = _choose_all("192.168.2.224/28", 8, exclude=excl)
    assert out[:4] == ["192.168.2.225", "192.168.2.226", "192.168.2.227", "192.168.2.232"]
    assert net.broadcast_address not in map(ipaddress.ip_address, out)


def test_gateway_in_avoid_is_never_handed_out() -> None:
    out = _choose_all("10.1.0.0/24", 2, avoid=frozenset({ipaddress.ip_address("10.1.0.1")}))
    assert out == ["10.1.0.2", "10.1.0.3"]


def test_range_start_and_end_bound_the_choice() -> None:
    net = _net("10.2.0.0/24")
    first, last = ipaddress.ip_address("10.2.0.10"), ipaddress.ip_address("10.2.0.11")
    held: set[int] = set()
    got = []
    for _ in range(2):
        address = choose(net, first, last, held)
        held.add(int(address) - int(net.network_address))
        got.append(str(address))
    assert got == ["10.2.0.10", "10.2.0.11"]
    with pytest.raises(RangeExhaustedError):
        choose(net, first, last, held)


def test_ipv6_offsets_beyond_two_to_the_63_work() -> None:
    net = _net("fd00::/64")
    first = net.network_address + 2**63 + 5
    address = choose(net, first, net.broadcast_address, {2**63 + 5})
    assert int(address) - int(net.network_address) == 2**63 + 6


def test_a_huge_range_with_a_packed_prefix_is_cheap() -> None:
    net = _net("fd00::/64")
    held = range(1, 10_001)
    address = choose(net, net.network_address, net.broadcast_address, held)
    assert int(address) - int(net.network_address) == 10_001


def _reference(first: int, last: int, held: set[int], blocked: list[tuple[int, int]],
               skip_zero: bool) -> int | None:
    for candidate in range(first, last + 1):
        if candidate in held or any(lo <= candidate <= hi for lo, hi in blocked):
            continue
        if skip_zero and candidate & 0xFF == 0:
            continue
        return candidate
    return None


@settings(max_examples=300, deadline=None)
@given(
    first=st.integers(0, 600),
    span=st.integers(0, 600),
    held=st.sets(st.integers(0, 1300), max_size=200),
    blocks=st.lists(st.tuples(st.integers(0, 1300), st.integers(0, 40)), max_size=6),
    skip_zero=st.booleans(),
)
def test_lowest_free_agrees_with_a_linear_scan(
    first: int, span: int, held: set[int], blocks: list[tuple[int, int]], skip_zero: bool
) -> None:
    from whereabouts.iprange import merge

    blocked = merge((lo, lo + width) for lo, width in blocks)
    last = first + span
    expected = _reference(first, last, held, blocked, skip_zero)
    assert lowest_free(first, last, sorted(held), blocked, skip_zero) == expected


@settings(max_examples=100, deadline=None)
@given(prefix=st.integers(22, 30), count=st.integers(1, 64), data=st.data())
def test_repeated_choice_never_repeats_or_leaves_the_range(
    prefix: int, count: int, data: st.DataObject
) -> None:
    net = ipaddress.ip_network(f"10.20.0.0/{prefix}")
    held: set[int] = set()
    for _ in range(count):
        try:
            address = choose(net, net.network_address, net.broadcast_address, held)
        except RangeExhaustedError:
            assert len(held) >= net.num_addresses - 2 - net.num_addresses // 256
            return
        offset = int(address) - int(net.network_address)
        assert offset not in held
        assert address not in (net.network_address, net.broadcast_address)
        assert int(address) & 0xFF != 0
        held.add(offset)
        # Freeing a random held address makes it the next choice when it is the lowest free.
        if data.draw(st.booleans()) and held:
            victim = data.draw(st.sampled_from(sorted(held)))
            held.discard(victim)
            again = choose(net, net.network_address, net.broadcast_address, held)
            assert int(again) - int(net.network_address) <= victim
            held.add(int(again) - int(net.network_address))
