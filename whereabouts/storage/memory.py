"""An in-memory Store: the unit-test double for everything above the storage layer.

It keeps the contract of the real backends (compare-and-swap versions, create-if-absent,
delete-if-unchanged) and lets a test interfere: ``before_write`` runs before every
mutation and may change the store (to make the caller's version stale) or raise;
``conflicts`` makes the next N pool writes lose as if another writer had won;
``unavailable`` makes every call fail as an unreachable store does. ``calls`` records
every operation so tests can count round trips.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ConflictError, StoreUnavailableError
from ..model import Pool, PoolKey, Reservation, ReservationKey

# (operation, object name): "write_pool", "create_reservation", "delete_reservation".
WriteHook = Callable[[str, str], None]


class MemoryStore:
    def __init__(self, before_write: Optional[WriteHook] = None) -> None:
        self.before_write = before_write
        self.conflicts = 0
        self.unavailable = False
        self.calls: List[Tuple[str, str]] = []
        self._pools: Dict[str, Pool] = {}
        self._reservations: Dict[str, Reservation] = {}
        # One counter for every object, so a deleted and re-created object never gets a
        # version it had before (a stale delete must not hit the new one).
        self._versions = itertools.count(1)
        self._lock = threading.RLock()

    def _enter(self, op: str, name: str) -> None:
        self.calls.append((op, name))
        if self.unavailable:
            raise StoreUnavailableError("memory store is marked unavailable")

    def _hook(self, op: str, name: str) -> None:
        if self.before_write is not None:
            self.before_write(op, name)

    def _next_version(self) -> str:
        return str(next(self._versions))

    def read_pool(self, key: PoolKey) -> Pool:
        with self._lock:
            self._enter("read_pool", key.name)
            stored = self._pools.get(key.name)
            return Pool(key) if stored is None else stored

    def write_pool(self, pool: Pool) -> Pool:
        name = pool.key.name
        with self._lock:
            self._enter("write_pool", name)
            self._hook("write_pool", name)
            if self.conflicts > 0:
                self.conflicts -= 1
                raise ConflictError(f"pool {name}: injected conflict")
            stored = self._pools.get(name)
            current = stored.version if stored is not None else None
            if current != pool.version:
                raise ConflictError(
                    f"pool {name} changed (stored version {current}, written {pool.version})"
                )
            written = Pool(pool.key, dict(pool.allocations), self._next_version(), pool.raw)
            self._pools[name] = written
            return written

    def list_pools(self) -> list[Pool]:
        with self._lock:
            self._enter("list_pools", "")
            return list(self._pools.values())

    def read_reservation(self, key: ReservationKey) -> Optional[Reservation]:
        with self._lock:
            self._enter("read_reservation", key.name)
            return self._reservations.get(key.name)

    def create_reservation(self, reservation: Reservation) -> Optional[Reservation]:
        name = reservation.key.name
        with self._lock:
            self._enter("create_reservation", name)
            self._hook("create_reservation", name)
            if name in self._reservations:
                return None
            created = replace(reservation, version=self._next_version(), created=time.time())
            self._reservations[name] = created
            return created

    def delete_reservation(self, reservation: Reservation) -> bool:
        name = reservation.key.name
        with self._lock:
            self._enter("delete_reservation", name)
            self._hook("delete_reservation", name)
            stored = self._reservations.get(name)
            if stored is None or stored.version != reservation.version:
                return False
            del self._reservations[name]
            return True

    def list_reservations(self) -> list[Reservation]:
        with self._lock:
            self._enter("list_reservations", "")
            return list(self._reservations.values())

    def ping(self) -> None:
        with self._lock:
            self._enter("ping", "")

    def close(self) -> None:
        pass

    # Test helpers: change the store behind a caller's back (another writer's move).

    def put_pool(self, pool: Pool) -> Pool:
        """Store ``pool`` unconditionally, as another writer would; returns it versioned."""
        with self._lock:
            written = Pool(pool.key, dict(pool.allocations), self._next_version(), pool.raw)
            self._pools[pool.key.name] = written
            return written

    def put_reservation(self, reservation: Reservation) -> Reservation:
        with self._lock:
            written = replace(reservation, version=self._next_version())
            if written.created is None:
                written = replace(written, created=time.time())
            self._reservations[reservation.key.name] = written
            return written
