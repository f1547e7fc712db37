"""SIGKILL a real run at a chosen stage: the run executes in a child process that stops at a stage marker.

The child (`python -m retouch_devtools.chaos.killer`, spec as JSON on stdin, the refresh token in its
environment, never on its command line) opens the profile's on-disk Dagster instance and runs the
partitions like `ProfileStack.run`. Stage markers are wrappers installed in the child only:

| stage | marker placed |
|---|---|
| `before-upload` | before the n-th `upload_image` (earlier images may be uploaded and created) |
| `after-create` | after the n-th `create_execution` returned, before its id is recorded in Dagster |
| `while-downloading` | after the n-th result was downloaded to a temporary file, before it reaches S3 |
| `while-writing-s3` | after the n-th output image PUT, before its sidecar PUT |

At the marker the child prints `CHAOS-STAGE <stage>` and blocks; the parent sends SIGKILL at once. Other
threads of the step keep working until the signal lands, as they would in a real crash. The parent then
marks the run failed, as Dagster's run monitoring does for a dead worker (`deploy/dagster.yaml`).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

STAGES = ("before-upload", "after-create", "while-downloading", "while-writing-s3")
MARKER = "CHAOS-STAGE"


def _marker(stage: str) -> None:
    print(f"{MARKER} {stage}", flush=True)
    time.sleep(3600)


def _counting(after: int) -> Callable[[], bool]:
    lock, calls = threading.Lock(), [0]

    def reached() -> bool:
        with lock:
            calls[0] += 1
            return calls[0] == after

    return reached


def install_marker(stage: str, after: int) -> None:
    """Patch the child's client or S3 resource so that the `after`-th pass through `stage` stops."""
    from dagster_aws.s3 import S3Resource

    from retouch_pipeline.autoretouch import AutoRetouchClient

    reached = _counting(after)

    def wrap(name: str, before: bool) -> None:
        original = getattr(AutoRetouchClient, name)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if before and reached():
                _marker(stage)
            result = original(self, *args, **kwargs)
            if not before and reached():
                _marker(stage)
            return result

        setattr(AutoRetouchClient, name, wrapper)

    if stage == "before-upload":
        wrap("upload_image", before=True)
    elif stage == "after-create":
        wrap("create_execution", before=False)
    elif stage == "while-downloading":
        wrap("download_result", before=False)
    elif stage == "while-writing-s3":
        original_get_client = S3Resource.get_client

        def hook(params: dict[str, Any], **_: Any) -> None:
            if str(params.get("Key", "")).endswith(".json") and reached():
                _marker(stage)

        def get_client(self: S3Resource) -> Any:
            client = original_get_client(self)
            client.meta.events.register("before-parameter-build.s3.PutObject", hook)
            return client

        S3Resource.get_client = get_client  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def child_main() -> None:
    """Entry point of the child: read the spec, install the marker, run the partitions."""
    import dagster as dg

    from retouch_devtools.chaos.stack import build_resources
    from retouch_pipeline.assets import PIPELINE_KEYS, catalog_pipeline
    from retouch_pipeline.assets.costs import autoretouch_costs

    spec = json.load(sys.stdin)
    install_marker(spec["stage"], spec["after"])
    with dg.DagsterInstance.from_config(spec["home"]) as instance:
        result = dg.materialize(
            [catalog_pipeline, autoretouch_costs],
            instance=instance,
            resources=build_resources(spec["settings"]),
            selection=list(PIPELINE_KEYS),
            raise_on_error=False,
            tags=spec["tags"],
        )
    print(f"CHAOS-RUN {result.run_id} success={result.success}", flush=True)


def run_and_kill(
    home: str, settings: dict[str, Any], tags: dict[str, str], stage: str, after: int, timeout: float = 300
) -> tuple[bool, bytes]:
    """Run in a child, SIGKILL it at the marker; (killed at the marker?, the child's whole output)."""
    spec = {"home": home, "settings": settings, "tags": tags, "stage": stage, "after": after}
    child = subprocess.Popen(
        [sys.executable, "-m", "retouch_devtools.chaos.killer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "DAGSTER_HOME": home},
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    output: list[bytes] = []
    killed = False
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    try:
        for line in child.stdout:
            output.append(line)
            if line.startswith(MARKER.encode()):
                os.kill(child.pid, signal.SIGKILL)
                killed = True
                output.extend(child.stdout.readlines())
                break
        child.wait()
    finally:
        timer.cancel()
    return killed, b"".join(output)


def fail_orphaned_runs(instance: Any, reason: str, run_ids: Sequence[str] | None = None) -> list[str]:
    """Mark STARTED runs whose worker is gone as failed (what run monitoring does); their ids."""
    import dagster as dg

    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if run_ids is None or run.run_id in run_ids:
            instance.report_run_failed(run, reason)
            failed.append(run.run_id)
    return failed


if __name__ == "__main__":
    child_main()
