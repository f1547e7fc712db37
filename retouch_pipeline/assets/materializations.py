"""The per-partition materializations of the three catalog assets, from the domain's facts.

Their metadata names are read back by re-runs, the refresh, the sensors, the cost roll-up and the UI tests:
renaming one is a change of the recorded format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

import dagster as dg

from retouch_pipeline.assets.common import (
    EXECUTION,
    RETOUCHED,
    UPLOADED,
    collection_tags,
    preview_markdown,
)
from retouch_pipeline.autoretouch import Workflow, WorkflowExecution
from retouch_pipeline.processing.deliver import sidecar_key
from retouch_pipeline.processing.item import Purchase, WorkItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_PROVENANCE = {Purchase.CREATE: "bought", Purchase.RETRY: "bought", Purchase.REUSE: "reused"}


def _urls(links: Mapping[str, str] | None) -> dict[str, dg.MetadataValue]:
    return {name: dg.MetadataValue.url(url) for name, url in (links or {}).items()}


@dataclass(frozen=True)
class ObjectLinks:
    """Links a browser opens to an S3 object (`s3://` opens nothing): on AWS the S3 console's page of the
    object (its sign-in applies); elsewhere (moto, MinIO: a custom `S3_ENDPOINT_URL`) the endpoint's own
    path-style URL of the object. The `s3://` path stays beside it as a path entry, for copying and for
    the code that reads it back."""

    endpoint_url: str
    region: str

    @classmethod
    def of(cls, s3_client: S3Client) -> ObjectLinks:
        """From the client the step writes with: its endpoint and region (boto3's `meta`)."""
        return cls(str(s3_client.meta.endpoint_url), str(s3_client.meta.region_name or "us-east-1"))

    def url(self, bucket: str, key: str) -> dg.UrlMetadataValue:
        host = urlsplit(self.endpoint_url).hostname or ""
        if host == "amazonaws.com" or host.endswith(".amazonaws.com"):
            query = urlencode({"region": self.region, "prefix": key}, quote_via=quote, safe="/")
            return dg.MetadataValue.url(
                f"https://s3.console.aws.amazon.com/s3/object/{quote(bucket)}?{query}"
            )
        return dg.MetadataValue.url(f"{self.endpoint_url.rstrip('/')}/{quote(bucket)}/{quote(key, safe='/')}")


def provenance(item: WorkItem) -> str:
    """`adopted`: taken from the durable record (ledger, sidecar, label), not bought by this instance."""
    if item.adopted:
        return "adopted"
    return _PROVENANCE.get(item.purchase, "uploaded") if item.purchase else "uploaded"


def uploaded_event(item: WorkItem, source_bucket: str, objects: ObjectLinks) -> dg.AssetMaterialization:
    """The per-partition materialization of `uploaded_image`."""
    assert item.content_hash is not None and item.image is not None
    return dg.AssetMaterialization(
        asset_key=UPLOADED,
        partition=item.partition_key,
        metadata={
            "source_uri": dg.MetadataValue.path(f"s3://{source_bucket}/{item.source_key}"),
            "source_link": objects.url(source_bucket, item.source_key),
            "source_etag": item.source_etag or "",
            "collection": item.collection,
            "content_hash": item.content_hash,
            "format": item.image.format,
            "converted_from": item.converted_from or "",
            "width": dg.MetadataValue.int(item.image.width),
            "height": dg.MetadataValue.int(item.image.height),
            "bytes": dg.MetadataValue.int(item.image.size),
            "uploaded": item.bytes_sent,
            "preview": preview_markdown(item.preview_before),
            "provenance": provenance(item),
        },
        tags=collection_tags(item.collection),
    )


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
            "action": item.purchase.value if item.purchase else "",
            "idempotency_key": item.idempotency_key or "",
            "workflow_id": workflow.id,
            "workflow_version": version,
            "executionPrice": dg.MetadataValue.int(workflow.execution_price),
            "chargedCredits": dg.MetadataValue.int(execution.charged_credits if execution else 0),
            "batch_id": item.batch_id or "",
            "collection": item.collection,
            "source_key": item.source_key,
            "source_etag": item.source_etag or "",
            "input_hash": item.content_hash or "",
            "created_at": item.execution_created_at or "",
            "preview": preview_markdown(item.preview_before),
            "provenance": provenance(item),
            **_urls(links),
        },
        tags=collection_tags(item.collection),
    )


def retouched_event(
    item: WorkItem,
    execution: WorkflowExecution,
    workflow: Workflow,
    bucket: str,
    objects: ObjectLinks,
    links: Mapping[str, str] | None = None,
) -> dg.AssetMaterialization:
    """The per-partition materialization of `retouched_image` (what the cost roll-up sums)."""
    output = item.output
    assert output is not None
    finished = execution.finished_at or datetime.now(UTC)
    return dg.AssetMaterialization(
        asset_key=RETOUCHED,
        partition=item.partition_key,
        metadata={
            "output_uri": dg.MetadataValue.path(f"s3://{bucket}/{output.key}"),
            "output_link": objects.url(bucket, output.key),
            "sidecar_uri": dg.MetadataValue.path(f"s3://{bucket}/{sidecar_key(output.key)}"),
            "result_hash": output.result_hash,
            "input_hash": item.content_hash or "",
            "execution_id": execution.id,
            "status": execution.status.value,
            "executionPrice": dg.MetadataValue.int(workflow.execution_price),
            "chargedCredits": dg.MetadataValue.int(execution.charged_credits),
            "batch_id": execution.labels.get("autoretouch_batch_id", ""),
            "collection": item.collection,
            "finished_day": finished.astimezone(UTC).date().isoformat(),
            "width": dg.MetadataValue.int(output.width),
            "height": dg.MetadataValue.int(output.height),
            "mode": output.mode,
            "bytes": dg.MetadataValue.int(output.size),
            "preview": preview_markdown(item.preview_before, output.preview_after),
            "provenance": provenance(item),
            **_urls(links),
        },
        tags=collection_tags(item.collection),
    )
