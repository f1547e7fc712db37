"""Hand-over: a step whose last few executions are all that keep its run open gives them to the next run of
its collection, queued behind it, and ends.

Why: a run holds its place under the run limits (per collection, per backfill, the `autoretouch` pool) until
it ends, and it ends with its last execution. When AutoRetouch starts any waiting execution (its order is not
documented; the strict sandbox picks at random), a run's last execution is among the last of everything
queued, so a collection's queued runs started only when the service's queue was nearly empty, and the
service idled while they started, uploaded and bought (docs/performance.md, "Session 14"). Handing over the
tail lets the next run start and buy while the service still has work; only `HAND_OVER_AT` executions per
run change hands, so the work bought ahead stays bounded by the run limits as before.

The protocol (docs/durability.md, "Hand-over"):

1. once at most `HAND_OVER_AT` of its executions are pending, a step asks for the oldest queued run of its
   collection (of its backfill, without a collection tag); none: it keeps waiting;
2. it writes one record, `<output prefix>/.retouch-pipeline/state/handovers/<successor>/<own run>.json`,
   naming the partitions (and where their executions stand in the executions list, `Handed`), then leaves
   them PENDING with `handed_to` in their notes, and ends;
3. the successor reads the records addressed to it before each status pass of its wait, rebuilds the items
   from their recorded executions (nothing is bought: the execution ids come from the event log), waits for
   them beside its own and delivers them; it deletes each record it took.

Nothing is lost when a step fails: the pending-executions sensor holds a handed-over partition for the
successor while the successor has not ended, and finishes whatever it did not deliver once it has (it never
started, failed, or handed the partition on).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

from retouch_pipeline.state_objects import state_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HAND_OVER_AT = 16
"""At most this many pending executions are handed over: one round of the service's workers. Few enough
that the successor's wait absorbs them; enough that a run stops holding its place for a random order's
tail."""


class HandOver(Protocol):
    """Where a step finds its successor and exchanges hand-over records (`S3HandOver`)."""

    def successor(self) -> str | None:
        """The run to hand over to: the oldest queued run of the step's collection, or None."""
        ...

    def send(self, successor: str, handed: Handed) -> None:
        """Record that `successor` takes over these partitions (before the step leaves them pending)."""
        ...

    def received(self) -> Handed:
        """What was handed to this step's run since the last call (each record is read once)."""
        ...


@dataclass
class Handed:
    """Partitions handed over, and where their executions stand in an oldest-first executions list
    (`ListPositions`: without them the successor would page back to executions created long before its own,
    on every status pass)."""

    partitions: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)


class S3HandOver:
    """Hand-over records beside the ledger, one JSON object per (successor, predecessor) pair."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        output_prefix: str,
        run_id: str,
        find_successor: Callable[[], str | None],
    ) -> None:
        self.s3, self.bucket, self.run_id = s3, bucket, run_id
        self.prefix = state_prefix(output_prefix, "handovers")
        self.find_successor = find_successor

    def successor(self) -> str | None:
        found = self.find_successor()
        return found if found != self.run_id else None

    def send(self, successor: str, handed: Handed) -> None:
        body = json.dumps({"from_run": self.run_id, **asdict(handed)})
        key = f"{self.prefix}{successor}/{self.run_id}.json"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode(), ContentType="application/json")

    def received(self) -> Handed:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{self.run_id}/")
        handed = Handed()
        for entry in listed.get("Contents", []):
            record = json.loads(self.s3.get_object(Bucket=self.bucket, Key=entry["Key"])["Body"].read())
            handed.partitions += [str(k) for k in record.get("partitions", [])]
            handed.positions.update({str(e): int(p) for e, p in record.get("positions", {}).items()})
            self.s3.delete_object(Bucket=self.bucket, Key=entry["Key"])
        return handed
