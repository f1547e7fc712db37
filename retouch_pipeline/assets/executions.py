"""Stage 2, `autoretouch_execution`: one execution per (image content, workflow, version), never two.

Idempotency
    The key is derived from what decides the result and the price: SHA-256 of the input bytes, the workflow
    id and the workflow version (`idempotency_key`). Before creating, a step looks for an execution with that
    key (1) in the event log: the partition's last `autoretouch_execution` materialization carries its key;
    (2) in the instance's key-value index `retouch/exec/<key>` (same image content under another partition,
    or a crash after the create and before the materialization was written); an index entry that only holds
    an *intent* (written, in one batch, right before the creates) means a create may have reached AutoRetouch
    without its id being kept: then AutoRetouch itself is asked, by the idempotency label (E3). Only when all
    three say "none" is an execution created. FAILED and PAYMENT_REQUIRED executions are retried (E8), not
    re-created.

Status reads are batched (`read_statuses`): one pass over the executions list (E3, newest first, 100 per
page) answers for every execution of a step at once; single reads (E4) only for the few not found in a
bounded number of pages. Never one poll per image.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from retouch_pipeline.assets.common import EXECUTION, WorkItem, collection_tags, preview_markdown
from retouch_pipeline.autoretouch import (
    AutoRetouchClient,
    ExecutionStatus,
    NotFoundError,
    Workflow,
    WorkflowExecution,
)

KV_PREFIX = "retouch/exec/"
BATCH_NAMESPACE = uuid.UUID("6f1d3c52-9a43-4df0-a3a6-2b4c9f1e7d10")
BATCH_LABELS = ("autoretouch_batch_id", "autoretouch_batch_name", "autoretouch_batch_createdAt")
PENDING_STATUSES = frozenset({ExecutionStatus.CREATED, ExecutionStatus.ACTIVE, ExecutionStatus.IN_QA})
RETRYABLE_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED})
LIST_SKEW = timedelta(minutes=10)


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


class ExecutionIndex:
    """`retouch/exec/<idempotency key>` -> {"execution_id"?, "partition", "at"} in the instance's KV store.

    Read and written in batches from the step's main thread (one query per batch, not per image).
    """

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._kvs = instance.run_storage

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = {KV_PREFIX + k for k in keys}
        if not wanted:
            return {}
        raw = self._kvs.get_cursor_values(wanted)
        out: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            try:
                out[name[len(KV_PREFIX) :]] = json.loads(value)
            except ValueError:
                continue
        return out

    def put(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        if entries:
            self._kvs.set_cursor_values({KV_PREFIX + k: json.dumps(dict(v)) for k, v in entries.items()})


def read_statuses(
    client: AutoRetouchClient,
    workflow_id: str,
    execution_ids: Iterable[str],
    *,
    oldest: datetime | None = None,
    max_pages: int = 20,
    max_single_reads: int = 50,
) -> dict[str, WorkflowExecution]:
    """Current state of many executions in one executions-list pass (E3) plus a few E4 reads.

    The list is newest first: paging stops when every id was found, when a whole page is older than `oldest`
    (minus a skew), or after `max_pages`. Ids still unknown then are read one by one, at most
    `max_single_reads` of them (the rest are simply read on the next pass).
    """
    wanted = set(execution_ids)
    found: dict[str, WorkflowExecution] = {}
    if not wanted:
        return found
    cutoff = (oldest.astimezone(UTC) - LIST_SKEW) if oldest else None
    per_page = client.page_size
    seen_on_page = 0
    page_all_old = True
    pages = 0
    for execution in client.iter_executions(workflow_id):
        if execution.id in wanted:
            found[execution.id] = execution
            wanted.discard(execution.id)
            if not wanted:
                break
        created = execution.created_at
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        page_all_old = page_all_old and cutoff is not None and created is not None and created < cutoff
        seen_on_page += 1
        if seen_on_page >= per_page:
            pages += 1
            if page_all_old or pages >= max_pages:
                break
            seen_on_page, page_all_old = 0, True
    for execution_id in list(wanted)[:max_single_reads]:
        try:
            found[execution_id] = client.get_execution(execution_id)
        except NotFoundError:
            continue
    return found


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def execution_event(
    item: WorkItem,
    workflow: Workflow,
    version: str,
    execution: WorkflowExecution | None,
    links: Mapping[str, str] | None = None,
) -> dg.AssetMaterialization:
    """The per-partition materialization of `autoretouch_execution` (links: web-app URLs by label)."""
    status = execution.status.value if execution else (item.execution_status or "UNKNOWN")
    return dg.AssetMaterialization(
        asset_key=EXECUTION,
        partition=item.partition_key,
        metadata={
            "execution_id": item.execution_id or "",
            "status": status,
            "action": item.action or "",
            "idempotency_key": item.idempotency_key or "",
            "workflow_id": workflow.id,
            "workflow_version": version,
            "executionPrice": dg.MetadataValue.int(workflow.execution_price),
            "chargedCredits": dg.MetadataValue.int(execution.charged_credits if execution else 0),
            "batch_id": item.batch_id or "",
            "collection": item.collection,
            "source_key": item.source_key,
            "source_etag": item.source_etag or "",
            "input_hash": item.input_hash or "",
            "created_at": item.execution_created_at or "",
            "preview": preview_markdown(item.preview_before),
            **{name: dg.MetadataValue.url(url) for name, url in (links or {}).items()},
        },
        tags=collection_tags(item.collection),
    )
