"""The file datastore: one JSON file per pool and per reservation under ``data_dir``.

Layout::

    <data_dir>/lock                          flock(2) target serialising every write
    <data_dir>/pools/<pool name>.json        IPPool.spec shape plus "version"
    <data_dir>/reservations/<name>.json      ORIP.spec shape plus "version", key fields

Readers take no lock: every file is replaced atomically (temp file in the same
directory, fsync, rename, fsync of the directory), so a reader sees the old or the new
content, never a torn one, and a write reported as done survives a crash. Writers hold
one lock for the store only across read-compare-write, which keeps the critical section
to one small file write; compare-and-swap is a version compare under that lock.

For a single host (demos, hosts without a cluster). It is not safe on NFS, where
flock(2) is not coherent across clients.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager, suppress
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .. import log as logs
from ..errors import ConflictError, StoreError, StoreUnavailableError
from ..model import Pool, PoolKey, Reservation, ReservationKey
from . import codec

log = logs.get(__name__)

_SUFFIX = ".json"


class FileStore:
    def __init__(self, data_dir: str, lock_timeout: float = 10.0) -> None:
        self.data_dir = data_dir
        self.lock_timeout = lock_timeout
        self._pools_dir = os.path.join(data_dir, "pools")
        self._reservations_dir = os.path.join(data_dir, "reservations")
        self._lock_fd: Optional[int] = None
        # flock locks belong to the open file description, which a forked child shares:
        # a child must open its own or it would "hold" the parent's lock.
        self._lock_pid = 0
        # flock(2) cannot tell threads sharing one descriptor apart: serialise them here.
        self._thread_lock = threading.Lock()

    # ------------------------------------------------------------------ pools

    def read_pool(self, key: PoolKey) -> Pool:
        path = self._path(self._pools_dir, key.name)
        data = self._load(path)
        if data is None:
            return Pool(key)
        return self._pool_from(key.name, data, key)

    def write_pool(self, pool: Pool) -> Pool:
        name = pool.key.name
        path = self._path(self._pools_dir, name)
        with self._locked():
            current = self._load(path)
            stored = None if current is None else str(_version_of(current, path))
            if stored != pool.version:
                raise ConflictError(
                    f"pool {name} changed since it was read "
                    f"(stored version {stored}, written {pool.version})"
                )
            base = current if current is not None else pool.raw
            data = codec.encode_spec(pool, base)
            data["version"] = 1 if current is None else _version_of(current, path) + 1
            self._replace(path, data)
        return Pool(pool.key, dict(pool.allocations), str(data["version"]), data)

    def list_pools(self) -> list[Pool]:
        pools = []
        for name in self._names(self._pools_dir):
            path = self._path(self._pools_dir, name)
            try:
                data = self._load(path)
                if data is not None:
                    pools.append(self._pool_from(name, data, None))
            except StoreUnavailableError:
                raise
            except StoreError as exc:
                log.warning("skipping pool file %s: %s", path, exc.msg)
        return pools

    def _pool_from(self, name: str, data: Mapping[str, Any], key: Optional[PoolKey]) -> Pool:
        path = self._path(self._pools_dir, name)
        version = str(_version_of(data, path))
        decoded_key, allocations = codec.decode_spec(
            name, data, key.network_name if key is not None else None
        )
        return Pool(key or decoded_key, allocations, version, dict(data))

    # ------------------------------------------------------------- reservations

    def read_reservation(self, key: ReservationKey) -> Optional[Reservation]:
        path = self._path(self._reservations_dir, key.name)
        data = self._load(path)
        return None if data is None else _reservation_from(key, data, path)

    def create_reservation(self, reservation: Reservation) -> Optional[Reservation]:
        key = reservation.key
        path = self._path(self._reservations_dir, key.name)
        version = os.urandom(8).hex()
        data: Dict[str, Any] = codec.encode_reservation(reservation.owner)
        created = time.time()
        data.update(network_name=key.network_name, address=str(key.address))
        data.update(version=version, created=created)
        with self._locked():
            # link(2) fails on an existing name: create-if-absent even if a writer ignored
            # the lock, and the content is on disk before the name appears.
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
            except OSError as exc:
                raise _unavailable("create", path, exc) from exc
            finally:
                _unlink_quietly(tmp)
            self._sync_dir(path)
        return Reservation(key, reservation.owner, version, created)

    def delete_reservation(self, reservation: Reservation) -> bool:
        path = self._path(self._reservations_dir, reservation.key.name)
        with self._locked():
            current = self._load(path)
            if current is None or current.get("version") != reservation.version:
                return False
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _unavailable("delete", path, exc) from exc
            self._sync_dir(path)
        return True

    def list_reservations(self) -> list[Reservation]:
        reservations = []
        for name in self._names(self._reservations_dir):
            path = self._path(self._reservations_dir, name)
            try:
                data = self._load(path)
            except StoreUnavailableError:
                raise
            except StoreError as exc:
                log.warning("skipping reservation file %s: %s", path, exc.msg)
                continue
            if data is None:
                continue
            key = codec.reservation_key_in(name, data)
            if key is None:
                log.warning("skipping reservation file %s: name is not an address", path)
                continue
            reservations.append(_reservation_from(key, data, path))
        return reservations

    # -------------------------------------------------------------- lifecycle

    def ping(self) -> None:
        """The data directory exists (or can be made) and can be locked and written."""
        with self._locked():
            probe = self._write_temp(os.path.join(self.data_dir, "ping"), {})
            _unlink_quietly(probe)

    def close(self) -> None:
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None

    # ---------------------------------------------------------------- helpers

    def _path(self, directory: str, name: str) -> str:
        # Names come from network_name and an address; refuse anything that could leave
        # the directory or collide with our temp files.
        if not name or name.startswith(".") or "/" in name or "\0" in name or len(name) > 200:
            raise StoreError(f"{name!r} cannot be used as a file name in {directory}")
        return os.path.join(directory, name + _SUFFIX)

    def _names(self, directory: str) -> List[str]:
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _unavailable("list", directory, exc) from exc
        return sorted(
            e[: -len(_SUFFIX)] for e in entries if e.endswith(_SUFFIX) and not e.startswith(".")
        )

    def _load(self, path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unavailable("read", path, exc) from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{path} does not hold a JSON object")
        return data

    def _replace(self, path: str, data: Mapping[str, Any]) -> None:
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _unavailable("write", path, exc) from exc
        self._sync_dir(path)

    def _write_temp(self, path: str, data: Mapping[str, Any]) -> str:
        directory, base = os.path.split(path)
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _unavailable("write", tmp, exc) from exc
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            raise _unavailable("write", tmp, exc) from exc
        os.close(fd)
        return tmp

    def _sync_dir(self, path: str) -> None:
        # The rename or unlink is durable only once the directory entry is on disk.
        directory = os.path.dirname(path)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _unavailable("sync", directory, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _unavailable("sync", directory, exc) from exc
        finally:
            os.close(fd)

    def _ensure_dirs(self) -> None:
        for directory in (self.data_dir, self._pools_dir, self._reservations_dir):
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _unavailable("create", directory, exc) from exc

    def _lock_file(self) -> int:
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._ensure_dirs()
            path = os.path.join(self.data_dir, "lock")
            try:
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _unavailable("open", path, exc) from exc
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise StoreUnavailableError(
                f"file store {self.data_dir}: lock not acquired within {self.lock_timeout:g} s"
            )
        try:
            with self._flocked():
                yield
        finally:
            self._thread_lock.release()

    @contextmanager
    def _flocked(self) -> Iterator[None]:
        fd = self._lock_file()
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    raise _unavailable("lock", self.data_dir, exc) from exc
            # Polling rather than a blocking flock keeps a stuck holder from hanging the
            # CNI call past its deadline; holders keep the lock for milliseconds.
            if time.monotonic() >= deadline:
                raise StoreUnavailableError(
                    f"file store {self.data_dir}: lock not acquired within "
                    f"{self.lock_timeout:g} s (another process holds {self.data_dir}/lock)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _version_of(data: Mapping[str, Any], path: str) -> int:
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreError(f"{path}: version {version!r} is not an integer")
    return version


def _reservation_from(key: ReservationKey, data: Mapping[str, Any], path: str) -> Reservation:
    version = data.get("version")
    if not isinstance(version, str):
        raise StoreError(f"{path}: version {version!r} is not a string")
    return Reservation(key, codec.decode_reservation(data), version, codec.created_of(data))


def _unavailable(action: str, path: str, exc: OSError) -> StoreUnavailableError:
    return StoreUnavailableError(f"file store: cannot {action} {path}: {exc.strerror or exc}")


def _unlink_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)
