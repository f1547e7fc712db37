"""`autoretouch_costs`: every credit accounted for, from the event log, plotted over time.

Source of truth (why the event log): each `retouched_image` materialization carries the `chargedCredits`
AutoRetouch reported for its execution, plus collection, batch and day. Summing them per distinct execution
id (an image re-downloaded after a deleted output is recorded again, but was paid once) gives what this
pipeline spent; the tests compare it with the sandbox's own ledger. Executions recorded by
`autoretouch_execution` without a result yet are the pending work, priced at their `executionPrice`.
The organization's balance is read from AutoRetouch at materialization time (one call).
"""

from collections import Counter
from dataclasses import dataclass, field

import dagster as dg

from retouch_pipeline.assets.common import (
    EXECUTION,
    RETOUCHED,
    iter_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.autoretouch import AutoRetouchError
from retouch_pipeline.resources import AutoRetouchResource


@dataclass
class CostReport:
    """Credits per collection, batch and day; pending executions and their projected price."""

    by_collection: Counter[str] = field(default_factory=Counter)
    by_batch: Counter[str] = field(default_factory=Counter)
    by_day: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    pending_executions: int = 0
    pending_credits: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_collection.values())


def build_cost_report(instance: dg.DagsterInstance) -> CostReport:
    """Aggregate the recorded materializations (one pass over each asset's events)."""
    report = CostReport()
    charged: dict[str, tuple[str, str, str, int]] = {}
    for record in iter_materializations(instance, RETOUCHED):
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        if execution_id:
            charged[execution_id] = (
                metadata_value(meta, "collection") or "?",
                metadata_value(meta, "batch_id") or "none",
                metadata_value(meta, "finished_day") or "?",
                int(metadata_value(meta, "chargedCredits") or 0),
            )
    for collection, batch, day, credits in charged.values():
        report.by_collection[collection] += credits
        report.by_batch[batch] += credits
        report.by_day[day] += credits
    report.executions = len(charged)
    pending: dict[str, int] = {}
    for record in iter_materializations(instance, EXECUTION):
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        if execution_id and execution_id not in charged:
            pending[execution_id] = int(metadata_value(meta, "executionPrice") or 0)
    report.pending_executions = len(pending)
    report.pending_credits = sum(pending.values())
    return report


def _table(title: str, counter: Counter[str]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counter.items()))
    return f"| {title} | credits |\n|---|---|\n{rows}"


@dg.asset(
    key=dg.AssetKey("autoretouch_costs"),
    deps=[RETOUCHED],
    group_name="costs",
    description="Credits spent by collection, batch and day (from the event log), the organization's balance "
    "and what pending executions will cost.",
)
def autoretouch_costs(
    context: dg.AssetExecutionContext, autoretouch: AutoRetouchResource
) -> dg.MaterializeResult:
    report = build_cost_report(context.instance)
    balance: int | None = None
    try:
        with autoretouch.get_client() as client:
            balance = client.get_balance()
    except AutoRetouchError as exc:
        context.log.warning(f"Balance unavailable: {exc}")
    metadata: dict[str, dg.RawMetadataValue] = {
        "total_charged_credits": dg.MetadataValue.int(report.total),
        "executions": dg.MetadataValue.int(report.executions),
        "pending_executions": dg.MetadataValue.int(report.pending_executions),
        "pending_credits": dg.MetadataValue.int(report.pending_credits),
        "by_collection": dg.MetadataValue.json(dict(report.by_collection)),
        "by_batch": dg.MetadataValue.json(dict(report.by_batch)),
        "by_day": dg.MetadataValue.json(dict(report.by_day)),
        "summary": dg.MetadataValue.md(
            "\n\n".join(
                [
                    _table("collection", report.by_collection),
                    _table("batch", report.by_batch),
                    _table("day", report.by_day),
                ]
            )
        ),
    }
    if balance is not None:
        metadata["balance_credits"] = dg.MetadataValue.int(balance)
    for collection, credits in report.by_collection.items():
        metadata[f"credits/{collection}"] = dg.MetadataValue.int(credits)
    return dg.MaterializeResult(metadata=metadata)
