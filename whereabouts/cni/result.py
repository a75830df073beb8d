"""Build the ADD result in the shape each CNI version defines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

if TYPE_CHECKING:  # the VERSION path imports this module; keep it light
    from ..config import IPAMConfig, IPInterface, StaticAddress
    from ..model import IPAddress

from .versions import LATEST, SUPPORTED_VERSIONS

__all__ = ["LATEST", "SUPPORTED_VERSIONS", "build", "version_tuple"]


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def _ip_entry(
    address: IPInterface, gateway: Optional[IPAddress], with_version: bool
) -> Dict[str, Any]:
    entry: Dict[str, Any] = {}
    if with_version:
        entry["version"] = str(address.version)
    entry["address"] = str(address)
    if gateway is not None:
        entry["gateway"] = str(gateway)
    return entry


def build(
    cni_version: str,
    cfg: IPAMConfig,
    allocated: Sequence[IPInterface],
    static: Sequence[StaticAddress],
) -> Dict[str, Any]:
    """The result: allocated addresses first (in range order), then static ones.

    The top-level gateway goes only on addresses of its own family (upstream puts an
    IPv4 gateway on IPv6 addresses too).
    """
    legacy = version_tuple(cni_version) < (1, 0, 0)
    ips: List[Dict[str, Any]] = []
    for address in allocated:
        gateway = cfg.gateway if cfg.gateway and cfg.gateway.version == address.version else None
        ips.append(_ip_entry(address, gateway, legacy))
    for item in static:
        ips.append(_ip_entry(item.address, item.gateway, legacy))
    result: Dict[str, Any] = {"cniVersion": cni_version, "ips": ips}
    if cfg.routes:
        result["routes"] = [dict(route) for route in cfg.routes]
    dns = _dns(cfg.dns)
    if dns or legacy:
        # types/040 always carries a dns object, empty or not.
        result["dns"] = dns
    return result


def _dns(dns: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in dns.items() if value}
