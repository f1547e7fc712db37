"""The per-image work, with no Dagster in it: validate, upload, create (and its budget), wait, deliver.

`orchestrator.process` runs the stages over many images and yields plain events (`events.py`); the Dagster
layer (`retouch_pipeline.assets`, `schedules.py`) turns them into materializations, notes and check results.
What was bought before is asked of a `records.PurchaseRecords`, which the Dagster layer implements.
"""
