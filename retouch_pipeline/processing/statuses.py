"""Where executions stand at AutoRetouch, read for many at once: never one poll per image.

One pass over the executions list (E3, newest first, 100 per page) answers for every execution of a step;
single reads (E4) only for the few not found in a bounded number of pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from retouch_pipeline.autoretouch import AutoRetouchClient, ExecutionStatus, NotFoundError, WorkflowExecution

PENDING_STATUSES = frozenset({ExecutionStatus.CREATED, ExecutionStatus.ACTIVE, ExecutionStatus.IN_QA})
RETRYABLE_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED})
LIST_SKEW = timedelta(minutes=10)


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


def oldest_of(values: Iterable[str | None]) -> datetime | None:
    """The earliest of some recorded creation times (the executions list is read back to it)."""
    times = [t for t in (parse_time(v) for v in values) if t is not None]
    return min(times) if times else None
