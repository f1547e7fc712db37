"""`python -m benchmarks.event_log [N]`: event-log bytes per image, and the preview metadata's share of them.

Why: every materialization of the three catalog assets carries a before/after preview inline (issue 14 bounds
it to 8 KB per materialization); at 100,000 images the event log's size is the instance database's size.
This processes N images of three kinds (1-3 MB noisy JPEG photos, RGBA PNGs, 16-bit grey PNGs) through the
real assets on a real instance (sandbox, moto's S3 over HTTP, in this process like the pipeline tests), then
serializes every stored event of the runs exactly as the event log stores it and sums the bytes. Prints one
table and ONE JSON line; docs/performance.md cites the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import warnings
from collections import defaultdict
from typing import Any

import dagster as dg
from dagster._serdes import serialize_value
from PIL import Image

from benchmarks.images import catalog_jpeg
from retouch_devtools.samples import product_photo
from retouch_devtools.sandbox import SandboxConfig, SandboxServer
from retouch_devtools.stack.env import TOKEN_ENV
from retouch_devtools.stack.inprocess import InProcessStack
from retouch_devtools.stack.s3 import DUMMY_AWS, new_bucket, running_moto, s3_client
from retouch_pipeline.assets import PIPELINE_KEYS

KINDS = ("jpeg-photo", "rgba-png", "png-16bit")


def sample(kind: str, index: int) -> tuple[str, bytes]:
    """(relative key, bytes) of image `index` of `kind`, distinct bytes per index."""
    if kind == "jpeg-photo":
        return f"bench/photo-{index:04d}.jpg", catalog_jpeg(f"photo-{index}", index)
    photo = Image.open(io.BytesIO(product_photo(f"bench/{kind}-{index}.png", 900, 700, "PNG")))
    if kind == "rgba-png":
        image = photo.convert("RGBA")
        image.putalpha(photo.convert("L").point(lambda v: 0 if v > 235 else 255))
    else:
        image = photo.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    out = io.BytesIO()
    image.save(out, "PNG")
    return f"bench/{kind}-{index:04d}.png", out.getvalue()


def event_bytes(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, int]:
    """Serialized bytes of every stored event of `run_ids` (asset events: by asset, and previews)."""
    sizes: dict[str, int] = defaultdict(int)
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            size = len(serialize_value(entry))
            sizes["all_events"] += size
            event = entry.dagster_event
            if event is None:
                continue
            if event.is_step_materialization:
                asset_event: Any = event.step_materialization_data.materialization
            elif event.is_asset_observation:
                asset_event = event.asset_observation_data.asset_observation
            else:
                continue
            sizes[f"asset:{asset_event.asset_key.to_user_string()}"] += size
            preview = asset_event.metadata.get("preview")
            if preview is not None:
                sizes["preview_metadata"] += len(serialize_value(preview))
                sizes["preview_max_per_event"] = max(sizes["preview_max_per_event"], len(str(preview.value)))
    return dict(sizes)


def measure(n: int) -> dict[str, Any]:
    with running_moto() as moto_url, dg.instance_for_test() as instance:
        config = SandboxConfig(processing_seconds=0.05, auto_approve=True, workers=4, image_work_max_side=512)
        with SandboxServer(config) as sandbox:
            os.environ[TOKEN_ENV] = sandbox.refresh_token
            s3 = s3_client(moto_url)
            stack = InProcessStack(sandbox, instance, s3, new_bucket(s3, "bench"), moto_url)
            keys = [stack.put(*sample(KINDS[i % len(KINDS)], i)) for i in range(n)]
            stack.register(keys)
            result = stack.run(keys, selection=list(PIPELINE_KEYS))
            assert result.success, "the benchmark run failed"
            sizes = event_bytes(instance, [result.run_id])
    per_image = {f"{k}_per_image": v / n for k, v in sizes.items() if k != "preview_max_per_event"}
    return {"images": n, **sizes, **per_image}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_log", description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=30, help="images (default 30: 10 of each kind)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    for name, value in DUMMY_AWS.items():
        os.environ.setdefault(name, value)
    figures = measure(args.n)
    for name, value in figures.items():
        print(f"{name:40} {value:>14,.0f}")
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
