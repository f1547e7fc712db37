"""Credits, the ledger of charges and request counters.

Kept separate from execution state so benchmarks and the chaos harness can read exactly what the
"service" billed and how often each endpoint was hit, and compare it with what the client thinks.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Charge:
    execution_id: str
    input_content_hash: str
    workflow_id: str
    workflow_version: str
    credits: int
    charged_at: str


class Accounting:
    """Balance, ledger and counters behind one lock; every mutation is atomic."""

    def __init__(self, balance: int) -> None:
        self._lock = threading.Lock()
        self._balance = balance
        self._ledger: list[Charge] = []
        self._charged_ids: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    @property
    def balance(self) -> int:
        with self._lock:
            return self._balance

    def set_balance(self, value: int) -> int:
        with self._lock:
            self._balance = value
            return self._balance

    def top_up(self, credits: int) -> int:
        with self._lock:
            self._balance += credits
            return self._balance

    def can_afford(self, credits: int) -> bool:
        with self._lock:
            return self._balance >= credits

    def charge(self, charge: Charge) -> bool:
        """Debit once per execution; False if the balance is short (nothing changes then).

        A second charge for the same execution is refused (returns True, debits nothing), which is
        the invariant retries and lost responses must never break.
        """
        with self._lock:
            if charge.execution_id in self._charged_ids:
                return True
            if self._balance < charge.credits:
                return False
            self._balance -= charge.credits
            self._charged_ids.add(charge.execution_id)
            self._ledger.append(charge)
            return True

    def is_charged(self, execution_id: str) -> bool:
        with self._lock:
            return execution_id in self._charged_ids

    @property
    def total_charged(self) -> int:
        with self._lock:
            return sum(c.credits for c in self._ledger)

    def ledger(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(c) for c in self._ledger]

    def count_call(self, endpoint_id: str) -> None:
        with self._lock:
            self.calls[endpoint_id] += 1

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.faults.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "balance": self._balance,
                "creditsCharged": sum(c.credits for c in self._ledger),
                "ledger": [asdict(c) for c in self._ledger],
                "calls": dict(self.calls),
                "faultsInjected": dict(self.faults),
            }
