"""A catalog of real photographs in the formats, modes and names shops' buckets hold (issue 16).

The pictures are scikit-image's bundled photos (`skimage.data`), only those shipped inside the wheel (no
download at test time). Each case says what the pipeline must do with it: the output key it gets, or the
failure class it is refused with (at 0 credits).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageCms
from skimage import data

ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    key: str
    """Relative source key (below the source prefix)."""
    body: bytes
    refused: str | None = None
    """The failure class it is refused with; None: processed."""
    what: str = ""


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def photo(name: str) -> Image.Image:
    """One of skimage's bundled photos as a Pillow image."""
    return Image.fromarray(getattr(data, name)())


def exif_rotated_chelsea() -> bytes:
    """The cat stored sideways (451x300 stored; EXIF 6: a viewer turns it 90° clockwise to 300x451)."""
    stored = photo("chelsea").transpose(Image.Transpose.ROTATE_90)  # what a phone stores
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _encode(stored, "JPEG", exif=exif.tobytes(), quality=90)


def grey_with_transparent_band() -> Image.Image:
    """The camera man in grey + alpha: the left quarter fully transparent, the rest opaque."""
    grey = photo("camera")
    alpha = Image.new("L", grey.size, 255)
    alpha.paste(0, (0, 0, grey.width // 4, grey.height))
    image = Image.merge("LA", (grey, alpha))
    return image


def sixteen_bit_grey() -> bytes:
    """The camera man as a 16-bit grey PNG (mode I;16), the case refused before issue 16."""
    values = np.asarray(photo("camera"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(values), "PNG")  # uint16 -> I;16


def cmyk_with_icc() -> bytes:
    """Coffee as a CMYK JPEG with an embedded ICC profile (an sRGB one: no CMYK profile ships here)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _encode(photo("coffee").convert("CMYK"), "JPEG", icc_profile=profile, quality=90)


def animated_gif() -> bytes:
    frames = [photo("coffee").resize((60, 40)).rotate(a).convert("P") for a in (0, 90, 180)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def multipage_tiff() -> bytes:
    pages = [photo("astronaut").resize((64, 64)), photo("coffee").resize((64, 64))]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def float_tiff() -> bytes:
    values = np.asarray(photo("camera"), dtype=np.float32) / 255.0
    return _encode(Image.fromarray(values), "TIFF")  # float32 -> F


def cases() -> list[Case]:
    """The catalog: processed cases first, then the refusals."""
    astronaut, coffee = photo("astronaut"), photo("coffee")
    return [
        Case("real/pair.jpg", _encode(astronaut, "JPEG", quality=90), what="same stem as pair.png"),
        Case("real/pair.png", _encode(coffee, "PNG"), what="same stem as pair.jpg"),
        Case("real/coffee.webp", _encode(coffee.resize((300, 200)), "WEBP"), what="WebP"),
        Case("real/chelsea-exif6.jpg", exif_rotated_chelsea(), what="EXIF orientation 6"),
        Case("real/camera-16bit.png", sixteen_bit_grey(), what="16-bit grey PNG (I;16)"),
        Case("real/camera-1bit.png", _encode(photo("camera").convert("1"), "PNG"), what="1-bit PNG"),
        Case("real/camera-la.png", _encode(grey_with_transparent_band(), "PNG"), what="grey + alpha (LA)"),
        Case("real/coffee-cmyk.jpg", cmyk_with_icc(), what="CMYK JPEG with ICC profile"),
        Case("real/rocket.gif", _encode(photo("rocket").convert("P"), "GIF"), what="static GIF"),
        Case("real/chelsea.bmp", _encode(photo("chelsea"), "BMP"), what="BMP"),
        Case("real/astronaut.avif", _encode(astronaut.resize((256, 256)), "AVIF"), what="AVIF"),
        Case("real/spinning.gif", animated_gif(), "AnimatedImage", "animated GIF, 3 frames"),
        Case("real/two-pages.tif", multipage_tiff(), "AnimatedImage", "2-page TIFF"),
        Case("real/camera-float.tif", float_tiff(), "UnsupportedMode", "32-bit float TIFF (F)"),
        Case("real/empty.jpg", b"", "EmptySourceImage", "0 bytes"),
        Case("real/notes.txt", b"product notes, not a picture\n" * 10, "NotAnImage", "text"),
    ]
