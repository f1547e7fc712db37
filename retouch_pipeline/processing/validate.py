"""Stage 1a, validate: read the source from S3 into a temporary file, hash it, check it decodes and fits.

Why validate before anything is sent: AutoRetouch answers 422 for broken input, but only after the image went
over the wire, and a broken image that slips through could still end FAILED after an order was opened.
Checking first gives a named failure (`failures.InvalidImage` and its kinds) that costs nothing. The source is
streamed to a temporary file: never several copies of a big image in memory.

What is processed (decision, issue 16): AutoRetouch's own formats (JPEG, PNG, TIFF, WebP) are uploaded as they
are, in every pixel mode Pillow decodes them to (1-bit, grey, grey+alpha, palette, RGB(A), CMYK with its ICC
profile, 16-bit); a single-frame image in a format Pillow decodes losslessly but AutoRetouch does not take
(GIF, BMP, and AVIF/HEIF where Pillow has the codec) is converted to PNG first and the sidecar says so.
Refused, at 0 credits: animated or multi-page files (only one frame would be retouched; the frame count is
named) and 32-bit integer or floating-point samples (no defined black and white point: not a photograph).
Width and height are the upright ones (EXIF orientation), as a viewer and AutoRetouch's result show them.
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
    SourceBucketUnusable,
    SourceMissing,
    TruncatedImage,
    UnsupportedFormat,
    UnsupportedMode,
    bucket_problem,
)
from retouch_pipeline.processing.item import ImageFacts, State, WorkItem
from retouch_pipeline.processing.step import CatalogLayout, Step
from retouch_pipeline.processing.thumbnails import thumbnail_data_uri, upright_size

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}
"""Uploaded as they are (AutoRetouch's documented input formats)."""
CONVERTED_FORMATS = frozenset({"GIF", "BMP", "DIB", "AVIF", "HEIF"})
"""Converted to PNG before upload when Pillow can open them (AVIF/HEIF need the codec or a plugin)."""
REFUSED_MODES = {
    "I": "32-bit integer samples (mode I)",
    "F": "32-bit floating-point samples (mode F)",
}
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
        except Exception as exc:
            problem = bucket_problem(exc, bucket, "reading the sources")
            if problem is None:
                raise
            raise SourceBucketUnusable(problem) from exc
        item.source_etag = str(response.get("ETag", "")).strip('"') or None  # a refusal is settled at it
        size = int(response.get("ContentLength") or 0)
        if size > step.catalog.max_image_bytes:
            response["Body"].close()
            raise ImageTooLarge(f"{size} bytes exceeds {step.catalog.max_image_bytes} bytes")
        with tmp:
            for chunk in response["Body"].iter_chunks(CHUNK):
                tmp.write(chunk)
        item.content_hash = sha256_file(tmp.name)
        yield tmp.name
    finally:
        tmp.close()
        for leftover in (tmp.name, converted_path(tmp.name)):
            if os.path.exists(leftover):
                os.unlink(leftover)


def converted_path(path: str) -> str:
    """Where the PNG conversion of the source at `path` is written (deleted with the source's file)."""
    return path + ".png"


def validate(step: Step, item: WorkItem, path: str) -> str:
    """Check the file at `path` is an image AutoRetouch accepts; the item becomes VALIDATED.

    Returns the file to upload: `path` itself, or its PNG conversion (then the content hash, which the
    idempotency key derives from, is that of the PNG actually sent).
    """
    fmt, width, height, preview = validate_image(path, step.catalog.max_image_side)
    upload_path = path
    if fmt not in ACCEPTED_FORMATS:
        upload_path = convert_to_png(path, converted_path(path))
        item.converted_from, fmt = fmt, "PNG"
        item.content_hash = sha256_file(upload_path)
    item.image = ImageFacts(fmt, width, height, os.path.getsize(upload_path))
    item.preview_before = preview
    item.advance(State.VALIDATED)
    return upload_path


def convert_to_png(path: str, target: str) -> str:
    """The single frame at `path` as a lossless PNG at `target` (palette, transparency and EXIF kept)."""
    with Image.open(path) as opened:
        exif = opened.getexif()
        options: dict[str, object] = {"exif": exif} if len(exif) else {}
        image: Image.Image = opened
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(target, "PNG", **options)
    return target


def validate_image(path: str, max_side: int) -> tuple[str, int, int, str]:
    """(format, width, height, preview data URI) of a decodable image the API accepts; else an InvalidImage.

    The size check happens on the header, before pixels are decoded (no decompression bomb is allocated).
    """
    if os.path.getsize(path) == 0:
        raise EmptySourceImage("the source object has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fmt = _probe(path, max_side)
            with Image.open(path) as image:
                width, height = upright_size(image)  # PNG: reads the chunks, so after verify()
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


def _probe(path: str, max_side: int) -> str:
    """Format, frames, mode and size from the header, then the structure and checksums (`verify`)."""
    with Image.open(path) as probe:
        fmt = probe.format or "unknown"
        width, height = probe.size
        if fmt not in ACCEPTED_FORMATS and fmt not in CONVERTED_FORMATS:
            accepted = ", ".join(sorted({*ACCEPTED_FORMATS, *CONVERTED_FORMATS}))
            raise UnsupportedFormat(f"{fmt} (accepted: {accepted})")
        frames = int(getattr(probe, "n_frames", 1) or 1)
        if frames > 1:  # only the first frame would be retouched
            raise AnimatedImage(
                f"{fmt} with {frames} frames (animated or multi-page): only one frame would be retouched; "
                "upload each frame as an image of its own"
            )
        if probe.mode in REFUSED_MODES:
            raise UnsupportedMode(
                f"{REFUSED_MODES[probe.mode]} have no defined black and white point: export the image with "
                "8 or 16 bits per channel"
            )
        if max(width, height) > max_side:
            raise ImageTooLarge(f"{width}x{height} exceeds {max_side} px on a side")
        probe.verify()  # structure and checksums
    return fmt
