"""What the stages report, as plain facts; the Dagster layer turns each into a materialization or a note."""

from __future__ import annotations

from dataclasses import dataclass

from retouch_pipeline.autoretouch import WorkflowExecution
from retouch_pipeline.processing.item import WorkItem


@dataclass(frozen=True)
class Uploaded:
    """The image was validated and AutoRetouch holds its bytes."""

    item: WorkItem


@dataclass(frozen=True)
class ExecutionSettled:
    """The image has its execution (created, reused or retried); `execution` when its state is known."""

    item: WorkItem
    execution: WorkflowExecution | None


@dataclass(frozen=True)
class Delivered:
    """The result and its sidecar are in the output bucket (`item.output` says where)."""

    item: WorkItem
    execution: WorkflowExecution


@dataclass(frozen=True)
class Failed:
    """At the end of the step: the image failed (`item.failure` says why)."""

    item: WorkItem


@dataclass(frozen=True)
class StillPending:
    """At the end of the step: the image's execution is still processing or in QA."""

    item: WorkItem


@dataclass(frozen=True)
class CreateUnconfirmed:
    """At the end of the step: the image's create may or may not have happened (`item.unconfirmed`)."""

    item: WorkItem


Event = Uploaded | ExecutionSettled | Delivered | Failed | StillPending | CreateUnconfirmed
