"""The small "before" and "after" pictures a person sees for each image, made without a full-size copy.

Why bounded: every materialization of the three catalog assets carries its preview inline (a `data:` URI in
markdown metadata, which the Dagster UI renders without any other service), so the previews are a fixed cost
per image in the event log, i.e. in the instance database. They are lossy WebP (Chromium, Firefox and Safari
render it; alpha kept) of at most `THUMBNAIL_SIDE` pixels: the quality is lowered step by step, then the side
shrunk by a quarter, until one data URI fits `THUMBNAIL_URI_MAX_CHARS`, so a before/after pair and its
markdown table stay under `PREVIEW_METADATA_MAX_BYTES` per materialization. Full previews in S3 were
considered and not taken: the UI shows 96-pixel pictures, which fit inline; an S3 link would not render.
docs/performance.md has the event-log bytes per image before and after.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

THUMBNAIL_SIDE = 96
PREVIEW_METADATA_MAX_BYTES = 8192
"""The bound on one materialization's preview metadata (the markdown with every thumbnail in it)."""
THUMBNAIL_URI_MAX_CHARS = 4000
"""One thumbnail's data URI: two of them plus the table's markup stay under PREVIEW_METADATA_MAX_BYTES."""
_QUALITIES = (80, 60, 40, 20, 5)
WEBP_METHOD = 4
"""libwebp's effort (0-6; 4 is its default). Not 6: on a result with alpha (background removed) method 6
cost ~9 x the CPU of 4 for a thumbnail 2 % smaller: the largest CPU cost of a delivery (performance.md)."""
THUMBNAIL_REDUCING_GAP = 2.0  # Pillow's default: box-reduce to >= 2x the side, then resample
_BAND_ROWS = 256


def thumbnail_data_uri(image: Image.Image) -> str:
    """A small WebP of `image` as a `data:` URI of at most THUMBNAIL_URI_MAX_CHARS (markdown metadata)."""
    return encoded_thumbnail(thumbnail_picture(image))


def thumbnail_picture(image: Image.Image) -> Image.Image:
    """`image` at most THUMBNAIL_SIDE pixels wide and high, 8-bit RGB(A)/L(A), upright, not encoded yet.

    Consumes `image` (every caller decodes an image for this and drops it right after): it may be shrunk in
    place, and no full-size copy is made. An image not loaded yet is decoded here, a JPEG at a reduced DCT
    scale (`Image.draft`, 1/2 to 1/8): that still entropy-decodes the whole stream, so truncated or corrupt
    data raises exactly as a full decode does (validation relies on the errors propagating).

    The picture is what a viewer shows: turned upright by its EXIF orientation (after shrinking: the turn
    costs nothing at thumbnail size), and 16-bit samples scaled to 8 (`reduce` and `thumbnail` have no
    16-bit mode; the image itself is not at fault).
    """
    orientation = upright_orientation(image)
    draft_side = int(THUMBNAIL_SIDE * THUMBNAIL_REDUCING_GAP)
    image.draft(None, (draft_side, draft_side))  # no-op unless a JPEG not loaded yet
    image.load()
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_eight_bits(image)
    factor = int(max(image.size) / draft_side)
    if factor > 1 and image.mode in ("RGBA", "LA"):
        image = _reduce_by_bands(image, factor)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), reducing_gap=THUMBNAIL_REDUCING_GAP)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if orientation in _TRANSPOSES:
        image = image.transpose(_TRANSPOSES[orientation])
    return image


def encoded_thumbnail(picture: Image.Image) -> str:
    """`picture` as the best-quality WebP data URI that fits THUMBNAIL_URI_MAX_CHARS (smaller if need be)."""
    while True:
        for quality in _QUALITIES:
            buf = io.BytesIO()
            picture.save(buf, "WEBP", quality=quality, method=WEBP_METHOD)
            uri = "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            if len(uri) <= THUMBNAIL_URI_MAX_CHARS:
                return uri
        # noise does not compress: fewer pixels (a 1-pixel WebP is a few dozen bytes, so this ends)
        size = (max(1, picture.width * 3 // 4), max(1, picture.height * 3 // 4))
        picture = picture.resize(size, Image.Resampling.BOX)


def bounded_thumbnail(uri: str | None) -> str | None:
    """A recorded thumbnail data URI within THUMBNAIL_URI_MAX_CHARS: as it is, or re-encoded when larger (a
    PNG preview recorded before the bound, reused by a later materialization); None when it cannot be read."""
    if uri is None or len(uri) <= THUMBNAIL_URI_MAX_CHARS:
        return uri
    try:
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
            return thumbnail_data_uri(image)
    except Exception:  # a preview is a convenience: an unreadable one is left out
        return None


_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or unreadable)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block does not make the picture wrong
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image: swapped when the EXIF orientation turns it by 90°."""
    width, height = image.size
    return (height, width) if upright_orientation(image) in (5, 6, 7, 8) else (width, height)


def _to_eight_bits(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float samples as 8-bit grey (a preview: the top 8 bits of a 16-bit sample)."""
    if image.mode == "F":
        return image.convert("L")
    as_int = image if image.mode == "I" else image.convert("I")
    return as_int.point(lambda v: v / 256).convert("L")


def _reduce_by_bands(image: Image.Image, factor: int) -> Image.Image:
    """`image.reduce(factor)` computed a band of rows at a time, for images with alpha.

    Why: Pillow premultiplies an RGBA/LA image at full size before reducing or resizing it (one more
    full-size buffer; `thumbnail` does the same and skips the reduce). Per band that buffer is band-sized.
    Bands hold whole `factor`-row blocks, so the pixels are those of one `image.reduce(factor)`.
    """
    width, height = image.size
    reduced = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, _BAND_ROWS // factor)
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        reduced.paste(band.reduce(factor), (0, top // factor))
    return reduced


def thumbnail_of_source(s3: S3Client, bucket: str, key: str, max_bytes: int) -> str | None:
    """Last resort for a delivery without a recorded thumbnail: one GET of the source (None on any error)."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if int(head.get("ContentLength") or 0) > max_bytes:
            return None
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            return thumbnail_data_uri(image)
    except Exception:  # a preview is a convenience: never fail the download for it
        return None
