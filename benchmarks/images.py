"""Benchmark images: many distinct 1-3 MB JPEGs and a few 20 MB PNGs, generated quickly and deterministically.

Why base images plus a marker segment: encoding 640 noisy photos takes minutes on two cores. A handful of
noisy bases (noise keeps JPEG from compressing them small) is encoded once; each catalog image is a base with
its own JPEG comment (COM) or PNG text chunk inserted, so every file has distinct bytes and so a distinct
content hash (no upload or execution de-duplication between them) while decoding to the base's pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

from PIL import Image

from retouch_devtools.samples import product_photo

# (width, height, noise blend, JPEG quality) -> about 1.0, 1.6, 1.9 and 2.7 MB
JPEG_SHAPES = ((1600, 1200, 0.3, 92), (1800, 1350, 0.3, 95), (2000, 1500, 0.25, 95), (2400, 1800, 0.25, 95))
BASES = 8


@cache
def _jpeg_base(index: int) -> bytes:
    width, height, blend, quality = JPEG_SHAPES[index % len(JPEG_SHAPES)]
    photo = Image.open(io.BytesIO(product_photo(f"base/{index}.png", width, height, "PNG"))).convert("RGB")
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 64) for _ in range(3)])
    out = io.BytesIO()
    Image.blend(photo, noise, blend).save(out, "JPEG", quality=quality)
    return out.getvalue()


def catalog_jpeg(name: str, index: int, version: int = 1) -> bytes:
    """A 1-3 MB JPEG, distinct per (name, version): base `index % BASES` plus a COM segment."""
    base = _jpeg_base(index % BASES)
    text = f"retouch-bench {name} v{version}".encode()
    segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
    return base[:2] + segment + base[2:]  # right after SOI


@cache
def _png_base(side: int) -> bytes:
    noise = Image.merge("RGB", [Image.effect_noise((side, side), 80) for _ in range(3)])
    out = io.BytesIO()
    noise.save(out, "PNG", compress_level=1)
    return out.getvalue()


def large_png(name: str, megabytes: float = 20.0) -> bytes:
    """A PNG of about `megabytes` (incompressible noise), distinct per name: base plus a tEXt chunk."""
    side = int((megabytes * 1_000_000 / 3) ** 0.5)
    base = _png_base(side)
    payload = b"Comment\x00" + f"retouch-bench {name}".encode()
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF)
    return base[:33] + chunk + base[33:]  # after the signature and IHDR


def small_png(name: str) -> bytes:
    """A tiny PNG (the memory baseline's images), distinct per name."""
    return product_photo(name, 64, 48, "PNG")
