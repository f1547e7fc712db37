"""The one budget projection: what a set of images will cost, and whether it fits the balance and the budget.

Used by the run (before its first create: nothing is bought that would be refused later, and no
PAYMENT_REQUIRED execution is produced), by the refresh (the same stages) and by `backfill --dry-run` (the
same numbers and the same sentence), so the three can never disagree about a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from retouch_pipeline.processing.failures import BudgetRefused
from retouch_pipeline.processing.item import Purchase, WorkItem
from retouch_pipeline.processing.step import Step


@dataclass(frozen=True)
class Projection:
    """New executions and retries (each distinct), at the workflow's `executionPrice`."""

    creates: int
    retries: int
    price: int
    what: str = "projected"
    """How sure the figure is: "projected" (exact), "in the worst case" (every image new)."""

    @classmethod
    def of(cls, spenders: Iterable[WorkItem], price: int, what: str = "projected") -> Projection:
        purchases = [i.purchase for i in spenders]
        return cls(purchases.count(Purchase.CREATE), purchases.count(Purchase.RETRY), price, what)

    @property
    def executions(self) -> int:
        return self.creates + self.retries

    @property
    def credits(self) -> int:
        return self.executions * self.price


def refusal(projection: Projection, balance: int, budget: int | None) -> BudgetRefused | None:
    """None when the projection fits `balance` and `budget`; else the refusal every caller shows."""
    count, price, credits, what = projection.executions, projection.price, projection.credits, projection.what
    if credits == 0:
        return None
    if credits > balance:
        return BudgetRefused(
            f"{count} execution(s) x {price} credits = {credits} credits {what}, but the organization's "
            f"balance is {balance}; top up, then re-materialize"
        )
    if budget is not None and credits > budget:
        return BudgetRefused(
            f"{credits} credits {what} ({count} x {price}) exceeds budget_credits={budget}; raise the budget "
            "or backfill fewer images"
        )
    return None


def check(step: Step, projection: Projection) -> BudgetRefused | None:
    """`refusal` against the balance read now (no read when nothing is spent)."""
    if projection.credits == 0:
        return None
    balance = step.client.get_balance()
    budget = step.settings.budget_credits
    refused = refusal(projection, balance, budget)
    if refused is None:
        step.log.info(
            f"Budget: {projection.credits} credits {projection.what}; balance {balance}, budget {budget}"
        )
    return refused


def worst_case_fits(step: Step, count: int) -> bool:
    """True when `count` new executions fit: executions are then created as uploads finish."""
    refused = check(step, Projection(count, 0, step.workflow.execution_price, "in the worst case"))
    if refused:
        step.log.info(f"{refused.reason} -- exact projection after all uploads instead")
    return refused is None
