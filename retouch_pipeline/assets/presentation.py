"""What a person sees in the Dagster UI for one partition: owners, failure notes, pending notes.

Why a module of its own: the step's failure is one `dg.Failure` for the whole run (its description lists every
failed image), but a user opens *one partition* of `retouched_image` and must read there, without the logs,
why that image has no result and what to do. So every failed or still-pending partition also gets an
`AssetObservation` on `retouched_image` carrying a human sentence (`message`), the failure class, the raw
reason and, when an execution exists, a link to it in the AutoRetouch web app. The browser tests read these
metadata names: `status`, `failure_class`, `message`, `reason`, `stage`, `autoretouch_execution`. The
sentences themselves belong to the failure classes (`processing/failures.py`).

A create whose answer was lost and whose execution is not listed yet is neither failed nor pending: its
partition gets an `AssetObservation` with `status: create_unconfirmed` on `autoretouch_execution` (the
record the pending sensor settles, with the idempotency key, the attempt's time and the settle window) and
the same note on `retouched_image` when that asset is in the run.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from retouch_pipeline.assets.common import EXECUTION, RETOUCHED, collection_tags, preview_markdown
from retouch_pipeline.processing.item import WorkItem

OWNERS = ["team:catalog-data"]
"""Dagster owners of every asset (an email or `team:<name>`); shown on the asset pages and filterable."""
SHOWN_FAILURES = 50
HANDED_TO = "handed_to"
"""Metadata of a pending note: the run that took the execution over (the pending sensor waits for its end)."""


def pending_sentence(status: str, created_at: str | None, handed_to: str | None = None) -> str:
    if handed_to:
        return (
            f"Still {status} at AutoRetouch when this run handed it to run {handed_to}, queued behind it "
            "(same collection or backfill), which downloads the result when it completes (no new charge; "
            "should that run not deliver it, the pending-executions sensor does)."
        )
    if status == "IN_QA":
        return (
            f"Waiting for AutoRetouch's quality review (IN_QA) since {created_at or 'creation'}. Nothing to "
            "do: the pending-executions sensor downloads the result as soon as it is approved "
            "(no new charge)."
        )
    return (
        f"Still {status} at AutoRetouch when this run stopped waiting. The pending-executions sensor "
        "downloads the result when it completes (no new charge)."
    )


def _common(item: WorkItem, execution_link: str | None) -> dict[str, dg.RawMetadataValue]:
    meta: dict[str, dg.RawMetadataValue] = {"collection": item.collection, "source_key": item.source_key}
    if item.execution_id:
        meta["execution_id"] = item.execution_id
    if execution_link:
        meta["autoretouch_execution"] = dg.MetadataValue.url(execution_link)
    if item.preview_before:
        meta["preview"] = preview_markdown(item.preview_before)
    return meta


def failure_observation(item: WorkItem, execution_link: str | None) -> dg.AssetObservation:
    """`retouched_image`'s note for a failed partition: why, and what to do."""
    failure = item.failure
    assert failure is not None
    return dg.AssetObservation(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        description=failure.sentence,
        metadata={
            "status": "failed",
            "failure_class": failure.kind,
            "message": dg.MetadataValue.text(failure.sentence),
            "stage": failure.stage,
            "reason": failure.reason,
            # settled until the source changes: the refresh does not plan this source version again
            "content_refusal": failure.content_refusal,
            "source_etag": item.source_etag or "",
            **_common(item, execution_link),
        },
        tags=collection_tags(item.collection),
    )


def pending_observation(item: WorkItem, execution_link: str | None) -> dg.AssetObservation:
    """`retouched_image`'s note for a partition whose execution is still IN_QA (or processing)."""
    status = item.pending_status or "UNKNOWN"
    sentence = pending_sentence(status, item.execution_created_at, item.handed_to)
    handed_to = {HANDED_TO: dg.MetadataValue.dagster_run(item.handed_to)} if item.handed_to else {}
    return dg.AssetObservation(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        description=sentence,
        metadata={
            "status": "pending",
            "failure_class": "qa_pending" if status == "IN_QA" else "processing",
            "message": dg.MetadataValue.text(sentence),
            "execution_status": status,
            **handed_to,
            **_common(item, execution_link),
        },
        tags=collection_tags(item.collection),
    )


UNCONFIRMED = "create_unconfirmed"
"""The `status` (and `failure_class`) of a create whose fate is unknown; the pending sensor reads it."""


def unconfirmed_sentence(attempted_at: str, settle_until: str) -> str:
    return (
        f"The answer to this image's execution create (at {attempted_at}) was lost and AutoRetouch does not "
        "list the execution yet. Nothing is bought again for it: the pending-executions sensor looks it up; "
        "found, its result is delivered (no new charge); still not listed after "
        f"{settle_until}, the image is run again and bought once."
    )


def unconfirmed_observations(item: WorkItem, workflow_id: str, notes: bool) -> list[dg.AssetObservation]:
    """A create whose fate is unknown: the record on `autoretouch_execution` the pending sensor settles
    (idempotency key, workflow, attempt, settle window); with `notes`, the same note on `retouched_image`."""
    unconfirmed = item.unconfirmed
    assert unconfirmed is not None
    sentence = unconfirmed_sentence(unconfirmed.attempted_at, unconfirmed.settle_until)
    metadata: dict[str, dg.RawMetadataValue] = {
        "status": UNCONFIRMED,
        "failure_class": UNCONFIRMED,
        "message": dg.MetadataValue.text(sentence),
        "idempotency_key": item.idempotency_key or "",
        "workflow_id": workflow_id,
        "attempted_at": unconfirmed.attempted_at,
        "settle_until": unconfirmed.settle_until,
        **_common(item, None),
    }
    return [
        dg.AssetObservation(
            asset_key=key,
            partition=item.partition_key,
            description=sentence,
            metadata=metadata,
            tags=collection_tags(item.collection),
        )
        for key in ((EXECUTION, RETOUCHED) if notes else (EXECUTION,))
    ]


def deleted_source_observation(partition_key: str, where: str) -> dg.AssetObservation:
    """`retouched_image`'s note for a partition whose source was deleted from S3: where its output is."""
    sentence = (
        f"The source of this image was deleted from S3. Its output was {where}. Nothing is bought for it "
        "until a source with this name is uploaded again."
    )
    return dg.AssetObservation(
        asset_key=RETOUCHED,
        partition=partition_key,
        description=sentence,
        metadata={"status": "source_deleted", "message": dg.MetadataValue.text(sentence)},
    )


def failure_of(items: list[WorkItem]) -> dg.Failure | None:
    """One `dg.Failure` naming each failed image and why; retried unless every failure is permanent."""
    failed = {i.partition_key: i.failure for i in items if i.failure is not None}
    if not failed:
        return None
    lines = [f"{pk}: [{f.stage}] {f.sentence}" for pk, f in failed.items()]
    more = len(lines) - SHOWN_FAILURES
    return dg.Failure(
        description=f"{len(failed)} of {len(items)} image(s) failed; the others were recorded.\n"
        + "\n".join(lines[:SHOWN_FAILURES])
        + (f"\n... and {more} more" if more > 0 else ""),
        metadata={
            "failed_partitions": dg.MetadataValue.json(
                {pk: f"[{f.stage}] {f.reason}" for pk, f in failed.items()}
            ),
            "failure_classes": dg.MetadataValue.json({pk: f.kind for pk, f in failed.items()}),
            "failed_count": dg.MetadataValue.int(len(failed)),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        allow_retries=not all(f.permanent for f in failed.values()),
    )
