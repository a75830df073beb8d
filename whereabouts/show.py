"""``whereabouts pools``: print the allocation table of a datastore.

Operators' view of what is held: one row per allocation (pool, address, pod,
interface, container, node), or a per-pool summary with ``--summary``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

from .config import DATASTORES, EtcdConfig, IPAMConfig
from .iprange import usable_bounds
from .model import Pool


def _config(ns: argparse.Namespace) -> IPAMConfig:
    etcd = EtcdConfig(ns.etcd_host) if ns.datastore == "etcd" else None
    return IPAMConfig(ranges=(), datastore=ns.datastore, data_dir=ns.data_dir,
                      kubeconfig=ns.kubeconfig, etcd=etcd)


def rows(pools: Sequence[Pool]) -> List[Dict[str, str]]:
    out = []
    for pool in sorted(pools, key=lambda p: p.key.name):
        for offset in sorted(pool.allocations):
            owner = pool.allocations[offset]
            out.append({
                "pool": pool.key.name,
                "address": str(pool.address(offset)),
                "pod": owner.podref or "-",
                "ifname": owner.ifname or "-",
                "container": owner.container_id[:12] or "-",
                "node": owner.node or "-",
            })
    return out


def summary(pools: Sequence[Pool]) -> List[Dict[str, str]]:
    out = []
    for pool in sorted(pools, key=lambda p: p.key.name):
        low, high = usable_bounds(pool.key.range)
        out.append({"pool": pool.key.name, "range": str(pool.key.range),
                    "allocated": str(len(pool.allocations)),
                    "capacity": str(max(0, high - low + 1))})
    return out


def render(table: List[Dict[str, str]], empty: str) -> str:
    if not table:
        return empty
    columns = list(table[0])
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in table]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="whereabouts pools", description=__doc__)
    parser.add_argument("--datastore", choices=DATASTORES, default="kubernetes")
    parser.add_argument("--data-dir", default="/var/lib/cni/whereabouts")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--etcd-host", default="127.0.0.1:2379")
    parser.add_argument("--summary", action="store_true", help="one row per pool")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    ns = parser.parse_args(argv)
    from .storage.factory import open_store

    store = open_store(_config(ns))
    try:
        pools = store.list_pools()
    finally:
        store.close()
    table = summary(pools) if ns.summary else rows(pools)
    if ns.json:
        json.dump(table, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(table, "(no allocations)"))
    return 0
