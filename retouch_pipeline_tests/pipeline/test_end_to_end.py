"""End to end over real HTTP: S3 (moto server) -> sandbox AutoRetouch -> S3, recorded in a real instance."""

from __future__ import annotations

import json
from collections.abc import Callable

from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED
from retouch_pipeline.state_objects import is_reserved_key


def test_one_collection_end_to_end(stack: Stack, make_image: Callable[..., bytes]) -> None:
    keys = [stack.put(f"shoes/item-{i}.jpg", make_image(format="JPEG", width=80 + i)) for i in range(3)]
    stack.register(keys)
    result = stack.run(keys)
    assert result.success
    outputs = [k for k in stack.keys("retouched/") if not is_reserved_key(k, "retouched/")]
    assert (
        len(stack.keys("retouched/.retouch-pipeline/ledger/")) == 3
    )  # one purchase entry per image (docs/durability.md)
    assert outputs == sorted(
        [f"retouched/shoes/item-{i}.jpg.png" for i in range(3)]
        + [f"retouched/shoes/item-{i}.jpg.png.json" for i in range(3)]
    )
    image = stack.image("retouched/shoes/item-0.jpg.png")
    assert image.format == "PNG" and image.mode == "RGBA"
    sidecar = json.loads(stack.get("retouched/shoes/item-0.jpg.png.json"))
    assert sidecar["source"]["key"] == "incoming/shoes/item-0.jpg"
    assert sidecar["execution"]["charged_credits"] == stack.workflow["executionPrice"]
    assert stack.charged() == 3 * stack.workflow["executionPrice"]
    for key in (UPLOADED, EXECUTION, RETOUCHED):
        assert stack.instance.get_materialized_partitions(key) == set(keys)
    batches = list(stack.client().iter_batches())
    assert len(batches) == 1
    assert batches[0].executions == 3 and batches[0].price == stack.charged()
