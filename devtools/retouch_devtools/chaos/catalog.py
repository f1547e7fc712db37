"""The catalogs the harness loads: a mixed good catalog and the bad-input set with what each must become.

Good catalog: several collections, four formats (JPEG, PNG, WebP, TIFF) and sizes from thumbnails to a few
hundred pixels, all deterministic (`samples.product_photo`), so content hashes and therefore the expected
charges are reproducible. Sizes stay small on purpose: the harness proves behaviour under faults, the
benchmarks (`benchmarks/`) measure throughput.

Bad inputs: each entry names the outcome it must reach. `ok` means "processed" (the formats the pipeline
converts rather than rejects: CMYK JPEG, 16-bit PNG, EXIF-rotated photos, odd S3 keys); anything else is
the name that must appear in the partition's recorded failure (and no credit may be spent on it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from retouch_devtools.samples import product_photo

COLLECTIONS = ("spring-2026", "summer-2026", "outlet", "accessories")
FORMATS = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"))
SIZES = ((96, 72), (160, 120), (240, 180), (320, 240), (200, 300))


ODD_KEYS_UNSTORABLE_IN_MOTO = ("odd keys/new\nline.jpg", "odd keys/../../../escape.jpg", "../../x.jpg")


@dataclass(frozen=True)
class SourceImage:
    """One object to put under the source prefix and the outcome it must reach."""

    relative_key: str
    data: bytes
    expect: str = "ok"
    """"ok" (processed), "junk" (never a partition), or the failure name its partition must record."""
    check: Callable[[Image.Image], str | None] | None = None
    """Extra check of the decoded output: None if fine, else what is wrong."""


def good_catalog(count: int, tag: str = "") -> list[SourceImage]:
    """`count` distinct images spread over the collections, formats and sizes."""
    out = []
    for index in range(count):
        collection = COLLECTIONS[index % len(COLLECTIONS)]
        fmt, ext = FORMATS[(index // len(COLLECTIONS)) % len(FORMATS)]
        width, height = SIZES[index % len(SIZES)]
        key = f"{collection}/item-{index:04d}{tag}.{ext}"
        out.append(SourceImage(key, product_photo(key, width, height, fmt)))
    return out


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    """Stored 240x120 (landscape) with Orientation=6: displayed upright it is 120x240 (portrait)."""
    image = Image.open(io.BytesIO(product_photo("exif", 240, 120, "JPEG")))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", exif=exif.tobytes())


def _upright(image: Image.Image) -> str | None:
    return None if image.height > image.width else f"result is {image.width}x{image.height}, not portrait"


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def bad_inputs() -> list[SourceImage]:
    """The issue's bad-input set; the decisions (converted or rejected) are in docs/reliability.md.

    Keys with a newline or `../` segments are not here: moto's server answers 404 to such a PUT (real S3
    stores them). `ODD_KEYS_UNSTORABLE_IN_MOTO` goes through the key mapping in the tests instead.
    """
    jpeg = product_photo("bad/base", 200, 150, "JPEG")
    rgb = Image.open(io.BytesIO(jpeg)).convert("RGB")
    sixteen = Image.new("I;16", (160, 120))
    sixteen.paste(40000, (40, 30, 120, 90))
    return [
        SourceImage("bad/zero-byte.jpg", b"", "EmptySourceImage"),
        SourceImage("bad/truncated.jpg", jpeg[: len(jpeg) // 2], "TruncatedImage"),
        SourceImage("bad/not-an-image.png", b"hello, this is text\n" * 40, "NotAnImage"),
        SourceImage(
            "bad/brochure.pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "NotAnImage"
        ),
        SourceImage("bad/.DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 64, "junk"),
        SourceImage("bad/too-wide.png", _encode(Image.new("RGB", (10_001, 4)), "PNG"), "ImageTooLarge"),
        SourceImage("bad/animated.gif", _animated("GIF"), "AnimatedImage"),
        SourceImage("bad/animated.webp", _animated("WEBP"), "AnimatedImage"),
        SourceImage("bad/cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        SourceImage("bad/sixteen-bit.png", _encode(sixteen, "PNG")),
        SourceImage("bad/exif-rotated.jpg", _exif_rotated(), check=_upright),
        SourceImage("odd keys/with space.jpg", product_photo("k1", 120, 90, "JPEG")),
        SourceImage("odd keys/ünïcödé-日本.jpg", product_photo("k2", 120, 90, "JPEG")),
        SourceImage("odd keys/dots...in...name.jpg", product_photo("k3", 120, 90, "JPEG")),
        SourceImage("odd keys/100%cotton.jpg", product_photo("k4", 120, 90, "JPEG")),
        SourceImage("odd keys/a+b=c.jpg", product_photo("k5", 120, 90, "JPEG")),
        SourceImage("odd keys/.../.../up.jpg", product_photo("k7", 120, 90, "JPEG")),
    ]
