"""Stage 3, `retouched_image`: the result streamed to a temporary file, checked, written to S3 with a sidecar.

Ordering: image first, sidecar second. An S3 PUT (and a completed multipart upload) is atomic, so a reader
sees either no object or the whole one, and a sidecar always describes an image that is already there.
Re-writing an output (refresh after a deletion) downloads the result again from AutoRetouch: no new charge.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from PIL import Image

from retouch_pipeline.assets.common import (
    RETOUCHED,
    PartitionFailure,
    WorkItem,
    collection_tags,
    preview_markdown,
    thumbnail_data_uri,
)
from retouch_pipeline.autoretouch import AutoRetouchClient, Workflow, WorkflowExecution
from retouch_pipeline.catalog.keys import output_key
from retouch_pipeline.resources import CatalogResource

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".tiff": "image/tiff"}


def result_extension(execution: WorkflowExecution, workflow: Workflow) -> str:
    """The result's extension: from its file name, else from the workflow's export format, else .png."""
    name = execution.result_file_name or ""
    if "." in name:
        return "." + name.rsplit(".", 1)[1].lower()
    return workflow.export_extension or ".png"


def sidecar_key(image_key: str) -> str:
    return image_key + ".json"


def write_output(
    item: WorkItem,
    execution: WorkflowExecution,
    workflow: Workflow,
    version: str,
    client: AutoRetouchClient,
    s3: Any,
    catalog: CatalogResource,
) -> dict[str, Any]:
    """Download, decode-check, PUT image then sidecar; returns facts for the materialization."""
    extension = result_extension(execution, workflow)
    key = output_key(
        catalog.output_prefix_normalized(),
        item.relative_key,
        extension,
        keep_source_extension=catalog.keep_source_extension,
    )
    fd, path = tempfile.mkstemp(prefix="retouch-out-", suffix=extension)
    os.close(fd)
    try:
        result = client.download_result(execution, path)
        try:
            with Image.open(path) as image:
                width, height, mode = image.width, image.height, image.mode
                preview = thumbnail_data_uri(image)  # decodes it all (the check), then shrinks it in place
        except (OSError, SyntaxError, ValueError) as exc:
            raise PartitionFailure("download", f"ResultUndecodable: {exc}") from exc
        content_type = execution.result_content_type or CONTENT_TYPES.get(
            extension, "application/octet-stream"
        )
        s3.upload_file(
            path, catalog.output_bucket, key, ExtraArgs={"ContentType": content_type}
        )  # atomic: single PUT or a completed multipart upload
    finally:
        os.unlink(path)
    written_at = datetime.now(UTC).isoformat(timespec="seconds")
    sidecar = {
        "source": {
            "bucket": catalog.source_bucket,
            "key": item.source_key,
            "etag": item.source_etag,
            "content_hash": item.input_hash,
        },
        "result": {
            "bucket": catalog.output_bucket,
            "key": key,
            "content_hash": result.content_hash,
            "content_type": content_type,
            "width": width,
            "height": height,
            "mode": mode,
        },
        "execution": {
            "id": execution.id,
            "workflow_id": execution.workflow or workflow.id,
            "workflow_version": execution.workflow_version or version,
            "status": execution.status.value,
            "charged_credits": execution.charged_credits,
            "batch_id": execution.labels.get("autoretouch_batch_id"),
            "created_at": _iso(execution.created_at),
            "finished_at": _iso(execution.finished_at),
        },
        "collection": item.collection,
        "partition_key": item.partition_key,
        "written_at": written_at,
    }
    s3.put_object(
        Bucket=catalog.output_bucket,
        Key=sidecar_key(key),
        Body=json.dumps(sidecar, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
    )
    return {
        "key": key,
        "result_hash": result.content_hash,
        "size": result.size,
        "width": width,
        "height": height,
        "mode": mode,
        "preview_after": preview,
        "written_at": written_at,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def retouched_event(
    item: WorkItem,
    execution: WorkflowExecution,
    workflow: Workflow,
    facts: dict[str, Any],
    bucket: str,
    links: Mapping[str, str] | None = None,
) -> dg.AssetMaterialization:
    """The per-partition materialization of `retouched_image` (what the cost roll-up sums)."""
    finished = execution.finished_at or datetime.now(UTC)
    return dg.AssetMaterialization(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        metadata={
            "output_uri": dg.MetadataValue.url(f"s3://{bucket}/{facts['key']}"),
            "sidecar_uri": dg.MetadataValue.url(f"s3://{bucket}/{sidecar_key(facts['key'])}"),
            "result_hash": facts["result_hash"],
            "input_hash": item.input_hash or "",
            "execution_id": execution.id,
            "status": execution.status.value,
            "executionPrice": dg.MetadataValue.int(workflow.execution_price),
            "chargedCredits": dg.MetadataValue.int(execution.charged_credits),
            "batch_id": execution.labels.get("autoretouch_batch_id", ""),
            "collection": item.collection,
            "finished_day": finished.astimezone(UTC).date().isoformat(),
            "width": dg.MetadataValue.int(facts["width"]),
            "height": dg.MetadataValue.int(facts["height"]),
            "mode": facts["mode"],
            "bytes": dg.MetadataValue.int(facts["size"]),
            "preview": preview_markdown(item.preview_before, facts["preview_after"]),
            **{name: dg.MetadataValue.url(url) for name, url in (links or {}).items()},
        },
        tags=collection_tags(item.collection),
    )
