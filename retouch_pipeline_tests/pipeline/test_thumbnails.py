"""Thumbnails without a full-size copy: same pictures, same validation, less memory per image in flight."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from retouch_pipeline.processing.failures import TruncatedImage
from retouch_pipeline.processing.thumbnails import (
    THUMBNAIL_SIDE,
    THUMBNAIL_URI_MAX_CHARS,
    _reduce_by_bands,
    bounded_thumbnail,
    thumbnail_data_uri,
    thumbnail_picture,
)
from retouch_pipeline.processing.validate import validate_image


def decode(uri: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth content with an alpha edge (noise alone would hide resampling differences)."""
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.rotate(90), ImageChops.invert(gradient))).convert(mode)
    if "A" in mode:
        alpha = Image.new("L", (width, height), 0)
        alpha.paste(255, (width // 4, height // 5, width * 3 // 4, height * 4 // 5))
        image.putalpha(alpha)
    return image


@pytest.mark.parametrize(("mode", "size", "factor"), [("RGBA", (1031, 777), 5), ("LA", (600, 1100), 7)])
def test_reduce_by_bands_equals_one_reduce(mode: str, size: tuple[int, int], factor: int) -> None:
    image = photo(*size, mode=mode)
    assert ImageChops.difference(_reduce_by_bands(image, factor), image.reduce(factor)).getbbox() is None


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "CMYK", "P"])
def test_thumbnail_matches_pillows_own(mode: str) -> None:
    image = photo(1200, 800, mode="RGB" if mode == "P" else mode)
    if mode == "P":
        image = image.quantize(64)
    expected = image.copy()
    expected.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    thumb = thumbnail_picture(image)
    assert thumb.size == (96, 64)
    assert thumb.mode == {"CMYK": "RGB", "P": "RGB"}.get(mode, mode)
    if mode == "P" or mode == "CMYK":
        expected = expected.convert("RGB")
    # Alpha images: premultiplied box-reduce, then resample (Pillow alone resamples at full size).
    diff = ImageStat.Stat(ImageChops.difference(thumb, expected)).mean
    assert max(diff) < 2.0, diff


def jpeg(progressive: bool) -> bytes:
    buf = io.BytesIO()
    photo(1600, 1200).save(buf, "JPEG", quality=92, progressive=progressive)
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_is_validated_at_reduced_scale_with_the_same_verdicts(tmp_path: Path, progressive: bool) -> None:
    data = jpeg(progressive)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    fmt, width, height, preview = validate_image(str(path), 10_000)
    assert (fmt, width, height, decode(preview).size) == ("JPEG", 1600, 1200, (96, 72))
    for cut in (len(data) // 5, len(data) // 2, len(data) - 200, len(data) - 2):
        path.write_bytes(data[:cut])
        with Image.open(path) as full, pytest.raises(OSError, match="truncated"):
            full.load()  # what a full decode says
        with pytest.raises(TruncatedImage, match="TruncatedImage") as failure:
            validate_image(str(path), 10_000)
        assert failure.value.stage == "validate" and failure.value.permanent


def test_thumbnails_are_webp_within_the_bound_even_for_noise() -> None:
    smooth = thumbnail_data_uri(photo(1200, 800, mode="RGBA"))
    assert smooth.startswith("data:image/webp;base64,") and len(smooth) < THUMBNAIL_URI_MAX_CHARS // 4
    assert decode(smooth).size == (96, 64) and decode(smooth).mode == "RGBA"
    noise = Image.merge("RGBA", [Image.effect_noise((900, 600), 128) for _ in range(4)])
    worst = thumbnail_data_uri(noise)
    assert THUMBNAIL_URI_MAX_CHARS // 2 < len(worst) <= THUMBNAIL_URI_MAX_CHARS
    assert THUMBNAIL_SIDE // 2 < max(decode(worst).size) < THUMBNAIL_SIDE  # lowest quality was not enough


def test_a_recorded_png_thumbnail_is_reencoded_within_the_bound() -> None:
    """Previews recorded before the bound (96-pixel PNGs) are reused by later materializations."""
    picture = Image.merge("RGB", [Image.effect_noise((96, 64), 100) for _ in range(3)])
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    old = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    assert len(old) > THUMBNAIL_URI_MAX_CHARS
    new = bounded_thumbnail(old)
    assert new is not None and len(new) <= THUMBNAIL_URI_MAX_CHARS and decode(new).size == (96, 64)
    assert bounded_thumbnail(new) == new and bounded_thumbnail(None) is None
    assert bounded_thumbnail("data:image/png;base64," + "A" * THUMBNAIL_URI_MAX_CHARS) is None
