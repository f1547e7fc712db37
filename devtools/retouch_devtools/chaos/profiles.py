"""The named fault profiles: what each breaks, when, and how the operator recovers.

A profile is data plus up to three hooks, all run by `harness.run_profile`:
`first_pass(ctx)` replaces the default first pass (tick the catalog sensor, run every batch) when the fault
must sit at a precise point; `during(ctx)` runs in a thread alongside the first pass (a fault that must hit
while work is in flight); `recover(ctx)` is what an operator does before the resume passes (top up, log in
again, approve QA). Faults set by `faults`/`s3_error_rate` stay on during the resume passes: recovery must
work through them, not after them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from retouch_devtools.chaos.killer import STAGES, fail_orphaned_runs, run_and_kill
from retouch_devtools.chaos.profile import Hook, Profile, ProfileRun
from retouch_devtools.sandbox.catalog import FOREIGN_ORGANIZATION_ID
from retouch_devtools.sandbox.executions import Execution
from retouch_devtools.stack.env import SOURCE_PREFIX
from retouch_devtools.stack.inprocess import range_tags
from retouch_devtools.stack.net import WaitAborted, wait_until
from retouch_pipeline.assets.common import (
    EXECUTION,
    iter_materializations,
    materialization_metadata,
    metadata_value,
)


def _reached(condition: Callable[[], bool], stop: threading.Event, timeout: float = 120) -> bool:
    """Whether `condition` held before `timeout` and before the first pass ended (`stop`)."""

    def stopped() -> str | None:
        return "the first pass ended" if stop.is_set() else None

    try:
        wait_until(condition, timeout, interval=0.05, what="a hook's moment", abort=stopped)
    except (TimeoutError, WaitAborted):
        return False
    return True


# ---- hooks ----------------------------------------------------------------------------------------


def _revoke_then_run(run: ProfileRun) -> None:
    stack = run.stack
    stack.sandbox.state.auth.revoke_refresh_token(stack.token)
    before = stack.sandbox.state.accounting.calls["A3"]
    started = time.monotonic()
    batches = run.default_first_pass()
    refreshes = stack.sandbox.state.accounting.calls["A3"] - before
    run.notes["revoked: runs"] = batches
    run.notes["revoked: token refreshes tried"] = refreshes
    run.notes["revoked: seconds to fail"] = round(time.monotonic() - started, 1)
    if refreshes > 2 * max(1, batches):
        run.problems.append(f"revoked refresh token retried {refreshes} times for {batches} run(s): a loop")


def _log_in_again(run: ProfileRun) -> None:
    run.stack.set_token(run.stack.mint_refresh_token())


def _drain_balance(run: ProfileRun) -> None:
    accounting = run.stack.sandbox.state.accounting
    third = max(1, run.images // 3)
    if _reached(lambda: accounting.calls["E1"] >= third, run.stop_during):
        accounting.set_balance(0)  # executions created but not charged yet now end PAYMENT_REQUIRED
        run.notes["balance set to 0 after creates"] = accounting.calls["E1"]


def _top_up(run: ProfileRun) -> None:
    state = run.stack.sandbox.state.engine.counts_by_status()
    run.notes["PAYMENT_REQUIRED before top-up"] = state["PAYMENT_REQUIRED"]
    run.stack.sandbox.state.accounting.top_up(run.images * int(run.stack.workflow["executionPrice"]) * 2)


def _approve_qa(run: ProfileRun) -> None:
    engine = run.stack.sandbox.state.engine
    time.sleep(2)  # "a long time" at the harness's scale: every run stopped waiting before this
    approved = [e.id for e in engine.list_executions() if e.status == "IN_QA"]
    for execution_id in approved:
        engine.approve_qa(execution_id)
    run.notes["IN_QA approved after the runs ended"] = len(approved)


def _delete_between_list_and_read(run: ProfileRun) -> None:
    stack = run.stack
    batches = stack.tick_catalog()
    victim = SOURCE_PREFIX + run.loaded[0].relative_key
    stack.s3.delete_object(Bucket=stack.bucket, Key=victim)
    run.notes["deleted after listing"] = victim
    for selection, keys in batches:
        stack.run(keys, selection)


def _overwrite_while_processed(run: ProfileRun) -> None:
    import hashlib

    from retouch_devtools.samples import product_photo

    stack = run.stack
    target = run.loaded[0]
    digest = hashlib.sha256(target.data).hexdigest()
    if _reached(lambda: stack.sandbox.state.store.get(digest) is not None, run.stop_during):
        stack.s3.put_object(
            Bucket=stack.bucket,
            Key=SOURCE_PREFIX + target.relative_key,
            Body=product_photo(target.relative_key + "#v2", 150, 100, "PNG"),
        )
        run.notes["overwritten after its upload"] = target.relative_key


def _restart_sandbox(run: ProfileRun) -> None:
    stack = run.stack
    third = max(1, run.images // 3)
    if _reached(lambda: stack.sandbox.state.accounting.calls["E1"] >= third, run.stop_during):
        stack.restart_sandbox(down_seconds=1.0)
        run.notes["sandbox restarted after creates"] = third
        run.notes["sandbox state restored"] = stack.sandbox.state.restored


def _lose_instance(run: ProfileRun) -> None:
    """First pass of `instance-loss`: Dagster's storage wiped once a random number of executions (1 to N-1)
    has completed, and the pipeline restarted at once on the empty instance (sensor tick, runs) while the old
    instance's run is still in flight.

    The wipe happens inside the sandbox's completion of that execution, so it never depends on a poller
    seeing the moment before the first pass ends, and at least one image of the old run is still without
    its completed execution when it happens. A first pass that never reaches the moment (a 1-image
    catalog, an unexpected fault) gets its wipe right after it: the profile can never pass as a baseline.
    The notes say when the wipe happened, what was left to do, and what the restarted pipeline then
    adopted or bought.
    """
    stack = run.stack
    engine = stack.sandbox.state.engine
    moment = random.randint(1, max(1, run.images - 1))
    guard = threading.Lock()
    restarts: list[threading.Thread] = []

    def restart() -> None:
        for selection, keys in stack.tick_catalog():
            stack.run(keys, selection)

    def wipe(when: str) -> bool:
        counts = engine.counts_by_status()  # before the guard: a sandbox worker holds the engine's lock here
        with guard:
            if "instance wiped" in run.notes:
                return False
            stack.lose_instance()
            run.notes["instance wiped"] = when
            run.notes["executions completed at the wipe"] = counts["COMPLETED"]
            run.notes["images not completed at the wipe"] = run.images - counts["COMPLETED"]
            return True

    def on_finish(execution: Execution) -> None:
        if execution.status != "COMPLETED" or engine.counts_by_status()["COMPLETED"] < moment:
            return
        if wipe("during the first pass"):
            restarts.append(threading.Thread(target=restart, name="instance-loss-restart", daemon=True))
            restarts[-1].start()

    engine.on_finish.append(on_finish)
    try:
        run.default_first_pass()
    finally:
        engine.on_finish.remove(on_finish)
    if wipe("after the first pass"):
        restart()
    for thread in restarts:
        thread.join(timeout=600)
    provenance = Counter(
        str(metadata_value(materialization_metadata(record), "provenance"))
        for record in iter_materializations(stack.instance, EXECUTION)
    )
    run.notes["after the wipe: adopted"] = provenance["adopted"]
    run.notes["after the wipe: bought"] = provenance["bought"]


def _with_token(run: ProfileRun, token: str) -> None:
    run.stack.set_token(token)
    run.default_first_pass()


def _kill_at(stage: str) -> Hook:
    def first_pass(run: ProfileRun) -> None:
        stack = run.stack
        batches = stack.tick_catalog()
        (_selection, keys), rest = batches[0], batches[1:]
        tags = {**range_tags(stack.registered(), keys)[0], "retouch/trigger": "chaos"}
        after = max(1, len(keys) // 2)
        killed, output = run_and_kill(str(stack.home), stack.settings(), tags, stage, after)
        run.texts.append(output)
        orphans = fail_orphaned_runs(stack.instance, f"run worker SIGKILLed by the chaos harness at {stage}")
        for run_id in orphans:
            stack.run_partitions[run_id] = list(keys)
        run.notes[f"SIGKILL at {stage}"] = f"image {after} of {len(keys)}" if killed else "marker not reached"
        if not killed:
            run.problems.append(f"stage {stage} never reached: {output[-400:]!r}")
        for sel, more in rest:
            stack.run(more, sel)

    return first_pass


# ---- the registry ---------------------------------------------------------------------------------

_PROFILES = [
    Profile("baseline", "no fault: the reference figures"),
    Profile("api-5xx", "10% of API calls answered 500/503", faults={"error_rate": 0.1}),
    Profile(
        "api-429",
        "10% of API calls answered 429 with Retry-After: 1",
        faults={"rate_limit_rate": 0.1, "retry_after_seconds": 1.0},
    ),
    Profile("api-latency", "2 s added to every API call", faults={"latency_seconds": 2.0}),
    Profile(
        "api-drops",
        "5% of API connections closed without an answer; every create or retry arriving on a kept-alive "
        "connection dropped unread (closed as idle)",
        faults={"drop_rate": 0.05, "stale_connection_rate": 1.0},
    ),
    Profile(
        "api-lost-create",
        "30% of creates executed, then their answer lost; the list shows them 10 s late at the earliest",
        faults={"lose_create_rate": 0.3},
        sandbox={"min_list_lag": 10.0},
    ),
    Profile("token-expiry", "access tokens expire every 3 s", sandbox={"access_token_ttl": 3}),
    Profile(
        "refresh-revoked",
        "refresh token revoked: runs fail clearly without looping; then a new login, resume",
        first_pass=_revoke_then_run,
        recover=_log_in_again,
    ),
    Profile(
        "balance-exhausted",
        "balance drops to 0 after a third of the creates (PAYMENT_REQUIRED), then top-up and resume",
        sandbox={"processing_seconds": 0.5},
        during=_drain_balance,
        recover=_top_up,
    ),
    Profile("execution-failures", "20% of executions end FAILED", faults={"execution_failure_rate": 0.2}),
    Profile(
        "in-qa",
        "every execution stops in IN_QA beyond the runs' wait; approved later, finished by the "
        "pending sensor",
        workflow="Background Removal with QA",
        autoretouch={"max_wait_seconds": 1.0},
        recover=_approve_qa,
    ),
    Profile("s3-errors", "5% of S3 GET/PUT/LIST answered 500 InternalError", s3_error_rate=0.05),
    Profile(
        "s3-delete-race",
        "a source deleted between the sensor's listing and the run's read",
        first_pass=_delete_between_list_and_read,
    ),
    Profile("s3-overwrite", "a source overwritten right after its upload", during=_overwrite_while_processed),
    *[
        Profile(
            f"kill-{stage}",
            f"run worker SIGKILLed {stage.replace('-', ' ')}, mid-collection; resumed",
            first_pass=_kill_at(stage),
        )
        for stage in STAGES
    ],
    Profile("sandbox-restart", "AutoRetouch restarted after a third of the creates", during=_restart_sandbox),
    Profile(
        "instance-loss",
        "Dagster's storage wiped at a random moment of the run; the pipeline restarted on an empty instance",
        sandbox={"processing_seconds": 0.3},
        first_pass=_lose_instance,
    ),
    Profile("bad-input", "the bad-input set (named failures, converted formats, odd keys)", catalog="bad"),
    Profile(
        "wrong-workflow",
        "a workflow id that does not exist",
        autoretouch={"workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "no-such-workflow"))},
        expect_all="NotFoundError",
    ),
    Profile(
        "wrong-organization",
        "an organization the user is not a member of",
        autoretouch={"organization_id": FOREIGN_ORGANIZATION_ID},
        expect_all="PermissionDeniedError",
    ),
    Profile(
        "missing-refresh-token",
        "AUTORETOUCH_REFRESH_TOKEN unset",
        first_pass=lambda run: _with_token(run, ""),
        expect_all="AUTORETOUCH_REFRESH_TOKEN",
    ),
    Profile(
        "malformed-refresh-token",
        "a refresh token that is not one",
        first_pass=lambda run: _with_token(run, "not a token\n"),
        expect_all="InvalidGrantError",
    ),
    Profile(
        "unreachable-api",
        "an API URL nothing listens on",
        autoretouch={"api_url": "http://127.0.0.1:9", "auth_url": "http://127.0.0.1:9", "max_retries": 1},
        expect_all="APIConnectionError",
    ),
]
PROFILES: dict[str, Profile] = {p.name: p for p in _PROFILES}
