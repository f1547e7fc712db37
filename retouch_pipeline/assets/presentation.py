"""What a person sees in the Dagster UI for one partition: owners, failure sentences, pending notes, previews.

Why a module of its own: the step's failure is one `dg.Failure` for the whole run (its description lists every
failed image), but a user opens *one partition* of `retouched_image` and must read there, without the logs,
why that image has no result and what to do. So every failed or still-pending partition also gets an
`AssetObservation` on `retouched_image` carrying a human sentence (`message`), the failure class, the raw
reason and, when an execution exists, a link to it in the AutoRetouch web app. The browser tests read these
metadata names: `status`, `failure_class`, `message`, `reason`, `stage`, `autoretouch_execution`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import dagster as dg
from PIL import Image

from retouch_pipeline.assets.common import (
    RETOUCHED,
    WorkItem,
    collection_tags,
    materialization_metadata,
    metadata_value,
    preview_markdown,
    thumbnail_data_uri,
)

OWNERS = ["team:catalog-data"]
"""Dagster owners of every asset (an email or `team:<name>`); shown on the asset pages and filterable."""

_DATA_URI = re.compile(r"!\[before\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)")

# failure class -> (what happened, what to do); the first matching reason prefix or stage wins
_INVALID = ("EmptySourceImage", "NotAnImage", "TruncatedImage", "UnsupportedFormat", "ImageTooLarge")


def failure_class(stage: str, reason: str) -> str:
    """A short, stable name of the failure kind (also metadata, so the UI can filter/sort on it)."""
    if reason.startswith(_INVALID) or stage in ("validate", "partition"):
        return "invalid_image"
    if reason.startswith("SourceMissing"):
        return "source_missing"
    if reason.startswith("BudgetRefused"):
        return "budget_refused"
    if reason.startswith("ExecutionPaymentRequired"):
        return "payment_required"
    if reason.startswith("ExecutionFailed"):
        return "execution_failed"
    if reason.startswith("RejectedByAutoRetouch"):
        return "rejected_by_autoretouch"
    return "transient_error"


_SENTENCES = {
    "invalid_image": "The source image cannot be processed ({reason}). No credit was spent. Replace the file "
    "in S3: the catalog sensor picks the new version up and processes it.",
    "source_missing": "The source object is gone from S3 ({reason}). Nothing was spent; re-upload it or "
    "ignore this partition.",
    "budget_refused": "Not started: {reason}. No execution was created and nothing was spent.",
    "payment_required": "AutoRetouch stopped this image for lack of credits (PAYMENT_REQUIRED). Top up the "
    "organization's balance, then re-materialize this partition: the same execution is retried, not bought "
    "again.",
    "execution_failed": "AutoRetouch could not process this image (execution FAILED, not charged). "
    "Re-materialize this partition to retry the same execution once.",
    "rejected_by_autoretouch": "AutoRetouch refused the upload ({reason}). Check the file; nothing was "
    "spent.",
    "transient_error": "A temporary error stopped this image at the {stage} stage ({reason}). "
    "Re-materialize it: nothing already paid is paid again.",
}


def failure_sentence(stage: str, reason: str) -> str:
    """The human sentence shown in the partition's view for one failure."""
    return _SENTENCES[failure_class(stage, reason)].format(stage=stage, reason=reason)


def pending_sentence(status: str, created_at: str | None) -> str:
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
    assert item.failure is not None
    stage, reason = item.failure.stage, item.failure.reason
    return dg.AssetObservation(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        description=failure_sentence(stage, reason),
        metadata={
            "status": "failed",
            "failure_class": failure_class(stage, reason),
            "message": dg.MetadataValue.text(failure_sentence(stage, reason)),
            "stage": stage,
            "reason": reason,
            **_common(item, execution_link),
        },
        tags=collection_tags(item.collection),
    )


def pending_observation(item: WorkItem, status: str, execution_link: str | None) -> dg.AssetObservation:
    """`retouched_image`'s note for a partition whose execution is still IN_QA (or processing)."""
    sentence = pending_sentence(status, item.execution_created_at)
    return dg.AssetObservation(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        description=sentence,
        metadata={
            "status": "pending",
            "failure_class": "qa_pending" if status == "IN_QA" else "processing",
            "message": dg.MetadataValue.text(sentence),
            "execution_status": status,
            **_common(item, execution_link),
        },
        tags=collection_tags(item.collection),
    )


def before_preview_from(records: Mapping[str, Any]) -> str | None:
    """The "before" thumbnail (data URI) from the first recorded event that has one."""
    for record in records.values():
        if record is None:
            continue
        md = metadata_value(materialization_metadata(record), "preview")
        match = _DATA_URI.search(str(md or ""))
        if match:
            return match.group(1)
    return None


def before_preview_from_source(s3: Any, bucket: str, key: str, max_bytes: int) -> str | None:
    """Last resort for a retouched-only run without a recorded thumbnail: one GET of the source."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if int(head.get("ContentLength") or 0) > max_bytes:
            return None
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            return thumbnail_data_uri(image)
    except Exception:  # a preview is a convenience: never fail the download for it
        return None
