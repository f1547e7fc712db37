"""The SQS option: S3 event notifications read from a queue (moto serves both over HTTP)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from retouch_devtools.stack.s3 import notify_queue, put_many
from retouch_devtools.stack.sensor import PREFIX
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.scanner import ListingScanner, SqsScanner
from retouch_pipeline.catalog.state import ScanState


class CountingClient:
    """Counts the API calls made through a boto3 client."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._client, name)


def test_sqs_sensor_bootstraps_by_listing_then_follows_events(
    make_harness: Any, s3: Any, sqs: Any, bucket: str
) -> None:
    queue_url = notify_queue(s3, sqs, bucket)
    put_many(s3, bucket, [f"{PREFIX}/c/a.jpg", f"{PREFIX}/c/b.jpg", "elsewhere/x.jpg"])
    h = make_harness(mode="sqs", sqs_queue_url=queue_url, delete_partitions_of_deleted_objects=True)
    assert sorted(h.tick().requested) == [partition_key_for("c/a.jpg"), partition_key_for("c/b.jpg")]

    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/c/a.jpg", Body=b"new content")
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/c/b.jpg")
    put_many(s3, bucket, [f"{PREFIX}/c/red shoe+1.jpg", f"{PREFIX}/c/.DS_Store"])
    tick = h.tick()  # the events from before the bootstrap come too: deduplicated by ETag
    assert sorted(tick.requested) == [partition_key_for("c/a.jpg"), partition_key_for("c/red shoe+1.jpg")]
    assert tick.deleted == [partition_key_for("c/b.jpg")]
    assert h.tick().requested == []


def test_sqs_steady_tick_costs_o_new_events_and_acknowledges_after_commit(
    s3: Any, sqs: Any, bucket: str
) -> None:
    queue_url = notify_queue(s3, sqs, bucket)
    put_many(s3, bucket, [f"{PREFIX}/c/{i:04d}.jpg" for i in range(150)])
    s3_counting, sqs_counting = CountingClient(s3), CountingClient(sqs)
    scanner = SqsScanner(
        ListingScanner(s3_counting, bucket, PREFIX), sqs_counting, queue_url, max_messages=2000
    )
    state = ScanState()
    assert len(scanner.scan(state).new) == 150  # bootstrap listing
    assert scanner.scan(state).new == []  # drains the 150 creation events
    s3_counting.calls.clear()
    sqs_counting.calls.clear()

    put_many(s3, bucket, [f"{PREFIX}/c/new{i}.jpg" for i in range(10)])
    result = scanner.scan(state)
    assert len(result.new) == 10
    assert s3_counting.calls["list_objects_v2"] == 0
    assert sqs_counting.calls["receive_message"] <= 3  # 10 events: 1-2 batches and an empty receive
    # Read messages stay on the queue (invisible) until the next tick deletes them.
    assert len(state.pending_receipts) == 10
    scanner.scan(state)
    assert sqs_counting.calls["delete_message_batch"] >= 1
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
