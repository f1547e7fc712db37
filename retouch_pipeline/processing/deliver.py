"""Stage 4, deliver: the result streamed to a temporary file, checked, written to S3 with a JSON sidecar.

Ordering: image first, sidecar second. An S3 PUT (and a completed multipart upload) is atomic, so a reader
sees either no object or the whole one, and a sidecar always describes an image that is already there. Writing
an output again (refresh after a deletion) downloads the result again from AutoRetouch: no new charge.

"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from PIL import Image

from retouch_pipeline.autoretouch import WorkflowExecution
from retouch_pipeline.catalog.keys import output_key
from retouch_pipeline.processing.failures import (
    ConditionalWritesUnsupported,
    NoExecution,
    OutputBucketUnusable,
    OutputCollision,
    ResultUndecodable,
    bucket_problem,
)
from retouch_pipeline.processing.item import OutputFacts, State, WorkItem
from retouch_pipeline.processing.ledger import conditional_write_problem
from retouch_pipeline.processing.step import Step
from retouch_pipeline.processing.thumbnails import thumbnail_data_uri, thumbnail_of_source
from retouch_pipeline.state_objects import RESERVED_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".tiff": "image/tiff"}


def from_records(step: Step, items: Sequence[WorkItem]) -> None:
    """Delivery-only steps: the recorded execution of each item becomes its state (REUSED)."""
    keys = [i.partition_key for i in items if not i.failed]
    recorded = step.records.executions(keys)
    unshown = [k for k in keys if k not in recorded or not recorded[k].thumbnail]
    thumbnails = step.records.upload_thumbnails(unshown)
    for item in items:
        if item.failed:
            continue
        record = recorded.get(item.partition_key)
        if record is None:
            item.fail(NoExecution("materialize autoretouch_execution for this image first"))
            continue
        item.execution_id, item.idempotency_key = record.execution_id, record.idempotency_key
        item.content_hash, item.source_etag = record.input_hash, record.source_etag
        item.execution_created_at = record.created_at
        # the "before" half of the preview: recorded thumbnails first, the source itself as a last resort
        item.preview_before = (
            record.thumbnail
            or thumbnails.get(item.partition_key)
            or thumbnail_of_source(
                step.s3, step.catalog.source_bucket, item.source_key, step.catalog.max_image_bytes
            )
        )
        item.advance(State.REUSED)


def result_extension(execution: WorkflowExecution, export_extension: str | None) -> str:
    """The result's extension: from its file name, else from the workflow's export format, else .png."""
    name = execution.result_file_name or ""
    if "." in name:
        return "." + name.rsplit(".", 1)[1].lower()
    return export_extension or ".png"


def sidecar_key(image_key: str) -> str:
    return image_key + ".json"


def read_sidecar(s3: S3Client, bucket: str, image_key: str) -> dict[str, Any]:
    """The JSON sidecar of an output ({} when it is not a JSON object)."""
    body = s3.get_object(Bucket=bucket, Key=sidecar_key(image_key))["Body"].read()
    try:
        loaded = json.loads(body)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def move_output(s3: S3Client, bucket: str, old: str, new: str) -> None:
    """Image then sidecar to `new`, then the old sidecar and image away (no sidecar without its image)."""
    sidecar = read_sidecar(s3, bucket, old)
    s3.copy_object(Bucket=bucket, Key=new, CopySource={"Bucket": bucket, "Key": old})
    sidecar.setdefault("result", {})["key"] = new
    sidecar["moved_from"] = old
    s3.put_object(
        Bucket=bucket,
        Key=sidecar_key(new),
        Body=json.dumps(sidecar, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
    )
    s3.delete_object(Bucket=bucket, Key=sidecar_key(old))
    s3.delete_object(Bucket=bucket, Key=old)


WRITE_PROBE = f"{RESERVED_DIR}/write-check"
"""Where the probes go: inside the reserved folder, never taken for an output. Each step's probe has a name of
its own (`-<random hex>`): with one shared name, a step deleting its probe let another step's `If-None-Match:
*` PUT succeed, and that step failed every image as if the store ignored conditional writes."""


def check_output_writable(step: Step) -> OutputBucketUnusable | None:
    """Before anything is bought: can this step write (and delete) below the output prefix, and does the
    store honour the conditional writes the purchase ledger's claims rely on?

    One zero-byte probe object, PUT, then PUT again with each condition a claim uses (both must be refused:
    `ledger.conditional_write_problem`), deleted at once. A missing bucket or denied access is returned as the
    step's permanent failure naming the bucket, a store without conditional writes as one naming the store
    (`ConditionalWritesUnsupported`, docs/durability.md); any other error is left to the delivery (transient).
    """
    catalog = step.catalog
    name = f"{WRITE_PROBE}-{uuid.uuid4().hex}"
    probe = "/".join(p for p in (catalog.output_prefix_normalized(), name) if p)
    try:
        step.s3.put_object(Bucket=catalog.output_bucket, Key=probe, Body=b"")
        ignored = conditional_write_problem(step.s3, catalog.output_bucket, probe)
        step.s3.delete_object(Bucket=catalog.output_bucket, Key=probe)
    except Exception as exc:
        problem = bucket_problem(exc, catalog.output_bucket, "writing the results")
        if problem is None:  # a network or server error says nothing about the bucket: delivery retries
            step.log.warning(f"output write check inconclusive ({type(exc).__name__}); continuing")
            return None
        return OutputBucketUnusable(problem)
    if ignored is not None:
        store = getattr(getattr(step.s3, "meta", None), "endpoint_url", None) or "AWS S3"
        return ConditionalWritesUnsupported(f"the S3 store at {store} {ignored}")
    return None


def planned_output_key(step: Step, item: WorkItem) -> str:
    """The output key an item's result will get (the workflow's export extension; PNG when unknown)."""
    extension = step.workflow.export_extension or ".png"
    return output_key(step.catalog.output_prefix_normalized(), item.relative_key, extension)


def check_no_collision(step: Step, item: WorkItem) -> None:
    """Raise `OutputCollision` when the item's output key already holds another source's result.

    Output keys cannot collide within a catalog (`catalog.keys`); this catches what the scheme cannot:
    another catalog (or a tool) writing the same output prefix. Read before anything is bought.
    """
    bucket, key = step.catalog.output_bucket, planned_output_key(step, item)
    try:
        source = read_sidecar(step.s3, bucket, key).get("source") or {}
    except step.s3.exceptions.NoSuchKey:
        return
    except Exception as exc:
        problem = bucket_problem(exc, bucket, "reading the results")
        if problem is None:
            raise
        raise OutputBucketUnusable(problem) from exc
    owner = f"s3://{source.get('bucket')}/{source.get('key')}"
    if owner != f"s3://{step.catalog.source_bucket}/{item.source_key}":
        raise OutputCollision(
            f"s3://{bucket}/{key} already holds the result of {owner}, so "
            f"s3://{step.catalog.source_bucket}/{item.source_key} would overwrite it"
        )


def write_output(step: Step, item: WorkItem, execution: WorkflowExecution) -> OutputFacts:
    """Download, decode-check, PUT image then sidecar (one pool thread's job)."""
    extension = result_extension(execution, step.workflow.export_extension)
    catalog = step.catalog
    key = output_key(catalog.output_prefix_normalized(), item.relative_key, extension)
    fd, path = tempfile.mkstemp(prefix="retouch-out-", suffix=extension)
    os.close(fd)
    try:
        result = step.client.download_result(execution, path)
        width, height, mode, preview = _checked(path)
        content_type = execution.result_content_type or CONTENT_TYPES.get(
            extension, "application/octet-stream"
        )
        # atomic: single PUT or a completed multipart upload
        step.s3.upload_file(path, catalog.output_bucket, key, ExtraArgs={"ContentType": content_type})
    finally:
        os.unlink(path)
    facts = OutputFacts(key, result.content_hash, result.size, width, height, mode, preview, _now_seconds())
    sidecar = _sidecar(step, item, execution, facts, content_type)
    step.s3.put_object(
        Bucket=catalog.output_bucket,
        Key=sidecar_key(key),
        Body=json.dumps(sidecar, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
    )
    return facts


def _checked(path: str) -> tuple[int, int, str, str]:
    """(width, height, mode, thumbnail) of a result that decodes; else ResultUndecodable."""
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
            preview = thumbnail_data_uri(image)  # decodes it all (the check), then shrinks it in place
    except (OSError, SyntaxError, ValueError) as exc:
        raise ResultUndecodable(str(exc)) from exc
    return width, height, mode, preview


def _now_seconds() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sidecar(
    step: Step, item: WorkItem, execution: WorkflowExecution, facts: OutputFacts, content_type: str
) -> dict[str, Any]:
    """The provenance written beside the output: source, result, execution."""
    return {
        "source": {
            "bucket": step.catalog.source_bucket,
            "key": item.source_key,
            "etag": item.source_etag,
            "content_hash": item.content_hash,
            "converted_from": item.converted_from,
        },
        "result": {
            "bucket": step.catalog.output_bucket,
            "key": facts.key,
            "content_hash": facts.result_hash,
            "content_type": content_type,
            "width": facts.width,
            "height": facts.height,
            "mode": facts.mode,
        },
        "execution": {
            "id": execution.id,
            "workflow_id": execution.workflow or step.workflow.id,
            "workflow_version": execution.workflow_version or step.version,
            "status": execution.status.value,
            "charged_credits": execution.charged_credits,
            "batch_id": execution.labels.get("autoretouch_batch_id"),
            "created_at": _iso(execution.created_at),
            "finished_at": _iso(execution.finished_at),
        },
        "collection": item.collection,
        "partition_key": item.partition_key,
        "written_at": facts.written_at,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
