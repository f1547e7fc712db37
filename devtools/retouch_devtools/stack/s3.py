"""The local S3 (and SQS) of every stack: moto's server, dummy credentials, clients, buckets, seeding.

moto is started here and nowhere else: as a thread of this process (`running_moto`: tests, chaos, the dev
stack, the sensor benchmark) or as a process of its own (`moto_process`: the benchmarks, whose CPU figures
must not include it). Explicit dummy credentials keep a developer's real AWS profile (and its SSO prompts)
out of every client and child process.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from retouch_devtools.stack.net import free_port, port_open, wait_until
from retouch_devtools.stack.process import Service

REGION = "us-east-1"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}
REMOVED_AWS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
CREDENTIALS: dict[str, Any] = {
    "aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
    "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
    "region_name": REGION,
}
"""boto3 client / `S3Resource` keyword arguments for the local S3."""


def clean_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without a developer's AWS profile and Dagster
    settings, with the dummy credentials: the environment of a stack's child processes."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in REMOVED_AWS and not k.startswith("DAGSTER_")
    }
    env.update(DUMMY_AWS)
    return env


@contextmanager
def running_moto(port: int = 0, host: str = "127.0.0.1", *, paged_listing: bool = False) -> Iterator[str]:
    """moto's server (S3 and SQS over real HTTP) as a thread while the block runs; yields its URL.

    `paged_listing`: ListObjectsV2 costs one page, as in S3, instead of moto's scan and sort of the whole
    bucket per page (`_paged_list_objects_v2`), and its timestamps are rendered without a dateutil parse
    each (`_fast_timestamps`): 100,000 objects list in seconds rather than minutes. Same answers."""
    import moto.core.serialize
    from botocore.utils import parse_to_aware_datetime
    from moto.s3.models import S3Backend
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    original = S3Backend.list_objects_v2
    parse = parse_to_aware_datetime  # what moto.core.serialize imports and calls
    if paged_listing:
        S3Backend.list_objects_v2 = _paged_list_objects_v2(original)  # type: ignore[method-assign]
        moto.core.serialize.parse_to_aware_datetime = _fast_timestamps(parse)  # type: ignore[attr-defined]
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound = server.get_host_and_port()
    try:
        yield f"http://{bound_host}:{bound}"
    finally:
        server.stop()
        S3Backend.list_objects_v2 = original  # type: ignore[method-assign]
        moto.core.serialize.parse_to_aware_datetime = parse  # type: ignore[attr-defined]


def _fast_timestamps(parse: Any) -> Any:
    """botocore's `parse_to_aware_datetime` (a dateutil parse, about 1 ms), with ISO 8601 strings such as
    moto's own `2026-01-01T00:00:00.000Z` read by `datetime.fromisoformat` first."""
    from datetime import UTC, datetime

    def parse_to_aware_datetime(value: Any) -> Any:
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return parse(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return parse(value)

    return parse_to_aware_datetime


def _paged_list_objects_v2(original: Callable[..., tuple[Any, bool, str | None]]) -> Any:
    """moto's `list_objects_v2` with a listing's sorted key names taken once, at its first page, and each
    following page cut from them by bisection (same answers and tokens; delimiter listings unchanged).
    Keys written during a listing after its first page are not in it; keys deleted meanwhile are skipped."""
    import bisect

    from moto.s3.models import FakeDeleteMarker

    snapshots: dict[str, list[str]] = {}

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> tuple[Any, bool, str | None]:
        names = snapshots.pop(continuation_token, None) if continuation_token else None
        if delimiter or max_keys <= 0 or (continuation_token and names is None):
            return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        if names is None:
            names = sorted(n for n in list(bucket.keys.keys()) if n.startswith(prefix or ""))
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        index = bisect.bisect_right(names, after) if after else 0
        page: list[Any] = []
        while index < len(names) and len(page) < max_keys:
            key = bucket.keys.get(names[index])
            if key is not None and not isinstance(key, FakeDeleteMarker):
                page.append(key)
            index += 1
        if index >= len(names) or not page:
            return page, False, None
        token = uuid.uuid4().hex
        self._pagination_tokens[token] = page[-1].name
        snapshots[token] = names
        return page, True, token

    return list_objects_v2


def moto_process(log_dir: Path, cwd: Path) -> tuple[Service, str]:
    """moto's server as a process of its own on a free port (its CPU is not the caller's); its URL."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    service = Service("moto", command, clean_environment(), cwd, log_dir / "moto.log").start()
    wait_until(lambda: port_open(port), 60, what="moto server")
    return service, f"http://127.0.0.1:{port}"


def s3_client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the local S3, with the dummy credentials whatever the developer's AWS setup."""
    return boto3.session.Session(**CREDENTIALS).client("s3", endpoint_url=endpoint_url)


def sqs_client(endpoint_url: str) -> Any:
    return boto3.session.Session(**CREDENTIALS).client("sqs", endpoint_url=endpoint_url)


def ensure_bucket(client: Any, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)


def new_bucket(client: Any, prefix: str) -> str:
    """A bucket with a fresh name (tests and profiles share one moto server)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


CONDITION_HEADERS = ("If-None-Match", "If-Match")


def ignoring_conditional_writes(client: Any) -> Any:
    """`client` as it behaves against an S3-compatible store that ignores conditional PUTs (older MinIO
    releases, say): the If-None-Match / If-Match headers are dropped before a PutObject is signed, so moto
    receives, and performs, the plain overwrite such a store would. The store itself stays real; only what it
    would discard never reaches it."""

    def drop(request: Any, **_: Any) -> None:
        for header in CONDITION_HEADERS:
            if header in request.headers:
                del request.headers[header]

    client.meta.events.register("before-sign.s3.PutObject", drop)
    return client


def put_many(s3: Any, bucket: str, keys: Iterable[str], body: bytes = b"img") -> None:
    """Put objects over HTTP, 16 at a time (moto takes a few hundred puts per second that way)."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=body), keys))


def seed_backend(bucket: str, keys: Iterable[str] | Mapping[str, bytes], body: bytes = b"img") -> None:
    """Seed a large prefix straight into the in-process moto server's backend (much faster than HTTP);
    a sensor still lists it over HTTP. `keys` as a mapping gives each object its own body."""
    backend = _backend()
    bodies = keys if isinstance(keys, Mapping) else dict.fromkeys(keys, body)
    for key, value in bodies.items():
        backend.put_object(bucket, key, value)


def backend_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    """key -> body of the in-process moto server's objects under `prefix` (copying a processed catalog)."""
    stored = _backend().get_bucket(bucket).keys
    return {key: stored[key].value for key in list(stored.keys()) if key.startswith(prefix)}


def _backend() -> Any:
    from moto.backends import get_backend
    from moto.core.models import DEFAULT_ACCOUNT_ID

    return get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]


def notify_queue(s3: Any, sqs: Any, bucket: str, prefix: str = "") -> str:
    """A new queue receiving the bucket's object-created and object-removed events (under `prefix`, as the
    README recommends: outputs and the pipeline's state in the same bucket then send nothing); its URL."""
    queue_url: str = sqs.create_queue(QueueName=f"catalog-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    **(
                        {"Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}
                        if prefix
                        else {}
                    ),
                }
            ]
        },
    )
    return queue_url
