"""The catalog sensor against moto's HTTP S3 server and a persistent Dagster instance."""

from __future__ import annotations

from typing import Any

from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline_tests.catalog.conftest import PREFIX, put_many


def test_smoke(make_harness: Any, s3: Any, bucket: str) -> None:
    put_many(s3, bucket, [f"{PREFIX}/c1/a.jpg", f"{PREFIX}/c1/b.jpg", f"{PREFIX}/x.jpg"])
    h = make_harness()
    t = h.tick()
    assert sorted(t.requested) == sorted(partition_key_for(k) for k in ["c1/a.jpg", "c1/b.jpg", "x.jpg"])
    t2 = h.tick()
    assert t2.requested == []
