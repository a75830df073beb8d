"""The Store protocol every datastore implements.

A store knows nothing about allocation policy. It reads and writes whole pools with
compare-and-swap, and creates and deletes overlapping-range reservations with
create-if-absent and delete-if-unchanged. The policy, retries and ordering live in
``whereabouts.ipam``; every backend therefore shares one code path for updates.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

from ..model import Pool, PoolKey, Reservation, ReservationKey


class Store(Protocol):
    def read_pool(self, key: PoolKey) -> Pool:
        """The pool's current snapshot; a pool that does not exist reads as empty with
        ``version=None``. Raises StoreUnavailableError when the store cannot be reached."""

    def write_pool(self, pool: Pool) -> Pool:
        """Write ``pool.allocations`` if the stored version still equals ``pool.version``
        (None: only if the pool does not exist). Returns the snapshot with its new version.
        Raises ConflictError when the pool changed since it was read, ObjectTooLargeError
        when the store refuses the object's size."""

    def list_pools(self) -> list[Pool]:
        """Every pool in the store (the reconciler's view)."""

    def read_reservation(self, key: ReservationKey) -> Optional[Reservation]:
        """The reservation, or None when nobody holds the address."""

    def create_reservation(self, reservation: Reservation) -> Optional[Reservation]:
        """Create the reservation if the address is free. Returns it with its version, or
        None when a reservation already exists (whoever owns it)."""

    def delete_reservation(self, reservation: Reservation) -> bool:
        """Delete the reservation only if it is unchanged since read (same version).
        Returns False when it is gone or changed; never deletes another owner's."""

    def list_reservations(self) -> list[Reservation]:
        """Every overlapping-range reservation in the store."""

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the store answers (CNI STATUS)."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""


def pools_named(pools: Iterable[Pool], keys: Iterable[PoolKey]) -> list[Pool]:
    wanted = {k.name for k in keys}
    return [p for p in pools if p.key.name in wanted]
