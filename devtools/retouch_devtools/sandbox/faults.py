"""Seeded fault decisions shared by the HTTP middleware and the execution workers."""

from __future__ import annotations

import random
import threading

from retouch_devtools.sandbox.accounting import Accounting
from retouch_devtools.sandbox.config import FaultConfig


class FaultInjector:
    """Draws from one seeded RNG so a sequential test sees the same faults on every run.

    The RNG is only consulted when a rate is non-zero, so enabling one fault does not shift the
    random stream of a test that does not use faults at all.
    """

    def __init__(self, config: FaultConfig, seed: int, accounting: Accounting) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._accounting = accounting

    def hit(self, kind: str, rate: float) -> bool:
        """True (and counted under `kind`) with probability `rate`."""
        if rate <= 0:
            return False
        with self._lock:
            hit = rate >= 1 or self._rng.random() < rate
        if hit:
            self._accounting.count_fault(kind)
        return hit

    def choice(self, options: tuple[int, ...]) -> int:
        with self._lock:
            return self._rng.choice(options)
