"""parse_cni_args: the CNI_ARGS environment variable."""

from __future__ import annotations

import ipaddress
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whereabouts.config import CNIArgs, parse_cni_args
from whereabouts.errors import InvalidEnvironmentError

MULTUS = ("IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
          "K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=6f1c-42")


def rejects(text: str) -> str:
    with pytest.raises(InvalidEnvironmentError) as info:
        parse_cni_args(text)
    assert info.value.code == 4
    return info.value.msg


def test_empty_args_give_defaults() -> None:
    assert parse_cni_args("") == CNIArgs()
    assert parse_cni_args("").podref == ""


def test_the_args_multus_passes_are_read() -> None:
    args = parse_cni_args(MULTUS)
    assert args == CNIArgs(pod_namespace="default", pod_name="web-0",
                           infra_container_id="0123abcd", pod_uid="6f1c-42")
    assert args.podref == "default/web-0"


def test_ip_takes_comma_separated_cidrs_and_bare_addresses() -> None:
    args = parse_cni_args("IP=10.0.0.5/24,fd00::5/64,10.0.1.7")
    assert args.ips == (ipaddress.ip_interface("10.0.0.5/24"),
                        ipaddress.ip_interface("fd00::5/64"),
                        ipaddress.ip_interface("10.0.1.7/32"))


def test_bare_ipv6_address_is_a_slash_128() -> None:
    assert parse_cni_args("IP=fd00::9").ips == (ipaddress.ip_interface("fd00::9/128"),)


def test_gateway_takes_comma_separated_addresses() -> None:
    args = parse_cni_args("GATEWAY=10.0.0.1,fd00::1")
    assert args.gateways == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1"))


def test_unknown_key_without_ignore_unknown_is_an_environment_error_naming_it() -> None:
    msg = rejects("K8S_POD_NAME=a;FOO=1;BAR=2")
    assert "unknown args [FOO, BAR]" in msg
    assert "IgnoreUnknown" in msg


@pytest.mark.parametrize("flag", ["1", "true", "True", "TRUE"])
def test_ignore_unknown_accepts_unknown_keys(flag: str) -> None:
    assert parse_cni_args(f"FOO=1;IgnoreUnknown={flag}").pod_name == ""


@pytest.mark.parametrize("flag", ["0", "false"])
def test_ignore_unknown_off_still_rejects_unknown_keys(flag: str) -> None:
    assert "unknown args [FOO]" in rejects(f"IgnoreUnknown={flag};FOO=1")


def test_ignore_unknown_with_a_bad_value_is_rejected() -> None:
    assert "IgnoreUnknown: 'maybe'" in rejects("IgnoreUnknown=maybe")


@pytest.mark.parametrize("pair", ["K8S_POD_NAME", "=value"])
def test_malformed_pair_is_an_environment_error(pair: str) -> None:
    assert f"invalid pair {pair!r}" in rejects(f"K8S_POD_NAMESPACE=ns;{pair}")


def test_empty_pairs_from_a_trailing_separator_are_skipped() -> None:
    assert parse_cni_args("K8S_POD_NAME=a;;K8S_POD_NAMESPACE=b;").podref == "b/a"


def test_values_may_contain_equals_signs() -> None:
    assert parse_cni_args("IgnoreUnknown=1;OTHER=a=b;K8S_POD_NAME=p").pod_name == "p"


def test_bad_ip_is_rejected_naming_the_key() -> None:
    assert "IP: 10.0.0.300/24 is not a CIDR" in rejects("IP=10.0.0.300/24")


def test_bad_gateway_is_rejected_naming_the_key() -> None:
    assert "GATEWAY: gw.example is not an IP address" in rejects("GATEWAY=gw.example")


def test_every_problem_is_reported_at_once() -> None:
    msg = rejects("IP=bad;GATEWAY=worse;FOO=1")
    assert "IP: bad" in msg and "GATEWAY: worse" in msg and "unknown args [FOO]" in msg


_VALUE = st.text(st.characters(exclude_characters=";=", exclude_categories=["Cs"]),
                 max_size=20)


@given(st.fixed_dictionaries({
    "K8S_POD_NAMESPACE": _VALUE,
    "K8S_POD_NAME": _VALUE,
    "K8S_POD_INFRA_CONTAINER_ID": _VALUE,
    "K8S_POD_UID": _VALUE,
}), st.permutations(range(4)))
def test_any_order_of_known_keys_round_trips(values: Dict[str, Any], order: Any) -> None:
    keys = list(values)
    text = ";".join(f"{keys[i]}={values[keys[i]]}" for i in order)
    args = parse_cni_args(text)
    assert (args.pod_namespace, args.pod_name, args.infra_container_id, args.pod_uid) == (
        values["K8S_POD_NAMESPACE"], values["K8S_POD_NAME"],
        values["K8S_POD_INFRA_CONTAINER_ID"], values["K8S_POD_UID"])


@given(st.lists(st.ip_addresses(), min_size=1, max_size=4))
def test_ip_lists_round_trip(addresses: Any) -> None:
    args = parse_cni_args("IP=" + ",".join(f"{a}/{a.max_prefixlen}" for a in addresses))
    assert [i.ip for i in args.ips] == list(addresses)
