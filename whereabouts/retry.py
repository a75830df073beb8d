"""Jittered, capped exponential backoff with a deadline, for compare-and-swap loops."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 60.0
    """Seconds one operation may spend retrying (kubelet's sandbox timeout is 4 min)."""
    first_delay: float = 0.002
    max_delay: float = 2.0
    """With a hundred plugin processes writing one pool, a short cap keeps them all
    retrying at once and the API server spends its CPU on lost writes."""


class Backoff:
    """One operation's retry clock: ``wait()`` sleeps, or returns False past the deadline."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._expires = clock() + policy.deadline
        self._delay = policy.first_delay
        self.attempts = 0

    def wait(self) -> bool:
        self.attempts += 1
        remaining = self._expires - self._clock()
        if remaining <= 0:
            return False
        # Full jitter: contenders that collided once spread out instead of colliding again.
        self._sleep(min(remaining, random.uniform(0, self._delay)))
        self._delay = min(self.policy.max_delay, self._delay * 2)
        return True
