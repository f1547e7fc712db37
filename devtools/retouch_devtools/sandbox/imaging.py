"""Real image work with Pillow: input validation, background removal and export.

The sandbox does not fake results: inputs are decoded (so corrupt files are rejected like the
real service does with 422) and outputs are real images whose format, mode and transparency
follow the workflow's export component, so downstream code can be tested on actual pixels.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat

ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}
MAX_INPUT_SIDE = 10_000
"""Inputs wider or taller than this are rejected (checked from the header, before decoding)."""
MAX_WORKING_SIDE = 4_096
"""Inputs larger than this are scaled down before processing."""

EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
}


class ImageRejected(ValueError):
    """The bytes are not an image the service accepts (answered 422 "Image cannot be processed")."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes
    content_type: str
    file_name: str


def inspect_image(path: Path) -> ImageInfo:
    """Validate an input fully: accepted format, size within limits, and decodable to the end.

    The size check happens on the header only, so a decompression bomb is refused before any
    pixel is allocated.
    """
    try:
        with Image.open(path, formats=list(ACCEPTED_FORMATS)) as img:
            fmt = img.format or ""
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected(f"unsupported format {fmt!r}")
            width, height = img.size
            if width < 1 or height < 1 or width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE:
                raise ImageRejected(f"image size {width}x{height} outside the accepted range")
            img.load()
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected(str(exc)) from exc
    return ImageInfo(fmt, ACCEPTED_FORMATS[fmt], width, height)


def result_file_name(input_name: str, extension: str) -> str:
    """Keep the input's stem, use the output's extension ("shoe.final.jpeg" -> "shoe.final.png")."""
    base = posixpath.basename(input_name.replace("\\", "/")) or "image"
    stem, _ = posixpath.splitext(base)
    return f"{stem or base}{extension}"


def _normalise(img: Image.Image, max_side: int = MAX_WORKING_SIDE) -> Image.Image:
    """Upright (EXIF orientation applied), 8-bit RGB/RGBA, at most `max_side` px."""
    if img.format == "JPEG" and max(img.size) > max_side:
        img.draft("RGB", (max_side, max_side))  # DCT scaling: a large JPEG is decoded at 1/2..1/8 cost
    upright = ImageOps.exif_transpose(img)
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    if upright.mode.startswith("I"):
        upright = upright.point(lambda v: v / 256).convert("L")
    work = upright.convert("RGBA" if has_alpha else "RGB")
    if max(work.size) > max_side:
        work.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return work


def remove_background(img: Image.Image) -> Image.Image:
    """Make a light, near-uniform background transparent, with a soft edge.

    The background colour is the median of a border strip. Pixels close to it get alpha 0,
    pixels far from it stay opaque, in between alpha ramps linearly. A dark or busy border means
    there is no such background: the image is returned opaque rather than damaged.
    """
    rgb = img.convert("RGB")
    width, height = rgb.size
    strip = max(1, min(width, height) // 50)
    border = Image.new("L", rgb.size, 255)
    if width > 2 * strip and height > 2 * strip:
        border.paste(0, (strip, strip, width - strip, height - strip))
    stat = ImageStat.Stat(rgb, border)
    background = tuple(int(v) for v in stat.median)
    spread = max(stat.stddev)
    alpha_src = img.getchannel("A") if img.mode == "RGBA" else None
    out = rgb.convert("RGBA")
    if min(background) < 150 or spread > 40:
        if alpha_src is not None:
            out.putalpha(alpha_src)
        return out
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, background))
    red, green, blue = diff.split()
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    low = int(max(12.0, 3.0 * spread))
    high = low + 24
    lut = [0 if v <= low else 255 if v >= high else (v - low) * 255 // (high - low) for v in range(256)]
    alpha = distance.point(lut).filter(ImageFilter.MedianFilter(3))
    if alpha_src is not None:
        alpha = ImageChops.multiply(alpha, alpha_src)
    out.putalpha(alpha)
    return out


def export(img: Image.Image, target_format: str, target_mode: str) -> tuple[bytes, str, str]:
    """Encode per the export component; returns (bytes, content type, extension)."""
    fmt = target_format.upper() if target_format.upper() in EXPORT_FORMATS else "PNG"
    mode = "RGB" if fmt == "JPEG" or target_mode.upper() == "RGB" else "RGBA"
    if mode == "RGB" and img.mode == "RGBA":
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        img = flat
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, "PNG", compress_level=3)
    elif fmt == "JPEG":
        img.save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "WEBP", quality=90)
    content_type, extension = EXPORT_FORMATS[fmt]
    return buf.getvalue(), content_type, extension


def process(
    path: Path,
    input_name: str,
    *,
    background_removal: bool,
    target_format: str,
    target_mode: str,
    max_side: int | None = None,
) -> ProcessedImage:
    """Run one execution's image work on the stored input at `path`.

    `max_side` caps the working (and so the result's) size below MAX_WORKING_SIDE: benchmarks use it so
    the sandbox's own Pillow work on hundreds of multi-megabyte inputs does not take the CPU from the
    pipeline being measured (the service's time is modelled by `processing_seconds`, not by this work).
    """
    side = MAX_WORKING_SIDE if max_side is None else max(1, min(max_side, MAX_WORKING_SIDE))
    try:
        with Image.open(path, formats=list(ACCEPTED_FORMATS)) as img:
            work = _normalise(img, side)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected(str(exc)) from exc
    if background_removal:
        work = remove_background(work)
    data, content_type, extension = export(work, target_format, target_mode)
    return ProcessedImage(data, content_type, result_file_name(input_name, extension))
