"""`autoretouch_costs`: every credit accounted for, from the event log, incrementally, plotted over time.

Source of truth (why the event log): each `retouched_image` materialization carries the `chargedCredits`
AutoRetouch reported for its execution, plus collection, batch and day. Summing them per distinct execution
id (an image re-downloaded after a deleted output is recorded again, but was paid once) gives what this
pipeline spent; the tests compare it with the sandbox's own ledger. Executions recorded by
`autoretouch_execution` without a result yet are the pending work, priced at their `executionPrice`.

Incremental (why): re-reading the whole event log at every hourly materialization grows with the catalog's
history. So each materialization stores its running totals and the event-log positions read so far in its own
metadata (`rollup_state`, read back with the public `instance.get_latest_materialization_event`), and reads
only the events recorded since (at most `MAX_EVENTS` per asset; `caught_up` says whether it reached the end).
Whether an execution was already counted is a set of execution-id digests kept as an S3 object under the
pipeline's reserved prefix (`retouch_pipeline.state_objects`; it grows by 8 bytes an execution, too large for
metadata that is written hourly); the state names it with a pointer. An event is counted iff its execution
was not counted before, so the outcome is a function of the event log alone: two overlapping
materializations (e.g. hourly schedule + a UI click) write the same totals for the same events, and a
missing or damaged set restarts the count from the beginning (slow once, still correct). No Dagster
internals and no key-value store: this runs on Dagster+ as it runs locally. The organization's balance is
read from AutoRetouch (one call).
"""

import hashlib
import struct
import zlib
from collections import Counter
from collections.abc import Mapping
from itertools import islice
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource
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
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.state_objects import S3SlotStore, SlotPointer, state_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

STATE_METADATA = "rollup_state"
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

    counted: SlotPointer | None = None
    """Where the digests of the executions already counted are (S3)."""

    @property
    def total(self) -> int:
        return sum(self.by_collection.values())

    @classmethod
    def load(cls, instance: dg.DagsterInstance) -> "CostState":
        """The state the last materialization recorded; empty when there is none or it is unreadable."""
        event = instance.get_latest_materialization_event(COSTS)
        materialization = event.asset_materialization if event is not None else None
        value = materialization.metadata.get(STATE_METADATA) if materialization is not None else None
        try:
            return cls.model_validate(value.value) if isinstance(value, dg.JsonMetadataValue) else cls()
        except ValidationError:
            return cls()  # unreadable: recount from the start (slow once, still correct)


def execution_digest(execution_id: str) -> int:
    """64-bit digest of an execution id (collision chance ~n^2/2^65: 3e-10 at 100,000 executions)."""
    return int.from_bytes(hashlib.blake2b(execution_id.encode("utf-8"), digest_size=8).digest(), "little")


class CountedExecutions:
    """The digests of the executions whose credits are in the totals, as one S3 object."""

    def __init__(self, s3_client: "S3Client", bucket: str, prefix: str) -> None:
        self._slots = S3SlotStore(s3_client, bucket, prefix)

    def load(self, pointer: SlotPointer | None) -> set[int] | None:
        """The set `pointer` names (empty without one); ``None`` when it is missing or damaged."""
        if pointer is None:
            return set()
        blob = self._slots.load(pointer)
        if blob is None:
            return None
        raw = zlib.decompress(blob)
        return set(struct.unpack(f"<{len(raw) // 8}Q", raw))

    def save(self, digests: set[int], previous: SlotPointer | None) -> SlotPointer:
        raw = struct.pack(f"<{len(digests)}Q", *sorted(digests))
        return self._slots.save(zlib.compress(raw, 6), previous)


def update_costs(
    instance: dg.DagsterInstance, state: CostState, counted: set[int], max_events: int = MAX_EVENTS
) -> tuple[int, bool]:
    """Fold the events recorded since `state`'s positions into it and `counted` (the digests of the
    executions already counted); returns (events read, caught up)."""
    retouched = list(islice(iter_materializations(instance, RETOUCHED, state.after_retouched), max_events))
    executions = list(islice(iter_materializations(instance, EXECUTION, state.after_execution), max_events))
    by_collection, by_batch = Counter(state.by_collection), Counter(state.by_batch)
    by_day = Counter(state.by_day)
    for record in retouched:
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        state.after_retouched = record.storage_id
        if not execution_id:
            continue
        state.pending.pop(execution_id, None)
        if execution_digest(execution_id) in counted:
            continue  # a re-delivery (restored output, second partition with the same content): paid once
        counted.add(execution_digest(execution_id))
        credits = int(metadata_value(meta, "chargedCredits") or 0)
        by_collection[metadata_value(meta, "collection") or "?"] += credits
        by_batch[metadata_value(meta, "batch_id") or "none"] += credits
        by_day[metadata_value(meta, "finished_day") or "?"] += credits
        state.executions += 1
    for record in executions:
        meta = materialization_metadata(record)
        execution_id = metadata_value(meta, "execution_id")
        state.after_execution = record.storage_id
        if execution_id and execution_digest(execution_id) not in counted:
            state.pending[execution_id] = int(metadata_value(meta, "executionPrice") or 0)
    state.by_collection, state.by_batch, state.by_day = dict(by_collection), dict(by_batch), dict(by_day)
    caught_up = len(retouched) < max_events and len(executions) < max_events
    return len(retouched) + len(executions), caught_up


def _load_state(
    context: dg.AssetExecutionContext, catalog: CatalogResource, s3: S3Resource
) -> tuple[CostState, CountedExecutions]:
    prefix = state_prefix(catalog.output_prefix, "costs")
    return CostState.load(context.instance), CountedExecutions(s3.get_client(), catalog.output_bucket, prefix)


def credits_table(label: str, credits: Mapping[str, int]) -> dg.TableMetadataValue:
    """Credits by `label` (collection, batch or day) as a table with a schema: the UI shows it as a table,
    beside the numeric entries it plots (`credits/<collection>`, the totals)."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(label, "string", description=f"the {label}"),
            dg.TableColumn("credits", "int", description="credits charged, each execution once"),
        ]
    )
    records = [dg.TableRecord({label: key, "credits": value}) for key, value in sorted(credits.items())]
    return dg.MetadataValue.table(records, schema=schema)


@dg.asset(
    key=COSTS,
    deps=[RETOUCHED],
    group_name="costs",
    owners=OWNERS,
    kinds={"autoretouch"},
    description="Credits spent by collection, batch and day (from the event log, read incrementally), "
    "the organization's balance and what pending executions will cost. Totals and credits per collection "
    "are numeric metadata, so the asset page plots them over time; by collection, batch and day as tables.",
)
def autoretouch_costs(
    context: dg.AssetExecutionContext,
    autoretouch: AutoRetouchResource,
    catalog: CatalogResource,
    s3: S3Resource,
) -> dg.MaterializeResult[None]:
    """Fold new events into the stored totals, read the balance, report."""
    state, store = _load_state(context, catalog, s3)
    counted = store.load(state.counted)
    if counted is None:
        context.log.warning("Counted executions missing or damaged: recounting from the start.")
        state, counted = CostState(), set()
    events, caught_up = update_costs(context.instance, state, counted)
    state.counted = store.save(counted, state.counted) if events else state.counted
    balance: int | None = None
    try:
        with autoretouch.get_client() as client:
            balance = client.get_balance()
    except AutoRetouchError as exc:
        context.log.warning(f"Balance unavailable: {exc}")
    metadata: dict[str, dg.RawMetadataValue] = {
        STATE_METADATA: dg.MetadataValue.json(state.model_dump(mode="json")),
        "total_charged_credits": dg.MetadataValue.int(state.total),
        "executions": dg.MetadataValue.int(state.executions),
        "pending_executions": dg.MetadataValue.int(len(state.pending)),
        "pending_credits": dg.MetadataValue.int(sum(state.pending.values())),
        "events_read": dg.MetadataValue.int(events),
        "caught_up": dg.MetadataValue.bool(caught_up),
        "by_collection": credits_table("collection", state.by_collection),
        "by_batch": credits_table("batch", state.by_batch),
        "by_day": credits_table("day", state.by_day),
    }
    if balance is not None:
        metadata["balance_credits"] = dg.MetadataValue.int(balance)
    for collection, credits in sorted(state.by_collection.items()):
        metadata[f"credits/{collection}"] = dg.MetadataValue.int(credits)
    return dg.MaterializeResult(metadata=metadata)
