"""Parse and validate the network configuration into frozen dataclasses.

Sources, in order of precedence: the netconf on stdin (its ``ipam`` object), CNI_ARGS
and ``runtimeConfig``, then the flat file ``whereabouts.d/whereabouts.conf`` which only
fills keys the netconf leaves unset. Every problem is collected and reported at once,
each naming its key.

Differences from upstream whereabouts (see docs/configuration.md): bad values that
upstream silently ignores (``range_start`` outside the range, invalid ``exclude``
entries, camelCase keys) are rejected here; the flat file is optional; the datastore
keys are honoured.

This module is on the CNI exec path: standard library only, nothing done at import.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import DecodingError, InvalidConfigError, InvalidEnvironmentError
from .model import IPAddress, IPNetwork

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

DATASTORES = ("kubernetes", "etcd", "file")
DEFAULT_DATA_DIR = "/var/lib/cni/whereabouts"
LOG_LEVELS = ("debug", "verbose", "info", "error", "panic")
DEFAULT_LOG_LEVEL = "error"
FLAT_FILE_NAME = "whereabouts.conf"
NODENAME_FILE = "nodename"
DEFAULT_FLAT_FILE_PATHS = (
    "/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf",
    "/etc/cni/net.d/whereabouts.d/whereabouts.conf",
    "/host/etc/cni/net.d/whereabouts.d/whereabouts.conf",
)


@dataclass(frozen=True)
class RangeConfig:
    """One ``ipRanges`` entry (or the top-level ``range``), canonicalised.

    ``first``/``last`` are the effective allocatable bounds after ``range_start`` and
    ``range_end`` (never the network or broadcast address).
    """

    network: IPNetwork
    first: IPAddress
    last: IPAddress
    exclude: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class StaticAddress:
    """An ``addresses`` entry: a fixed address reported after the allocated ones."""

    address: IPInterface
    gateway: Optional[IPAddress] = None


@dataclass(frozen=True)
class EtcdConfig:
    """The ``etcd_*`` keys, present when ``datastore`` is etcd."""

    host: str
    username: Optional[str] = None
    password: Optional[str] = None
    key_file: Optional[str] = None
    cert_file: Optional[str] = None
    ca_cert_file: Optional[str] = None


@dataclass(frozen=True)
class IPAMConfig:
    """The validated ``ipam`` object, merged with the flat file.

    ``routes`` and ``dns`` are JSON-ready mappings for the result: their addresses
    were validated and are written back in canonical text form (``dst`` as the
    network, e.g. ``10.1.2.3/8`` becomes ``10.0.0.0/8``); unknown route/dns fields pass
    through untouched. ``flat_file`` is the flat file that filled unset keys, if any.
    """

    ranges: tuple[RangeConfig, ...]
    gateway: Optional[IPAddress] = None
    routes: tuple[Mapping[str, Any], ...] = ()
    dns: Mapping[str, Any] = field(default_factory=dict)
    addresses: tuple[StaticAddress, ...] = ()
    enable_overlapping_ranges: bool = True
    network_name: str = ""
    datastore: str = "kubernetes"
    kubeconfig: Optional[str] = None
    etcd: Optional[EtcdConfig] = None
    data_dir: str = DEFAULT_DATA_DIR
    log_file: Optional[str] = None
    log_level: str = DEFAULT_LOG_LEVEL
    configuration_path: Optional[str] = None
    node_name: Optional[str] = None
    flat_file: Optional[str] = None


@dataclass(frozen=True)
class CNIArgs:
    """The parsed ``CNI_ARGS`` (see :func:`parse_cni_args`)."""

    pod_namespace: str = ""
    pod_name: str = ""
    infra_container_id: str = ""
    ips: tuple[IPInterface, ...] = ()
    gateways: tuple[IPAddress, ...] = ()
    pod_uid: str = ""

    @property
    def podref(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else ""


@dataclass(frozen=True)
class NetConf:
    """The whole parsed configuration of one invocation.

    ``requested_ips`` come from ``runtimeConfig.ips`` then ``args.cni.ips``;
    ``valid_attachments`` is None unless the runtime sent ``cni.dev/valid-attachments``
    (CNI GC); ``args`` is the parsed ``cni_args``.
    """

    name: str
    cni_version: str
    ipam: IPAMConfig
    requested_ips: tuple[IPInterface, ...] = ()
    valid_attachments: Optional[tuple[tuple[str, str], ...]] = None
    args: CNIArgs = field(default_factory=CNIArgs)


# --------------------------------------------------------------------------------------
# Address parsing. IPv4 octets may carry leading zeros, read as decimal, the way
# upstream's "sloppy" parser reads them (``00192.00168.1.5`` is 192.168.1.5).

_DOTTED_QUAD = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_DIGITS = re.compile(r"[0-9]+")
_CNI_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_K8S_NAME_MAX = 253
_LONGEST_ADDRESS = {4: len("255.255.255.255"), 6: len("ffff:" * 7 + "ffff")}


def _decimal(text: str, limit: int) -> Optional[int]:
    """A decimal number without sign, leading zeros allowed, at most ``limit``."""
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 3:
        return None
    value = int(digits)
    return value if value <= limit else None


def _normalise_v4(text: str) -> Optional[str]:
    if not _DOTTED_QUAD.fullmatch(text):
        return None
    octets = [_decimal(part, 255) for part in text.split(".")]
    if any(octet is None for octet in octets):
        return None
    return ".".join(str(octet) for octet in octets)


def parse_ip(text: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address.

    IPv4 octets may carry leading zeros (decimal, as upstream); IPv6 zone indexes
    (``%eth0``) are refused. Raises ValueError.
    """
    if ":" in text:
        if "%" in text:
            raise ValueError(text)
        head, sep, tail = text.rpartition(":")
        if "." in tail:
            v4 = _normalise_v4(tail)
            if v4 is None:
                raise ValueError(text)
            text = head + sep + v4
        return ipaddress.IPv6Address(text)
    v4 = _normalise_v4(text)
    if v4 is None:
        raise ValueError(text)
    return ipaddress.IPv4Address(v4)


def _split_cidr(text: str) -> Tuple[IPAddress, int]:
    address, sep, prefix_text = text.partition("/")
    if not sep:
        raise ValueError(f"{text} is not a CIDR (missing /prefix)")
    try:
        ip = parse_ip(address)
    except ValueError:
        raise ValueError(f"{text} is not a CIDR ({address} is not an IP address)") from None
    prefix = _decimal(prefix_text, ip.max_prefixlen)
    if prefix is None:
        raise ValueError(f"{text} is not a CIDR (bad prefix length {prefix_text!r})")
    return ip, prefix


def _make_network(ip: IPAddress, prefix: int) -> IPNetwork:
    if ip.version == 4:
        return ipaddress.IPv4Network((ip, prefix), strict=False)
    return ipaddress.IPv6Network((ip, prefix), strict=False)


def parse_network(text: str) -> IPNetwork:
    """A CIDR; host bits are allowed and dropped (``10.1.2.3/8`` is ``10.0.0.0/8``)."""
    return _make_network(*_split_cidr(text))


def parse_interface(text: str) -> IPInterface:
    """A CIDR that keeps its host part (``10.10.0.1/24``)."""
    ip, prefix = _split_cidr(text)
    if ip.version == 4:
        return ipaddress.IPv4Interface((ip, prefix))
    return ipaddress.IPv6Interface((ip, prefix))


def _parse_interface_or_ip(text: str) -> IPInterface:
    """A CIDR, or a bare address taken as /32 or /128."""
    if "/" in text:
        return parse_interface(text)
    try:
        ip = parse_ip(text)
    except ValueError:
        raise ValueError(f"{text} is not an IP address or CIDR") from None
    if ip.version == 4:
        return ipaddress.IPv4Interface((ip, 32))
    return ipaddress.IPv6Interface((ip, 128))


def parse_range(text: str) -> Tuple[IPNetwork, Optional[IPAddress], Optional[IPAddress]]:
    """Parse a ``range`` value: ``CIDR`` or dash syntax ``start-end/prefix``.

    Returns the canonical network and the start/end given by the dash syntax (None
    for a plain CIDR). Host bits of a plain CIDR are dropped. Raises ValueError with
    a message naming what is wrong; checks of start/end against the network are the
    caller's.
    """
    if "-" not in text:
        return parse_network(text), None, None
    start_text, _, rest = text.partition("-")
    try:
        start = parse_ip(start_text)
    except ValueError:
        raise ValueError(
            f"{text}: range start {start_text} is not an IP address "
            "(expected CIDR or start-end/prefix)"
        ) from None
    try:
        end, prefix = _split_cidr(rest)
    except ValueError as exc:
        raise ValueError(f"{text}: {exc} (expected CIDR or start-end/prefix)") from None
    if start.version != end.version:
        raise ValueError(f"{text}: range start and end are of different IP families")
    return _make_network(end, prefix), start, end


# --------------------------------------------------------------------------------------
# Keys.

_IPAM_KEYS = (
    "type",
    "name",
    "range",
    "range_start",
    "range_end",
    "exclude",
    "ipRanges",
    "gateway",
    "routes",
    "dns",
    "addresses",
    "enable_overlapping_ranges",
    "network_name",
    "kubernetes",
    "configuration_path",
    "log_file",
    "log_level",
    "leader_lease_duration",
    "leader_renew_deadline",
    "leader_retry_period",
    "sleep_for_race",
    "reconciler_cron_expression",
    "node_slice_size",
    "datastore",
    "etcd_host",
    "etcd_username",
    "etcd_password",
    "etcd_key_file",
    "etcd_cert_file",
    "etcd_ca_cert_file",
    "data_dir",
    "node_name",
)
_RANGE_KEYS = ("range", "range_start", "range_end", "exclude")
_KUBERNETES_KEYS = ("kubeconfig", "k8s_api_root")
_ADDRESS_KEYS = ("address", "gateway")
_ROUTE_INT_KEYS = ("mtu", "advmss", "priority", "table", "scope")
_DNS_LIST_KEYS = ("nameservers", "search", "options")
_IGNORED_INT_KEYS = (
    "leader_lease_duration",
    "leader_renew_deadline",
    "leader_retry_period",
    "sleep_for_race",
)
_PLAIN_STRING_KEYS = (
    "name",
    "configuration_path",
    "log_file",
    "reconciler_cron_expression",
    "node_slice_size",
    "etcd_host",
    "etcd_username",
    "etcd_password",
    "etcd_key_file",
    "etcd_cert_file",
    "etcd_ca_cert_file",
    "node_name",
)
# Spellings of other IPAM plugins (host-local, static) and common slips.
_HINTS = {
    "subnet": "range",
    "ranges": "ipRanges",
    "rangeStart": "range_start",
    "rangeEnd": "range_end",
    "nameservers": "dns",
    "ips": "addresses",
}


def _squash(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _suggest(key: str, known: Sequence[str]) -> Optional[str]:
    hint = _HINTS.get(key)
    if hint in known:
        return hint
    squashed = _squash(key)
    for candidate in known:
        if _squash(candidate) == squashed:
            return candidate
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_key_problem(where: str, key: str, known: Sequence[str]) -> str:
    suggestion = _suggest(key, known)
    if key in _HINTS and suggestion:
        return f"{where}: unknown key (host-local spelling?), did you mean {suggestion}?"
    if suggestion:
        return f"{where}: unknown key, did you mean {suggestion}?"
    if key in _IPAM_KEYS:
        return f"{where}: not accepted here ({key} is a key of the ipam object itself)"
    return f"{where}: unknown key"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_unset(value: Any) -> bool:
    """Go's zero values: what the flat file may fill in (as upstream's merge)."""
    return value is None or value in ("", [], {})


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    # float.is_integer exists since 3.0; vermin mistakes it for 3.12's int.is_integer.
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # novm


# --------------------------------------------------------------------------------------
# The validator. It walks the merged ipam object once, appending one problem per
# mistake; ``where(key)`` names the key with its origin (the netconf or the flat file).


class _Checker:
    def __init__(self, ipam: Mapping[str, Any], origin: Mapping[str, str]) -> None:
        self.ipam = ipam
        self.origin = origin
        self.problems: List[str] = []
        self.range_failed = False  # a range whose CIDR itself is unusable
        self.networks: List[IPNetwork] = []  # every usable CIDR, even if its bounds are bad

    def where(self, key: str) -> str:
        return self.origin.get(key, "ipam.") + key

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # typed getters: return None (after recording a problem) for a wrong type

    def string(self, key: str) -> Optional[str]:
        value = self.ipam.get(key)
        if key not in self.ipam:
            return None
        if not isinstance(value, str):
            self.add(self.where(key), f"must be a string, not {_json_type(value)}")
            return None
        return value or None

    def ip(self, where: str, value: Any) -> Optional[IPAddress]:
        if not isinstance(value, str):
            self.add(where, f"must be an IP address string, not {_json_type(value)}")
            return None
        if value == "":
            return None
        try:
            return parse_ip(value)
        except ValueError:
            self.add(where, f"{value} is not an IP address")
            return None

    def string_list(self, where: str, value: Any) -> Optional[List[str]]:
        if not isinstance(value, list):
            self.add(where, f"must be a list of strings, not {_json_type(value)}")
            return None
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.add(f"{where}[{index}]", f"must be a string, not {_json_type(item)}")
                good = False
        return list(value) if good else None

    def obj(self, where: str, value: Any) -> Optional[Mapping[str, Any]]:
        if not isinstance(value, dict):
            self.add(where, f"must be an object, not {_json_type(value)}")
            return None
        return value

    def unknown_keys(self, where: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
        for key in value:
            if key not in known:
                self.problems.append(_unknown_key_problem(f"{where}.{key}", key, known))

    # ranges

    def ranges(self) -> List[RangeConfig]:
        entries: List[Tuple[str, Mapping[str, Any], Mapping[str, str]]] = []
        top = {key: self.ipam[key] for key in _RANGE_KEYS if key in self.ipam}
        top_paths = {key: self.where(key) for key in _RANGE_KEYS}
        if "range" in top and top["range"] != "":
            entries.append((top_paths["range"], top, top_paths))
        else:
            for key in ("range_start", "range_end", "exclude"):
                if key not in top:
                    continue
                if key == "exclude":
                    given = bool(self.string_list(top_paths[key], top[key]))
                else:
                    given = self.ip(top_paths[key], top[key]) is not None
                if given:
                    self.add(top_paths[key], f"is set but {top_paths['range']} is not "
                             "(for ipRanges, set it inside the ipRanges entry)")
        if "ipRanges" in self.ipam:
            base = self.where("ipRanges")
            items = self.ipam["ipRanges"]
            if not isinstance(items, list):
                self.add(base, f"must be a list of objects, not {_json_type(items)}")
                self.range_failed = True
                items = []
            for index, item in enumerate(items):
                here = f"{base}[{index}]"
                entry = self.obj(here, item)
                if entry is None:
                    self.range_failed = True
                    continue
                self.unknown_keys(here, entry, _RANGE_KEYS)
                item_paths = {key: f"{here}.{key}" for key in _RANGE_KEYS}
                if "range" not in entry or entry["range"] == "":
                    self.add(item_paths["range"], "missing (every ipRanges entry needs a range)")
                    self.range_failed = True
                    for key in ("range_start", "range_end"):
                        if key in entry:
                            self.ip(item_paths[key], entry[key])
                    continue
                entries.append((here, entry, item_paths))
        result: List[RangeConfig] = []
        seen: Dict[IPNetwork, str] = {}
        for _, entry, paths in entries:
            parsed = self.one_range(entry, paths)
            if parsed is None:
                continue
            earlier = seen.get(parsed.network)
            if earlier is not None:
                self.add(paths["range"], f"{parsed.network} duplicates the range of {earlier}")
                continue
            seen[parsed.network] = paths["range"]
            result.append(parsed)
        return result

    def one_range(
        self, entry: Mapping[str, Any], paths: Mapping[str, str]
    ) -> Optional[RangeConfig]:
        text = entry["range"]
        start = self.ip(paths["range_start"], entry["range_start"]) \
            if "range_start" in entry else None
        end = self.ip(paths["range_end"], entry["range_end"]) if "range_end" in entry else None
        excludes = self.excludes(paths["exclude"], entry["exclude"]) \
            if "exclude" in entry else []
        if not isinstance(text, str):
            self.add(paths["range"], f"must be a CIDR string, not {_json_type(text)}")
            self.range_failed = True
            return None
        try:
            network, dash_start, dash_end = parse_range(text)
        except ValueError as exc:
            self.add(paths["range"], str(exc))
            self.range_failed = True
            return None
        good = True
        if network.max_prefixlen - network.prefixlen < 2:
            self.add(paths["range"], f"{network} is too small to hold an address "
                     f"(a range needs at least 2 host bits)")
            self.range_failed = True
            return None
        self.networks.append(network)
        if dash_start is not None and dash_end is not None:
            for given, dash, key in ((start, dash_start, "range_start"),
                                     (end, dash_end, "range_end")):
                if given is not None and given != dash:
                    self.add(paths[key], f"{given} conflicts with {dash} given by "
                             f"the dash syntax of {paths['range']}")
                    good = False
            # The end and the prefix make the network, so only the start can be outside.
            if dash_start not in network:
                self.add(paths["range"], f"range start {dash_start} is outside {network}")
                good = False
            start, end = dash_start, dash_end
            start_where = end_where = paths["range"]
        else:
            start_where, end_where = paths["range_start"], paths["range_end"]
        lowest = network.network_address + 1
        highest = network.broadcast_address - 1
        first, last = lowest, highest
        if start is not None and good:
            if start.version != network.version or start not in network:
                self.add(start_where, f"{start} is outside range {network}")
                good = False
            elif start == network.broadcast_address:
                self.add(start_where, f"{start} is the broadcast address of range {network}")
                good = False
            else:
                first = start if int(start) > int(lowest) else lowest
        if end is not None and good:
            if end.version != network.version or end not in network:
                self.add(end_where, f"{end} is outside range {network}")
                good = False
            elif end == network.network_address:
                self.add(end_where, f"{end} is the network address of range {network}")
                good = False
            else:
                last = end if int(end) < int(highest) else highest
        if good and int(last) < int(first):
            self.add(end_where, f"{end} is before range_start {first}")
            good = False
        checked: List[IPNetwork] = []
        for where, excluded in excludes:
            if excluded.version != network.version:
                self.add(where, f"{excluded} is an IPv{excluded.version} network "
                         f"but range {network} is IPv{network.version}")
            elif not excluded.overlaps(network):
                self.add(where, f"{excluded} is outside range {network}")
            elif not excluded.subnet_of(network):  # type: ignore[arg-type]
                self.add(where, f"{excluded} is not entirely inside range {network}")
            else:
                checked.append(excluded)
        if len(checked) != len(excludes):
            good = False
        if not good:
            return None
        if checked and _covers(checked, int(first), int(last)):
            self.add(paths["exclude"], f"excludes every allocatable address of "
                     f"range {network} ({first} to {last})")
            return None
        return RangeConfig(network=network, first=first, last=last, exclude=tuple(checked))

    def excludes(self, where: str, value: Any) -> List[Tuple[str, IPNetwork]]:
        items = self.string_list(where, value)
        if items is None:
            return []
        found: List[Tuple[str, IPNetwork]] = []
        for index, text in enumerate(items):
            here = f"{where}[{index}]"
            try:
                found.append((here, _parse_interface_or_ip(text).network))
            except ValueError as exc:
                self.add(here, str(exc))
        return found

    # the rest of the keys

    def routes(self) -> List[Mapping[str, Any]]:
        if "routes" not in self.ipam:
            return []
        base = self.where("routes")
        value = self.ipam["routes"]
        if not isinstance(value, list):
            self.add(base, f"must be a list of objects, not {_json_type(value)}")
            return []
        routes: List[Mapping[str, Any]] = []
        for index, item in enumerate(value):
            here = f"{base}[{index}]"
            entry = self.obj(here, item)
            if entry is None:
                continue
            route = dict(entry)
            if "dst" not in entry:
                self.add(f"{here}.dst", "missing (a route needs a destination CIDR)")
                continue
            dst_text = entry["dst"]
            if not isinstance(dst_text, str):
                self.add(f"{here}.dst", f"must be a CIDR string, not {_json_type(dst_text)}")
                continue
            try:
                dst = parse_network(dst_text)
            except ValueError as exc:
                self.add(f"{here}.dst", str(exc))
                continue
            route["dst"] = str(dst)
            if "gw" in entry:
                gw = self.ip(f"{here}.gw", entry["gw"])
                if gw is not None:
                    if gw.version != dst.version:
                        self.add(f"{here}.gw", f"{gw} is not of the family of dst {dst}")
                    route["gw"] = str(gw)
                elif entry["gw"] == "":
                    del route["gw"]
            for key in _ROUTE_INT_KEYS:
                if key in entry and not _is_int(entry[key]):
                    self.add(f"{here}.{key}", f"must be an integer, not {_json_type(entry[key])}")
            routes.append(route)
        return routes

    def dns(self) -> Dict[str, Any]:
        if "dns" not in self.ipam:
            return {}
        base = self.where("dns")
        value = self.obj(base, self.ipam["dns"])
        if value is None:
            return {}
        dns = dict(value)
        for key in _DNS_LIST_KEYS:
            if key in value and self.string_list(f"{base}.{key}", value[key]) is None:
                dns.pop(key)
        if "domain" in value and not isinstance(value["domain"], str):
            self.add(f"{base}.domain", f"must be a string, not {_json_type(value['domain'])}")
        servers = dns.get("nameservers")
        if isinstance(servers, list):
            canonical = []
            for index, text in enumerate(servers):
                ip = self.ip(f"{base}.nameservers[{index}]", text)
                canonical.append(str(ip) if ip is not None else text)
            dns["nameservers"] = canonical
        return dns

    def addresses(self) -> List[StaticAddress]:
        if "addresses" not in self.ipam:
            return []
        base = self.where("addresses")
        value = self.ipam["addresses"]
        if not isinstance(value, list):
            self.add(base, f"must be a list of objects, not {_json_type(value)}")
            return []
        found: List[StaticAddress] = []
        for index, item in enumerate(value):
            here = f"{base}[{index}]"
            entry = self.obj(here, item)
            if entry is None:
                continue
            self.unknown_keys(here, entry, _ADDRESS_KEYS)
            text = entry.get("address")
            if "address" not in entry:
                self.add(f"{here}.address", "missing (e.g. \"10.10.0.1/24\")")
                continue
            if not isinstance(text, str):
                self.add(f"{here}.address", f"must be a CIDR string, not {_json_type(text)}")
                continue
            try:
                address = parse_interface(text)
            except ValueError as exc:
                self.add(f"{here}.address", str(exc))
                continue
            gateway = self.ip(f"{here}.gateway", entry["gateway"]) \
                if "gateway" in entry else None
            if gateway is not None and gateway.version != address.version:
                self.add(f"{here}.gateway", f"{gateway} is not of the family of {address}")
                continue
            found.append(StaticAddress(address=address, gateway=gateway))
        return found

    def gateway(self, addresses: Sequence[StaticAddress]) -> Optional[IPAddress]:
        if "gateway" not in self.ipam:
            return None
        where = self.where("gateway")
        gateway = self.ip(where, self.ipam["gateway"])
        if gateway is None or self.range_failed:
            return gateway
        same_family = [n for n in self.networks if n.version == gateway.version]
        if same_family:
            inside = [net for net in same_family if gateway in net]
            if not inside:
                self.add(where, f"{gateway} is not inside any configured range "
                         f"({', '.join(map(str, same_family))}); addresses get the range's "
                         f"prefix, so it would be unreachable (for a range within a wider "
                         f"subnet, give the subnet with range_start/range_end)")
            elif all(gateway in (net.network_address, net.broadcast_address) for net in inside):
                self.add(where, f"{gateway} is the network or broadcast address of {inside[0]}")
        elif not any(a.address.version == gateway.version for a in addresses):
            self.add(where, f"{gateway} is an IPv{gateway.version} address but no "
                     f"IPv{gateway.version} range or address is configured")
        return gateway

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.ipam:
            return default
        value = self.ipam[key]
        if not isinstance(value, bool):
            self.add(self.where(key), f"must be true or false, not {_json_type(value)}")
            return default
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.string(key)
        if value is None:
            return default
        if value not in choices:
            self.add(self.where(key), f"{value} is not one of {', '.join(choices)}")
            return default
        return value

    def network_name(self, ranges: Sequence[RangeConfig]) -> str:
        value = self.string("network_name")
        if value is None:
            return ""
        where = self.where("network_name")
        # A pool is named "<network_name>-<cidr>"; the cidr part always starts with a
        # digit or letter, so checking the name with a sample suffix checks the prefix.
        if not _DNS1123_SUBDOMAIN.fullmatch(f"{value}-0"):
            self.add(where, f"{value!r} cannot be part of a Kubernetes object name (use "
                     f"lowercase letters, digits, '-' and '.', starting with a letter or "
                     f"digit, no '..', '.-' or '-.')")
            return value
        longest = ""
        for rng in ranges:
            for suffix in (str(rng.network), "0" * _LONGEST_ADDRESS[rng.network.version]):
                name = f"{value}-{suffix.replace(':', '-').replace('/', '-')}"
                longest = max(longest, name, key=len)
        if not ranges:
            longest = f"{value}-0"
        if len(longest) > _K8S_NAME_MAX:
            self.add(where, f"is too long: the object name {longest[:40]}... would have "
                     f"{len(longest)} characters (at most {_K8S_NAME_MAX})")
        return value

    def data_dir(self) -> str:
        value = self.string("data_dir")
        if value is None:
            return DEFAULT_DATA_DIR
        if not value.startswith("/"):
            self.add(self.where("data_dir"), f"{value} is not an absolute path")
        return value

    def kubernetes(self) -> Optional[str]:
        if "kubernetes" not in self.ipam:
            return None
        base = self.where("kubernetes")
        value = self.obj(base, self.ipam["kubernetes"])
        if value is None:
            return None
        self.unknown_keys(base, value, _KUBERNETES_KEYS)
        for key in _KUBERNETES_KEYS:
            if key in value and not isinstance(value[key], str):
                self.add(f"{base}.{key}", f"must be a string, not {_json_type(value[key])}")
        kubeconfig = value.get("kubeconfig")
        return kubeconfig if isinstance(kubeconfig, str) and kubeconfig else None

    def etcd(self, datastore: str) -> Optional[EtcdConfig]:
        host = self.string("etcd_host")
        fields = {key: self.string(f"etcd_{key}")
                  for key in ("username", "password", "key_file", "cert_file", "ca_cert_file")}
        if datastore != "etcd":
            return None
        if host is None:
            self.add(self.where("etcd_host"), "missing (required when datastore is etcd)")
            return None
        return EtcdConfig(host=host, **fields)

    def ignored(self) -> None:
        for key in _IGNORED_INT_KEYS:
            if key in self.ipam:
                value = self.ipam[key]
                if not _is_int(value) or value < 0:
                    self.add(self.where(key), f"must be a non-negative integer, "
                             f"not {value if _is_int(value) else _json_type(value)}")
        for key in _PLAIN_STRING_KEYS:
            self.string(key)


def _covers(blocks: Sequence[IPNetwork], first: int, last: int) -> bool:
    """Do the blocks together cover every address in ``[first, last]``?"""
    position = first
    spans = sorted((int(b.network_address), int(b.broadcast_address)) for b in blocks)
    for low, high in spans:
        if low > position:
            return False
        position = max(position, high + 1)
        if position > last:
            return True
    return position > last


# --------------------------------------------------------------------------------------
# The flat file.


def _flat_file_candidates(
    configuration_path: Optional[str], paths: Sequence[str]
) -> List[str]:
    found: List[str] = []
    if configuration_path:
        if os.path.isdir(configuration_path):
            found.append(os.path.join(configuration_path, FLAT_FILE_NAME))
        else:
            found.append(configuration_path)
    found.extend(paths)
    return found


def _load_flat_file(
    configuration_path: Optional[str], paths: Sequence[str], problems: List[str]
) -> Tuple[Optional[str], Mapping[str, Any]]:
    for path in _flat_file_candidates(configuration_path, paths):
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            problems.append(f"{path}: cannot read the flat configuration file: "
                            f"{exc.strerror or exc}")
            return path, {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            problems.append(f"{path}: the flat configuration file is not valid JSON: {exc}")
            return path, {}
        if not isinstance(value, dict):
            problems.append(f"{path}: the flat configuration file must hold a JSON object "
                            f"(the ipam keys), not {_json_type(value)}")
            return path, {}
        return path, value
    return None, {}


def _merge_flat(
    ipam: Dict[str, Any], flat: Mapping[str, Any], label: str, origin: Dict[str, str]
) -> List[str]:
    """Fill unset ipam keys from the flat file (in place); return its unknown-key problems."""
    problems: List[str] = []
    for key, value in flat.items():
        if key not in _IPAM_KEYS:
            problems.append(_unknown_key_problem(f"{label}{key}", key, _IPAM_KEYS))
            continue
        if key == "enable_overlapping_ranges":
            # As upstream: only the network's own config can set it.
            if not isinstance(value, bool):
                problems.append(f"{label}{key}: must be true or false, not {_json_type(value)}")
            continue
        if key == "kubernetes" and isinstance(value, dict) and isinstance(ipam.get(key), dict):
            mine = dict(ipam[key])
            for sub, sub_value in value.items():
                if _is_unset(mine.get(sub)):
                    mine[sub] = sub_value
            ipam[key] = mine
            continue
        if _is_unset(ipam.get(key)) and not _is_unset(value):
            ipam[key] = value
            origin[key] = label
    return problems


def _read_nodename(directories: Sequence[str]) -> Optional[str]:
    for directory in directories:
        path = os.path.join(directory, NODENAME_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                name = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name:
            return name
    return None


# --------------------------------------------------------------------------------------
# Entry points.


def _interfaces(where: str, value: Any, problems: List[str]) -> List[IPInterface]:
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list of CIDR strings, not {_json_type(value)}")
        return []
    found: List[IPInterface] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(f"{where}[{index}]: must be a CIDR string, not {_json_type(item)}")
            continue
        try:
            found.append(_parse_interface_or_ip(item))
        except ValueError as exc:
            problems.append(f"{where}[{index}]: {exc}")
    return found


def _valid_attachments(
    value: Any, problems: List[str]
) -> Optional[tuple[tuple[str, str], ...]]:
    where = "cni.dev/valid-attachments"
    if not isinstance(value, list):
        problems.append(f"{where}: must be a list of objects, not {_json_type(value)}")
        return None
    found: List[Tuple[str, str]] = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{here}: must be an object, not {_json_type(item)}")
            continue
        pair = []
        for key in ("containerID", "ifname"):
            text = item.get(key)
            if not isinstance(text, str) or not text:
                problems.append(f"{here}.{key}: must be a non-empty string")
            else:
                pair.append(text)
        if len(pair) == 2:
            found.append((pair[0], pair[1]))
    return tuple(found)


def _requested_ips(conf: Mapping[str, Any], problems: List[str]) -> List[IPInterface]:
    """``runtimeConfig.ips`` (the ``ips`` capability) and ``args.cni.ips``, in order."""
    found: List[IPInterface] = []
    runtime = conf.get("runtimeConfig")
    if isinstance(runtime, dict) and "ips" in runtime:
        found.extend(_interfaces("runtimeConfig.ips", runtime["ips"], problems))
    elif "runtimeConfig" in conf and not isinstance(runtime, dict):
        problems.append(f"runtimeConfig: must be an object, not {_json_type(runtime)}")
    args = conf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and "ips" in cni:
        for item in _interfaces("args.cni.ips", cni["ips"], problems):
            if item not in found:
                found.append(item)
    return found


def parse_netconf(
    data: bytes,
    *,
    cni_args: str = "",
    env: Optional[Mapping[str, str]] = None,
    flat_file_paths: Optional[Sequence[str]] = None,
    require_ranges: bool = True,
    read_host_files: bool = True,
) -> NetConf:
    """Parse and validate the netconf on stdin, merged with the flat file.

    Args:
        data: the network configuration the runtime wrote to stdin.
        cni_args: the ``CNI_ARGS`` value (see :func:`parse_cni_args`).
        env: the process environment; only ``NODENAME`` is read.
        flat_file_paths: where to look for the flat file after
            ``ipam.configuration_path`` (default: :data:`DEFAULT_FLAT_FILE_PATHS`).
        require_ranges: whether a config with no range and no ``addresses`` is an error.
        read_host_files: False reads no file at all (no flat file, not even at
            ``configuration_path``, and no ``nodename`` file): for offline validation.

    Raises:
        DecodingError: the input is not a JSON object.
        InvalidConfigError: one or more problems, each naming its key.
        InvalidEnvironmentError: ``cni_args`` is malformed or has unknown keys.
    """
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodingError(f"the network configuration is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise DecodingError(
            f"the network configuration must be a JSON object, not {_json_type(conf)}"
        )
    problems: List[str] = []
    name = conf.get("name")
    if name is None or name == "":
        problems.append("name: missing network name")
    elif not isinstance(name, str):
        problems.append(f"name: must be a string, not {_json_type(name)}")
    elif not _CNI_NAME.fullmatch(name):
        problems.append(f"name: {name!r} is not a valid network name (letters, digits, "
                        f"'_', '.' and '-', starting with a letter or digit)")
    cni_version = conf.get("cniVersion", "")
    if not isinstance(cni_version, str):
        problems.append(f"cniVersion: must be a string, not {_json_type(cni_version)}")
        cni_version = ""
    raw_ipam = conf.get("ipam")
    if raw_ipam is None:
        problems.append("ipam: missing (the network configuration has no ipam object)")
        raise InvalidConfigError(problems)
    if not isinstance(raw_ipam, dict):
        problems.append(f"ipam: must be an object, not {_json_type(raw_ipam)}")
        raise InvalidConfigError(problems)
    plugin_type = raw_ipam.get("type")
    if plugin_type != "whereabouts":
        shown = "missing" if plugin_type is None else repr(plugin_type)
        problems.append(f"ipam.type: must be \"whereabouts\" (only networks whose IPAM type "
                        f"is whereabouts are handled), not {shown}")
        raise InvalidConfigError(problems)

    requested = _requested_ips(conf, problems)
    attachments = None
    if "cni.dev/valid-attachments" in conf:
        attachments = _valid_attachments(conf["cni.dev/valid-attachments"], problems)

    ipam: Dict[str, Any] = dict(raw_ipam)
    origin: Dict[str, str] = {}
    for key in raw_ipam:
        if key not in _IPAM_KEYS:
            problems.append(_unknown_key_problem(f"ipam.{key}", key, _IPAM_KEYS))
            del ipam[key]
    flat_path: Optional[str] = None
    if read_host_files:
        own_path = raw_ipam.get("configuration_path")
        flat_path, flat = _load_flat_file(
            own_path if isinstance(own_path, str) else None,
            DEFAULT_FLAT_FILE_PATHS if flat_file_paths is None else flat_file_paths,
            problems,
        )
        if flat:
            problems.extend(_merge_flat(ipam, flat, f"{flat_path}: ", origin))

    check = _Checker(ipam, origin)
    ranges = check.ranges()
    addresses = check.addresses()
    if require_ranges and not ranges and not addresses and not any(
        key in ipam and not _is_unset(ipam[key]) for key in ("range", "ipRanges", "addresses")
    ):
        check.add("ipam", "no range configured: set ipam.range or ipam.ipRanges "
                  "(or static ipam.addresses)")
    if len(addresses) > 1 and cni_version in ("0.1.0", "0.2.0"):
        families = [a.address.version for a in addresses]
        if len(set(families)) != len(families):
            check.add(check.where("addresses"), f"CNI version {cni_version} does not "
                      f"support more than 1 address per family")
    gateway = check.gateway(addresses)
    routes = check.routes()
    dns = check.dns()
    overlapping = check.boolean("enable_overlapping_ranges", True)
    network_name = check.network_name(ranges)
    datastore = check.choice("datastore", DATASTORES, "kubernetes")
    log_level = check.choice("log_level", LOG_LEVELS, DEFAULT_LOG_LEVEL)
    kubeconfig = check.kubernetes()
    etcd = check.etcd(datastore)
    data_dir = check.data_dir()
    check.ignored()
    problems.extend(check.problems)
    if problems:
        raise InvalidConfigError(problems)

    configuration_path = check.string("configuration_path")
    environment = env if env is not None else {}
    node_name = environment.get("NODENAME", "").strip() or check.string("node_name")
    if node_name is None and read_host_files:
        directories = []
        if configuration_path:
            directories.append(configuration_path if os.path.isdir(configuration_path)
                               else os.path.dirname(configuration_path))
        if flat_path:
            directories.append(os.path.dirname(flat_path))
        node_name = _read_nodename(directories)

    args = parse_cni_args(cni_args)
    config = IPAMConfig(
        ranges=tuple(ranges),
        gateway=gateway,
        routes=tuple(routes),
        dns=dns,
        addresses=tuple(addresses),
        enable_overlapping_ranges=overlapping,
        network_name=network_name,
        datastore=datastore,
        kubeconfig=kubeconfig,
        etcd=etcd,
        data_dir=data_dir,
        log_file=check.string("log_file"),
        log_level=log_level,
        configuration_path=configuration_path,
        node_name=node_name,
        flat_file=flat_path,
    )
    return NetConf(
        name=str(name),
        cni_version=cni_version,
        ipam=config,
        requested_ips=tuple(requested),
        valid_attachments=attachments,
        args=args,
    )


_CNI_ARG_KEYS = (
    "IgnoreUnknown",
    "IP",
    "GATEWAY",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
)


def parse_cni_args(text: str) -> CNIArgs:
    """Parse ``CNI_ARGS`` (``KEY=VALUE;KEY=VALUE``).

    ``IP`` is a comma-separated list of CIDRs (a bare address counts as /32 or /128),
    ``GATEWAY`` a comma-separated list of addresses. Keys other than the known ones
    are an error unless ``IgnoreUnknown`` is ``1`` or ``true``. Empty pairs (a trailing
    ``;``) are skipped.

    Raises:
        InvalidEnvironmentError: a malformed pair, a bad value or unknown keys.
    """
    problems: List[str] = []
    values: Dict[str, str] = {}
    unknown: List[str] = []
    for pair in text.split(";"):
        if pair == "":
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"invalid pair {pair!r} (expected KEY=VALUE)")
            continue
        values[key] = value
        if key not in _CNI_ARG_KEYS:
            unknown.append(key)
    ignore_unknown = False
    if "IgnoreUnknown" in values:
        flag = values["IgnoreUnknown"].lower()
        if flag in ("1", "true"):
            ignore_unknown = True
        elif flag not in ("0", "false", ""):
            problems.append(f"IgnoreUnknown: {values['IgnoreUnknown']!r} is not one of "
                            f"1, 0, true, false")
    if unknown and not ignore_unknown:
        problems.append(f"unknown args [{', '.join(unknown)}] (set IgnoreUnknown=1 to "
                        f"allow them)")
    ips: List[IPInterface] = []
    for item in values.get("IP", "").split(","):
        if item.strip():
            try:
                ips.append(_parse_interface_or_ip(item.strip()))
            except ValueError as exc:
                problems.append(f"IP: {exc}")
    gateways: List[IPAddress] = []
    for item in values.get("GATEWAY", "").split(","):
        if item.strip():
            try:
                gateways.append(parse_ip(item.strip()))
            except ValueError:
                problems.append(f"GATEWAY: {item.strip()} is not an IP address")
    if problems:
        raise InvalidEnvironmentError(f"CNI_ARGS: {'; '.join(problems)}")
    return CNIArgs(
        pod_namespace=values.get("K8S_POD_NAMESPACE", ""),
        pod_name=values.get("K8S_POD_NAME", ""),
        infra_container_id=values.get("K8S_POD_INFRA_CONTAINER_ID", ""),
        ips=tuple(ips),
        gateways=tuple(gateways),
        pod_uid=values.get("K8S_POD_UID", ""),
    )
