"""`autoretouch_costs`: every credit accounted for, from the event log, incrementally, plotted over time.

Source of truth (why the event log): each `retouched_image` materialization carries the `chargedCredits`
AutoRetouch reported for its execution, plus collection, batch and day. Summing them per distinct execution
id (an image re-downloaded after a deleted output is recorded again, but was paid once) gives what this
pipeline spent; the tests compare it with the sandbox's own ledger. Executions recorded by
`autoretouch_execution` without a result yet are the pending work, priced at their `executionPrice`.

Incremental (why): re-reading the whole event log at every hourly materialization grows with the catalog's
history. The running totals and the event-log positions read so far are kept in the instance's key-value
store (`retouch/costs/state`), so a materialization reads only the events recorded since the last one
(at most `MAX_EVENTS` per asset; `caught_up` says whether it reached the end). Whether an execution was
already counted is `retouch/costs/charged/<execution id>` = storage id of the first result recorded for it:
an event is counted iff it is that first one. This makes the outcome a function of the event log alone, so
two overlapping materializations (e.g. hourly schedule + a UI click) write the same totals for the same
events instead of double-counting. The organization's balance is read from AutoRetouch (one call).
"""

from collections import Counter
from itertools import islice

import dagster as dg
from pydantic import BaseModel, Field, ValidationError

from retouch_pipeline.assets.common import (
    COSTS,
    EXECUTION,
    RETOUCHED,
    iter_materializations,
    materialization_metadata,
    metadata_value,
)
from retouch_pipeline.assets.presentation import OWNERS
from retouch_pipeline.autoretouch import AutoRetouchError
from retouch_pipeline.resources import AutoRetouchResource

STATE_KEY = "retouch/costs/state"
CHARGED_PREFIX = "retouch/costs/charged/"
MAX_EVENTS = 50_000


class CostState(BaseModel):
    """Running totals and the event-log positions they include."""

    after_retouched: int | None = None
    after_execution: int | None = None
    by_collection: dict[str, int] = Field(default_factory=dict)
    by_batch: dict[str, int] = Field(default_factory=dict)
    by_day: dict[str, int] = Field(default_factory=dict)
    executions: int = 0
    pending: dict[str, int] = Field(default_factory=dict)
    """execution id -> executionPrice, for executions recorded without a result yet."""

    @property
    def total(self) -> int:
        return sum(self.by_collection.values())

    @classmethod
    def load(cls, instance: dg.DagsterInstance) -> "CostState":
        raw = instance.run_storage.get_cursor_values({STATE_KEY}).get(STATE_KEY)
        try:
            return cls.model_validate_json(raw) if raw else cls()
        except ValidationError:
            return cls()  # unreadable: recount from the start (slow once, still correct)

    def save(self, instance: dg.DagsterInstance) -> None:
        instance.run_storage.set_cursor_values({STATE_KEY: self.model_dump_json()})


def _first_results(instance: dg.DagsterInstance, execution_ids: set[str]) -> dict[str, int]:
    names = {CHARGED_PREFIX + e for e in execution_ids}
    raw = instance.run_storage.get_cursor_values(names) if names else {}
    return {name[len(CHARGED_PREFIX) :]: int(value) for name, value in raw.items() if value.isdigit()}


def update_costs(
    instance: dg.DagsterInstance, state: CostState, max_events: int = MAX_EVENTS
) -> tuple[int, bool]:
    """Fold the events recorded since `state`'s positions into it; returns (events read, caught up)."""
    retouched = list(islice(iter_materializations(instance, RETOUCHED, state.after_retouched), max_events))
    executions = list(islice(iter_materializations(instance, EXECUTION, state.after_execution), max_events))
    ids = {metadata_value(materialization_metadata(r), "execution_id") for r in retouched + executions}
    first = _first_results(instance, {i for i in ids if i})
    known_before = dict(first)
    by_collection, by_batch = Counter(state.by_collection), Counter(state.by_batch)
    by_day = Counter(state.by_day)
    for record in retouched:
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        state.after_retouched = record.storage_id
        if not execution_id:
            continue
        state.pending.pop(execution_id, None)
        if execution_id in first and first[execution_id] < record.storage_id:
            continue  # a re-delivery (restored output, second partition with the same content): paid once
        first[execution_id] = record.storage_id
        credits = int(metadata_value(meta, "chargedCredits") or 0)
        by_collection[metadata_value(meta, "collection") or "?"] += credits
        by_batch[metadata_value(meta, "batch_id") or "none"] += credits
        by_day[metadata_value(meta, "finished_day") or "?"] += credits
        state.executions += 1
    for record in executions:
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        state.after_execution = record.storage_id
        if execution_id and execution_id not in first:
            state.pending[execution_id] = int(metadata_value(meta, "executionPrice") or 0)
    state.by_collection, state.by_batch, state.by_day = dict(by_collection), dict(by_batch), dict(by_day)
    changed = {CHARGED_PREFIX + e: str(s) for e, s in first.items() if known_before.get(e) != s}
    if changed:
        instance.run_storage.set_cursor_values(changed)
    caught_up = len(retouched) < max_events and len(executions) < max_events
    return len(retouched) + len(executions), caught_up


def _table(title: str, counter: Counter[str]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(counter.items()))
    return f"| {title} | credits |\n|---|---|\n{rows}"


@dg.asset(
    key=COSTS,
    deps=[RETOUCHED],
    group_name="costs",
    owners=OWNERS,
    kinds={"autoretouch"},
    description="Credits spent by collection, batch and day (from the event log, read incrementally), "
    "the organization's balance and what pending executions will cost. Every figure is numeric metadata, "
    "so the asset page plots it over time.",
)
def autoretouch_costs(
    context: dg.AssetExecutionContext, autoretouch: AutoRetouchResource
) -> dg.MaterializeResult:
    """Fold new events into the stored totals, read the balance, report."""
    state = CostState.load(context.instance)
    events, caught_up = update_costs(context.instance, state)
    state.save(context.instance)
    balance: int | None = None
    try:
        with autoretouch.get_client() as client:
            balance = client.get_balance()
    except AutoRetouchError as exc:
        context.log.warning(f"Balance unavailable: {exc}")
    metadata: dict[str, dg.RawMetadataValue] = {
        "total_charged_credits": dg.MetadataValue.int(state.total),
        "executions": dg.MetadataValue.int(state.executions),
        "pending_executions": dg.MetadataValue.int(len(state.pending)),
        "pending_credits": dg.MetadataValue.int(sum(state.pending.values())),
        "events_read": dg.MetadataValue.int(events),
        "caught_up": dg.MetadataValue.bool(caught_up),
        "by_collection": dg.MetadataValue.json(state.by_collection),
        "by_batch": dg.MetadataValue.json(state.by_batch),
        "by_day": dg.MetadataValue.json(state.by_day),
        "summary": dg.MetadataValue.md(
            "\n\n".join(
                [
                    _table("collection", Counter(state.by_collection)),
                    _table("batch", Counter(state.by_batch)),
                    _table("day", Counter(state.by_day)),
                ]
            )
        ),
    }
    if balance is not None:
        metadata["balance_credits"] = dg.MetadataValue.int(balance)
    for collection, credits in sorted(state.by_collection.items()):
        metadata[f"credits/{collection}"] = dg.MetadataValue.int(credits)
    return dg.MaterializeResult(metadata=metadata)
