"""The four invariants, checked from the world's own records after a profile went quiet.

- nothing lost: every source object under the prefix ends with a decodable output and a sidecar that
  describes it (source key, hash of the *current* source bytes, hash of the output bytes) or with a failure
  recorded in Dagster (the step failure's `failed_partitions` metadata, else the run's error) that names why;
- nothing paid twice: the sandbox's ledger has at most one charge per (input content hash, workflow
  version), and charged credits = distinct pairs x executionPrice;
- no partial objects: the concurrent reader (`observer`) never saw a broken output or an orphan sidecar;
- no secret leaked: no refresh or access token appears in any byte Dagster stored (run and event-log
  storage, key-value store, compute logs) under any DAGSTER_HOME the profile used, the wiped ones of
  `instance-loss` included, in the captured logs, or in a sidecar.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from retouch_devtools.chaos.catalog import SourceImage
from retouch_devtools.chaos.stack import ProfileStack
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_pipeline.assets import RETOUCHED
from retouch_pipeline.assets.common import latest_materializations, materialization_metadata, metadata_value
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.catalog.scanner import is_junk


@dataclass
class Outcome:
    """Per-source verdicts and the counts of the summary line."""

    images: int = 0
    processed: int = 0
    failed_explained: int = 0
    lost: int = 0
    double_charged: int = 0
    partial_objects: int = 0
    leaked_secrets: int = 0
    wrong_org_credits: int = 0
    """Credits charged to any organization but the configured one (a call that omitted `organization`)."""
    credits_charged: int = 0
    credits_expected: int = 0
    reasons: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"images={self.images} processed={self.processed} failed_explained={self.failed_explained} "
            f"lost={self.lost} double_charged={self.double_charged} partial_objects={self.partial_objects} "
            f"leaked_secrets={self.leaked_secrets} wrong_org_credits={self.wrong_org_credits}"
        )

    @property
    def holds(self) -> bool:
        return not (
            self.lost
            or self.double_charged
            or self.partial_objects
            or self.leaked_secrets
            or self.wrong_org_credits
        )


def _root_cause(error: Any) -> str:
    """`Class: message` of the error the pipeline raised, under Dagster's step-execution wrappers.

    Only Dagster's own wrappers are peeled off: the pipeline's error is what a user sees, not the library
    exception it was raised from (a `requests` ConnectionError under an `APIConnectionError`).
    """
    if error is None:
        return "step failed"
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    first = (error.message or "").strip().splitlines()
    return f"{error.cls_name}: {first[0] if first else ''}"


def _created(stack: ProfileStack, run_id: str) -> float:
    record = stack.instance.get_run_record_by_id(run_id)
    return record.create_timestamp.timestamp() if record is not None else 0.0


def recorded_failures(stack: ProfileStack) -> dict[str, str]:
    """partition -> reason of its latest recorded failure, from every run's failure events."""
    reasons: dict[str, str] = dict(stack.launch_failures)
    runs = sorted(stack.instance.get_runs(), key=lambda r: _created(stack, r.run_id))
    for run in runs:
        partitions = stack.run_partitions.get(run.run_id, [])
        for entry in stack.instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type is dg.DagsterEventType.STEP_FAILURE:
                data = event.step_failure_data
                failed = None
                if data.user_failure_data is not None:
                    value = data.user_failure_data.metadata.get("failed_partitions")
                    failed = value.value if value is not None else None
                if isinstance(failed, Mapping):
                    reasons.update({str(k): str(v) for k, v in failed.items()})
                else:
                    message = _root_cause(data.error)
                    reasons.update(dict.fromkeys(partitions, message))
            elif event.event_type is dg.DagsterEventType.RUN_FAILURE and not any(
                p in reasons for p in partitions
            ):
                reasons.update(dict.fromkeys(partitions, entry.message or "run failed"))
    return reasons


def check_output(
    stack: ProfileStack, source_key: str, source: bytes, record: Any, extra: SourceImage | None
) -> str | None:
    """None when the partition's last output and sidecar describe the current source; else what is wrong."""
    meta = materialization_metadata(record)
    uri = str(metadata_value(meta, "output_uri") or "")
    key = uri.removeprefix(f"s3://{stack.bucket}/")
    if not key.startswith(OUTPUT_PREFIX):
        return f"output {key!r} outside {OUTPUT_PREFIX}"
    try:
        image_bytes = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
        sidecar = json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=key + ".json")["Body"].read())
    except stack.s3.exceptions.NoSuchKey:
        return f"output or sidecar missing for {key}"
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()
            wrong = extra.check(image) if extra is not None and extra.check is not None else None
    except Exception as exc:
        return f"output {key} undecodable: {exc}"
    if wrong:
        return f"output {key}: {wrong}"
    if sidecar["source"]["key"] != source_key:
        return f"sidecar of {key} names source {sidecar['source']['key']!r}"
    if sidecar["source"]["content_hash"] != hashlib.sha256(source).hexdigest():
        return f"sidecar of {key} describes older source bytes"
    if sidecar["result"]["content_hash"] != hashlib.sha256(image_bytes).hexdigest():
        return f"sidecar of {key} does not match the image"
    return None


def check_charges(stack: ProfileStack, outcome: Outcome) -> None:
    ledger = stack.sandbox.state.accounting.ledger()
    pairs = Counter((c["input_content_hash"], c["workflow_version"]) for c in ledger)
    outcome.double_charged = sum(n - 1 for n in pairs.values())
    configured = stack.sandbox.organization_id
    outcome.wrong_org_credits = sum(
        c["credits"] for c in ledger if (c.get("organization_id") or configured) != configured
    )
    outcome.credits_charged = sum(c["credits"] for c in ledger)
    outcome.credits_expected = len(pairs) * int(stack.workflow["executionPrice"])
    if outcome.credits_charged != outcome.credits_expected:
        outcome.problems.append(f"charged {outcome.credits_charged} != expected {outcome.credits_expected}")


def count_leaks(
    secrets: Iterable[str], homes: Iterable[Path], texts: Iterable[bytes]
) -> tuple[int, list[str]]:
    """Occurrences of any secret in every file under each Dagster home and in the given texts."""
    needles = [s.encode() for s in secrets if s]
    found: list[str] = []
    blobs: list[tuple[str, bytes]] = [
        (str(p), p.read_bytes()) for home in homes for p in home.rglob("*") if p.is_file()
    ]
    blobs += [(f"captured text #{i}", t) for i, t in enumerate(texts)]
    for where, data in blobs:
        for needle in needles:
            if needle in data:
                found.append(f"token {needle[:6].decode()}... in {where}")
    return len(found), found


def evaluate(
    stack: ProfileStack,
    catalog: Mapping[str, SourceImage],
    expect_all: str | None,
    partial: list[str],
    texts: Iterable[bytes],
) -> Outcome:
    """Verdict per source object (see the module docstring).

    `catalog`: what was loaded (relative key -> its expected outcome); `expect_all`: a failure name every
    image must end with (profiles whose configuration is wrong), or None.
    """
    outcome = Outcome()
    failures = recorded_failures(stack)
    sources = [k for k in stack.source_keys()]
    relatives = [k[len(SOURCE_PREFIX) :] for k in sources]
    pks = {rel: partition_key_for(rel) for rel in relatives if not is_junk(rel)}
    records = latest_materializations(stack.instance, RETOUCHED, list(pks.values()))
    for source_key, rel in zip(sources, relatives, strict=True):
        outcome.images += 1
        loaded = catalog.get(rel)
        expect = expect_all or (loaded.expect if loaded else "ok")
        if is_junk(rel):
            outcome.failed_explained += 1
            outcome.reasons[rel] = "Junk: skipped by the catalog sensor (never a partition, never uploaded)"
            if expect != "junk":
                outcome.problems.append(f"{rel!r} skipped as junk, expected {expect}")
            continue
        pk = pks[rel]
        source = stack.s3.get_object(Bucket=stack.bucket, Key=source_key)["Body"].read()
        record = records.get(pk)
        problem = check_output(stack, source_key, source, record, loaded) if record else "never retouched"
        if problem is None:
            outcome.processed += 1
            if expect != "ok":
                outcome.problems.append(f"{rel!r} processed, expected failure {expect}")
        elif pk in failures:
            outcome.failed_explained += 1
            outcome.reasons[rel] = failures[pk]
            if expect == "ok":
                outcome.problems.append(
                    f"{rel!r} failed ({failures[pk]}; then {problem}), expected processed"
                )
            elif expect not in failures[pk]:
                outcome.problems.append(f"{rel!r} failed with {failures[pk]!r}, expected {expect}")
        else:
            outcome.lost += 1
            outcome.problems.append(f"LOST {rel!r}: {problem}, no failure recorded")
    check_charges(stack, outcome)
    outcome.partial_objects = len(partial)
    outcome.problems += partial
    outcome.leaked_secrets, leaks = count_leaks(stack.secrets, stack.homes, texts)
    outcome.problems += leaks
    return outcome
