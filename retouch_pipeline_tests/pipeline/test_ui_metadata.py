"""What the Dagster UI shows (read by the browser tests): asset facts, previews on every path, links to the
AutoRetouch web app, and a human failure note in the partition's view for every failure class."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import boto3
import dagster as dg
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from PIL import Image

from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_devtools.stack.inprocess import InProcessStack as Stack
from retouch_devtools.stack.inprocess import observations
from retouch_devtools.stack.s3 import DUMMY_AWS
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED, catalog_pipeline
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.assets.materializations import ObjectLinks
from retouch_pipeline.catalog.keys import output_key

APP = "https://app.example.test"


def _thumbnails(markdown: str) -> list[Image.Image]:
    out = []
    for data in re.findall(r"\(data:image/webp;base64,([A-Za-z0-9+/=]+)\)", markdown):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        out.append(image)
    return out


def _assert_preview(meta: dict[str, object], count: int) -> None:
    thumbs = _thumbnails(str(meta["preview"]))
    assert len(thumbs) == count, meta["preview"]
    assert all(max(t.size) <= 256 for t in thumbs)


def test_asset_facts() -> None:
    specs = {spec.key: spec for spec in [*catalog_pipeline.specs, *autoretouch_costs.specs]}
    for key in (UPLOADED, EXECUTION, RETOUCHED):
        spec = specs[key]
        assert spec.description and spec.group_name == "catalog" and spec.owners
        assert "autoretouch" in spec.kinds
    assert {"s3", "autoretouch"} <= specs[RETOUCHED].kinds and "s3" in specs[UPLOADED].kinds
    costs = specs[dg.AssetKey("autoretouch_costs")]
    assert costs.group_name == "costs" and costs.owners and costs.description


def test_previews_links_and_failure_notes(stack: Stack, make_image: Callable[..., bytes]) -> None:
    good = stack.put("ui/a-good.png", make_image(width=300, height=200))
    bad = stack.put("ui/b-empty.png", b"")
    stack.register([good, bad])
    result = stack.run([good, bad], app_url=APP)
    assert not result.success
    _assert_preview(stack.materializations(UPLOADED, result)[good], 1)
    execution = stack.materializations(EXECUTION, result)[good]
    _assert_preview(execution, 1)
    assert (
        execution["autoretouch_execution"].startswith(f"{APP}/")
        and execution["execution_id"] in (execution["autoretouch_execution"])
    )
    assert execution["autoretouch_batch"].startswith(f"{APP}/") and execution["batch_id"]
    retouched = stack.materializations(RETOUCHED, result)[good]
    _assert_preview(retouched, 2)
    assert retouched["autoretouch_execution"] == execution["autoretouch_execution"]
    assert isinstance(retouched["chargedCredits"], int) and isinstance(retouched["executionPrice"], int)
    note = observations(result)[bad]
    assert note["status"] == "failed" and note["failure_class"] == "invalid_image"
    assert "EmptySourceImage" in note["message"] and "No credit was spent" in note["message"]
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "No credit was spent" in failure.step_failure_data.error.message

    # retouched_image alone (pending sensor, refresh): the preview still has its "before" half
    stack.s3.delete_object(Bucket=stack.bucket, Key="retouched/ui/a-good.png.png")
    alone = stack.run([good], selection=[RETOUCHED])
    assert alone.success
    _assert_preview(stack.materializations(RETOUCHED, alone)[good], 2)

    # QA pending: the run ends, the partition says why it has no result yet
    stack.workflow_name = "Background Removal with QA"
    qa = stack.put("ui/c-qa.png", make_image(width=90))
    stack.register([qa])
    pending = stack.run([qa])
    assert pending.success
    note = observations(pending)[qa]
    assert note["status"] == "pending" and note["failure_class"] == "qa_pending"
    assert "quality review" in note["message"] and note["autoretouch_execution"].startswith("https://")


def test_failed_execution_note(make_stack: Callable[..., Stack], make_image: Callable[..., bytes]) -> None:
    stack = make_stack(faults={"execution_failure_rate": 1.0})
    key = stack.put("ui/fails.png", make_image())
    stack.register([key])
    result = stack.run([key])
    assert not result.success
    note = observations(result)[key]
    assert note["failure_class"] == "execution_failed" and "retry" in note["message"]
    assert note["execution_id"] and stack.charged() == 0


def test_payment_required_note(make_stack: Callable[..., Stack], make_image: Callable[..., bytes]) -> None:
    stack = make_stack(processing_seconds=1.0)
    key = stack.put("ui/unpaid.png", make_image())
    stack.register([key])
    assert stack.run([key], selection=[UPLOADED, EXECUTION]).success
    requests.put(f"{stack.sandbox.api_url}/_sandbox/balance", json={"balance": 0}, timeout=5)
    deadline = time.monotonic() + 10
    while {e.status.value for e in stack.executions()} != {"PAYMENT_REQUIRED"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = stack.run([key], selection=[RETOUCHED])
    assert not result.success
    note = observations(result)[key]
    assert note["failure_class"] == "payment_required" and "Top up" in note["message"]
    _assert_preview(note, 1)  # the partition's note still shows what the image is


def test_object_links_open_in_a_browser(stack: Stack, make_image: Callable[..., bytes]) -> None:
    """Issue 14: `output_link`/`source_link` are URLs a browser opens (here moto's endpoint), quoted for
    spaces, `%`, `#` and non-ASCII; the `s3://` paths stay beside them. Fetched as a browser with access does
    (a signed GET of exactly that URL: the dev bucket is private) and compared byte for byte."""
    relative = "ui/été 100% off#1.png"
    source = make_image(width=90, height=60)
    key = stack.put(relative, source)
    stack.register([key])
    result = stack.run([key])
    assert result.success
    uploaded = stack.materializations(UPLOADED, result)[key]
    retouched = stack.materializations(RETOUCHED, result)[key]
    output = output_key(OUTPUT_PREFIX, relative, "png")
    assert output == f"{OUTPUT_PREFIX}{relative}.png"
    assert retouched["output_uri"] == f"s3://{stack.bucket}/{output}"
    quoted = "ui/%C3%A9t%C3%A9%20100%25%20off%231.png"
    assert retouched["output_link"] == f"{stack.moto_url}/{stack.bucket}/{OUTPUT_PREFIX}{quoted}.png"
    assert uploaded["source_link"] == f"{stack.moto_url}/{stack.bucket}/{SOURCE_PREFIX}{quoted}"
    assert uploaded["source_uri"] == f"s3://{stack.bucket}/{SOURCE_PREFIX}{relative}"
    for link, body in ((retouched["output_link"], stack.get(output)), (uploaded["source_link"], source)):
        response = requests.get(link, headers=_signed_headers(link), timeout=10)
        assert response.status_code == 200 and response.content == body, link
    stored = stack.instance.get_latest_materialization_event(RETOUCHED)
    assert stored is not None and stored.asset_materialization is not None
    meta = stored.asset_materialization.metadata
    assert isinstance(meta["output_link"], dg.UrlMetadataValue)
    assert isinstance(meta["output_uri"], dg.PathMetadataValue)


def _signed_headers(url: str) -> dict[str, str]:
    request = AWSRequest("GET", url)
    S3SigV4Auth(
        Credentials(DUMMY_AWS["AWS_ACCESS_KEY_ID"], DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]), "s3", "us-east-1"
    ).add_auth(request)
    return dict(request.headers)


def test_object_links_on_aws_open_the_s3_console() -> None:
    client = boto3.client("s3", region_name="eu-central-1", aws_access_key_id="x", aws_secret_access_key="x")
    key = "retouched/été 100% off#1/a+b.png"
    link = ObjectLinks.of(client).url("shop-images", key).value
    assert link == (
        "https://s3.console.aws.amazon.com/s3/object/shop-images?region=eu-central-1"
        "&prefix=retouched/%C3%A9t%C3%A9%20100%25%20off%231/a%2Bb.png"
    )
    query = parse_qs(urlsplit(link).query)
    assert query == {"region": ["eu-central-1"], "prefix": [key]}
    us_east = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    assert ObjectLinks.of(us_east).url("b", "k").value.endswith("/s3/object/b?region=us-east-1&prefix=k")
