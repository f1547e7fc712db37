"""Issue 12's proof on `make dev`'s real stack: what was bought outlives the Dagster instance.

`retouch-pipeline dev --no-dagster` (strict sandbox, moto's S3 server, the sample catalog: 12 images) runs as
a real subprocess; its banner's `export NAME=value` lines are the whole environment of `dg dev`, started
exactly as `make dev` starts it (`devstack.start_dagster`), each on a new empty DAGSTER_HOME and its own free
port. Nothing is ticked or launched by the test: the daemon's sensors do the work.

1. Two Dagsters at once over the one unprocessed catalog and organization: 12 executions, 120 credits in the
   sandbox's /_sandbox/state, each image charged exactly once, every partition materialized on both (what
   one bought, the other adopted). Every output object's ETag and LastModified is recorded (the pipeline's
   reserved `.retouch-pipeline/` aside).
2. Both are stopped and their DAGSTER_HOME deleted; a new Dagster starts on a new empty home against the same
   sandbox and S3: every partition ends materialized with `provenance: adopted`, the sandbox's credits and
   creates are unchanged, no output object is rewritten, added or removed.

The two phases share one stack (the second needs the first's catalog), which keeps the wall time to three
`dg dev` starts; the in-process version of these checks is `pipeline/test_durability.py`.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest

from retouch_devtools.stack.dev import (
    SAMPLE_COUNT,
    DevProcess,
    HandStartedDagster,
    start_dagster_on,
    start_dev_process,
)
from retouch_devtools.stack.net import http_ok, wait_until
from retouch_pipeline.assets import EXECUTION, RETOUCHED, UPLOADED
from retouch_pipeline.assets.common import latest_materializations, materialization_metadata, metadata_value
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME
from retouch_pipeline.state_objects import is_reserved_key

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

PRICE = 10  # the sandbox's "Background Removal", credits per image
SETTLE_SECONDS = 480.0  # dg dev's start (code server, daemon) and one run of 12, on 2 shared cores
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


# --- what the stack holds --------------------------------------------------------------------------------


def outputs(stack: DevProcess) -> dict[str, tuple[str, Any]]:
    """Every object under the output prefix but the pipeline's own (ledger, state): key -> (ETag, date)."""
    settings = stack.settings
    pages = (
        stack.s3()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=settings.output_bucket, Prefix=settings.output_prefix)
    )
    return {
        o["Key"]: (o["ETag"], o["LastModified"])
        for page in pages
        for o in page.get("Contents", [])
        if not is_reserved_key(o["Key"], settings.output_prefix)
    }


def provenances(instance: dg.DagsterInstance) -> dict[str, dict[str, str]]:
    """asset -> partition -> the `provenance` of its latest materialization (registered partitions only)."""
    keys = instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME)
    return {
        asset.to_user_string(): {
            key: str(metadata_value(materialization_metadata(record), "provenance"))
            for key, record in latest_materializations(instance, asset, keys).items()
        }
        for asset in (UPLOADED, EXECUTION, RETOUCHED)
    }


# --- Dagsters of one's own ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dagsters(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[DevProcess], HandStartedDagster]]:
    """Start `dg dev` on a stack's exports, each on a new empty DAGSTER_HOME; all stopped at the end."""
    workdir = tmp_path_factory.mktemp("dagsters")
    started: list[HandStartedDagster] = []

    def start(stack: DevProcess) -> HandStartedDagster:
        name = f"dagster-{len(started)}"
        dagster = start_dagster_on(stack.exports(), workdir / name, workdir / f"{name}.log")
        started.append(dagster)
        return dagster

    yield start
    for dagster in started:
        dagster.stop()


def wait_for_ui(dagster: HandStartedDagster) -> dg.DagsterInstance:
    """Its instance, once `dg dev` answers (its storage is created by then, not by this process)."""
    wait_until(
        lambda: http_ok(f"{dagster.settings.dagster_url}/server_info"),
        SETTLE_SECONDS,
        what="dg dev's UI",
        abort=lambda: None if dagster.alive else f"dg dev exited\n{dagster.tail()}",
    )
    return dagster.instance()


def wait_until_settled(dagsters: list[HandStartedDagster], done: Callable[[], None], what: str) -> None:
    """Until `done` stops raising and no Dagster has a run queued or in progress; fails on a dead Dagster."""
    instances = [wait_for_ui(d) for d in dagsters]

    def settled() -> bool:
        done()
        for dagster, instance in zip(dagsters, instances, strict=True):
            active = instance.get_runs_count(dg.RunsFilter(statuses=ACTIVE))
            assert active == 0, f"{dagster.home.name}: {active} runs active"
        return True

    def dead() -> str | None:
        gone = [d for d in dagsters if not d.alive]
        return "\n".join(f"dg dev exited\n{d.tail()}" for d in gone) or None

    wait_until(settled, SETTLE_SECONDS, interval=2.0, what=what, abort=dead)


def all_materialized(instance: dg.DagsterInstance) -> Callable[[], None]:
    def check() -> None:
        found = {asset: len(p) for asset, p in provenances(instance).items()}
        assert set(found.values()) == {SAMPLE_COUNT}, f"materialized partitions: {found}"

    return check


# --- the stack --------------------------------------------------------------------------------------------


@dataclass
class Processed:
    """The catalog as two Dagsters at once left it, both then stopped and their storage deleted."""

    stack: DevProcess
    state: dict[str, Any]
    outputs: dict[str, tuple[str, Any]]
    provenances: list[dict[str, dict[str, str]]]


@pytest.fixture(scope="module")
def processed(
    tmp_path_factory: pytest.TempPathFactory, dagsters: Callable[[DevProcess], HandStartedDagster]
) -> Iterator[Processed]:
    """Phases 1 and 3 in one: the sample catalog processed from empty by two `dg dev` at once; what the
    sandbox, S3 and both instances then hold; both stopped and their DAGSTER_HOME deleted, while the sandbox
    and S3 keep running."""
    stack = start_dev_process(tmp_path_factory.mktemp("dev-stack"), "--no-dagster")
    try:
        stack.wait_until(stack.sandbox_healthy, 60, "the sandbox /health")
        stack.wait_until(lambda: len(stack.source_keys()) == SAMPLE_COUNT, 60, "the sample catalog")
        twins = [dagsters(stack), dagsters(stack)]
        instances = [wait_for_ui(d) for d in twins]

        def both_materialized() -> None:
            for instance in instances:
                all_materialized(instance)()

        wait_until_settled(twins, both_materialized, "the catalog materialized on both Dagsters")
        done = Processed(stack, stack.sandbox_state(), outputs(stack), [provenances(i) for i in instances])
        for instance, dagster in zip(instances, twins, strict=True):
            instance.dispose()
            dagster.stop()
            shutil.rmtree(dagster.home)  # Dagster's storage is gone; the sandbox and S3 keep running
        yield done
    finally:
        stack.kill()


# --- tests -------------------------------------------------------------------------------------------------


def test_two_dagsters_at_once_buy_each_image_once(processed: Processed) -> None:
    state = processed.state
    assert (state["creditsCharged"], state["calls"].get("E1", 0)) == (SAMPLE_COUNT * PRICE, SAMPLE_COUNT)
    charged = Counter(
        (c["input_content_hash"], c["workflow_id"], c["workflow_version"]) for c in state["ledger"]
    )
    assert len(charged) == SAMPLE_COUNT and set(charged.values()) == {1}, charged
    assert len(processed.outputs) == 2 * SAMPLE_COUNT  # an image and its sidecar each
    executions = [set(p["autoretouch_execution"].values()) for p in processed.provenances]
    assert "bought" in executions[0] | executions[1] and "adopted" in executions[0] | executions[1], (
        executions
    )


def test_a_new_dagster_on_an_empty_home_adopts_the_catalog_for_free(
    processed: Processed, dagsters: Callable[[DevProcess], HandStartedDagster]
) -> None:
    stack, before = processed.stack, processed.outputs
    creates = processed.state["calls"].get("E1", 0)
    assert stack.sandbox_state()["creditsCharged"] == SAMPLE_COUNT * PRICE

    fresh = dagsters(stack)
    instance = wait_for_ui(fresh)
    wait_until_settled([fresh], all_materialized(instance), "every partition materialized again")

    sources = [key.removeprefix(stack.settings.source_prefix) for key in stack.source_keys()]
    assert sorted(instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME)) == sorted(
        map(partition_key_for, sources)
    )
    assert {asset: set(p.values()) for asset, p in provenances(instance).items()} == {
        "uploaded_image": {"adopted"},
        "autoretouch_execution": {"adopted"},
        "retouched_image": {"adopted"},
    }
    state = stack.sandbox_state()
    assert (state["creditsCharged"], state["calls"].get("E1", 0)) == (SAMPLE_COUNT * PRICE, creates)
    assert outputs(stack) == before  # no object rewritten, added or removed
    instance.dispose()
