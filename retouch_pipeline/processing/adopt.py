"""Adoption: an image whose result is already in S3 is recorded from its sidecar, not bought or written.

Why: Dagster's storage is not the only truth. A fresh or wiped instance, or a second deployment over the same
catalog, knows nothing of what was bought; the output sidecar (written after the image, naming the input hash,
the workflow, its version and the execution) says what the result in S3 was made from. When it matches what
the step would buy (same idempotency key), the step takes that execution (`sidecars`, asked by
`create.decide` when the ledger has no entry) and, once the execution is known COMPLETED, records the output
as delivered from the sidecar (`deliver_adopted`): 0 credits, no S3 write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from retouch_pipeline.autoretouch import ExecutionStatus, WorkflowExecution
from retouch_pipeline.catalog.keys import output_key, s3_key_from_partition_key
from retouch_pipeline.processing.deliver import result_extension, sidecar_key
from retouch_pipeline.processing.events import Delivered
from retouch_pipeline.processing.item import OutputFacts, State, WorkItem
from retouch_pipeline.processing.statuses import oldest_of, read_statuses
from retouch_pipeline.processing.step import Step
from retouch_pipeline.processing.thumbnails import thumbnail_of_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WORKERS = 8


@dataclass(frozen=True)
class Sidecar:
    """What an output's sidecar says (the fields adoption compares and records)."""

    image_key: str
    execution_id: str
    content_hash: str
    workflow_id: str
    workflow_version: str
    created_at: str | None
    result_hash: str
    width: int
    height: int
    mode: str
    written_at: str
    source_etag: str | None = None


def expected_output_key(step: Step, relative_key: str, extension: str) -> str:
    """Where `deliver.write_output` puts the result of `relative_key` with this extension."""
    return output_key(step.catalog.output_prefix_normalized(), relative_key, extension)


def read_sidecar(s3: S3Client, bucket: str, image_key: str) -> Sidecar | None:
    """The sidecar beside `image_key`, if there is one that parses."""
    try:
        body = s3.get_object(Bucket=bucket, Key=sidecar_key(image_key))["Body"].read()
        raw = json.loads(body)
        execution, source, result = raw["execution"], raw["source"], raw["result"]
        return Sidecar(
            image_key,
            str(execution["id"]),
            str(source["content_hash"]),
            str(execution["workflow_id"]),
            str(execution["workflow_version"]),
            execution.get("created_at"),
            str(result.get("content_hash") or ""),
            int(result.get("width") or 0),
            int(result.get("height") or 0),
            str(result.get("mode") or ""),
            str(raw.get("written_at") or ""),
            source.get("etag"),
        )
    except ClientError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def sidecars(step: Step, partition_keys: Sequence[str]) -> dict[str, Sidecar]:
    """partition -> the sidecar at its expected output key (the workflow's export format), if any."""
    extension = step.workflow.export_extension or ".png"
    wanted: dict[str, str] = {}
    for partition_key in partition_keys:
        try:
            wanted[partition_key] = expected_output_key(
                step, s3_key_from_partition_key(partition_key), extension
            )
        except ValueError:
            continue
    if not wanted:
        return {}
    bucket = step.catalog.output_bucket
    with ThreadPoolExecutor(min(WORKERS, len(wanted)), thread_name_prefix="sidecar") as pool:
        found = pool.map(lambda key: read_sidecar(step.s3, bucket, key), wanted.values())
        return {pk: sc for pk, sc in zip(wanted, found, strict=True) if sc is not None}


def known_contents(step: Step, etags: Mapping[str, str]) -> dict[str, str]:
    """partition -> input hash, from sidecars written for the source as it is now (same ETag)."""
    found = sidecars(step, list(etags))
    return {pk: sc.content_hash for pk, sc in found.items() if sc.source_etag and sc.source_etag == etags[pk]}


def deliver_adopted(step: Step, items: Sequence[WorkItem]) -> Iterator[Delivered]:
    """Adopted items whose completed result is already in S3 become DELIVERED, from their sidecar."""
    adopted = [i for i in items if i.adopted and i.state is State.REUSED and i.execution_id]
    if not adopted:
        return
    current = read_statuses(
        step.client,
        step.workflow.id,
        [i.execution_id or "" for i in adopted],
        oldest=oldest_of(i.execution_created_at for i in adopted),
        max_pages=step.settings.max_status_pages,
    )
    with ThreadPoolExecutor(min(WORKERS, len(adopted)), thread_name_prefix="adopt") as pool:
        outputs = list(pool.map(lambda i: _output_in_s3(step, i, current), adopted))
    for item, output in zip(adopted, outputs, strict=True):
        if output is None:
            continue  # not delivered yet (or not as recorded): the ordinary wait and delivery follow
        execution = current[item.execution_id or ""]
        item.output = output
        item.batch_id = execution.labels.get("autoretouch_batch_id") or item.batch_id
        item.advance(State.DELIVERED)
        yield Delivered(item, execution)


def _output_in_s3(step: Step, item: WorkItem, current: Mapping[str, WorkflowExecution]) -> OutputFacts | None:
    """The output as its sidecar describes it, when that sidecar names this execution and these bytes."""
    execution = current.get(item.execution_id or "")
    if execution is None or execution.status is not ExecutionStatus.COMPLETED:
        return None
    extension = result_extension(execution, step.workflow.export_extension)
    bucket = step.catalog.output_bucket
    sidecar = read_sidecar(step.s3, bucket, expected_output_key(step, item.relative_key, extension))
    if sidecar is None or (sidecar.execution_id, sidecar.content_hash) != (execution.id, item.content_hash):
        return None
    try:
        head = step.s3.head_object(Bucket=bucket, Key=sidecar.image_key)
    except ClientError:
        return None  # the image was deleted: deliver it again (a download, no charge)
    after = thumbnail_of_source(step.s3, bucket, sidecar.image_key, step.catalog.max_image_bytes) or ""
    size = int(head.get("ContentLength") or 0)
    return OutputFacts(
        sidecar.image_key,
        sidecar.result_hash,
        size,
        sidecar.width,
        sidecar.height,
        sidecar.mode,
        after,
        sidecar.written_at,
    )
