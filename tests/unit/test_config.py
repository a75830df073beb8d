"""parse_netconf: keys, defaults, range rules, validation messages and the flat file."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whereabouts.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_FLAT_FILE_PATHS,
    CNIArgs,
    EtcdConfig,
    NetConf,
    StaticAddress,
    parse_netconf,
    parse_range,
)
from whereabouts.errors import DecodingError, InvalidConfigError, InvalidEnvironmentError

ip = ipaddress.ip_address
net = ipaddress.ip_network


def netconf(ipam: Optional[Dict[str, Any]] = None, **top: Any) -> bytes:
    doc: Dict[str, Any] = {"cniVersion": "1.0.0", "name": "mynet", "type": "macvlan"}
    doc.update(top)
    if ipam is not None:
        doc["ipam"] = {"type": "whereabouts", **ipam}
    return json.dumps(doc).encode()


def parse(ipam: Dict[str, Any], *, files: Sequence[str] = (), **kw: Any) -> NetConf:
    kw.setdefault("env", {})
    return parse_netconf(netconf(ipam, **kw.pop("top", {})), flat_file_paths=list(files), **kw)


def problems(ipam: Dict[str, Any], **kw: Any) -> List[str]:
    with pytest.raises(InvalidConfigError) as info:
        parse(ipam, **kw)
    assert info.value.code == 7
    return list(info.value.problems)


def the_problem(ipam: Dict[str, Any], **kw: Any) -> str:
    found = problems(ipam, **kw)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------
# Upstream's worked examples


def test_host_bits_are_dropped_and_allocation_starts_after_the_network_address() -> None:
    (rng,) = parse({"range": "192.168.1.44/28"}).ipam.ranges
    assert rng.network == net("192.168.1.32/28")
    assert rng.first == ip("192.168.1.33")
    assert rng.last == ip("192.168.1.46")


def test_dash_syntax_with_leading_zeros_sets_start_and_end() -> None:
    (rng,) = parse({"range": "00192.00168.1.5-000000192.168.1.25/24"}).ipam.ranges
    assert rng.network == net("192.168.1.0/24")
    assert (rng.first, rng.last) == (ip("192.168.1.5"), ip("192.168.1.25"))


def test_ipv6_range_skips_the_all_zeros_and_all_ones_hosts_as_upstream() -> None:
    (rng,) = parse({"range": "fd00::/64"}).ipam.ranges
    assert rng.network == net("fd00::/64")
    assert rng.first == ip("fd00::1")
    assert rng.last == ip("fd00::ffff:ffff:ffff:fffe")


def test_dual_stack_ip_ranges_keep_their_order() -> None:
    conf = parse({"ipRanges": [{"range": "192.168.10.1/24"}, {"range": "abcd::1/64"}]})
    ranges = conf.ipam.ranges
    assert [r.network for r in ranges] == [net("192.168.10.0/24"), net("abcd::/64")]


def test_top_level_range_comes_first_with_the_top_level_start_end_and_exclude() -> None:
    conf = parse({
        "range": "abcd::1/64",
        "range_start": "abcd::10",
        "exclude": ["abcd::12"],
        "ipRanges": [{"range": "192.168.10.0/24", "range_end": "192.168.10.20"}],
    })
    first, second = conf.ipam.ranges
    assert first.network == net("abcd::/64")
    assert first.first == ip("abcd::10")
    assert first.exclude == (net("abcd::12/128"),)
    assert second.network == net("192.168.10.0/24")
    assert second.last == ip("192.168.10.20")
    assert second.exclude == ()


def test_upstream_static_example_gives_typed_static_addresses() -> None:
    conf = parse({
        "range": "192.168.1.44/28",
        "gateway": "192.168.1.33",
        "addresses": [
            {"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
            {"address": "3ffe:ffff:0:01ff::1/64"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
    })
    assert conf.ipam.addresses == (
        StaticAddress(ipaddress.ip_interface("10.10.0.1/24"), ip("10.10.0.254")),
        StaticAddress(ipaddress.ip_interface("3ffe:ffff:0:1ff::1/64")),
    )
    assert conf.ipam.gateway == ip("192.168.1.33")
    assert conf.ipam.routes == ({"dst": "0.0.0.0/0"},)


def test_upstream_example_gateway_outside_the_carved_range_is_rejected_with_advice() -> None:
    # Upstream's test puts gateway 192.168.1.1 on a 192.168.1.32/28 range: the pod gets a
    # /28 and could not reach that gateway. We reject it and say how to write it instead.
    found = the_problem({"range": "192.168.1.44/28", "gateway": "192.168.1.1"})
    assert found.startswith("ipam.gateway: 192.168.1.1 is not inside any configured range")
    assert "range_start/range_end" in found


# ---------------------------------------------------------------------------------------
# Range rules


@st.composite
def dash_ranges(draw: Any) -> tuple[Any, Any, Any]:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(min_value=bits - 24, max_value=bits - 2))
    address = draw(st.ip_addresses(v=version))
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    low = int(network.network_address) + 1
    high = int(network.broadcast_address) - 1
    start = draw(st.integers(min_value=low, max_value=high))
    end = draw(st.integers(min_value=start, max_value=high))
    make = type(network.network_address)
    return network, make(start), make(end)


@given(dash_ranges())
def test_dash_syntax_round_trips_start_end_and_network(case: tuple[Any, Any, Any]) -> None:
    network, start, end = case
    text = f"{start}-{end}/{network.prefixlen}"
    assert parse_range(text) == (network, start, end)
    (rng,) = parse({"range": text}).ipam.ranges
    assert (rng.network, rng.first, rng.last) == (network, start, end)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=30),
       st.lists(st.integers(min_value=0, max_value=3), min_size=4, max_size=4))
def test_ipv4_leading_zeros_read_as_decimal(address: Any, prefix: int, zeros: List[int]) -> None:
    sloppy = ".".join("0" * z + part for z, part in zip(zeros, str(address).split(".")))
    (rng,) = parse({"range": f"{sloppy}/{prefix}"}).ipam.ranges
    assert rng.network == ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def test_slash_30_holds_two_addresses() -> None:
    (rng,) = parse({"range": "10.0.0.0/30"}).ipam.ranges
    assert (rng.first, rng.last) == (ip("10.0.0.1"), ip("10.0.0.2"))


@pytest.mark.parametrize("cidr", ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::1/128"])
def test_prefixes_with_fewer_than_two_host_bits_are_too_small(cidr: str) -> None:
    found = the_problem({"range": cidr})
    assert found.startswith("ipam.range: ")
    assert "too small to hold an address" in found


def test_range_start_and_end_narrow_the_bounds() -> None:
    (rng,) = parse({"range": "10.0.0.0/24", "range_start": "10.0.0.10",
                    "range_end": "10.0.0.20"}).ipam.ranges
    assert (rng.first, rng.last) == (ip("10.0.0.10"), ip("10.0.0.20"))


def test_range_start_at_network_and_end_at_broadcast_mean_the_usable_bounds() -> None:
    (rng,) = parse({"range": "10.0.0.0/24", "range_start": "10.0.0.0",
                    "range_end": "10.0.0.255"}).ipam.ranges
    assert (rng.first, rng.last) == (ip("10.0.0.1"), ip("10.0.0.254"))


def test_range_start_outside_range_is_rejected_naming_the_key() -> None:
    assert the_problem({"range": "192.168.2.0/24", "range_start": "192.168.1.5"}) == (
        "ipam.range_start: 192.168.1.5 is outside range 192.168.2.0/24")


def test_range_end_outside_range_is_rejected_naming_the_key() -> None:
    assert the_problem({"range": "192.168.2.0/24", "range_end": "192.168.3.5"}) == (
        "ipam.range_end: 192.168.3.5 is outside range 192.168.2.0/24")


def test_range_start_of_the_other_family_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "range_start": "fd00::1"}).startswith(
        "ipam.range_start: fd00::1 is outside range")


def test_range_end_before_range_start_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "range_start": "10.0.0.50",
                        "range_end": "10.0.0.10"}) == (
        "ipam.range_end: 10.0.0.10 is before range_start 10.0.0.50")


def test_ip_ranges_entry_with_a_bad_range_start_names_the_entry() -> None:
    found = the_problem({"ipRanges": [{"range": "10.0.1.0/24"},
                                      {"range": "10.0.0.0/24", "range_start": "10.0.0.300"}]})
    assert found == "ipam.ipRanges[1].range_start: 10.0.0.300 is not an IP address"


def test_dash_syntax_start_outside_the_cidr_is_rejected() -> None:
    assert the_problem({"range": "192.168.1.5-192.168.2.25/24"}) == (
        "ipam.range: range start 192.168.1.5 is outside 192.168.2.0/24")


def test_dash_syntax_and_a_different_range_start_conflict() -> None:
    assert the_problem({"range": "10.0.0.5-10.0.0.50/24", "range_start": "10.0.0.7"}).startswith(
        "ipam.range_start: 10.0.0.7 conflicts with 10.0.0.5")


def test_dash_syntax_with_the_same_range_start_is_accepted() -> None:
    (rng,) = parse({"range": "10.0.0.5-10.0.0.50/24", "range_start": "10.0.0.5"}).ipam.ranges
    assert rng.first == ip("10.0.0.5")


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/33", "10.0.0/24", "banana",
                                  "10.0.0.0/255.255.255.0", "fd00::/129", "fe80::%eth0/64",
                                  " 10.0.0.0/24", "10.0.0.5-fd00::9/64"])
def test_malformed_range_is_rejected(text: str) -> None:
    assert the_problem({"range": text}).startswith("ipam.range: ")


def test_range_start_without_a_top_level_range_is_rejected() -> None:
    found = the_problem({"ipRanges": [{"range": "10.0.0.0/24"}], "range_start": "10.0.0.10"})
    assert found.startswith("ipam.range_start: is set but ipam.range is not")


def test_two_entries_with_the_same_canonical_range_are_rejected() -> None:
    found = the_problem({"range": "10.0.0.7/24", "ipRanges": [{"range": "10.0.0.0/24"}]})
    assert found == "ipam.ipRanges[0].range: 10.0.0.0/24 duplicates the range of ipam.range"


def test_overlapping_but_different_ranges_are_allowed() -> None:
    ranges = parse({"ipRanges": [{"range": "10.0.0.0/24"}, {"range": "10.0.0.0/25"}]}).ipam.ranges
    assert len(ranges) == 2


def test_ip_ranges_entry_without_range_is_rejected() -> None:
    assert the_problem({"ipRanges": [{"range_start": "10.0.0.1"}]}) == (
        "ipam.ipRanges[0].range: missing (every ipRanges entry needs a range)")


# ---------------------------------------------------------------------------------------
# exclude


def test_exclude_accepts_cidrs_and_bare_addresses() -> None:
    (rng,) = parse({"range": "192.168.2.0/24",
                    "exclude": ["192.168.2.229/30", "192.168.2.1"]}).ipam.ranges
    assert rng.exclude == (net("192.168.2.228/30"), net("192.168.2.1/32"))


def test_bare_ipv6_exclude_is_a_slash_128() -> None:
    (rng,) = parse({"range": "fd00::/64", "exclude": ["fd00::5"]}).ipam.ranges
    assert rng.exclude == (net("fd00::5/128"),)


def test_invalid_exclude_entry_is_rejected_naming_its_index() -> None:
    found = the_problem({"range": "10.0.0.0/24", "exclude": ["10.0.0.1", "10.0.0.0/33"]})
    assert found.startswith("ipam.exclude[1]: 10.0.0.0/33 is not a CIDR")


def test_exclude_outside_the_range_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "exclude": ["10.9.0.0/24"]}) == (
        "ipam.exclude[0]: 10.9.0.0/24 is outside range 10.0.0.0/24")


def test_exclude_wider_than_the_range_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "exclude": ["10.0.0.0/16"]}) == (
        "ipam.exclude[0]: 10.0.0.0/16 is not entirely inside range 10.0.0.0/24")


def test_exclude_of_the_other_family_is_rejected() -> None:
    found = the_problem({"ipRanges": [{"range": "10.0.0.0/24", "exclude": ["fd00::/64"]}]})
    assert found.startswith("ipam.ipRanges[0].exclude[0]: fd00::/64 is an IPv6 network")


def test_exclude_that_is_not_a_list_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "exclude": "10.0.0.1"}) == (
        "ipam.exclude: must be a list of strings, not a string")


def test_excludes_covering_every_allocatable_address_are_rejected() -> None:
    found = the_problem({"range": "10.0.0.0/29", "exclude": ["10.0.0.0/30", "10.0.0.4/30"]})
    assert found.startswith("ipam.exclude: excludes every allocatable address")


def test_excludes_covering_all_but_one_address_are_accepted() -> None:
    (rng,) = parse({"range": "10.0.0.0/29", "exclude": ["10.0.0.0/30", "10.0.0.4/31"]}).ipam.ranges
    assert len(rng.exclude) == 2


# ---------------------------------------------------------------------------------------
# gateway, routes, dns, addresses


def test_gateway_inside_a_range_of_its_family_is_accepted_in_dual_stack() -> None:
    conf = parse({"ipRanges": [{"range": "10.0.0.0/24"}, {"range": "fd00::/64"}],
                  "gateway": "10.0.0.1"})
    assert conf.ipam.gateway == ip("10.0.0.1")


def test_gateway_outside_every_range_of_its_family_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "gateway": "10.1.0.1"}).startswith(
        "ipam.gateway: 10.1.0.1 is not inside any configured range (10.0.0.0/24)")


def test_gateway_without_any_range_of_its_family_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "gateway": "fd00::1"}) == (
        "ipam.gateway: fd00::1 is an IPv6 address but no IPv6 range or address is configured")


def test_gateway_is_checked_even_when_the_range_bounds_are_wrong() -> None:
    found = problems({"range": "10.0.0.0/24", "range_end": "10.0.1.5", "gateway": "10.9.0.1"})
    assert [p.split(":")[0] for p in found] == ["ipam.range_end", "ipam.gateway"]


def test_gateway_of_a_static_address_family_needs_no_range() -> None:
    conf = parse({"range": "10.0.0.0/24", "gateway": "fd00::1",
                  "addresses": [{"address": "fd00::5/64"}]})
    assert conf.ipam.gateway == ip("fd00::1")


def test_gateway_on_the_network_address_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "gateway": "10.0.0.0"}).startswith(
        "ipam.gateway: 10.0.0.0 is the network or broadcast address")


def test_invalid_gateway_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "gateway": "10.0.0.256"}) == (
        "ipam.gateway: 10.0.0.256 is not an IP address")


def test_routes_are_canonicalised_and_other_fields_pass_through() -> None:
    conf = parse({"range": "10.0.0.0/24", "routes": [
        {"dst": "10.1.2.3/8", "gw": "010.0.0.1", "mtu": 1400, "custom": "kept"},
        {"dst": "fd00::/64", "gw": ""},
    ]})
    assert conf.ipam.routes == (
        {"dst": "10.0.0.0/8", "gw": "10.0.0.1", "mtu": 1400, "custom": "kept"},
        {"dst": "fd00::/64"},
    )


@pytest.mark.parametrize(("route", "expected"), [
    ({"gw": "10.0.0.1"}, "ipam.routes[0].dst: missing"),
    ({"dst": "10.0.0.0/40"}, "ipam.routes[0].dst: 10.0.0.0/40 is not a CIDR"),
    ({"dst": 10}, "ipam.routes[0].dst: must be a CIDR string, not a number"),
    ({"dst": "0.0.0.0/0", "gw": "x"}, "ipam.routes[0].gw: x is not an IP address"),
    ({"dst": "0.0.0.0/0", "gw": "fd00::1"}, "ipam.routes[0].gw: fd00::1 is not of the family"),
    ({"dst": "0.0.0.0/0", "mtu": "1400"}, "ipam.routes[0].mtu: must be an integer"),
    ("0.0.0.0/0", "ipam.routes[0]: must be an object, not a string"),
])
def test_bad_routes_are_rejected_naming_the_field(route: Any, expected: str) -> None:
    assert the_problem({"range": "10.0.0.0/24", "routes": [route]}).startswith(expected)


def test_dns_is_passed_through_with_typed_fields() -> None:
    dns = {"nameservers": ["8.8.8.8", "2001:4860:4860:0::8888"], "domain": "example.com",
           "search": ["a.example"], "options": ["ndots:2"]}
    conf = parse({"range": "10.0.0.0/24", "dns": dns})
    assert conf.ipam.dns == {**dns, "nameservers": ["8.8.8.8", "2001:4860:4860::8888"]}


@pytest.mark.parametrize(("dns", "expected"), [
    ({"nameservers": ["dns.example"]}, "ipam.dns.nameservers[0]: dns.example is not an IP"),
    ({"nameservers": "8.8.8.8"}, "ipam.dns.nameservers: must be a list of strings"),
    ({"domain": 5}, "ipam.dns.domain: must be a string"),
    ({"search": [1]}, "ipam.dns.search[0]: must be a string"),
    ([], "ipam.dns: must be an object"),
])
def test_bad_dns_is_rejected(dns: Any, expected: str) -> None:
    assert the_problem({"range": "10.0.0.0/24", "dns": dns}).startswith(expected)


def test_static_addresses_alone_satisfy_the_range_requirement() -> None:
    conf = parse({"addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]})
    assert conf.ipam.ranges == ()
    assert conf.ipam.addresses[0].address == ipaddress.ip_interface("10.10.0.1/24")


@pytest.mark.parametrize(("entry", "expected"), [
    ({"address": "10.10.0.1"}, "ipam.addresses[0].address: 10.10.0.1 is not a CIDR"),
    ({"gateway": "10.10.0.1"}, "ipam.addresses[0].address: missing"),
    ({"address": "10.10.0.1/24", "gateway": "fd00::1"}, "ipam.addresses[0].gateway: fd00::1"),
    ({"address": "10.10.0.1/24", "gw": "10.10.0.2"}, "ipam.addresses[0].gw: unknown key"),
])
def test_bad_static_addresses_are_rejected(entry: Dict[str, Any], expected: str) -> None:
    found = problems({"range": "10.0.0.0/24", "addresses": [entry]})
    assert any(p.startswith(expected) for p in found), found


def test_two_static_addresses_of_one_family_need_cni_0_3_or_later() -> None:
    ipam = {"addresses": [{"address": "10.10.0.1/24"}, {"address": "10.10.1.1/24"}]}
    assert len(parse(ipam).ipam.addresses) == 2
    found = the_problem(ipam, top={"cniVersion": "0.2.0"})
    assert found.startswith("ipam.addresses: CNI version 0.2.0 does not support more than 1")


# ---------------------------------------------------------------------------------------
# Other keys and defaults


def test_defaults() -> None:
    cfg = parse({"range": "10.0.0.0/24"}).ipam
    assert cfg.enable_overlapping_ranges is True
    assert cfg.network_name == ""
    assert cfg.datastore == "kubernetes"
    assert cfg.log_level == "error"
    assert cfg.data_dir == DEFAULT_DATA_DIR
    assert cfg.kubeconfig is None and cfg.etcd is None and cfg.node_name is None
    assert cfg.gateway is None and cfg.routes == () and cfg.dns == {}


def test_every_accepted_key_is_read() -> None:
    cfg = parse({
        "range": "10.0.0.0/24",
        "enable_overlapping_ranges": False,
        "network_name": "blue.net-1",
        "kubernetes": {"kubeconfig": "/etc/k.conf", "k8s_api_root": "https://x"},
        "configuration_path": "/nonexistent/whereabouts.d",
        "log_file": "/var/log/wb.log",
        "log_level": "verbose",
        "datastore": "file",
        "data_dir": "/srv/wb",
        "node_name": "node-7",
    }).ipam
    assert cfg.enable_overlapping_ranges is False
    assert cfg.network_name == "blue.net-1"
    assert cfg.kubeconfig == "/etc/k.conf"
    assert cfg.configuration_path == "/nonexistent/whereabouts.d"
    assert (cfg.log_file, cfg.log_level) == ("/var/log/wb.log", "verbose")
    assert (cfg.datastore, cfg.data_dir, cfg.node_name) == ("file", "/srv/wb", "node-7")


def test_upstream_leader_election_and_node_slice_keys_are_accepted_and_ignored() -> None:
    parse({"range": "10.0.0.0/24", "leader_lease_duration": 1500,
           "leader_renew_deadline": 1000, "leader_retry_period": 500, "sleep_for_race": 0,
           "reconciler_cron_expression": "30 4 * * *", "node_slice_size": "/28",
           "name": "whatever"})


def test_etcd_datastore_builds_the_etcd_config() -> None:
    cfg = parse({"range": "10.0.0.0/24", "datastore": "etcd", "etcd_host": "etcd:2379",
                 "etcd_username": "u", "etcd_password": "p", "etcd_key_file": "/k",
                 "etcd_cert_file": "/c", "etcd_ca_cert_file": "/ca"}).ipam
    assert cfg.etcd == EtcdConfig("etcd:2379", "u", "p", "/k", "/c", "/ca")


def test_etcd_datastore_without_host_is_rejected() -> None:
    assert the_problem({"range": "10.0.0.0/24", "datastore": "etcd"}) == (
        "ipam.etcd_host: missing (required when datastore is etcd)")


def test_etcd_keys_are_ignored_for_other_datastores() -> None:
    assert parse({"range": "10.0.0.0/24", "etcd_host": "etcd:2379"}).ipam.etcd is None


@pytest.mark.parametrize(("ipam", "expected"), [
    ({"datastore": "consul"}, "ipam.datastore: consul is not one of kubernetes, etcd, file"),
    ({"log_level": "trace"}, "ipam.log_level: trace is not one of"),
    ({"enable_overlapping_ranges": "false"},
     "ipam.enable_overlapping_ranges: must be true or false, not a string"),
    ({"leader_lease_duration": "1500"}, "ipam.leader_lease_duration: must be a non-negative"),
    ({"sleep_for_race": -1}, "ipam.sleep_for_race: must be a non-negative integer, not -1"),
    ({"data_dir": "relative/dir"}, "ipam.data_dir: relative/dir is not an absolute path"),
    ({"kubernetes": "/etc/k.conf"}, "ipam.kubernetes: must be an object"),
    ({"kubernetes": {"kubeconfig": 1}}, "ipam.kubernetes.kubeconfig: must be a string"),
    ({"log_file": 7}, "ipam.log_file: must be a string, not a number"),
    ({"gateway": None}, "ipam.gateway: must be an IP address string, not null"),
    ({"ipRanges": {"range": "10.1.0.0/24"}}, "ipam.ipRanges: must be a list of objects"),
])
def test_wrong_values_and_json_types_are_rejected_naming_the_key(
    ipam: Dict[str, Any], expected: str
) -> None:
    found = problems({"range": "10.0.0.0/24", **ipam})
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("name", ["Blue", "blue_net", "-blue", "blue.", "a..b", "a.-b", "x y"])
def test_network_name_that_cannot_be_in_an_object_name_is_rejected(name: str) -> None:
    found = the_problem({"range": "10.0.0.0/24", "network_name": name})
    assert found.startswith("ipam.network_name: ")
    assert "Kubernetes object name" in found


@pytest.mark.parametrize("name", ["blue", "blue-", "b.l.u.e", "0net", "a-b.c-d"])
def test_network_names_that_fit_an_object_name_are_accepted(name: str) -> None:
    assert parse({"range": "10.0.0.0/24", "network_name": name}).ipam.network_name == name


def test_network_name_making_pool_names_longer_than_253_is_rejected() -> None:
    parse({"range": "10.0.0.0/24", "network_name": "n" * 213})
    found = the_problem({"range": "fd00::/64", "network_name": "n" * 214})
    assert found.startswith("ipam.network_name: is too long")


# ---------------------------------------------------------------------------------------
# Unknown keys


@pytest.mark.parametrize(("key", "hint"), [
    ("rangeStart", "range_start"),
    ("rangeEnd", "range_end"),
    ("subnet", "range"),
    ("ranges", "ipRanges"),
    ("ip_ranges", "ipRanges"),
    ("enableOverlappingRanges", "enable_overlapping_ranges"),
    ("networkName", "network_name"),
    ("gatway", "gateway"),
    ("exlude", "exclude"),
])
def test_unknown_keys_get_a_suggestion(key: str, hint: str) -> None:
    found = problems({"range": "10.0.0.0/24", key: "x"})
    assert any(p.startswith(f"ipam.{key}: unknown key") and p.endswith(f"did you mean {hint}?")
               for p in found), found


def test_unknown_key_without_a_close_match_is_just_unknown() -> None:
    assert the_problem({"range": "10.0.0.0/24", "frobnicate": 1}) == "ipam.frobnicate: unknown key"


def test_top_level_key_inside_an_ip_ranges_entry_says_where_it_belongs() -> None:
    found = the_problem({"ipRanges": [{"range": "10.0.0.0/24", "gateway": "10.0.0.1"}]})
    assert found.startswith("ipam.ipRanges[0].gateway: not accepted here")


def test_every_problem_is_reported_at_once() -> None:
    found = problems({
        "range": "192.168.2.0/24",
        "range_start": "192.168.1.5",
        "exclude": ["bad"],
        "rangeEnd": "x",
        "log_level": "loud",
        "network_name": "UPPER",
    })
    keys = sorted(p.split(":")[0] for p in found)
    assert keys == ["ipam.exclude[0]", "ipam.log_level", "ipam.network_name", "ipam.rangeEnd",
                    "ipam.range_start"]


# ---------------------------------------------------------------------------------------
# The netconf around ipam


def test_missing_network_name_is_code_7() -> None:
    with pytest.raises(InvalidConfigError) as info:
        parse_netconf(json.dumps({"ipam": {"type": "whereabouts", "range": "10.0.0.0/24"}})
                      .encode(), flat_file_paths=[])
    assert info.value.code == 7
    assert info.value.problems == ("name: missing network name",)


def test_network_name_with_invalid_characters_is_rejected() -> None:
    with pytest.raises(InvalidConfigError, match="name: 'my net' is not a valid network name"):
        parse({"range": "10.0.0.0/24"}, top={"name": "my net"})


@pytest.mark.parametrize("data", [b"{", b"not json", b"\xff\xfe", b"[1, 2]", b"\"text\""])
def test_undecodable_input_is_a_decoding_error(data: bytes) -> None:
    with pytest.raises(DecodingError) as info:
        parse_netconf(data, flat_file_paths=[])
    assert info.value.code == 6


def test_missing_ipam_is_rejected() -> None:
    with pytest.raises(InvalidConfigError, match="ipam: missing"):
        parse_netconf(netconf(), flat_file_paths=[])


def test_other_ipam_types_are_rejected_without_checking_their_keys() -> None:
    data = json.dumps({"name": "n", "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}})
    with pytest.raises(InvalidConfigError) as info:
        parse_netconf(data.encode(), flat_file_paths=[])
    (found,) = info.value.problems
    assert found.startswith("ipam.type: must be \"whereabouts\"")


def test_name_and_cni_version_are_kept() -> None:
    conf = parse({"range": "10.0.0.0/24"}, top={"cniVersion": "0.3.1", "name": "blue"})
    assert (conf.name, conf.cni_version) == ("blue", "0.3.1")


def test_runtime_config_ips_and_args_cni_ips_are_requested_addresses() -> None:
    conf = parse({"range": "10.0.0.0/24"}, top={
        "runtimeConfig": {"ips": ["10.0.0.7/24", "10.0.0.8"]},
        "args": {"cni": {"ips": ["10.0.0.7/24", "10.0.0.9/24"]}},
    })
    assert conf.requested_ips == tuple(ipaddress.ip_interface(a) for a in
                                       ("10.0.0.7/24", "10.0.0.8/32", "10.0.0.9/24"))


def test_bad_runtime_config_ip_is_rejected() -> None:
    found = the_problem({"range": "10.0.0.0/24"}, top={"runtimeConfig": {"ips": ["10.0.0.1/40"]}})
    assert found.startswith("runtimeConfig.ips[0]: 10.0.0.1/40 is not a CIDR")


def test_valid_attachments_become_container_interface_pairs() -> None:
    conf = parse({"range": "10.0.0.0/24"}, top={"cni.dev/valid-attachments": [
        {"containerID": "c1", "ifname": "net1"}, {"containerID": "c2", "ifname": "eth0"}]})
    assert conf.valid_attachments == (("c1", "net1"), ("c2", "eth0"))


def test_absent_valid_attachments_are_none_and_an_empty_list_is_empty() -> None:
    assert parse({"range": "10.0.0.0/24"}).valid_attachments is None
    conf = parse({"range": "10.0.0.0/24"}, top={"cni.dev/valid-attachments": []})
    assert conf.valid_attachments == ()


def test_bad_valid_attachment_is_rejected() -> None:
    found = the_problem({"range": "10.0.0.0/24"},
                        top={"cni.dev/valid-attachments": [{"containerID": "c1"}]})
    assert found == "cni.dev/valid-attachments[0].ifname: must be a non-empty string"


def test_a_config_without_ranges_is_rejected_unless_ranges_are_not_required() -> None:
    assert the_problem({}).startswith("ipam: no range configured")
    assert parse({}, require_ranges=False).ipam.ranges == ()


def test_cni_args_are_parsed_into_the_netconf() -> None:
    conf = parse({"range": "10.0.0.0/24"},
                 cni_args="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;X=y")
    assert conf.args == CNIArgs(pod_namespace="ns", pod_name="pod")
    assert conf.args.podref == "ns/pod"


def test_bad_cni_args_are_an_environment_error() -> None:
    with pytest.raises(InvalidEnvironmentError):
        parse({"range": "10.0.0.0/24"}, cni_args="X=y")


# ---------------------------------------------------------------------------------------
# The flat file


def write(path: Path, content: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_default_flat_file_search_order_is_upstreams() -> None:
    assert DEFAULT_FLAT_FILE_PATHS == (
        "/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf",
        "/etc/cni/net.d/whereabouts.d/whereabouts.conf",
        "/host/etc/cni/net.d/whereabouts.d/whereabouts.conf",
    )


def test_missing_flat_file_is_not_an_error(tmp_path: Path) -> None:
    conf = parse({"range": "10.0.0.0/24"}, files=[str(tmp_path / "nope.conf")])
    assert conf.ipam.flat_file is None


def test_flat_file_fills_only_unset_keys(tmp_path: Path) -> None:
    flat = write(tmp_path / "whereabouts.conf", {
        "datastore": "kubernetes",
        "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
        "log_level": "debug",
        "network_name": "from-file",
        "reconciler_cron_expression": "30 4 * * *",
    })
    cfg = parse({"range": "10.0.0.0/24", "log_level": "info", "network_name": ""},
                files=[flat]).ipam
    assert cfg.kubeconfig == "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"
    assert cfg.log_level == "info"
    assert cfg.network_name == "from-file"
    assert cfg.flat_file == flat


def test_flat_file_fills_kubernetes_sub_keys(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"kubernetes": {"kubeconfig": "/from/file"}})
    cfg = parse({"range": "10.0.0.0/24", "kubernetes": {"k8s_api_root": "https://x"}},
                files=[flat]).ipam
    assert cfg.kubeconfig == "/from/file"


def test_flat_file_can_supply_the_range(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"range": "10.5.0.0/24"})
    assert parse({}, files=[flat]).ipam.ranges[0].network == net("10.5.0.0/24")


def test_flat_file_cannot_set_enable_overlapping_ranges(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"enable_overlapping_ranges": False})
    assert parse({"range": "10.0.0.0/24"}, files=[flat]).ipam.enable_overlapping_ranges is True
    cfg = parse({"range": "10.0.0.0/24", "enable_overlapping_ranges": False}, files=[flat]).ipam
    assert cfg.enable_overlapping_ranges is False


def test_first_existing_flat_file_wins(tmp_path: Path) -> None:
    second = write(tmp_path / "b.conf", {"log_level": "panic"})
    third = write(tmp_path / "c.conf", {"log_level": "debug"})
    cfg = parse({"range": "10.0.0.0/24"}, files=[str(tmp_path / "a.conf"), second, third]).ipam
    assert (cfg.flat_file, cfg.log_level) == (second, "panic")


def test_configuration_path_file_is_searched_first(tmp_path: Path) -> None:
    own = write(tmp_path / "own.conf", {"log_level": "verbose"})
    other = write(tmp_path / "other.conf", {"log_level": "debug"})
    cfg = parse({"range": "10.0.0.0/24", "configuration_path": own}, files=[other]).ipam
    assert (cfg.flat_file, cfg.log_level) == (own, "verbose")


def test_configuration_path_directory_means_its_whereabouts_conf(tmp_path: Path) -> None:
    flat = write(tmp_path / "whereabouts.d" / "whereabouts.conf", {"log_level": "verbose"})
    cfg = parse({"range": "10.0.0.0/24", "configuration_path": str(tmp_path / "whereabouts.d")}
                ).ipam
    assert cfg.flat_file == flat


def test_invalid_json_flat_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", "{not json")
    found = the_problem({"range": "10.0.0.0/24"}, files=[flat])
    assert found.startswith(f"{flat}: the flat configuration file is not valid JSON")


def test_flat_file_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", "[]")
    assert the_problem({"range": "10.0.0.0/24"}, files=[flat]).startswith(f"{flat}: ")


def test_unreadable_flat_file_is_rejected_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat = write(tmp_path / "w.conf", "{}")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("whereabouts.config.open", refuse, raising=False)
    assert the_problem({"range": "10.0.0.0/24"}, files=[flat]) == (
        f"{flat}: cannot read the flat configuration file: Permission denied")


def test_problems_in_flat_file_values_name_the_file(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"log_level": "loud", "rangeStart": "x",
                                       "kubernetes": {"kubeconfig": 5}})
    found = problems({"range": "10.0.0.0/24"}, files=[flat])
    assert f"{flat}: log_level: loud is not one of debug, verbose, info, error, panic" in found
    assert f"{flat}: rangeStart: unknown key (host-local spelling?), did you mean range_start?" \
        in found
    assert f"{flat}: kubernetes.kubeconfig: must be a string, not a number" in found


def test_read_host_files_false_reads_no_flat_file(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"log_level": "debug"})
    cfg = parse({"range": "10.0.0.0/24", "configuration_path": flat}, files=[flat],
                read_host_files=False).ipam
    assert cfg.flat_file is None and cfg.log_level == "error"


# ---------------------------------------------------------------------------------------
# Node name


def test_node_name_from_the_environment_wins(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {"node_name": "from-file"})
    cfg = parse({"range": "10.0.0.0/24"}, files=[flat], env={"NODENAME": " node-a\n"}).ipam
    assert cfg.node_name == "node-a"


def test_node_name_key_comes_next(tmp_path: Path) -> None:
    write(tmp_path / "nodename", "from-nodename-file")
    flat = write(tmp_path / "whereabouts.conf", {"node_name": "from-key"})
    assert parse({"range": "10.0.0.0/24"}, files=[flat]).ipam.node_name == "from-key"


def test_node_name_file_beside_the_flat_file(tmp_path: Path) -> None:
    write(tmp_path / "nodename", "node-b\n")
    flat = write(tmp_path / "whereabouts.conf", {})
    assert parse({"range": "10.0.0.0/24"}, files=[flat]).ipam.node_name == "node-b"


def test_node_name_file_in_the_configuration_path_directory(tmp_path: Path) -> None:
    # As the installer writes it: the flat file names the directory that holds nodename.
    confdir = tmp_path / "whereabouts.d"
    write(confdir / "nodename", "node-c")
    flat = write(tmp_path / "elsewhere" / "w.conf", {"configuration_path": str(confdir)})
    assert parse({"range": "10.0.0.0/24"}, files=[flat]).ipam.node_name == "node-c"


def test_no_node_name_anywhere_is_none(tmp_path: Path) -> None:
    flat = write(tmp_path / "w.conf", {})
    assert parse({"range": "10.0.0.0/24"}, files=[flat], env={"NODENAME": "  "}).ipam.node_name \
        is None


def test_parse_netconf_reads_no_environment_variable_but_nodename(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODENAME", "from-os-environ")
    assert parse({"range": "10.0.0.0/24"}).ipam.node_name is None
    assert parse({"range": "10.0.0.0/24"}, env=dict(os.environ)).ipam.node_name == \
        "from-os-environ"
