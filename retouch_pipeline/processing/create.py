"""Stage 2, create: one execution per (image content, workflow, version), never two, and never over budget.

Idempotency
    The key is derived from what decides the result and the price: SHA-256 of the input bytes, the workflow id
    and the workflow version (`idempotency_key`). Before creating, a step asks the purchase records
    (`records.PurchaseRecords`): (1) the partition's last recorded execution in the event log (the fast path);
    when it knows nothing, the durable record: (2) the key's entry in the ledger (same content under another
    partition, another deployment's purchase, or a crash after the create); (3) the output's sidecar
    (`adopt.sidecars`); an entry that only holds an *intent* means a create may have reached AutoRetouch
    without its id being kept: then AutoRetouch itself is asked, by the idempotency label (E3). Only when all
    say "none" is an execution created, and only after the step *claimed* the key in the ledger (a conditional
    write: of two deployments, one buys, the other adopts). FAILED and PAYMENT_REQUIRED executions are retried
    (E8), not re-created.

Order: decide for every image (`resolve`), project the spend of what is left (`budget.py`) and refuse *before*
the first create; then claim, create or retry on the step's pool.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime

from retouch_pipeline.autoretouch import CreateUnconfirmedError, ImageRef, WorkflowExecution
from retouch_pipeline.processing.adopt import sidecars
from retouch_pipeline.processing.budget import Projection, check
from retouch_pipeline.processing.failures import (
    BudgetRefused,
    ClaimedElsewhere,
    DuplicateContentNotCreated,
    ExecutionNotFound,
    UnexpectedError,
)
from retouch_pipeline.processing.item import Purchase, State, Unconfirmed, WorkItem
from retouch_pipeline.processing.records import PurchaseEntry
from retouch_pipeline.processing.statuses import RETRYABLE_STATUSES, oldest_of, parse_time, read_statuses
from retouch_pipeline.processing.step import Step

BATCH_NAMESPACE = uuid.UUID("6f1d3c52-9a43-4df0-a3a6-2b4c9f1e7d10")
BATCH_LABELS = ("autoretouch_batch_id", "autoretouch_batch_name", "autoretouch_batch_createdAt")
CLAIM_WAIT_SECONDS = 20.0
"""How long a step waits for the execution id of a key another run claimed (its create takes a second)."""
CLAIM_POLL_SECONDS = 0.5
Settled = tuple[WorkItem, WorkflowExecution | None]


def idempotency_key(content_hash: str, workflow_id: str, workflow_version: str) -> str:
    """Deterministic: same bytes + same workflow version = same key = at most one execution."""
    digest = hashlib.sha256(f"{content_hash}|{workflow_id}|{workflow_version}".encode()).hexdigest()
    return f"rp1-{digest[:48]}"


def batch_labels(collection: str, batch_scope: str, created_at: datetime) -> dict[str, str]:
    """The three labels that make AutoRetouch show one order per collection and backfill (or run)."""
    batch_id = str(uuid.uuid5(BATCH_NAMESPACE, f"{batch_scope}/{collection}"))
    return {
        "autoretouch_batch_id": batch_id,
        "autoretouch_batch_name": f"{collection} {created_at.strftime('%Y-%m-%d %H:%M')}",
        "autoretouch_batch_createdAt": created_at.astimezone(UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class Decision:
    """What one idempotency key needs: an existing execution (REUSE) or a new one (CREATE)."""

    purchase: Purchase
    execution_id: str | None = None
    created_at: str | None = None
    recovered: PurchaseEntry | None = None
    """Set when found by its label or sidecar: the entry that spares the next run the lookup."""
    adopted: bool = False
    """The execution came from the durable record, not from this instance's event log."""


def decide(step: Step, keys: Mapping[str, str]) -> dict[str, Decision]:
    """partition -> decision, for partitions whose idempotency key is known (`keys`: partition -> key)."""
    recorded = step.records.executions(list(keys))
    unknown = {pk: k for pk, k in keys.items() if pk not in recorded or recorded[pk].idempotency_key != k}
    entries, found = _durable_lookups(step, unknown)
    decisions: dict[str, Decision] = {}
    for partition_key, key in keys.items():
        entry, sidecar_entry = entries.get(key), found.get(partition_key)
        if partition_key not in unknown:
            record = recorded[partition_key]
            decisions[partition_key] = Decision(Purchase.REUSE, record.execution_id, record.created_at)
        elif entry is not None and entry.execution_id:
            decisions[partition_key] = Decision(
                Purchase.REUSE, entry.execution_id, entry.created_at, adopted=True
            )
        elif sidecar_entry is not None:
            decisions[partition_key] = Decision(
                Purchase.REUSE, sidecar_entry.execution_id, sidecar_entry.created_at, sidecar_entry, True
            )
        elif entry is not None:  # an intent without an id: a create may have reached AutoRetouch
            decisions[partition_key] = _recover(step, partition_key, key, entry)
        else:
            decisions[partition_key] = Decision(Purchase.CREATE)
    return decisions


def _durable_lookups(
    step: Step, unknown: Mapping[str, str]
) -> tuple[dict[str, PurchaseEntry], dict[str, PurchaseEntry]]:
    """The purchase ledger's entries of the keys the event log does not know, and the sidecar entries of
    those partitions whose key has no ledger entry: both read at once (two independent sets of S3 GETs, one
    round trip instead of two before an image can be bought)."""
    if not unknown:
        return {}, {}
    with ThreadPoolExecutor(2, thread_name_prefix="lookup") as lookups:
        ledger = lookups.submit(step.records.purchases, set(unknown.values()))
        sidecar = lookups.submit(durable_entries, step, unknown)
        entries = ledger.result()
        found = {pk: e for pk, e in sidecar.result().items() if unknown[pk] not in entries}
    return entries, found


def durable_entries(step: Step, keys: Mapping[str, str]) -> dict[str, PurchaseEntry]:
    """partition -> the entry its output's sidecar stands for, where that sidecar is of the same key."""
    out: dict[str, PurchaseEntry] = {}
    now = datetime.now(UTC).isoformat()
    for partition_key, sidecar in sidecars(step, list(keys)).items():
        if (
            idempotency_key(sidecar.content_hash, sidecar.workflow_id, sidecar.workflow_version)
            == keys[partition_key]
        ):
            out[partition_key] = PurchaseEntry(
                sidecar.execution_id, partition_key, now, sidecar.created_at, recovered=True
            )
    return out


def _recover(step: Step, partition_key: str, key: str, intent: PurchaseEntry) -> Decision:
    found = step.client.find_execution_by_idempotency_key(step.workflow.id, key, since=parse_time(intent.at))
    if found is None:
        return Decision(Purchase.CREATE)
    step.log.warning(f"{partition_key}: recovered execution {found.id} by its idempotency label")
    created_at = found.created_at.isoformat() if found.created_at else None
    entry = PurchaseEntry(execution_id=found.id, at=intent.at, recovered=True)
    return Decision(Purchase.REUSE, found.id, created_at, recovered=entry, adopted=True)


class Lookahead:
    """The decisions of a step's first images, looked up while those images validate and upload.

    Why: until AutoRetouch's workers all have work, each of the first images is on the clock from its read
    to its create, and the decision's lookups (event log, ledger, sidecar) cost as much as its upload. A
    decision read a moment early is as safe as one read at purchase time: a CREATE is still claimed in the
    ledger before anything is bought (the claim, not the lookup, keeps two buyers apart), and a REUSE stays
    true. Only the first `limit` images: later batches are large, and one lookup per batch is cheaper.
    """

    def __init__(self, step: Step, lookups: ThreadPoolExecutor, limit: int) -> None:
        self._step, self._lookups, self._left = step, lookups, limit
        self._started: dict[str, tuple[str, Future[dict[str, Decision]]]] = {}
        self._lock = threading.Lock()

    def start(self, item: WorkItem) -> None:
        """Look up `item`'s decision now (its content hash is known); nothing once `limit` were started."""
        with self._lock:
            if self._left <= 0 or item.content_hash is None:
                return
            self._left -= 1
            key = idempotency_key(item.content_hash, self._step.workflow.id, self._step.version)
            future = self._lookups.submit(decide, self._step, {item.partition_key: key})
            self._started[item.partition_key] = (key, future)

    def take(self, keys: Mapping[str, str]) -> dict[str, Decision]:
        """The decisions looked up for these partitions under the same key (a PNG conversion changes it);
        a lookup that failed is left to the batch's own, where its error is raised."""
        found: dict[str, Decision] = {}
        for partition_key, key in keys.items():
            with self._lock:
                started = self._started.pop(partition_key, None)
            if started is None or started[0] != key:
                continue
            try:
                found[partition_key] = started[1].result()[partition_key]
            except Exception:  # noqa: S112 (looked up again with the batch, which raises it)
                continue
        return found


def resolve(step: Step, items: Sequence[WorkItem], lookahead: Lookahead | None = None) -> None:
    """Decide for every uploaded item (it becomes RESOLVED); recovered executions are recorded."""
    ready = [i for i in items if not i.failed]
    for item in ready:
        assert item.content_hash is not None
        item.idempotency_key = idempotency_key(item.content_hash, step.workflow.id, step.version)
    keys = {i.partition_key: i.idempotency_key or "" for i in ready}
    decisions = lookahead.take(keys) if lookahead is not None else {}
    if len(decisions) < len(keys):
        decisions.update(decide(step, {pk: k for pk, k in keys.items() if pk not in decisions}))
    recovered: dict[str, PurchaseEntry] = {}
    for item in ready:
        decision = decisions[item.partition_key]
        item.purchase, item.execution_id = decision.purchase, decision.execution_id
        item.execution_created_at, item.adopted = decision.created_at, decision.adopted
        if decision.recovered is not None:
            recovered[item.idempotency_key or ""] = decision.recovered
        item.advance(State.RESOLVED)
    step.records.record(recovered)  # the next run needs no label lookup


def current_executions(step: Step, items: Sequence[WorkItem]) -> dict[str, WorkflowExecution]:
    """The state at AutoRetouch of the executions the items would reuse (one batched read)."""
    reused = [i for i in items if not i.failed and i.execution_id]
    return read_statuses(
        step.client,
        step.workflow.id,
        [i.execution_id or "" for i in reused],
        oldest=oldest_of(i.execution_created_at for i in items),
        max_pages=step.settings.max_status_pages,
    )


def spenders(items: Sequence[WorkItem], current: Mapping[str, WorkflowExecution]) -> list[WorkItem]:
    """The items that will spend (one per distinct key or execution), after marking retries."""
    spending: dict[str, WorkItem] = {}
    for item in items:
        if item.failed:
            continue
        if item.purchase is Purchase.REUSE:
            execution = current.get(item.execution_id or "")
            if execution is None:
                item.fail(ExecutionNotFound(f"{item.execution_id} is unknown to AutoRetouch"))
            elif execution.status in RETRYABLE_STATUSES:
                item.purchase = Purchase.RETRY
                spending.setdefault(execution.id, item)
        elif item.purchase is Purchase.CREATE:
            spending.setdefault(item.idempotency_key or item.partition_key, item)
    return list(spending.values())


def create(
    step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor, *, budget_checked: bool = False
) -> Iterator[Settled]:
    """Give every resolved item an execution; yields (item, execution-if-known) as each is settled.

    `budget_checked`: the caller has already checked the worst case of the whole step (`worst_case_fits`).
    """
    current = current_executions(step, items)
    buying = spenders(items, current)
    refused = None if budget_checked else check(step, Projection.of(buying, step.workflow.execution_price))
    if refused:
        _refuse(step, items, refused)
        buying = []
    now = datetime.now(UTC).isoformat()
    bought = _buy(step, buying, pool, now)
    yield from _settle(step, items, buying, bought, current, now)


def _refuse(step: Step, items: Sequence[WorkItem], refused: BudgetRefused) -> None:
    step.log.error(refused.reason)
    for item in items:
        if not item.failed and item.purchase in (Purchase.CREATE, Purchase.RETRY):
            item.fail(BudgetRefused(refused.detail))


def _buy(step: Step, buying: Sequence[WorkItem], pool: ThreadPoolExecutor, now: str) -> dict[str, str]:
    """Claims first; then the keys won are bought; then the keys held elsewhere are waited for.

    Returns idempotency key -> execution id. In that order, and each purchase recorded as soon as it lands,
    because two deployments can each hold a key the other wants: waiting before buying would make each wait
    for the other until the claim wait runs out (and both images fail as "claimed elsewhere").
    """
    intents = {
        i.idempotency_key: PurchaseEntry(partition=i.partition_key, at=now)
        for i in buying
        if i.purchase is Purchase.CREATE and i.idempotency_key
    }
    held = step.records.claim(intents)
    bought = _spend_won(step, [i for i in buying if i.idempotency_key not in held], pool, now)
    bought.update(_adopt_held(step, [i for i in buying if i.idempotency_key in held], held))
    return bought


def _spend_won(step: Step, items: Sequence[WorkItem], pool: ThreadPoolExecutor, now: str) -> dict[str, str]:
    """Create or retry each item in parallel (each recorded by its worker); idempotency key -> id."""
    futures = {pool.submit(_spend_and_record, step, item, now): item for item in items}
    bought: dict[str, str] = {}
    for future in as_completed(futures):
        item = futures[future]
        try:
            execution_id = future.result()
        except CreateUnconfirmedError as exc:
            step.records.record({item.idempotency_key or "": _leave_unconfirmed(step, item, exc)})
            continue
        except Exception as exc:
            item.fail(UnexpectedError(exc, stage=item.purchase.value if item.purchase else "create"))
            continue
        item.execution_id = execution_id
        item.execution_created_at = item.execution_created_at or now
        if item.purchase is Purchase.CREATE:
            item.execution_status = "CREATED"
            step.count("created")
            item.advance(State.CREATED)
        else:
            item.execution_status = "RETRIED"
            step.count("retried")
            item.advance(State.RETRYING)
        bought[item.idempotency_key or ""] = execution_id or ""
    return bought


def _spend_and_record(step: Step, item: WorkItem, now: str) -> str | None:
    """`_spend`, then its execution id in the ledger at once: another deployment may be waiting for it."""
    execution_id = _spend(step, item)
    if item.idempotency_key and execution_id:
        entry = PurchaseEntry(execution_id=execution_id, at=now, created_at=now)
        try:
            step.records.record({item.idempotency_key: entry})
        except Exception as exc:  # bought all the same: the event log keeps it, a label lookup finds it
            step.log.warning(f"{item.partition_key}: {execution_id} not in the purchase ledger: {exc}")
    return execution_id


def _leave_unconfirmed(step: Step, item: WorkItem, exc: CreateUnconfirmedError) -> PurchaseEntry:
    """The item waits as "create unconfirmed"; returns its intent, now dated at the attempt (the lookup's
    `since`), which keeps every later decision from buying before the key is settled."""
    attempted_at, settle_until = exc.attempted_at.isoformat(), exc.settle_until.isoformat()
    item.unconfirmed = Unconfirmed(attempted_at, settle_until)
    item.advance(State.UNCONFIRMED)
    step.count("unconfirmed")
    step.log.warning(f"{item.partition_key}: {exc}")
    return PurchaseEntry(partition=item.partition_key, at=attempted_at)


def _adopt_held(step: Step, items: Sequence[WorkItem], held: Mapping[str, PurchaseEntry]) -> dict[str, str]:
    """Keys another run claimed: wait a moment for their execution ids; those items adopt them (REUSE)."""
    ids = {k: e.execution_id for k, e in held.items() if e.execution_id}
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while len(ids) < len(held) and time.monotonic() < deadline:
        time.sleep(CLAIM_POLL_SECONDS)
        entries = step.records.purchases([k for k in held if k not in ids])
        ids.update({k: e.execution_id for k, e in entries.items() if e.execution_id})
    for item in items:
        key = item.idempotency_key or ""
        if key in ids:
            item.purchase, item.execution_id, item.adopted = Purchase.REUSE, ids[key], True
            item.execution_created_at = held[key].created_at or held[key].at
            step.log.info(f"{item.partition_key}: adopted execution {ids[key]}, bought by {held[key].owner}")
        else:
            holder = held[key].owner or "another deployment"
            item.fail(ClaimedElsewhere(f"claimed by {holder} at {held[key].at}"))
    return {k: v or "" for k, v in ids.items()}


def _spend(step: Step, item: WorkItem) -> str | None:
    """Create (with batch labels and the idempotency key) or retry (E8); returns the execution id."""
    if item.purchase is Purchase.RETRY:
        assert item.execution_id is not None
        step.client.retry_execution(item.execution_id)
        return item.execution_id
    labels = batch_labels(item.collection, step.batch_scope, step.batch_created_at)
    item.batch_id = labels["autoretouch_batch_id"]
    step.list_positions.creating()
    return step.client.create_execution(
        step.workflow.id,
        image=ImageRef(item.relative_key.rsplit("/", 1)[-1], item.content_hash or ""),
        version=step.version,
        labels=labels,
        idempotency_key=item.idempotency_key,
        wait=False,  # a lost answer not settled at once: the item waits as "create unconfirmed"
    )


def _settle(
    step: Step,
    items: Sequence[WorkItem],
    buying: Sequence[WorkItem],
    bought: Mapping[str, str],
    current: Mapping[str, WorkflowExecution],
    now: str,
) -> Iterator[Settled]:
    """Duplicates take the execution bought for their content; reused items take theirs."""
    buyers = {id(i) for i in buying}
    waiting = {i.idempotency_key: i.unconfirmed for i in buying if i.unconfirmed is not None}
    for item in items:
        if item.failed or item.state is State.UNCONFIRMED:
            continue
        if id(item) not in buyers and item.purchase is Purchase.CREATE:  # same content as another image here
            item.execution_id = bought.get(item.idempotency_key or "")
            if item.idempotency_key in waiting:  # its buyer's create is unconfirmed: so is its own
                item.unconfirmed = waiting[item.idempotency_key]
                item.advance(State.UNCONFIRMED)
                continue
            if not item.execution_id:
                item.fail(DuplicateContentNotCreated("the execution of the same image failed"))
                continue
            item.purchase, item.execution_created_at = Purchase.REUSE, now
        if item.purchase is Purchase.REUSE:
            step.count("reused")
            item.advance(State.REUSED)
        elif item.state is State.RESOLVED:  # a retry of an execution another image of the step retried
            item.advance(State.RETRYING)
        known = current.get(item.execution_id or "")
        if known is not None:
            item.execution_status = item.execution_status or known.status.value
            item.batch_id = item.batch_id or known.labels.get("autoretouch_batch_id")
        yield item, (known if item.purchase is Purchase.REUSE else None)


def forecast(step: Step, contents: Mapping[str, str | None]) -> Projection:
    """The projection a run over these partitions will make (partition -> content hash, None: unknown).

    The same decisions (`decide`), the same retries and the same de-duplication as the run; an image whose
    content is not known yet (new or changed in S3) counts as one new execution, which is what the run buys
    unless the same bytes appear twice.
    """
    keys = {pk: idempotency_key(h, step.workflow.id, step.version) for pk, h in contents.items() if h}
    decisions = decide(step, keys)
    items = []
    for partition_key in contents:
        decision = decisions.get(partition_key, Decision(Purchase.CREATE))
        item = WorkItem(
            partition_key, "", "", "", state=State.RESOLVED, idempotency_key=keys.get(partition_key)
        )
        item.purchase, item.execution_id = decision.purchase, decision.execution_id
        item.execution_created_at = decision.created_at
        items.append(item)
    return Projection.of(spenders(items, current_executions(step, items)), step.workflow.execution_price)
