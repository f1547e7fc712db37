"""Credits, the ledger of charges and request counters.

Kept separate from execution state so benchmarks and the chaos harness can read exactly what the
"service" billed and how often each endpoint was hit, and compare it with what the client thinks.
"""

from __future__ import annotations

import hashlib
import threading
import time
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
    organization_id: str = ""
    """The organization billed; "" (older snapshots) is the sandbox organization."""


class Accounting:
    """Balance, ledger and counters behind one lock; every mutation is atomic."""

    def __init__(self, balance: int, other_organizations: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._balance = balance
        #: Balances of the account's other organizations (`--organizations N`): each starts 1,000 credits
        #: apart from the others, so a balance read from the wrong organization can never look right.
        self._others = {org: balance + 1000 * n for n, org in enumerate(other_organizations or [], 1)}
        self._ledger: list[Charge] = []
        self._charged_ids: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        #: Per access token (a digest of it): [first call, last call (wall seconds), calls]. A run worker
        #: refreshes its own token, so overlapping windows are clients talking to the service at once.
        self._clients: dict[str, list[float]] = {}
        self._in_flight = 0
        self._in_flight_peak = 0

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

    def can_afford(self, credits: int, organization_id: str = "") -> bool:
        with self._lock:
            return self._others.get(organization_id, self._balance) >= credits

    def balance_of(self, organization_id: str) -> int:
        with self._lock:
            return self._others.get(organization_id, self._balance)

    def allow_recharge(self, execution_id: str) -> None:
        """Let `execution_id` be charged again (E8 re-running a COMPLETED execution, `retry_recharges`)."""
        with self._lock:
            self._charged_ids.discard(execution_id)

    def by_organization(self, primary: str) -> dict[str, dict[str, int]]:
        """{organization id: {balance, creditsCharged}} of every organization of the account."""
        with self._lock:
            out = {
                org: {"balance": b, "creditsCharged": 0}
                for org, b in [(primary, self._balance), *self._others.items()]
            }
            for c in self._ledger:
                out.setdefault(c.organization_id or primary, {"balance": 0, "creditsCharged": 0})
                out[c.organization_id or primary]["creditsCharged"] += c.credits
            return out

    def charge(self, charge: Charge) -> bool:
        """Debit once per execution; False if the balance is short (nothing changes then).

        A second charge for the same execution is refused (returns True, debits nothing), which is
        the invariant retries and lost responses must never break.
        """
        with self._lock:
            if charge.execution_id in self._charged_ids:
                return True
            if charge.organization_id in self._others:
                if self._others[charge.organization_id] < charge.credits:
                    return False
                self._others[charge.organization_id] -= charge.credits
            elif self._balance < charge.credits:
                return False
            else:
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

    def count_call(self, endpoint_id: str, authorization: str = "") -> None:
        with self._lock:
            self.calls[endpoint_id] += 1
            if authorization:
                client = hashlib.sha256(authorization.encode()).hexdigest()[:12]
                now = time.time()
                window = self._clients.setdefault(client, [now, now, 0])
                window[1], window[2] = now, window[2] + 1

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._in_flight_peak = max(self._in_flight_peak, self._in_flight)

    def request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def reset_counters(self) -> None:
        with self._lock:
            self.calls.clear()
            self.faults.clear()
            self._clients.clear()
            self._in_flight_peak = self._in_flight

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "balance": self._balance,
                "creditsCharged": sum(c.credits for c in self._ledger),
                "ledger": [asdict(c) for c in self._ledger],
                "calls": dict(self.calls),
                "faultsInjected": dict(self.faults),
                "clients": {
                    k: {"first": a, "last": b, "calls": int(n)} for k, (a, b, n) in self._clients.items()
                },
                "requestsInFlightPeak": self._in_flight_peak,
            }
