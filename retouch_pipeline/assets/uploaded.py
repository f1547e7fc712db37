"""Stage 1, `uploaded_image`: read the source from S3, validate it with Pillow, upload it (HEAD de-dup).

Why validate here: AutoRetouch answers 422 for broken input, but only after the image went over the wire,
and a broken image that slips through could still end FAILED after an order was opened. Checking first gives a
named failure (`EmptySourceImage`, `NotAnImage`, `TruncatedImage`, `UnsupportedFormat`, `ImageTooLarge`) that
costs nothing. The source is streamed to a temporary file: never several copies of a big image in memory.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import dagster as dg
from PIL import Image, UnidentifiedImageError

from retouch_pipeline.assets.common import (
    PartitionFailure,
    WorkItem,
    collection_tags,
    preview_markdown,
    thumbnail_data_uri,
)
from retouch_pipeline.autoretouch import AutoRetouchClient, InvalidImageError, sha256_file
from retouch_pipeline.resources import CatalogResource

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}
CHUNK = 1024 * 1024


def validate_image(path: str, max_side: int) -> tuple[str, int, int, str]:
    """(format, width, height, preview data URI) of a decodable image the API accepts; else PartitionFailure.

    The size check happens on the header, before pixels are decoded (no decompression bomb is allocated).
    """
    if os.path.getsize(path) == 0:
        raise PartitionFailure("validate", "EmptySourceImage: the source object has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                fmt = probe.format or "unknown"
                width, height = probe.size
                if fmt not in ACCEPTED_FORMATS:
                    raise PartitionFailure(
                        "validate",
                        f"UnsupportedFormat: {fmt} (accepted: {', '.join(sorted(ACCEPTED_FORMATS))})",
                    )
                if getattr(probe, "is_animated", False):  # only the first frame would be retouched
                    raise PartitionFailure(
                        "validate", f"AnimatedImage: {fmt} with {getattr(probe, 'n_frames', '?')} frames"
                    )
                if max(width, height) > max_side:
                    raise PartitionFailure(
                        "validate", f"ImageTooLarge: {width}x{height} exceeds {max_side} px on a side"
                    )
                probe.verify()  # structure and checksums
            with Image.open(path) as image:
                # Decodes every byte of the stream (a JPEG at reduced scale: see thumbnail_data_uri), which
                # catches truncated data that verify() lets through; no full-size copy for the thumbnail.
                preview = thumbnail_data_uri(image)
    except PartitionFailure:
        raise
    except UnidentifiedImageError as exc:
        raise PartitionFailure("validate", "NotAnImage: the bytes are not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise PartitionFailure("validate", f"TruncatedImage: cannot decode ({exc})") from exc
    return fmt, width, height, preview


def prepare_and_upload(
    item: WorkItem, s3: Any, catalog: CatalogResource, client: AutoRetouchClient, upload: bool
) -> None:
    """Fill `item` with the source facts; upload unless `upload` is False. Failures land in `item.failure`."""
    tmp = tempfile.NamedTemporaryFile(prefix="retouch-src-", delete=False)  # noqa: SIM115
    try:
        try:
            response = s3.get_object(Bucket=catalog.source_bucket, Key=item.source_key)
        except s3.exceptions.NoSuchKey as exc:
            raise PartitionFailure(
                "read", f"SourceMissing: s3://{catalog.source_bucket}/{item.source_key}"
            ) from exc
        size = int(response.get("ContentLength") or 0)
        if size > catalog.max_image_bytes:
            response["Body"].close()
            raise PartitionFailure(
                "validate", f"ImageTooLarge: {size} bytes exceeds {catalog.max_image_bytes} bytes"
            )
        item.source_etag = str(response.get("ETag", "")).strip('"') or None
        with tmp:
            for chunk in response["Body"].iter_chunks(CHUNK):
                tmp.write(chunk)
        item.source_size = os.path.getsize(tmp.name)
        item.input_hash = sha256_file(tmp.name)
        item.input_format, item.width, item.height, item.preview_before = validate_image(
            tmp.name, catalog.max_image_side
        )
        if upload:
            name = item.relative_key.rsplit("/", 1)[-1]
            try:
                result = client.upload_image(
                    tmp.name,
                    filename=name,
                    content_type=ACCEPTED_FORMATS[item.input_format],
                    skip_if_exists=True,
                )
            except InvalidImageError as exc:
                raise PartitionFailure("upload", f"RejectedByAutoRetouch: {exc}") from exc
            item.uploaded = result.uploaded
            if result.content_hash != item.input_hash:
                raise PartitionFailure(
                    "upload", f"HashMismatch: server {result.content_hash} != local {item.input_hash}"
                )
    except PartitionFailure as failure:
        item.failure = failure
    finally:
        tmp.close()
        os.unlink(tmp.name)


def uploaded_event(item: WorkItem, catalog: CatalogResource) -> dg.AssetMaterialization:
    """The per-partition materialization of `uploaded_image`."""
    assert item.input_hash is not None
    return dg.AssetMaterialization(
        asset_key="uploaded_image",
        partition=item.partition_key,
        metadata={
            "source_uri": dg.MetadataValue.url(f"s3://{catalog.source_bucket}/{item.source_key}"),
            "source_etag": item.source_etag or "",
            "collection": item.collection,
            "content_hash": item.input_hash,
            "format": item.input_format or "",
            "width": dg.MetadataValue.int(item.width),
            "height": dg.MetadataValue.int(item.height),
            "bytes": dg.MetadataValue.int(item.source_size),
            "uploaded": item.uploaded,
            "preview": preview_markdown(item.preview_before),
        },
        tags=collection_tags(item.collection),
    )
