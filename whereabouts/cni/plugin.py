"""CNI entry point: environment and stdin in, a result or an error object out.

The dispatcher takes its I/O as arguments (environment, stdin bytes, stdout and
stderr writers, a store opener) so tests drive it without a process.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, TextIO

from .. import __version__
from .. import log as logs
from ..errors import (
    DecodingError,
    IncompatibleVersionError,
    InternalError,
    InvalidConfigError,
    InvalidEnvironmentError,
    PluginNotAvailableError,
    StoreNotConfiguredError,
    WhereaboutsError,
)
from . import result as results

if TYPE_CHECKING:
    from ..config import IPAMConfig, NetConf
    from ..model import Owner
    from ..storage.base import Store

log = logs.get("whereabouts.cni")

StoreOpener = Callable[["IPAMConfig"], "Store"]

REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
MIN_VERSION = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}


@dataclass(frozen=True)
class Invocation:
    command: str
    container_id: str
    ifname: str
    netns: str
    args: str


def _open_store(cfg: IPAMConfig) -> Store:
    from ..storage.factory import open_store

    return open_store(cfg)


def main(
    environ: Optional[Mapping[str, str]] = None,
    stdin: Optional[bytes] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
    open_store: StoreOpener = _open_store,
) -> int:
    env = os.environ if environ is None else environ
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        _write(out, {"cniVersion": results.LATEST,
                     "supportedVersions": list(results.SUPPORTED_VERSIONS)})
        return 0
    if not command:
        err.write(f"whereabouts {__version__}\nCNI protocol versions supported: "
                  f"{', '.join(results.SUPPORTED_VERSIONS)}\n")
        return 1
    data = sys.stdin.buffer.read() if stdin is None else stdin
    cni_version = _peek_version(data)
    try:
        output = dispatch(command, env, data, open_store)
    except WhereaboutsError as exc:
        log.error("%s failed: %s", command, exc.msg)
        _write(out, _error(cni_version, exc))
        return 1
    except Exception as exc:  # an unforeseen bug must still answer in CNI's format
        log.exception("%s failed", command)
        _write(out, _error(cni_version, InternalError(f"internal error: {exc!r}")))
        return 1
    finally:
        logs.reset()
    if output is not None:
        _write(out, output)
    return 0


def dispatch(
    command: str, env: Mapping[str, str], data: bytes, open_store: StoreOpener
) -> Optional[Dict[str, Any]]:
    if command not in REQUIRED_ENV:
        raise InvalidEnvironmentError(f"unknown CNI_COMMAND {command!r}")
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise InvalidEnvironmentError(f"required env variables [{','.join(missing)}] missing")
    inv = Invocation(command, env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""),
                     env.get("CNI_NETNS", ""), env.get("CNI_ARGS", ""))
    _check_ifname(inv)
    from ..config import parse_netconf

    try:
        conf = parse_netconf(data, cni_args=inv.args, env=env,
                             require_ranges=command not in ("GC", "STATUS"))
    except (InvalidConfigError, DecodingError) as exc:
        if command == "DEL":
            # DEL must let the pod terminate: a config that cannot be read holds nothing we
            # could find. The reconciler frees whatever an earlier valid config allocated.
            sys.stderr.write(f"whereabouts: DEL ignored an unusable configuration: {exc.msg}\n")
            return None
        raise
    logs.configure(conf.ipam.log_level, conf.ipam.log_file)
    _check_version(command, conf.cni_version)
    handler = _HANDLERS[command]
    return handler(conf, inv, open_store)


def _check_ifname(inv: Invocation) -> None:
    name = inv.ifname
    if not name:
        return
    if len(name) > 15 or name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise InvalidEnvironmentError(f"CNI_IFNAME {name!r} is not a valid interface name")


def _check_version(command: str, version: str) -> None:
    if version not in results.SUPPORTED_VERSIONS:
        raise IncompatibleVersionError(
            f"cniVersion {version!r} is not supported",
            details=f"supported: {', '.join(results.SUPPORTED_VERSIONS)}",
        )
    needed = MIN_VERSION.get(command)
    if needed and results.version_tuple(version) < needed:
        raise IncompatibleVersionError(
            f"config version does not allow {command}",
            details=f"{command} needs cniVersion {'.'.join(map(str, needed))} or later",
        )


def _owner(conf: NetConf, inv: Invocation) -> Owner:
    from ..model import Owner

    return Owner(inv.container_id, conf.args.podref, inv.ifname, conf.ipam.node_name)


def _cmd_add(conf: NetConf, inv: Invocation, open_store: StoreOpener) -> Dict[str, Any]:
    from ..config import StaticAddress
    from ..ipam import allocate

    args = conf.args
    requested = list(conf.requested_ips)
    requested += [ip for ip in args.ips if ip not in requested]
    in_range = [r for r in requested if any(r.ip in rc.network for rc in conf.ipam.ranges)]
    static = list(conf.ipam.addresses) + [
        StaticAddress(r, next((g for g in args.gateways if g in r.network), None))
        for r in requested
        if r not in in_range
    ]
    owner = _owner(conf, inv)
    store = open_store(conf.ipam)
    try:
        assigned = allocate(store, conf.ipam, owner, in_range) if conf.ipam.ranges else []
    finally:
        store.close()
    for item in assigned:
        log.info("ADD %s %s: %s", owner.podref or inv.container_id, inv.ifname, item.interface)
    return results.build(conf.cni_version, conf.ipam, [a.interface for a in assigned], static)


def _cmd_del(conf: NetConf, inv: Invocation, open_store: StoreOpener) -> None:
    from ..ipam import release

    if not conf.ipam.ranges:
        return
    owner = _owner(conf, inv)
    try:
        store = open_store(conf.ipam)
    except StoreNotConfiguredError as exc:
        # Not configured at all (e.g. no kubeconfig after the node was reset): failing
        # would leave the pod stuck terminating; the reconciler frees what it held.
        log.error("DEL %s: datastore not usable (%s); nothing released", inv.container_id,
                  exc.msg)
        return
    try:
        freed = release(store, conf.ipam, owner)
    finally:
        store.close()
    log.info("DEL %s %s: released %s", inv.container_id, inv.ifname,
             ", ".join(map(str, freed)) or "nothing")
    return


def _cmd_check(conf: NetConf, inv: Invocation, open_store: StoreOpener) -> None:
    from ..ipam import check

    owner = _owner(conf, inv)
    store = open_store(conf.ipam)
    try:
        check(store, conf.ipam, owner)
    finally:
        store.close()


def _cmd_status(conf: NetConf, inv: Invocation, open_store: StoreOpener) -> None:
    try:
        store = open_store(conf.ipam)
        try:
            store.ping()
        finally:
            store.close()
    except WhereaboutsError as exc:
        raise PluginNotAvailableError(f"datastore {conf.ipam.datastore} is not available: "
                                      f"{exc.msg}") from exc


def _cmd_gc(conf: NetConf, inv: Invocation, open_store: StoreOpener) -> None:
    from ..ipam import garbage_collect

    node = conf.ipam.node_name
    if not node or conf.valid_attachments is None or not conf.ipam.ranges:
        # Without a node name we cannot tell this node's allocations from others'.
        log.info("GC skipped: node name %s, valid-attachments %s", node,
                 "absent" if conf.valid_attachments is None else "present")
        return
    store = open_store(conf.ipam)
    try:
        # Listing reservations needs rights the plugin's Kubernetes role does not have;
        # there the reconciler reclaims unbacked reservations.
        freed = garbage_collect(store, conf.ipam, node, set(conf.valid_attachments),
                                sweep_reservations=conf.ipam.datastore != "kubernetes")
    finally:
        store.close()
    log.info("GC on %s: released %s", node, ", ".join(map(str, freed)) or "nothing")
    return


Handler = Callable[["NetConf", Invocation, StoreOpener], Optional[Dict[str, Any]]]
_HANDLERS: Dict[str, Handler] = {
    "ADD": _cmd_add,
    "DEL": _cmd_del,
    "CHECK": _cmd_check,
    "STATUS": _cmd_status,
    "GC": _cmd_gc,
}


def _peek_version(data: bytes) -> str:
    try:
        value = json.loads(data).get("cniVersion", "")
        return value if isinstance(value, str) and value else results.LATEST
    except Exception:
        return results.LATEST


def _error(cni_version: str, exc: WhereaboutsError) -> Dict[str, Any]:
    body: Dict[str, Any] = {"cniVersion": cni_version, "code": exc.code, "msg": exc.msg}
    if exc.details:
        body["details"] = exc.details
    return body


def _write(out: TextIO, payload: Dict[str, Any]) -> None:
    out.write(json.dumps(payload, indent=2) + "\n")
    out.flush()


