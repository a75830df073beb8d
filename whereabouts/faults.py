"""Test-only fault injection: kill the own process at named points of the engine.

Nothing happens unless the environment variable ``WHEREABOUTS_TEST_FAULTS`` is set,
for example::

    WHEREABOUTS_TEST_FAULTS="after-reserve:0.2,before-pool-write:0.1,after-pool-write:0.2"

which makes :func:`point` SIGKILL the calling process at ``after-reserve`` with
probability 0.2, and so on: a crash between two writes, as a node losing power or the
OOM killer would cause. The points are listed in ``docs/faults.md``. When
``WHEREABOUTS_TEST_FAULTS_LOG`` names a file, one line ``<point> <CNI_COMMAND> <pid>``
is appended to it just before each kill, so a test can count what it caused.

The variable is read once per process; when it is unset a call costs a dict lookup.
Stdlib only, no import beyond ``os`` unless a fault is configured.
"""

from __future__ import annotations

import os
from typing import Dict

ENV = "WHEREABOUTS_TEST_FAULTS"
LOG_ENV = "WHEREABOUTS_TEST_FAULTS_LOG"

_cache: Dict[str, Dict[str, float]] = {}  # "plan": the parsed variable, once per process


def parse(text: str) -> Dict[str, float]:
    """``"name:probability,..."`` -> {name: probability}; a bare name means 1.0.
    Malformed items are ignored: a test hook must never break the plugin."""
    plan: Dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition(":")
        name = name.strip()
        if not name:
            continue
        try:
            probability = float(value) if value.strip() else 1.0
        except ValueError:
            continue
        if probability > 0:
            plan[name] = min(probability, 1.0)
    return plan


def _plan() -> Dict[str, float]:
    plan = _cache.get("plan")
    if plan is None:
        text = os.environ.get(ENV, "")
        plan = _cache["plan"] = parse(text) if text else {}
    return plan


def point(name: str) -> None:
    """A place where a test may kill this process (see the module docstring)."""
    plan = _plan()
    if not plan:
        return
    probability = plan.get(name)
    if probability is None:
        return
    # os.urandom: no `random` import (and its seeding) on the plugin's path.
    if int.from_bytes(os.urandom(7), "big") >= probability * (1 << 56):
        return
    _record(name)
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _record(name: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = f"{name} {os.environ.get('CNI_COMMAND', '-')} {os.getpid()}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of a short line to an O_APPEND file: atomic
        finally:
            os.close(fd)
    except OSError:
        pass


def reset() -> None:
    """Forget the cached plan (unit tests that change the environment)."""
    _cache.clear()


__all__ = ["ENV", "LOG_ENV", "parse", "point", "reset"]
