"""Scale: one range with many live allocations.

* In process: CPU of one allocation decision as the plugin makes it (parse the stored
  pool, decode, ``allocator.choose``, encode, serialise) and the IPPool object's size.
* Through the plugin: an ADD against a pool pre-filled to that size, on each datastore.
* The size limit: the largest pool each remote store accepts (etcd's request limit,
  1.5 MiB by default), what the plugin answers one allocation past it, and whether the
  pool is intact afterwards (same resourceVersion / mod_revision, same entries, no
  reservation left behind).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import NAMESPACE, Bed, Target, container_id, http_json, whereabouts_netconf
from .exec_cost import ipam_for
from .report import percentile

Log = Callable[[str], None]
RANGE = "10.64.0.0/14"  # 262142 usable: room for 60k packed or fragmented
ETCD_DEFAULT_LIMIT = 1536 * 1024  # etcd's --max-request-bytes default (1.5 MiB)


def _owner(i: int) -> Any:
    from whereabouts.model import Owner

    # Realistic lengths: a runtime's 64-hex container id, namespace/pod of a Deployment.
    return Owner(container_id(f"scale/{i}", 0), f"{NAMESPACE}/web-5d8f7c9b6d-{i:06d}", "net1",
                 f"node-{i % 100:03d}")


def offsets_for(live: int, layout: str, size: int, seed: int = 7) -> List[int]:
    """``live`` usable offsets of a range of ``size`` addresses, never an IPv4 ``.0``.

    packed: the lowest ones (a fresh range); fragmented: spread at random over twice as
    many addresses (a range after churn)."""
    usable = (o for o in range(1, size - 1) if o & 0xFF)
    if layout == "packed":
        return [o for _, o in zip(range(live), usable)]
    span = [o for _, o in zip(range(min(2 * live, size - 2)), usable)]
    return sorted(random.Random(seed).sample(span, live))


def _pool(network_name: str, live: int, layout: str) -> Any:
    from whereabouts.model import Pool, PoolKey

    network = ipaddress.ip_network(RANGE)
    offsets = offsets_for(live, layout, network.num_addresses)
    return Pool(PoolKey(network_name, network), {o: _owner(i) for i, o in enumerate(offsets)})


def _k8s_object(pool: Any) -> Dict[str, Any]:
    from whereabouts.storage import codec

    spec = codec.encode_spec(pool)
    return {
        "apiVersion": "whereabouts.cni.cncf.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": pool.key.name, "namespace": NAMESPACE, "resourceVersion": "12345",
                     "uid": "8a5c1f9e-3d2b-4c1a-9f0e-1b2c3d4e5f60", "generation": 1,
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"allocatedCount": len(spec["allocations"]),
                   "capacity": codec.capacity(pool.key.range)},
    }


def _cpu(fn: Callable[[], Any], reps: int) -> Tuple[float, Any]:
    times = []
    value = None
    for _ in range(reps):
        start = time.process_time()
        value = fn()
        times.append(time.process_time() - start)
    return percentile(times, 50), value


def allocator_costs(sizes: Sequence[int], log: Log) -> List[Dict[str, Any]]:
    """CPU of one decision at each size, in this process (same code as the zipapp)."""
    from whereabouts import allocator
    from whereabouts.model import Pool
    from whereabouts.storage import codec

    rows = []
    for live in sizes:
        for layout in ("packed", "fragmented"):
            pool = _pool("scale", live, layout)
            raw = json.dumps(_k8s_object(pool)).encode()
            reps = max(3, min(30, 30_000 // live))
            net = pool.key.range

            def decode(raw: bytes = raw, name: str = pool.key.name) -> Any:
                obj = json.loads(raw)
                return obj, codec.decode_spec(name, obj["spec"], "scale")[1]

            decode_s, (obj, allocations) = _cpu(decode, reps)
            first, last = net.network_address + 1, net.broadcast_address - 1
            choose_s, address = _cpu(
                lambda allocations=allocations, net=net, first=first, last=last:
                allocator.choose(net, first, last, allocations.keys()), reps)

            def encode(obj: Dict[str, Any] = obj, allocations: Dict[int, Any] = allocations,
                       address: Any = address, pool: Pool = pool, live: int = live) -> bytes:
                updated = dict(allocations)
                updated[int(address) - int(pool.key.range.network_address)] = _owner(live + 1)
                new = Pool(pool.key, updated, "1", obj)
                # As KubernetesStore.write_pool: encode over the spec as read.
                out = dict(obj)
                out["spec"] = codec.encode_spec(new, obj["spec"])
                return json.dumps(out).encode()

            encode_s, _ = _cpu(encode, reps)
            rows.append({
                "live": live, "layout": layout, "pool_json_bytes": len(raw),
                "bytes_per_allocation": len(raw) / live,
                "decode_ms": decode_s * 1000, "choose_ms": choose_s * 1000,
                "encode_ms": encode_s * 1000,
                "total_ms": (decode_s + choose_s + encode_s) * 1000, "chosen": str(address),
            })
            log(f"scale: {live} {layout}: {len(raw) / 1024:.0f} KiB, decide "
                f"{rows[-1]['total_ms']:.1f} ms CPU (choose {choose_s * 1000:.3f} ms)")
    return rows


# ----------------------------------------------------------------------------- real stores


def _config(bed: Bed, datastore: str, network_name: str, work: Path,
            overlapping: bool = False) -> Tuple[Optional[Target], Any]:
    from whereabouts.config import parse_netconf

    ipam = ipam_for(bed, datastore, network_name, overlapping, work, range=RANGE)
    if ipam is None:
        return None, None
    netconf = whereabouts_netconf(network_name, ipam)
    cfg = parse_netconf(json.dumps(netconf).encode(), env={}).ipam
    return Target(f"whereabouts/{datastore}", bed.plugin(), netconf, "whereabouts", datastore), cfg


def _admin_store(bed: Bed, datastore: str, cfg: Any) -> Any:
    """A store the harness writes with: the plugin's own classes (so the object layout is
    exactly the plugin's), as an identity that may also delete (admin)."""
    from whereabouts.storage.factory import open_store

    if datastore != "kubernetes":
        return open_store(cfg)
    from whereabouts.kube import kubeconfig
    from whereabouts.kube.transport import HTTPTransport
    from whereabouts.storage.kubernetes import KubernetesStore

    cluster = bed.cluster()
    access = kubeconfig.load_kubeconfig(str(cluster.kubeconfig))
    return KubernetesStore(HTTPTransport(access), NAMESPACE)


def _fill(store: Any, key: Any, live: int) -> Any:
    """Write the pool with ``live`` packed allocations (create or replace)."""
    from whereabouts.model import Pool

    pool = _pool(key.network_name, live, "packed")
    current = store.read_pool(key)
    return store.write_pool(Pool(key, pool.allocations, current.version, current.raw))


def real_writes(bed: Bed, sizes: Sequence[int], datastores: Sequence[str], work: Path, *,
                reps: int, log: Log) -> List[Dict[str, Any]]:
    from whereabouts.errors import WhereaboutsError

    rows = []
    for ds in datastores:
        for live in sizes:
            name = f"scale-{ds}-{live}"
            target, cfg = _config(bed, ds, name, work)
            if target is None:
                rows.append({"datastore": ds, "live": live, "result": "not available: "
                             + bed.problems.get(ds, "?")})
                continue
            store = _admin_store(bed, ds, cfg)
            key = _key(cfg)
            row: Dict[str, Any] = {"datastore": ds, "live": live}
            try:
                written = _fill(store, key, live)
                row["pool_bytes"] = _stored_size(bed, ds, store, written, cfg)
            except WhereaboutsError as exc:
                row["result"] = f"pre-fill refused: {type(exc).__name__} (code {exc.code})"
                rows.append(row)
                log(f"scale: {ds} {live}: {row['result']}")
                store.close()
                continue
            results = [target.run("ADD", container_id(name, i), pod=f"scale-add-{i}",
                                  rss=i == reps - 1)
                       for i in range(reps)]
            ok = [r for r in results if r.ok]
            # The last run is under GNU time (peak RSS); the others are timed.
            timed = [r for r in results[:-1] if r.ok] or ok
            row["wall_median"] = percentile([r.wall for r in timed], 50) if ok else None
            row["cpu_median"] = percentile([r.cpu for r in timed], 50) if ok else None
            row["maxrss_kb"] = results[-1].maxrss_kb if results[-1].ok else None
            row["result"] = ("ok" if len(ok) == len(results)
                             else f"{len(results) - len(ok)} failed: {results[-1].error_text()}")
            for i in range(reps):
                target.run("DEL", container_id(name, i), pod=f"scale-add-{i}")
            _drop(store, key)
            store.close()
            rows.append(row)
            log(f"scale: {ds} {live}: ADD {row['wall_median'] or 0:.3f}s wall, {row['result']}")
    return rows


def _key(cfg: Any) -> Any:
    from whereabouts.model import PoolKey

    return PoolKey(cfg.network_name, cfg.ranges[0].network)


def _drop(store: Any, key: Any) -> None:
    """Empty the pool again (its entries are the harness's)."""
    from whereabouts.errors import WhereaboutsError

    try:
        current = store.read_pool(key)
        if current.version is not None and current.allocations:
            store.write_pool(current.with_allocations({}))
    except WhereaboutsError:
        pass


def _stored_size(bed: Bed, ds: str, store: Any, written: Any, cfg: Any) -> Optional[int]:
    if ds == "kubernetes":
        status, body = bed.cluster().api(
            "GET", f"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/{NAMESPACE}/ippools/"
            f"{written.key.name}", timeout=120)
        return len(json.dumps(body)) if status == 200 else None
    if ds == "etcd":
        kv = _etcd_kv(bed, written.key.name)
        return len(base64.b64decode(kv["value"])) if kv else None
    path = Path(cfg.data_dir) / "pools" / f"{written.key.name}.json"
    return path.stat().st_size if path.exists() else None


def _etcd_kv(bed: Bed, pool_name: str) -> Optional[Dict[str, Any]]:
    etcd = bed.etcd()
    assert etcd is not None
    key = base64.b64encode(f"/whereabouts/ippools/{pool_name}".encode()).decode()
    body = http_json("POST", etcd.endpoint + "/v3/kv/range", {"key": key}, timeout=60)
    kvs = body.get("kvs") or []
    return kvs[0] if kvs else None


def _snapshot(bed: Bed, ds: str, name: str) -> Tuple[Optional[str], int]:
    """(version, number of allocations) of a pool, read without the plugin's code."""
    if ds == "kubernetes":
        status, body = bed.cluster().api(
            "GET", f"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/{NAMESPACE}/ippools/{name}",
            timeout=120)
        if status != 200:
            return None, 0
        return (body["metadata"]["resourceVersion"],
                len((body.get("spec") or {}).get("allocations") or {}))
    kv = _etcd_kv(bed, name)
    if kv is None:
        return None, 0
    spec = json.loads(base64.b64decode(kv["value"]))
    return str(kv.get("mod_revision")), len(spec.get("allocations") or {})


def _reservation_count(bed: Bed, ds: str, store: Any, network_name: str) -> int:
    if ds == "kubernetes":
        return sum(1 for item in bed.list_objects("overlappingrangeipreservations")
                   if item["metadata"]["name"].startswith(network_name + "-"))
    return sum(1 for r in store.list_reservations() if r.key.network_name == network_name)


def size_limit(bed: Bed, ds: str, work: Path, log: Log, hint: int,
               near: Optional[int] = None) -> Dict[str, Any]:
    """Find the largest pool the store accepts, then ADD one past it through the plugin."""
    from whereabouts.errors import WhereaboutsError

    name = f"limit-{ds}"
    # With reservations on: the failing ADD must also roll back its reservation.
    target, cfg = _config(bed, ds, name, work, overlapping=True)
    out: Dict[str, Any] = {"datastore": ds}
    if target is None:
        out["summary"] = "not available: " + bed.problems.get(ds, "?")
        return out
    store = _admin_store(bed, ds, cfg)
    key = _key(cfg)
    refused: Dict[int, str] = {}
    owners = _pool(name, hint * 4, "packed").allocations
    ordered = sorted(owners)
    current = [store.read_pool(key)]

    tried: List[int] = []

    def accepts(live: int) -> bool:
        from whereabouts.model import Pool

        tried.append(live)
        if live > len(ordered):
            raise RuntimeError(f"limit search went past {len(ordered)} allocations")
        allocations = {o: owners[o] for o in ordered[:live]}
        try:
            current[0] = store.write_pool(Pool(key, allocations, current[0].version,
                                               current[0].raw))
            return True
        except WhereaboutsError as exc:
            refused[live] = f"{type(exc).__name__} (code {exc.code}): {exc.msg[:300]}"
            return False

    started = time.monotonic()
    if near:
        # Another store's limit (the same spec JSON under the same etcd limit): close.
        probe, guess = 1, near
    else:
        # Aim from one accepted size: stored bytes grow linearly with the entries.
        probe = max(hint // 2, 1)
        while not accepts(probe) and probe > 1:
            probe //= 2
        size = len(json.dumps(codec_spec(current[0]), separators=(",", ":")))
        guess = probe + int((ETCD_DEFAULT_LIMIT - size) / max(size / probe, 1.0))
    step = 32
    low, high = max(guess - step, probe), guess + step
    while not accepts(low) and low > probe:
        high, low = low, max(low - step, probe)
        step *= 2
    while accepts(high):
        low, high = high, high + step
        step *= 2
    while high - low > 1:
        mid = (low + high) // 2
        if accepts(mid):
            low = mid
        else:
            high = mid
    out["max_live"] = low
    out["search_s"] = time.monotonic() - started
    out["search_writes"] = len(tried)
    out["guess"] = guess
    out["refusal"] = refused.get(high, "")
    if not accepts(low):
        out["summary"] = f"could not re-fill the pool to {low}"
        store.close()
        return out
    out["max_bytes"] = _stored_size(bed, ds, store, store.read_pool(key), cfg)
    before = _snapshot(bed, ds, key.name)
    res = target.run("ADD", container_id(name, 0), pod="limit-0", timeout=300)
    after = _snapshot(bed, ds, key.name)
    orips = _reservation_count(bed, ds, store, name)
    body = res.result()
    out.update({
        "add_rc": res.rc,
        "add_code": body.get("code"),
        "add_msg": body.get("msg") or res.error_text(),
        "add_wall_s": res.wall,
        "intact": before == after and before[0] is not None,
        "before": before,
        "after": after,
        "reservations_left": orips,
    })
    # One below the limit still works (the boundary is the store's, not ours).
    current[0] = store.read_pool(key)
    accepts(low - 1)
    ok = target.run("ADD", container_id(name, 1), pod="limit-1", timeout=300)
    out["add_below_limit_ok"] = ok.ok
    out["add_below_limit_wall_s"] = ok.wall
    out["add_below_limit_cpu_s"] = ok.cpu
    out["add_below_limit_error"] = None if ok.ok else ok.error_text()
    target.run("DEL", container_id(name, 1), pod="limit-1", timeout=300)
    _drop(store, key)
    store.close()
    verdict = ("clear error, pool intact" if out["intact"] and res.rc != 0 and orips == 0
               else "PROBLEM")
    out["verdict"] = verdict
    out["summary"] = (
        f"largest pool accepted: {low:,} allocations ({(out['max_bytes'] or 0) / 1048576:.2f} MiB "
        f"stored); the store refused {high:,} with {out['refusal'] or '?'}. One ADD past the "
        f"limit: exit {res.rc}, CNI code {out['add_code']}, `{str(out['add_msg'])[:220]}` in "
        f"{res.wall:.2f} s; pool unchanged (version, entries) {before} → {after}: "
        f"{out['intact']}; reservations left behind: {orips}; ADD one below the limit "
        f"succeeds: {ok.ok} ({ok.wall:.2f} s wall, {ok.cpu * 1000:.0f} ms CPU). "
        f"Verdict: {verdict}."
    )
    log(f"scale: {ds} limit: {out['summary']}")
    return out


def codec_spec(pool: Any) -> Dict[str, Any]:
    from whereabouts.storage import codec

    return codec.encode_spec(pool)


def run(bed: Bed, sizes: Sequence[int], work: Path, log: Log, *, reps: int = 4,
        datastores: Sequence[str] = ("file", "etcd", "kubernetes"),
        limits: bool = True) -> Dict[str, Any]:
    out: Dict[str, Any] = {"sizes": list(sizes), "range": RANGE}
    out["allocator"] = allocator_costs(sizes, log)
    out["writes"] = real_writes(bed, sizes, datastores, work, reps=reps, log=log)
    if limits:
        per_entry = out["allocator"][0]["bytes_per_allocation"]
        hint = int(1.5 * 1024 * 1024 / per_entry)
        started = time.monotonic()
        out["limits"] = []
        near = None
        for ds in datastores:
            if ds in ("etcd", "kubernetes"):
                out["limits"].append(size_limit(bed, ds, work, log, hint, near))
                near = out["limits"][-1].get("max_live") or near
        log(f"scale: size limits found in {time.monotonic() - started:.1f} s")
    return out
