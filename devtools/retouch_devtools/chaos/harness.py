"""Run profiles end to end and print their verdicts: the engine behind `retouch-pipeline chaos`.

One profile = a fresh world (`stack.ProfileStack`), the catalog loaded, an observer reading the outputs
the whole time, a first pass under the fault, the operator's recovery, then resume passes (catalog sensor
tick, pending sensor tick, re-run of every registered partition without a result) until a pass changes
nothing, and finally the invariants (`invariants.evaluate`). Every profile prints one detail line and one
summary line; with several profiles, the last line sums them. `run_profiles` reports which profile and
which of these phases it is in to an optional progress callback (the command's bar on a terminal).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from retouch_devtools.chaos.catalog import SourceImage, bad_inputs, good_catalog
from retouch_devtools.chaos.invariants import Outcome, evaluate
from retouch_devtools.chaos.observer import OutputObserver
from retouch_devtools.chaos.profile import Profile, ProfileRun
from retouch_devtools.chaos.profiles import PROFILES
from retouch_devtools.chaos.stack import ProfileStack
from retouch_devtools.sandbox import FaultConfig, SandboxConfig
from retouch_devtools.sandbox.realism import Realism
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX
from retouch_devtools.stack.s3 import running_moto


class _Capture(logging.Handler):
    """Every log record of the process, formatted, for the leak scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.lines.append(str(record.msg))


def load_catalog(profile: Profile, images: int) -> list[SourceImage]:
    if profile.catalog == "bad":
        bad = bad_inputs()
        return bad + good_catalog(max(0, images - len(bad)))
    return good_catalog(images)


def sandbox_config_for(profile: Profile, seed: int, realism: Realism | None) -> SandboxConfig:
    """The profile's sandbox: fast processing, the given realism (strict by default), its overrides.

    `min_list_lag` in `profile.sandbox` raises the realism's list lag to at least that many seconds.
    """
    settings: dict[str, Any] = {"processing_seconds": 0.05, "workers": 8, "auto_approve": True}
    settings.update(profile.sandbox)
    chosen = realism or Realism.strict()
    min_lag = float(settings.pop("min_list_lag", 0.0))
    settings["realism"] = dataclasses.replace(chosen, list_lag=max(chosen.list_lag, min_lag))
    return SandboxConfig(seed=seed, faults=FaultConfig(retry_after_seconds=1.0), **settings)


Progress = Callable[[str, int | None, int], None]
"""(description, total, done): the signature of the product CLI's `ProgressLine.stage`."""


def run_profile(
    profile: Profile,
    images: int,
    moto_url: str,
    seed: int = 0,
    realism: Realism | None = None,
    phase: Callable[[str], None] = lambda _: None,
) -> tuple[Outcome, dict[str, Any]]:
    """One profile from an empty world to its verdict; (outcome, figures for the table).

    `phase(name)` is called as each phase starts (world, first pass, recovery, resume passes, invariants).
    """
    phase("starting its world")
    # Runs in two threads at once (instance-loss) interleave Dagster's stdout/stderr capture, which can leave
    # fd 1/2 pointing at a compute log: they are put back when the profile ends.
    saved_fds = (os.dup(1), os.dup(2))
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    started = time.monotonic()
    sandbox_config = sandbox_config_for(profile, seed, realism)
    stack = ProfileStack(moto_url, sandbox_config, profile.autoretouch, profile.workflow, s3_seed=seed)
    try:
        loaded = load_catalog(profile, images)
        for source in loaded:
            stack.s3.put_object(
                Bucket=stack.bucket, Key=SOURCE_PREFIX + source.relative_key, Body=source.data
            )
        run = ProfileRun(profile, stack, len(loaded), loaded)
        stack.sandbox.state.faults.update(profile.faults)
        stack.proxy.faults.error_rate = profile.s3_error_rate
        observer = OutputObserver(stack.s3, stack.bucket, OUTPUT_PREFIX).start()
        during = threading.Thread(target=profile.during, args=(run,), daemon=True) if profile.during else None
        if during:
            during.start()
        phase("first pass")
        (profile.first_pass or ProfileRun.default_first_pass)(run)
        run.stop_during.set()
        if during:
            during.join(timeout=30)
        if profile.recover:
            phase("recovery")
            profile.recover(run)
        if not profile.expect_all:
            phase("resume passes")
        passes = 0 if profile.expect_all else run.resume()
        phase("invariants")
        seen = observer.stop()
        state = stack.sandbox.state.accounting.snapshot()
        texts = [*run.texts, *seen.sidecar_bodies, *seen.ledger_bodies, "\n".join(capture.lines).encode()]
        outcome = evaluate(
            stack, {s.relative_key: s for s in loaded}, profile.expect_all, seen.partial, texts
        )
        outcome.problems = run.problems + outcome.problems
        figures = {
            "profile": profile.name,
            "images": outcome.images,
            "processed": outcome.processed,
            "failed_explained": outcome.failed_explained,
            "api_faults": sum(state["faultsInjected"].values()),
            "s3_faults": sum(stack.proxy.faults.injected.values()),
            "s3_requests": sum(stack.proxy.faults.forwarded.values())
            + sum(stack.proxy.faults.injected.values()),
            "e8_retries": state["calls"].get("E8", 0),
            "creates": state["calls"].get("E1", 0),
            "credits_charged": outcome.credits_charged,
            "credits_expected": outcome.credits_expected,
            "resume_passes": passes,
            "runs": len(stack.instance.get_runs()),
            "wall_seconds": round(time.monotonic() - started, 1),
            "notes": run.notes,
            "reasons": outcome.reasons,
        }
        return outcome, figures
    finally:
        logging.getLogger().removeHandler(capture)
        stack.close()
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def describe(figures: dict[str, Any]) -> str:
    return (
        f"[{figures['profile']}] {figures['wall_seconds']}s runs={figures['runs']} "
        f"resume_passes={figures['resume_passes']} api_faults={figures['api_faults']} "
        f"s3_faults={figures['s3_faults']}/{figures['s3_requests']} e8_retries={figures['e8_retries']} "
        f"credits={figures['credits_charged']}/{figures['credits_expected']} notes={figures['notes']}"
    )


def run_profiles(
    names: Sequence[str],
    images: int,
    echo: Any = print,
    realism: Realism | None = None,
    progress: Progress | None = None,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Every named profile on one moto server; the summed outcome and each profile's figures.

    `progress(description, profiles in all, profiles done)` as each profile and each of its phases starts.
    """
    total = Outcome()
    table = []
    with running_moto() as moto_url:
        for done, name in enumerate(names):

            def phase(what: str, name: str = name, done: int = done) -> None:
                if progress is not None:
                    progress(f"{name}: {what}", len(names), done)

            outcome, figures = run_profile(PROFILES[name], images, moto_url, realism=realism, phase=phase)
            table.append(figures)
            echo(describe(figures))
            for problem in outcome.problems[:20]:
                echo(f"  problem: {problem}")
            echo(f"  {name}: {outcome.line()}")
            for attr in (
                "images",
                "processed",
                "failed_explained",
                "lost",
                "double_charged",
                "partial_objects",
            ):
                setattr(total, attr, getattr(total, attr) + getattr(outcome, attr))
            total.leaked_secrets += outcome.leaked_secrets
            total.wrong_org_credits += outcome.wrong_org_credits
            total.problems += [f"{name}: {p}" for p in outcome.problems]
        if progress is not None:
            progress("every profile checked", len(names), len(names))
    return total, table
