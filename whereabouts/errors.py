"""The error hierarchy. Every class carries the CNI error code the protocol layer reports.

CNI reserves codes below 100 (SPEC.md "Error"); plugin-specific codes start at 100.
"""

from __future__ import annotations

from typing import Optional, Sequence


class WhereaboutsError(Exception):
    """Base class: a failure the CNI layer turns into ``{"code", "msg", "details"}``."""

    code = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class IncompatibleVersionError(WhereaboutsError):
    code = 1


class InvalidEnvironmentError(WhereaboutsError):
    code = 4


class DecodingError(WhereaboutsError):
    code = 6


class InvalidConfigError(WhereaboutsError):
    """A configuration problem. ``problems`` lists every one found, each naming its key."""

    code = 7

    def __init__(self, problems: Sequence[str], details: str = "") -> None:
        self.problems = tuple(problems)
        joined = "; ".join(self.problems)
        super().__init__(f"invalid IPAM configuration: {joined}", details)


class TryAgainLaterError(WhereaboutsError):
    code = 11


class PluginNotAvailableError(WhereaboutsError):
    """STATUS: the datastore cannot be reached, so ADD would fail."""

    code = 50


class InternalError(WhereaboutsError):
    code = 999


class RangeExhaustedError(WhereaboutsError):
    """No free address is left in a range."""

    code = 100


class AddressInUseError(WhereaboutsError):
    """A requested address is held by another attachment."""

    code = 101


class CheckFailedError(WhereaboutsError):
    """CHECK found that the container's allocation is not recorded."""

    code = 102


class StoreError(WhereaboutsError):
    """A datastore failed in a way retrying will not fix."""

    code = 110


class StoreUnavailableError(StoreError):
    """The datastore could not be reached (connection refused, timeout, 5xx)."""

    code = 11


class ConflictError(StoreError):
    """A compare-and-swap lost: the object changed since it was read. Retry from a fresh read."""

    code = 11


class ObjectTooLargeError(StoreError):
    """The datastore refused an object for its size (etcd's request limit)."""

    code = 111

    def __init__(self, msg: str, details: str = "", size: Optional[int] = None) -> None:
        super().__init__(msg, details)
        self.size = size


class StoreNotConfiguredError(StoreError):
    """The configuration names no usable datastore (e.g. no kubeconfig anywhere)."""

    code = 7
