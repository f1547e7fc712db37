"""The run queries of the step (its batch's time) and of the pending sensor (which runs ended), on a real
instance: public run-record reads only (see `test_public_api.py`)."""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from retouch_pipeline.assets.step import BACKFILL_TAG, batch_created_at
from retouch_pipeline.sensors import _finished_runs


def _created(instance: dg.DagsterInstance, run_id: str) -> object:
    record = instance.get_run_record_by_id(run_id)
    assert record is not None
    return record.create_timestamp


def test_every_run_of_a_backfill_labels_its_batch_with_the_first_runs_time() -> None:
    with dg.instance_for_test() as instance:
        first = create_run_for_test(instance, job_name="j", tags={BACKFILL_TAG: "bf"})
        time.sleep(0.01)
        create_run_for_test(instance, job_name="j", tags={BACKFILL_TAG: "other"})
        later = create_run_for_test(instance, job_name="j", tags={BACKFILL_TAG: "bf"})
        alone = create_run_for_test(instance, job_name="j")
        assert _created(instance, later.run_id) != _created(instance, first.run_id)
        assert batch_created_at(instance, "bf", later.run_id) == _created(instance, first.run_id)
        assert batch_created_at(instance, "bf", first.run_id) == _created(instance, first.run_id)
        assert batch_created_at(instance, None, alone.run_id) == _created(instance, alone.run_id)
        unknown = batch_created_at(instance, "gone", alone.run_id)  # its runs deleted: the run's own time
        assert unknown == _created(instance, alone.run_id)


def test_finished_runs_are_the_ended_ones() -> None:
    status = dg.DagsterRunStatus
    with dg.instance_for_test() as instance:
        runs = {
            s: create_run_for_test(instance, job_name="j", status=s).run_id
            for s in (status.SUCCESS, status.FAILURE, status.CANCELED, status.STARTED, status.NOT_STARTED)
        }
        many = {create_run_for_test(instance, job_name="j", status=status.SUCCESS).run_id for _ in range(101)}
        assert _finished_runs(instance, set(runs.values()) | {"missing"}) == {
            runs[status.SUCCESS],
            runs[status.FAILURE],
            runs[status.CANCELED],
        }
        assert _finished_runs(instance, many) == many  # more than one page of 100 ids
