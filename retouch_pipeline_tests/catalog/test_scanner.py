"""Listing scanner bounds, with a fake clock and a fake S3 client (deterministic)."""

from __future__ import annotations

from typing import Any

import pytest

from retouch_devtools.stack.s3 import s3_client
from retouch_pipeline.catalog.scanner import BucketError, ListingScanner, is_junk, normalize_prefix
from retouch_pipeline.catalog.state import ScanState


class FakeS3:
    """Sorted keys, ListObjectsV2 paging semantics, each call advancing a fake clock by `page_seconds`."""

    def __init__(self, keys: list[str], clock: list[float], page_seconds: float) -> None:
        self.keys = sorted(keys)
        self.clock = clock
        self.page_seconds = page_seconds
        self.calls = 0

    def list_objects_v2(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        self.clock[0] += self.page_seconds
        after = kw.get("ContinuationToken") or kw.get("StartAfter") or ""
        matching = [k for k in self.keys if k.startswith(kw["Prefix"]) and k > after]
        page = matching[: kw["MaxKeys"]]
        truncated = len(matching) > len(page)
        result: dict[str, Any] = {
            "Contents": [{"Key": k, "ETag": '"e"', "Size": 1} for k in page],
            "IsTruncated": truncated,
        }
        if truncated:
            result["NextContinuationToken"] = page[-1]
        return result


def make(
    keys: list[str], *, max_keys: int, max_seconds: float, page_seconds: float
) -> tuple[ListingScanner, FakeS3]:
    clock = [0.0]
    fake = FakeS3(keys, clock, page_seconds)
    scanner = ListingScanner(
        fake, "b", "p", max_keys=max_keys, max_seconds=max_seconds, clock=lambda: clock[0]
    )
    return scanner, fake


def test_time_bound_stops_before_a_page_would_overrun() -> None:
    scanner, fake = make(
        [f"p/c/{i:05d}" for i in range(10_000)], max_keys=100_000, max_seconds=2.0, page_seconds=0.6
    )
    state = ScanState()
    result = scanner.scan(state)
    assert result.seconds <= 2.0 and fake.calls == 3 and result.listed == 3000
    seen = len(result.new)
    while not result.pass_completed:
        result = scanner.scan(state)
        assert result.seconds <= 2.0
        seen += len(result.new)
    assert seen == 10_000 and state.passes == 1


def test_count_bound_is_exact() -> None:
    scanner, _ = make(
        [f"p/c/{i:05d}" for i in range(2_500)], max_keys=1_200, max_seconds=60, page_seconds=0.01
    )
    state = ScanState()
    assert [scanner.scan(state).listed for _ in range(3)] == [1200, 1200, 100]
    assert state.passes == 1 and state.start_after is None


def test_deletions_are_reported_at_the_end_of_a_pass() -> None:
    scanner, fake = make(["p/c/a", "p/c/b", "p/c/c", "p/c/d"], max_keys=2, max_seconds=60, page_seconds=0.01)
    state = ScanState()
    scanner.scan(state)
    scanner.scan(state)
    fake.keys.remove("p/c/a")
    assert scanner.scan(state).deleted_digests == set()  # mid-pass: nothing concluded yet
    assert len(scanner.scan(state).deleted_digests) == 1


@pytest.mark.parametrize(
    ("key", "junk"),
    [
        (".DS_Store", True),
        ("c/.DS_Store", True),
        ("c/", True),
        ("c/._shoe.jpg", True),
        ("c/Thumbs.db", True),
        ("c/shoe.jpg", False),
        ("c/readme.txt", False),
        (".hidden.jpg", False),
    ],
)
def test_junk(key: str, junk: bool) -> None:
    assert is_junk(key) is junk


def test_normalize_prefix() -> None:
    assert normalize_prefix("/incoming/") == "incoming/" == normalize_prefix("incoming")
    assert normalize_prefix("") == ""


def test_a_missing_bucket_is_named_with_what_to_do(moto_url: str) -> None:
    """Real S3 semantics (moto over HTTP): the sensor's listing names the bucket, not just NoSuchBucket."""
    scanner = ListingScanner(s3_client(moto_url), "no-such-catalog", "incoming/")
    with pytest.raises(BucketError) as raised:
        scanner.scan(ScanState())
    message = str(raised.value)
    assert "'no-such-catalog' does not exist" in message and "CATALOG_SOURCE_BUCKET" in message


def test_the_pipelines_reserved_folder_is_never_a_source() -> None:
    """Outputs mirror source keys: a source under `.retouch-pipeline/` would write into the ledger."""
    from retouch_pipeline.catalog.scanner import is_junk

    assert is_junk(".retouch-pipeline/ledger/x.png") and is_junk(".retouch-pipeline/a.jpg")
    assert not is_junk("spring/.retouch-pipeline.png") and not is_junk("spring/.retouch-pipeline/a.png")
