"""Stage 1a, validate: read the source from S3 into a temporary file, hash it, check it decodes and fits.

Why validate before anything is sent: AutoRetouch answers 422 for broken input, but only after the image went
over the wire, and a broken image that slips through could still end FAILED after an order was opened.
Checking first gives a named failure (`failures.InvalidImage` and its kinds) that costs nothing. The source is
streamed to a temporary file: never several copies of a big image in memory.

"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

from retouch_pipeline.autoretouch import sha256_file
from retouch_pipeline.catalog.keys import collection_of, s3_key_from_partition_key
from retouch_pipeline.processing.failures import (
    AnimatedImage,
    EmptySourceImage,
    Failure,
    ImageTooLarge,
    InvalidPartitionKey,
    NotAnImage,
    SourceMissing,
    TruncatedImage,
    UnsupportedFormat,
)
from retouch_pipeline.processing.item import ImageFacts, State, WorkItem
from retouch_pipeline.processing.step import CatalogLayout, Step
from retouch_pipeline.processing.thumbnails import thumbnail_data_uri

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}
CHUNK = 1024 * 1024


def new_item(partition_key: str, catalog: CatalogLayout) -> WorkItem:
    """The work item of a partition; a key that names no S3 object fails here."""
    try:
        relative = s3_key_from_partition_key(partition_key)
    except ValueError as exc:
        item = WorkItem(partition_key, "", "", "")
        item.fail(InvalidPartitionKey(str(exc)))
        return item
    return WorkItem(partition_key, relative, collection_of(relative), catalog.source_key(relative))


@contextmanager
def source_file(step: Step, item: WorkItem) -> Iterator[str]:
    """The source streamed to a temporary file (deleted afterwards); sets the item's ETag and hash."""
    bucket = step.catalog.source_bucket
    tmp = tempfile.NamedTemporaryFile(prefix="retouch-src-", delete=False)  # noqa: SIM115
    try:
        try:
            response = step.s3.get_object(Bucket=bucket, Key=item.source_key)
        except step.s3.exceptions.NoSuchKey as exc:
            raise SourceMissing(f"s3://{bucket}/{item.source_key}") from exc
        size = int(response.get("ContentLength") or 0)
        if size > step.catalog.max_image_bytes:
            response["Body"].close()
            raise ImageTooLarge(f"{size} bytes exceeds {step.catalog.max_image_bytes} bytes")
        item.source_etag = str(response.get("ETag", "")).strip('"') or None
        with tmp:
            for chunk in response["Body"].iter_chunks(CHUNK):
                tmp.write(chunk)
        item.content_hash = sha256_file(tmp.name)
        yield tmp.name
    finally:
        tmp.close()
        os.unlink(tmp.name)


def validate(step: Step, item: WorkItem, path: str) -> None:
    """Check the file at `path` is an image AutoRetouch accepts; the item becomes VALIDATED."""
    fmt, width, height, preview = validate_image(path, step.catalog.max_image_side)
    item.image = ImageFacts(fmt, width, height, os.path.getsize(path))
    item.preview_before = preview
    item.advance(State.VALIDATED)


def validate_image(path: str, max_side: int) -> tuple[str, int, int, str]:
    """(format, width, height, preview data URI) of a decodable image the API accepts; else an InvalidImage.

    The size check happens on the header, before pixels are decoded (no decompression bomb is allocated).
    """
    if os.path.getsize(path) == 0:
        raise EmptySourceImage("the source object has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fmt, width, height = _probe(path, max_side)
            with Image.open(path) as image:
                # Decodes every byte of the stream (a JPEG at reduced scale: see thumbnail_data_uri), which
                # catches truncated data that verify() lets through; no full-size copy for the thumbnail.
                preview = thumbnail_data_uri(image)
    except Failure:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImage("the bytes are not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise TruncatedImage(f"cannot decode ({exc})") from exc
    return fmt, width, height, preview


def _probe(path: str, max_side: int) -> tuple[str, int, int]:
    """Format and size from the header, then the structure and checksums (`verify`)."""
    with Image.open(path) as probe:
        fmt = probe.format or "unknown"
        width, height = probe.size
        if fmt not in ACCEPTED_FORMATS:
            raise UnsupportedFormat(f"{fmt} (accepted: {', '.join(sorted(ACCEPTED_FORMATS))})")
        if getattr(probe, "is_animated", False):  # only the first frame would be retouched
            raise AnimatedImage(f"{fmt} with {getattr(probe, 'n_frames', '?')} frames")
        if max(width, height) > max_side:
            raise ImageTooLarge(f"{width}x{height} exceeds {max_side} px on a side")
        probe.verify()  # structure and checksums
    return fmt, width, height
