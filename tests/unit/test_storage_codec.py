"""The pool and reservation codec shared by the file, etcd and Kubernetes backends."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whereabouts.model import Owner, Pool, PoolKey, ReservationKey
from whereabouts.storage import codec

NET = ipaddress.ip_network("10.0.0.0/24")
A = Owner("c1", "ns/a", "net1")


def test_upstream_keys_decode_as_parseint_does_and_junk_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = {
        "range": "10.0.0.0/24",
        "allocations": {
            "+7": {"id": "c7", "podref": "ns/p7", "ifname": "net1"},
            "8": {"id": "c8", "podref": "ns/p8"},
            "008": {"id": "dup", "podref": "ns/dup", "ifname": "net1"},
            "256": {"id": "out", "podref": "ns/out", "ifname": "net1"},
            "-1": {"id": "neg", "podref": "ns/neg", "ifname": "net1"},
            "x": {"id": "x", "podref": "ns/x", "ifname": "net1"},
            "9": "not an object",
        },
    }
    with caplog.at_level(logging.WARNING):
        decoded, kept = codec.decode_allocations(spec, NET, "pool")
    assert decoded == {7: Owner("c7", "ns/p7", "net1"), 8: Owner("c8", "ns/p8", "")}
    assert set(kept) == {"008", "256", "-1", "x", "9"}
    assert "cannot decode" in caplog.text
    out = codec.encode_spec(Pool(PoolKey("", NET), {7: A}), spec)
    assert set(out["allocations"]) == {"7", "008", "256", "-1", "x", "9"}
    assert out["allocations"]["7"] == {"id": "c1", "podref": "ns/a", "ifname": "net1"}


def test_non_object_allocations_read_as_empty() -> None:
    decoded, kept = codec.decode_allocations({"allocations": []}, NET, "pool")
    assert decoded == {} and kept == {}


def test_network_name_comes_from_the_object_name() -> None:
    assert codec.network_name_from("named-range-10.0.0.0-24", NET) == "named-range"
    assert codec.network_name_from("10.0.0.0-24", NET) == ""
    assert codec.network_name_from("node1-10.0.0.0-24x", NET) == ""


@st.composite
def reservation_keys(draw: st.DrawFn) -> ReservationKey:
    network = draw(st.from_regex(r"([a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?)?", fullmatch=True))
    if draw(st.booleans()):
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
            draw(st.integers(0, 2**32 - 1))
        )
    else:
        address = ipaddress.IPv6Address(
            draw(st.sampled_from([0, 1, 2**16, 2**64, 2**127])) + draw(st.integers(0, 2**20))
        )
    return ReservationKey(network, address)


@given(reservation_keys())
def test_reservation_names_split_back_into_a_key_with_the_same_name(key: ReservationKey) -> None:
    guessed = codec.reservation_key_from(key.name)
    assert guessed is not None and guessed.name == key.name
    exact = codec.reservation_key_from(key.name, key.network_name, str(key.address))
    assert exact == key


def test_reservation_names_without_network_prefer_the_whole_name() -> None:
    assert codec.reservation_key_from("2001-db8--5") == ReservationKey(
        "", ipaddress.ip_address("2001:db8::5")
    )
    assert codec.reservation_key_from("named-range-10.0.0.1") == ReservationKey(
        "named-range", ipaddress.ip_address("10.0.0.1")
    )
    assert codec.reservation_key_from("not-an-address") is None


def test_capacity_fits_an_int64() -> None:
    assert codec.capacity(NET) == 254
    assert codec.capacity(ipaddress.ip_network("fd00::/64")) == 2**63 - 1


def test_an_upstream_entry_without_ifname_is_written_back_without_one() -> None:
    pool = Pool(PoolKey("", NET), {1: Owner("legacy", "a/b", "")})
    assert codec.encode_spec(pool)["allocations"]["1"] == {"id": "legacy", "podref": "a/b"}


def test_the_write_path_keeps_exactly_what_the_read_path_could_not_decode() -> None:
    spec = {
        "range": "10.0.0.0/24",
        "allocations": {
            "1": {"id": "c1", "podref": "ns/a"},
            "007": {"id": "c7", "podref": "ns/b"},
            "7": {"id": "dup", "podref": "ns/c"},
            "999": {"id": "out", "podref": "ns/d"},
            "x": {"id": "junk", "podref": "ns/e"},
            "2": "not an object",
        },
    }
    _, kept = codec.decode_allocations(spec, NET, "p")
    assert codec.undecodable_allocations(spec, NET) == kept
    assert set(kept) == {"7", "999", "x", "2"}
