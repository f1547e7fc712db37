"""Real pixels: validation (422), background removal, EXIF orientation, scaling, export formats."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from retouch_devtools.sandbox import SandboxConfig, SandboxServer, imaging
from retouch_devtools.sandbox.catalog import WORKFLOWS


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (what a decompression bomb looks like)."""
    ihdr = png[12:29]
    patched = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return png[:12] + patched + struct.pack(">I", zlib.crc32(patched)) + png[33:]


def test_background_removal_makes_corners_transparent(api: Any, make_image: Any) -> None:
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        data = make_image(width=90, height=60, format=fmt)
        name = f"product.{fmt.lower()}"
        done = api.wait(api.create(api.upload(data, name=name), "Background Removal", name=name))
        assert done["resultFileName"] == "product.png"
        img = decode(api.get(f"/v1{done['resultPath']}").content)
        assert img.format == "PNG" and img.mode == "RGBA" and img.size == (90, 60)
        alpha = img.getchannel("A")
        for corner in ((0, 0), (89, 0), (0, 59), (89, 59)):
            assert alpha.getpixel(corner) == 0, (fmt, corner)
        assert alpha.getpixel((45, 30)) == 255, fmt
        r, g, b, _ = img.getpixel((45, 30))
        assert r > 120 and g < 90 and b < 90  # the product keeps its colour


def test_dark_background_is_left_opaque(api: Any, make_image: Any) -> None:
    data = make_image(background=(20, 20, 20), product=(240, 240, 240))
    done = api.wait(api.create(api.upload(data), "Background Removal"))
    img = decode(api.get(f"/v1{done['resultPath']}").content)
    assert img.getchannel("A").getextrema() == (255, 255)


def test_exif_orientation_gives_an_upright_result(api: Any) -> None:
    """Stored 60x40 with a marker top-left; Orientation 6 means "rotate 90 degrees clockwise"."""
    stored = Image.new("RGB", (60, 40), (240, 240, 240))
    stored.paste((10, 10, 10), (0, 0, 12, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    done = api.wait(
        api.create(api.upload(buf.getvalue(), "rotated.jpg", "image/jpeg"), "Export Only", "rotated.jpg")
    )
    assert done["resultFileName"] == "rotated.jpg" and done["resultContentType"] == "image/jpeg"
    img = decode(api.get(f"/v1{done['resultPath']}").content)
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size == (40, 60)
    assert sum(img.getpixel((37, 2))) < 150  # marker now top-right
    assert sum(img.getpixel((2, 2))) > 600
    assert img.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize(
    "case",
    ["text", "gif", "truncated", "too_wide", "bomb_header", "empty"],
)
def test_invalid_inputs_are_422(api: Any, make_image: Any, case: str) -> None:
    png = make_image()
    data = {
        "text": b"definitely not an image",
        "gif": _gif(),
        "truncated": make_image(width=200, height=200, format="JPEG")[:400],
        "too_wide": make_image(width=10_001, height=1),
        "bomb_header": with_ihdr_size(png, 50_000, 50_000),
        "empty": b"",
    }[case]
    resp = api.post("/v1/upload", files={"file": ("x.png", data, "image/png")})
    assert resp.status_code == 422, case
    assert resp.json()["message"] == "Image cannot be processed"
    wf = api.workflow_id("Export Only")
    direct = api.post(
        f"/v1/workflow/execution/create?workflow={wf}", files={"file": ("x.png", data, "image/png")}
    )
    assert direct.status_code == 422
    assert api.get("/v1/workflow/execution").json()["total"] == 0


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


def test_largest_accepted_side(make_image: Any, tmp_path: Path) -> None:
    path = tmp_path / "edge.png"
    path.write_bytes(make_image(width=10_000, height=2, mode="L", background=(250,), product=(10,)))
    assert imaging.inspect_image(path).width == 10_000


def test_scaled_down_above_4096(make_image: Any, tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    path.write_bytes(make_image(width=5000, height=50, format="JPEG"))
    out = imaging.process(path, "wide.jpg", background_removal=True, target_format="PNG", target_mode="RGBA")
    assert decode(out.data).size == (4096, 41)


def test_working_size_cap_for_benchmarks(make_image: Any, tmp_path: Path) -> None:
    """`image_work_max_side`: a real, background-removed result, only smaller; None keeps the full size."""
    path = tmp_path / "big.jpg"
    path.write_bytes(make_image(width=1200, height=800, format="JPEG"))
    capped = imaging.process(
        path, "big.jpg", background_removal=True, target_format="PNG", target_mode="RGBA", max_side=300
    )
    img = decode(capped.data)
    assert img.size == (300, 200) and img.mode == "RGBA"
    assert img.getchannel("A").getpixel((0, 0)) == 0 and img.getchannel("A").getpixel((150, 100)) == 255
    full = imaging.process(path, "big.jpg", background_removal=True, target_format="PNG", target_mode="RGBA")
    assert decode(full.data).size == (1200, 800)


def test_engine_honours_the_working_size_cap(make_image: Any) -> None:
    config = SandboxConfig(processing_seconds=0.01, image_work_max_side=64, auto_approve=True)
    with SandboxServer(config) as sandbox:
        stored, _ = sandbox.state.store.put_image_stream(io.BytesIO(make_image(width=400, height=200)))
        wf = next(w for w in WORKFLOWS if w.name == "Background Removal")
        execution = sandbox.state.engine.create(
            wf, sandbox.organization_id, "u", "p.png", stored.content_hash, {}, {}, []
        )
        for _ in range(500):
            if sandbox.state.engine.snapshot(execution.id)["status"] == "COMPLETED":  # type: ignore[index]
                break
            time.sleep(0.01)
        done = sandbox.state.engine.get(execution.id)
        assert done is not None and done.result is not None
        result = sandbox.state.store.get(done.result.content_hash)
        assert result is not None
        assert Image.open(result.path).size == (64, 32)


def test_export_settings_and_modes(make_image: Any, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(make_image())
    jpeg = imaging.process(path, "in.png", background_removal=True, target_format="JPEG", target_mode="RGBA")
    assert jpeg.content_type == "image/jpeg" and decode(jpeg.data).mode == "RGB"  # JPEG has no alpha
    assert decode(jpeg.data).getpixel((0, 0)) >= (250, 250, 250)  # flattened on white
    rgb_png = imaging.process(path, "in.png", background_removal=True, target_format="PNG", target_mode="RGB")
    assert decode(rgb_png.data).mode == "RGB"
    for mode, fmt in (("LA", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("P", "PNG")):
        src = tmp_path / f"in-{mode.replace(';', '')}.{fmt.lower()}"
        Image.new(mode, (20, 10)).save(src, fmt)
        out = imaging.process(src, src.name, background_removal=True, target_format="PNG", target_mode="RGBA")
        assert decode(out.data).size == (20, 10), mode


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shoe.jpeg", "shoe.png"),
        ("shoe.final.JPG", "shoe.final.png"),
        ("noext", "noext.png"),
        ("a/b/c.tif", "c.png"),
    ],
)
def test_result_file_name_keeps_stem(name: str, expected: str) -> None:
    assert imaging.result_file_name(name, ".png") == expected
