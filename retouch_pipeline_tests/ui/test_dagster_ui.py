"""Issue 7 in a real browser: what a user of `make dev` sees in the Dagster UI, and a backfill done by clicks.

One stack for the module (see conftest): the sensors have already retouched the two sample collections when
the first test starts. The tests run in file order and share that stack; the backfill and failure tests add
their own collections and the cost test reads whatever has been spent by then, so none depends on another.

How the backfill test gets "a collection the sensor registered but nobody processed yet" (decision): it
stops `catalog_sensor` through GraphQL (waiting for any tick in flight), then puts a third collection in S3
and registers its partitions with the same key mapping the sensor uses. Why not start the stack with the
sensors stopped: the sample collections would then never be processed and the preview and cost tests would
have nothing to show; why not let the sensor register it: the sensor launches the work in the same tick, so
the collection would be processed before any click. Stopping only the catalog sensor leaves the stack as a
user has it (daemon, backfill daemon, pending sensor running).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from retouch_devtools.stack.dagster_ui import (
    asset_node,
    button,
    image_states,
    metadata_row,
    open_ui,
    save,
    toast_text,
)
from retouch_devtools.stack.dev import SAMPLE_COLLECTIONS, DevProcess
from retouch_pipeline.catalog.keys import output_key, s3_key_from_partition_key

pytestmark = [pytest.mark.ui, pytest.mark.timeout(420)]

PIPELINE_ASSETS = ("uploaded_image", "autoretouch_execution", "retouched_image")
COSTS = "autoretouch_costs"
NEW_COLLECTION = "autumn-2026"
NEW_IMAGES = 3
BROKEN = "returns-2026/not-an-image.jpg"
PRICE = 10  # the sandbox's "Background Removal" executionPrice


def test_asset_graph_shows_the_pipeline_assets(page: Page, stack: DevProcess, artifacts: Path) -> None:
    """Global asset lineage shows both groups; the catalog group's graph shows every asset, filled."""
    open_ui(page, stack.ui, "/asset-groups")
    expect(page.get_by_text("Global asset lineage").first).to_be_visible()
    for group in ("catalog", "costs"):
        expect(page.get_by_text(group, exact=True).last).to_be_visible()
    save(page, artifacts, "global-lineage")
    page.get_by_text("catalog", exact=True).last.click()  # expands the group node in place
    for asset in PIPELINE_ASSETS:
        expect(asset_node(page, asset)).to_be_attached()

    open_ui(page, stack.ui, "/locations/retouch_pipeline/asset-groups/catalog")
    for asset in (*PIPELINE_ASSETS, COSTS):
        expect(asset_node(page, asset)).to_be_visible()
    # Every sample image is a partition, and all of them are materialized.
    expect(page.get_by_text("12 partitions").first).to_be_visible()
    expect(page.get_by_text("100% filled").first).to_be_visible()
    save(page, artifacts, "asset-graph")


def test_processed_partition_shows_before_and_after(page: Page, stack: DevProcess, artifacts: Path) -> None:
    """Partition view of `retouched_image`: the preview opens and both thumbnails are really loaded."""
    partition = f"{SAMPLE_COLLECTIONS[0]}/mug-003.jpg"
    open_ui(page, stack.ui, "/assets/retouched_image?view=partitions")
    page.get_by_text(partition, exact=True).first.click()
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    output = metadata_row(page, "output_uri")
    expect(output).to_contain_text(f"retouched/{SAMPLE_COLLECTIONS[0]}/mug-003.jpg.png")
    # the link a browser opens: the dev stack's S3 endpoint, path-style (issue 14)
    link = metadata_row(page, "output_link").get_by_role("link").first
    expect(link).to_have_attribute(
        "href", re.compile(rf"^http://127\.0\.0\.1:\d+/[^/]+/retouched/{partition}\.png$")
    )
    preview = metadata_row(page, "preview")
    preview.scroll_into_view_if_needed()
    save(page, artifacts, "partition-metadata")

    preview.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has=page.get_by_text("preview", exact=True))
    expect(dialog.locator("img")).to_have_count(2)
    expect(dialog.get_by_role("img", name="before")).to_be_visible()
    expect(dialog.get_by_role("img", name="after")).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)", timeout=10_000
    )
    states = image_states(dialog)
    assert [s["alt"] for s in states] == ["before", "after"], states
    assert all(s["complete"] and int(str(s["width"])) > 0 for s in states), f"broken preview: {states}"
    save(page, artifacts, "partition-preview")
    button(dialog, "Close").click()


@pytest.fixture(scope="module")
def sensor_stopped(stack: DevProcess) -> DevProcess:
    """The stack with `catalog_sensor` stopped: what the tests add to S3 stays unprocessed (module doc)."""
    stack.stop_sensor("catalog_sensor")
    return stack


def test_collection_backfill_by_clicks_lands_in_s3(
    page: Page, sensor_stopped: DevProcess, artifacts: Path
) -> None:
    """Group page -> Materialize all -> Custom partitions filtered to one collection -> Launch backfill."""
    stack = sensor_stopped
    keys = stack.add_collection(NEW_COLLECTION, NEW_IMAGES)
    assert len(keys) == NEW_IMAGES and stack.output_keys(NEW_COLLECTION) == []
    backfills_before = set(stack.backfill_ids())
    credits_before = stack.sandbox_state()["creditsCharged"]

    open_ui(page, stack.ui, "/locations/retouch_pipeline/asset-groups/catalog")
    button(page, "Materialize all…").or_(button(page, "Materialize all...")).first.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    expect(dialog).to_contain_text("3 assets")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(f"{NEW_COLLECTION}/")
    select_all = page.get_by_role("menuitem", name=f"Select all ({NEW_IMAGES})")
    expect(select_all).to_be_visible()
    expect(page.get_by_role("menuitem", name=f"{SAMPLE_COLLECTIONS[0]}/")).to_have_count(0)
    select_all.click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the partition popover
    expect(page.get_by_placeholder("Filter partitions")).to_have_count(0)  # gone, not fading (screenshot)
    expect(dialog).to_contain_text(f"{NEW_IMAGES} partitions")
    save(page, artifacts, "backfill-dialog")
    button(dialog, "Launch backfill").click()
    backfill_id = toast_text(page, r"Created backfill (\w+)").group(1)
    assert set(stack.backfill_ids()) - backfills_before == {backfill_id}, "only the clicked backfill"

    done = stack.wait_for_backfill(backfill_id, 240)
    assert done["status"] == "COMPLETED_SUCCESS", done
    assert done["numPartitions"] == NEW_IMAGES
    assert {"key": "dagster/from_ui", "value": "true"} in done["tags"]
    assert done["runs"] and all(run["status"] == "SUCCESS" for run in done["runs"]), done["runs"]

    outputs = stack.output_keys(NEW_COLLECTION)
    expected = {output_key(stack.settings.output_prefix, s3_key_from_partition_key(k), "png") for k in keys}
    assert expected <= set(outputs), outputs
    assert {k + ".json" for k in expected} <= set(outputs), "one provenance sidecar per image"
    assert stack.sandbox_state()["creditsCharged"] == credits_before + NEW_IMAGES * PRICE

    open_ui(page, stack.ui, f"/runs/b/{backfill_id}")
    expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible()
    for key in keys:
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    save(page, artifacts, "backfill-done")


def test_cost_asset_shows_its_figures(page: Page, stack: DevProcess, artifacts: Path) -> None:
    """`autoretouch_costs` materialized with its own Materialize button shows what the sandbox charged."""
    open_ui(page, stack.ui, f"/assets/{COSTS}")
    button(page, "Materialize").click()
    run_prefix = toast_text(page, r"Launched run (\w+)").group(1)

    def finished() -> str | None:
        status = stack.run_status(run_prefix)
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = stack.wait_until(finished, 120, f"run {run_prefix} of {COSTS}")
    assert status == "SUCCESS"
    charged = stack.sandbox_state()["creditsCharged"]
    assert charged > 0

    page.reload()  # the overview does not re-query the latest materialization on its own
    total = metadata_row(page, "total_charged_credits")
    expect(total).to_contain_text(str(charged))  # UI_WAIT_MS: a reload on two busy cores
    by_collection = metadata_row(page, "by_collection")
    # a table (MetadataValue.table): its header cells, then one row per collection with its credits
    table = by_collection.get_by_role("table")
    expect(table.get_by_text("credits", exact=True).first).to_be_visible()
    for collection in SAMPLE_COLLECTIONS:
        expect(table.get_by_role("row").filter(has=page.get_by_text(collection, exact=True))).to_have_count(1)
    expect(metadata_row(page, f"credits/{SAMPLE_COLLECTIONS[0]}")).to_contain_text(str(6 * PRICE))
    expect(metadata_row(page, "balance_credits")).to_be_visible()
    by_collection.evaluate("row => row.scrollIntoView({block: 'center'})")
    save(page, artifacts, "costs")


def test_failed_partition_explains_itself(page: Page, sensor_stopped: DevProcess, artifacts: Path) -> None:
    """A file that is not an image: its partition shows Failed and says why and what to do, in the UI."""
    stack = sensor_stopped
    key = stack.add_object(BROKEN, b"this is not a JPEG", "image/jpeg")
    credits_before = stack.sandbox_state()["creditsCharged"]
    done = stack.wait_for_backfill(stack.launch_backfill(PIPELINE_ASSETS, [key]), 240)
    assert done["status"] != "COMPLETED_SUCCESS", done

    open_ui(page, stack.ui, "/assets/retouched_image?view=partitions")
    page.get_by_text(key, exact=True).first.click()
    expect(page.get_by_text(re.compile(r"Run \w+ failed, and did not materialize")).first).to_be_visible()
    save(page, artifacts, "partition-failed")
    # Dagster's partition view shows only the latest *materialization*; the pipeline's note for a failed
    # image is an observation, shown under the asset's Events tab (reported to the metadata's owner).
    page.get_by_role("tab", name="Events").or_(page.get_by_role("link", name="Events")).first.click()
    page.get_by_text(key, exact=True).first.click()
    message = page.get_by_text(re.compile("cannot be processed")).first
    expect(message).to_be_visible()
    expect(message).to_contain_text("No credit was spent")
    save(page, artifacts, "partition-failed-note")
    assert stack.sandbox_state()["creditsCharged"] == credits_before, "nothing paid for a broken file"
