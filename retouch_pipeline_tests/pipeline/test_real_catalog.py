"""Issue 16: a catalog of real photographs through the real stack (sandbox + moto over HTTP), with assertions
on output keys, on credits and on pixels (orientation, alpha); then the refresh and `backfill` on what remains
(settled refusals, a deleted source, `_root`), the collision guard and the migration of old-scheme outputs.

The pictures are scikit-image's bundled photos (`skimage.data`), only those shipped inside the wheel (no
download at test time), written in the formats, modes and names shops' buckets hold. Each case says what the
pipeline must do with it: processed (its output key follows), or the failure class it is refused with.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
from PIL import Image, ImageCms
from skimage import data

from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import materialize_range, observations
from retouch_pipeline.assets import PIPELINE_KEYS, UPLOADED
from retouch_pipeline.catalog.keys import legacy_output_key, output_key
from retouch_pipeline.processing.thumbnails import PREVIEW_METADATA_MAX_BYTES, THUMBNAIL_SIDE
from retouch_pipeline.resources import CatalogResource
from retouch_pipeline.schedules import catalog_refresh_job

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


def _before_thumbnail(preview_markdown: str) -> Image.Image:
    uri = re.search(r"!\[before\]\(data:image/webp;base64,([^)]+)\)", preview_markdown)
    assert uri is not None
    return Image.open(io.BytesIO(base64.b64decode(uri.group(1))))


def _process(stack: Stack, catalog: list[Case]) -> tuple[list[str], dg.ExecuteInProcessResult]:
    keys = [stack.put(case.key, case.body) for case in catalog]
    stack.register(keys)
    return keys, stack.run(keys)


def _resources(stack: Stack, **catalog: Any) -> dict[str, Any]:
    """The stack's resources, the catalog's settings changed by `catalog`."""
    resources = stack.resources()
    layout = resources["catalog"]
    fields = ("source_bucket", "source_prefix", "output_bucket", "output_prefix")
    resources["catalog"] = CatalogResource(**{**{f: getattr(layout, f) for f in fields}, **catalog})
    return resources


def _refresh(stack: Stack, **catalog: Any) -> dg.ExecuteInProcessResult:
    resources = _resources(stack, **catalog)
    job = dg.Definitions(jobs=[catalog_refresh_job], resources=resources).get_job_def("catalog_refresh_job")
    return job.execute_in_process(instance=stack.instance, raise_on_error=False)


def _refresh_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in outputs[0].step_output_data.metadata.items()}


def test_real_photographs_keys_credits_and_pixels(stack: Stack) -> None:
    price = stack.workflow["executionPrice"]
    catalog = cases()
    keys, result = _process(stack, catalog)
    processed = [c for c in catalog if c.refused is None]
    refused = {c.key: c.refused for c in catalog if c.refused}

    # credits: each processed photo once, every refusal at 0
    assert stack.charged() == len(processed) * price
    notes = observations(result)
    for case in catalog:
        if case.refused:
            assert notes[case.key]["reason"].startswith(case.refused + ":"), notes[case.key]
            assert notes[case.key]["content_refusal"] is True and notes[case.key]["source_etag"]
    assert "3 frames" in notes["real/spinning.gif"]["reason"]
    assert "2 frames" in notes["real/two-pages.tif"]["reason"]

    # keys: one output per processed source, pair.jpg and pair.png apart, each holding its own picture
    expected = {output_key(OUTPUT_PREFIX, c.key, "png") for c in processed}
    outputs = [k for k in stack.keys(OUTPUT_PREFIX) if not k.endswith(".json")]
    assert sorted(outputs) == sorted(expected) and len(expected) == len(processed)
    assert stack.image(OUTPUT_PREFIX + "real/pair.jpg.png").size == (512, 512)  # the astronaut
    assert stack.image(OUTPUT_PREFIX + "real/pair.png.png").size == (600, 400)  # the coffee
    for case in processed:
        sidecar = json.loads(stack.get(output_key(OUTPUT_PREFIX, case.key, "png") + ".json"))
        assert sidecar["source"]["key"] == SOURCE_PREFIX + case.key
        converted = {"gif": "GIF", "bmp": "BMP", "avif": "AVIF"}.get(case.key.rsplit(".", 1)[1])
        assert sidecar["source"]["converted_from"] == converted

    # upright: metadata, preview and result follow the EXIF orientation
    uploaded = stack.materializations(UPLOADED, result)["real/chelsea-exif6.jpg"]
    assert (uploaded["width"], uploaded["height"]) == (451, 300)
    thumb = _before_thumbnail(str(uploaded["preview"]))
    assert thumb.width > thumb.height
    upright = stack.image(OUTPUT_PREFIX + "real/chelsea-exif6.jpg.png").convert("RGB")
    cat = photo("chelsea")
    assert upright.size == cat.size
    diff = np.abs(np.asarray(upright, dtype=int) - np.asarray(cat, dtype=int)).mean()
    assert diff < 12, diff  # the picture itself, not a rotated one (JPEG noise only)

    # alpha: the transparent band of the grey+alpha source stays transparent, the rest stays opaque
    la = stack.image(OUTPUT_PREFIX + "real/camera-la.png.png")
    assert la.mode == "RGBA"
    alpha = np.asarray(la.getchannel("A"))
    assert alpha[:, : 512 // 4].max() == 0 and alpha[:, 512 // 2 :].min() == 255

    # 16-bit grey: processed, its grey levels kept (top 8 bits)
    sixteen = np.asarray(stack.image(OUTPUT_PREFIX + "real/camera-16bit.png.png").convert("L"), dtype=int)
    assert np.abs(sixteen - np.asarray(photo("camera"), dtype=int)).mean() < 2

    assert set(refused) == {k for k in keys if k in refused}


def test_refresh_and_backfill_settle_refusals_deleted_sources_and_root(stack: Stack) -> None:
    price = stack.workflow["executionPrice"]
    catalog = [c for c in cases() if c.key in ("real/pair.jpg", "real/rocket.gif", "real/coffee.webp")]
    catalog += [c for c in cases() if c.refused]
    _process(stack, catalog)
    charged = stack.charged()
    assert charged == 3 * price

    # the refresh plans none of the refused files again, succeeds, and says how many it skipped and why
    result = _refresh(stack)
    assert result.success
    meta = _refresh_metadata(result)
    assert meta["skipped_refused"] == 5 and meta["missed"] == 0 and meta["processed_in_run"] == 0
    assert meta["skipped_refused_by_reason"] == {
        "AnimatedImage": 2,
        "UnsupportedMode": 1,
        "EmptySourceImage": 1,
        "NotAnImage": 1,
    }
    assert stack.charged() == charged

    # backfill counts only what can be bought, and launches the same set (not the deleted source)
    stack.s3.delete_object(Bucket=stack.bucket, Key=SOURCE_PREFIX + "real/coffee.webp")
    dry = stack.cli("backfill", "real", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "collection real: 2 image(s), 0 needing a new execution; projected 0 credits" in dry.stdout
    assert "5 skipped, refused earlier for their content" in dry.stdout
    launched = stack.cli("backfill", "real")
    assert "for 2 image(s)" in launched.stdout, launched.stdout + launched.stderr

    # a changed refused file is planned again (new ETag): refused once more (the run names it), then settled
    stack.put("real/notes.txt", photo("coffee").resize((90, 60)).tobytes() + b"still not an image")
    again = _refresh(stack)
    assert not again.success and _refresh_metadata(again)["skipped_refused"] == 4
    assert _refresh_metadata(_refresh(stack))["skipped_refused"] == 5

    # deleted source: kept by default (the partition's note says so), archived when the prefix is set
    kept = _refresh(stack)
    webp = output_key(OUTPUT_PREFIX, "real/coffee.webp", "png")
    assert webp in stack.keys(OUTPUT_PREFIX) and _refresh_metadata(kept)["deleted_sources"] == 1
    note = observations(kept)["real/coffee.webp"]
    assert note["status"] == "source_deleted" and "kept at" in note["message"]
    archived = _refresh(stack, archive_prefix="archived/")
    assert webp not in stack.keys(OUTPUT_PREFIX)
    assert stack.keys("archived/") == ["archived/real/coffee.webp.png", "archived/real/coffee.webp.png.json"]
    assert "moved to s3://" in observations(archived)["real/coffee.webp"]["message"]

    # `_root`: images directly under the prefix are a collection in every command
    stack.put("loose.jpg", catalog[0].body)
    dry_root = stack.cli("backfill", "_root", "--dry-run")
    assert "collection _root: 1 image(s)" in dry_root.stdout, dry_root.stdout + dry_root.stderr
    assert stack.charged() == charged


def test_collision_with_another_source_fails_before_any_credit(stack: Stack) -> None:
    pair = [c for c in cases() if c.key == "real/pair.jpg"]
    key = output_key(OUTPUT_PREFIX, "real/pair.jpg", "png")
    foreign = {"source": {"bucket": "other-shop", "key": "incoming/real/pair.jpg"}}
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=b"someone else's result")
    stack.s3.put_object(Bucket=stack.bucket, Key=key + ".json", Body=json.dumps(foreign).encode())
    _, result = _process(stack, pair)
    assert not result.success and stack.charged() == 0
    note = observations(result)["real/pair.jpg"]
    assert note["failure_class"] == "output_collision"
    assert "s3://other-shop/incoming/real/pair.jpg" in note["reason"]
    assert f"s3://{stack.bucket}/{SOURCE_PREFIX}real/pair.jpg" in note["reason"]
    assert stack.get(key) == b"someone else's result"


def test_missing_output_bucket_is_permanent_and_named_before_buying(stack: Stack) -> None:
    pair = [c for c in cases() if c.key == "real/pair.jpg"]
    keys = [stack.put(c.key, c.body) for c in pair]
    stack.register(keys)
    resources = _resources(stack, output_bucket="no-such-results")
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[0]}
    result = materialize_range(stack.instance, resources, PIPELINE_KEYS, tags)
    assert not result.success and stack.charged() == 0
    note = observations(result)["real/pair.jpg"]
    assert note["failure_class"] == "bucket_unusable", note
    assert "'no-such-results' does not exist" in note["reason"]
    assert "temporary" not in note["message"].lower()


def test_missing_source_bucket_is_permanent_and_named(stack: Stack) -> None:
    keys = [stack.put(c.key, c.body) for c in cases() if c.key == "real/pair.jpg"]
    stack.register(keys)
    resources = _resources(stack, source_bucket="no-such-catalog")
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[0]}
    result = materialize_range(stack.instance, resources, PIPELINE_KEYS, tags)
    assert not result.success and stack.charged() == 0
    note = observations(result)["real/pair.jpg"]
    assert note["failure_class"] == "bucket_unusable", note
    assert "'no-such-catalog' does not exist" in note["reason"] and "CATALOG_SOURCE_BUCKET" in note["message"]
    assert "temporary" not in note["message"].lower()


def test_migration_moves_old_scheme_outputs_once(stack: Stack, make_image: Callable[..., bytes]) -> None:
    """A catalog written the old way (extension replaced): pair.jpg and pair.png shared pair.png."""
    catalog = [c for c in cases() if c.key in ("real/pair.jpg", "real/pair.png", "real/coffee.webp")]
    _process(stack, catalog)
    charged = stack.charged()
    for case in catalog:  # rewrite the outputs at the keys the old scheme gave them; the last pair wins
        new = output_key(OUTPUT_PREFIX, case.key, "png")
        old = legacy_output_key(OUTPUT_PREFIX, case.key, "png")
        stack.s3.copy_object(Bucket=stack.bucket, Key=old, CopySource={"Bucket": stack.bucket, "Key": new})
        sidecar = json.loads(stack.get(new + ".json"))
        sidecar["result"]["key"] = old
        stack.s3.put_object(Bucket=stack.bucket, Key=old + ".json", Body=json.dumps(sidecar).encode())
        stack.s3.delete_objects(
            Bucket=stack.bucket, Delete={"Objects": [{"Key": new}, {"Key": new + ".json"}]}
        )
    already_right = stack.put("real/new.png", make_image(width=70))
    stack.register([already_right])
    stack.run([already_right])
    before = stack.keys(OUTPUT_PREFIX)
    assert OUTPUT_PREFIX + "real/pair.png" in before and OUTPUT_PREFIX + "real/new.png.png" in before

    dry = stack.cli("migrate-outputs", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 output(s); 1 already at their key (untouched)" in dry.stdout
    assert stack.keys(OUTPUT_PREFIX) == before

    run = stack.cli("migrate-outputs")
    assert "moved 2 output(s); 1 already at their key (untouched)" in run.stdout, run.stdout + run.stderr
    after = stack.keys(OUTPUT_PREFIX)
    assert OUTPUT_PREFIX + "real/pair.png" not in after
    assert {OUTPUT_PREFIX + "real/pair.png.png", OUTPUT_PREFIX + "real/coffee.webp.png"} <= set(after)
    assert json.loads(stack.get(OUTPUT_PREFIX + "real/pair.png.png.json"))["result"]["key"] == (
        OUTPUT_PREFIX + "real/pair.png.png"
    )
    again = stack.cli("migrate-outputs")
    assert "moved 0 output(s); 3 already at their key (untouched)" in again.stdout

    # pair.jpg lost its output in the old collision: the refresh restores it from its execution, free
    result = _refresh(stack)
    assert result.success and _refresh_metadata(result)["outputs_missing"] == 1
    assert stack.image(OUTPUT_PREFIX + "real/pair.jpg.png").size == (512, 512)
    assert stack.charged() == charged + stack.workflow["executionPrice"]  # real/new.png only


def test_previews_stay_within_their_bound_on_every_event(make_stack: Callable[..., Stack]) -> None:
    """Issue 14: each materialization's and observation's preview metadata is at most 8 KB, for a large
    noisy photo, an RGBA PNG (skimage's logo), a 16-bit grey PNG, RGBA noise (nothing compresses it)."""
    stack = make_stack(image_work_max_side=512)  # the sandbox's own Pillow work, not the pipeline's
    large = Image.blend(photo("astronaut").resize((3000, 3000)), _noise("RGB", (3000, 3000)), 0.3)
    catalog = [
        Case("bound/large-photo.jpg", _encode(large, "JPEG", quality=95)),
        Case("bound/logo-rgba.png", _encode(photo("logo"), "PNG")),
        Case("bound/camera-16bit.png", sixteen_bit_grey()),
        Case("bound/noise-rgba.png", _encode(_noise("RGBA", (800, 600)), "PNG")),
        Case("bound/empty.jpg", b"", "EmptySourceImage"),
    ]
    assert len(catalog[0].body) > 3_000_000 and photo("logo").mode == "RGBA"
    _process(stack, catalog)
    assert stack.charged() == 4 * stack.workflow["executionPrice"]
    events = [
        record.asset_materialization or record.asset_observation
        for key in PIPELINE_KEYS
        for fetch in (stack.instance.fetch_materializations, stack.instance.fetch_observations)
        for record in fetch(key, limit=100).records
    ]
    previews = [str(e.metadata["preview"].value) for e in events if e is not None and "preview" in e.metadata]
    assert len(previews) == 3 * 4  # three assets per processed image (the empty file has no picture)
    for preview in previews:
        pictures = re.findall(r"\(data:image/webp;base64,([A-Za-z0-9+/=]+)\)", preview)
        assert pictures and len(preview.encode()) <= PREVIEW_METADATA_MAX_BYTES, len(preview)
        for picture in pictures:
            thumb = Image.open(io.BytesIO(base64.b64decode(picture)))
            assert 0 < max(thumb.size) <= THUMBNAIL_SIDE
    assert max(len(p) for p in previews) > PREVIEW_METADATA_MAX_BYTES // 2  # the noise: the search was needed


def _noise(mode: str, size: tuple[int, int]) -> Image.Image:
    return Image.merge(mode, [Image.effect_noise(size, 120) for _ in mode])
