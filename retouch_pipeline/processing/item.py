"""One image while a step works on it: where it stands (`State`), what is known about it, why it failed.

Why an explicit state: each stage moves an item forward and only forward (`advance` refuses any other move),
so "has it been uploaded?", "was an execution bought for it?" are one question to `state`, not a guess from
which optional fields happen to be filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from retouch_pipeline.processing.failures import Failure


class State(Enum):
    NEW = "new"
    """Known by its partition key only."""
    VALIDATED = "validated"
    """Source read from S3, hashed and decoded: AutoRetouch will accept it."""
    UPLOADED = "uploaded"
    """AutoRetouch holds the bytes."""
    RESOLVED = "resolved"
    """What it needs is decided (`purchase`): a new execution, an existing one, or a retry."""
    CREATED = "created"
    """A new execution was bought for it."""
    REUSED = "reused"
    """An execution bought earlier (or for the same content in this step) serves it."""
    RETRYING = "retrying"
    """Its FAILED / PAYMENT_REQUIRED execution was retried (E8)."""
    PENDING = "pending"
    """Still processing or in QA when the step stopped waiting (the pending sensor finishes it)."""
    UNCONFIRMED = "create_unconfirmed"
    """Its create's answer was lost and the execution is neither found nor proven absent yet: nothing may
    create again for it until the pending sensor settles it (`WorkItem.unconfirmed` says since when)."""
    DELIVERED = "delivered"
    """The result and its sidecar are in the output bucket."""
    FAILED = "failed"


_NEXT: dict[State, frozenset[State]] = {
    # REUSED straight from NEW or UPLOADED: a step that delivers without creating reads the recorded execution
    State.NEW: frozenset({State.VALIDATED, State.REUSED}),
    State.VALIDATED: frozenset({State.UPLOADED}),
    State.UPLOADED: frozenset({State.RESOLVED, State.REUSED}),
    State.RESOLVED: frozenset({State.CREATED, State.REUSED, State.RETRYING, State.UNCONFIRMED}),
    State.CREATED: frozenset({State.PENDING, State.DELIVERED}),
    State.REUSED: frozenset({State.PENDING, State.DELIVERED}),
    State.RETRYING: frozenset({State.PENDING, State.DELIVERED}),
    State.PENDING: frozenset(),
    State.UNCONFIRMED: frozenset(),
    State.DELIVERED: frozenset(),
    State.FAILED: frozenset(),
}


class Purchase(Enum):
    """What an image needs from AutoRetouch (the `action` of its execution's record)."""

    CREATE = "create"
    REUSE = "reuse"
    RETRY = "retry"


@dataclass(frozen=True)
class ImageFacts:
    """The source image as validation found it."""

    format: str
    width: int
    height: int
    size: int


@dataclass(frozen=True)
class Unconfirmed:
    """A create whose fate is unknown: when it was attempted, and when a miss in the list proves absence."""

    attempted_at: str
    """ISO 8601, the attempt's time (the lookup's `since`)."""
    settle_until: str
    """ISO 8601: not listed by then = never created."""


@dataclass(frozen=True)
class OutputFacts:
    """The result as delivery wrote it."""

    key: str
    result_hash: str
    size: int
    width: int
    height: int
    mode: str
    preview_after: str
    written_at: str


@dataclass(eq=False)
class WorkItem:
    """Everything known about one partition while a step processes it."""

    partition_key: str
    relative_key: str
    collection: str
    source_key: str
    state: State = State.NEW
    source_etag: str | None = None
    content_hash: str | None = None
    image: ImageFacts | None = None
    preview_before: str | None = None
    converted_from: str | None = None
    """The source's format when it was converted to PNG before upload (GIF, BMP, AVIF, ...)."""
    bytes_sent: bool = False
    """False when AutoRetouch already had the bytes (HEAD de-dup)."""
    idempotency_key: str | None = None
    purchase: Purchase | None = None
    adopted: bool = False
    """Its execution came from the durable record (ledger, sidecar, label), not from the event log."""
    execution_id: str | None = None
    execution_status: str | None = None
    execution_created_at: str | None = None
    batch_id: str | None = None
    pending_status: str | None = None
    handed_to: str | None = None
    """The run its pending execution was handed to (`handover`): that run delivers it."""
    unconfirmed: Unconfirmed | None = None
    output: OutputFacts | None = None
    failure: Failure | None = None

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    def advance(self, state: State) -> None:
        """Move to `state`; a move the stages never make is a bug and raises."""
        if state not in _NEXT[self.state]:
            raise ValueError(f"{self.partition_key}: {self.state.name} cannot become {state.name}")
        self.state = state

    def fail(self, failure: Failure) -> None:
        if self.state in (State.DELIVERED, State.FAILED):
            raise ValueError(f"{self.partition_key}: {self.state.name} cannot fail ({failure.reason})")
        self.failure, self.state = failure, State.FAILED
