"""Deterministic sample product photos: the catalog that `make dev`, the benchmarks and the tests run on.

Each photo is a coloured product silhouette on a light, slightly uneven studio background, so background
removal has visible work to do and the result can be checked (transparent corners, opaque product). The same
name always gives the same bytes, which keeps content hashes (and so upload de-duplication) stable.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

PRODUCTS = ("sneaker", "handbag", "t-shirt", "mug", "watch", "lamp")
PALETTE = ((200, 40, 40), (30, 90, 180), (40, 140, 70), (220, 150, 20), (90, 50, 130), (30, 30, 30))


@dataclass(frozen=True)
class SamplePhoto:
    """One generated photo and where it belongs in the catalog."""

    collection: str
    relative_key: str  # `<collection>/<file name>`, below the source prefix
    data: bytes
    content_type: str


def _draw_product(draw: ImageDraw.ImageDraw, kind: str, w: int, h: int, colour: tuple[int, int, int]) -> None:
    cx, cy = w // 2, h // 2
    if kind == "sneaker":
        draw.ellipse((w * 0.15, h * 0.45, w * 0.85, h * 0.75), fill=colour)
        draw.rectangle((w * 0.2, h * 0.35, w * 0.5, h * 0.6), fill=colour)
        draw.rectangle((w * 0.15, h * 0.7, w * 0.85, h * 0.76), fill=(245, 245, 245), outline=(60, 60, 60))
    elif kind == "handbag":
        draw.rounded_rectangle((w * 0.25, h * 0.4, w * 0.75, h * 0.8), radius=int(w * 0.05), fill=colour)
        draw.arc((w * 0.35, h * 0.2, w * 0.65, h * 0.55), 180, 360, fill=colour, width=max(2, w // 40))
    elif kind == "t-shirt":
        draw.polygon(
            [
                (w * 0.3, h * 0.2),
                (w * 0.7, h * 0.2),
                (w * 0.9, h * 0.35),
                (w * 0.78, h * 0.45),
                (w * 0.72, h * 0.4),
                (w * 0.72, h * 0.85),
                (w * 0.28, h * 0.85),
                (w * 0.28, h * 0.4),
                (w * 0.22, h * 0.45),
                (w * 0.1, h * 0.35),
            ],
            fill=colour,
        )
    elif kind == "mug":
        draw.rectangle((w * 0.3, h * 0.3, w * 0.65, h * 0.8), fill=colour)
        draw.ellipse((w * 0.58, h * 0.4, w * 0.8, h * 0.65), outline=colour, width=max(2, w // 30))
    elif kind == "watch":
        draw.rectangle((cx - w * 0.08, h * 0.1, cx + w * 0.08, h * 0.9), fill=(60, 60, 60))
        draw.ellipse((cx - w * 0.2, cy - w * 0.2, cx + w * 0.2, cy + w * 0.2), fill=colour)
    else:  # lamp
        draw.polygon(
            [(w * 0.3, h * 0.45), (w * 0.7, h * 0.45), (w * 0.6, h * 0.2), (w * 0.4, h * 0.2)], fill=colour
        )
        draw.rectangle((cx - w * 0.02, h * 0.45, cx + w * 0.02, h * 0.8), fill=(80, 80, 80))
        draw.rectangle((w * 0.35, h * 0.8, w * 0.65, h * 0.85), fill=(80, 80, 80))


def product_photo(name: str, width: int = 640, height: int = 480, fmt: str = "JPEG") -> bytes:
    """A product photo whose look is derived from `name` alone, encoded as `fmt` (JPEG, PNG, WEBP, TIFF)."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    base = rng.randint(232, 250)
    background = Image.linear_gradient("L").resize((width, height)).point(lambda v: base + v // 32)
    image = Image.merge("RGB", (background, background, background))
    draw = ImageDraw.Draw(image)
    # The product named in the file name, so `mug-003.jpg` shows a mug; a random one for other names.
    kind = next((p for p in PRODUCTS if p in name), None) or PRODUCTS[rng.randrange(len(PRODUCTS))]
    # A per-name shade of the palette colour keeps every photo's bytes distinct (stable content hashes).
    colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in PALETTE[rng.randrange(len(PALETTE))])
    _draw_product(draw, kind, width, height, (colour[0], colour[1], colour[2]))
    image = image.filter(ImageFilter.SMOOTH)
    out = io.BytesIO()
    save_kwargs: dict[str, object] = {"quality": 90} if fmt.upper() == "JPEG" else {}
    image.save(out, format=fmt.upper(), **save_kwargs)
    return out.getvalue()


def sample_catalog(
    collections: dict[str, int], *, width: int = 640, height: int = 480, fmt: str = "JPEG"
) -> Iterator[SamplePhoto]:
    """Photos for each collection, `count` each, named like a shop would: `<collection>/<product>-NNN.jpg`."""
    extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif"}[fmt.upper()]
    content_type = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}
    for collection, count in collections.items():
        for index in range(count):
            name = f"{collection}/{PRODUCTS[index % len(PRODUCTS)]}-{index:03d}.{extension}"
            yield SamplePhoto(
                collection=collection,
                relative_key=name,
                data=product_photo(name, width, height, fmt),
                content_type=content_type[fmt.upper()],
            )
