"""Every chaos profile at a small N: the invariants hold and each profile's own promise is kept.

One moto server for the module; each profile builds its own sandbox, S3 proxy, bucket and Dagster instance
(`retouch_devtools.chaos.stack`). Small catalogs keep the module within a few minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retouch_devtools.chaos.catalog import ODD_KEYS_UNSTORABLE_IN_MOTO
from retouch_devtools.chaos.harness import run_profile, sandbox_config_for
from retouch_devtools.chaos.invariants import evaluate
from retouch_devtools.chaos.profiles import PROFILES
from retouch_devtools.chaos.stack import ProfileStack
from retouch_devtools.stack.inprocess import on_terminal
from retouch_devtools.stack.s3 import running_moto
from retouch_pipeline.catalog.keys import output_key, partition_key_for, s3_key_from_partition_key

SMALL_N = 6
CONFIG_PROFILES = {n for n, p in PROFILES.items() if p.expect_all}
CLI = str(Path(sys.executable).with_name("retouch-pipeline"))


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """This module's own moto: 25 profiles' buckets and fault proxies stay out of the session's."""
    with running_moto() as url:
        yield url


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_keeps_every_invariant(name: str, moto_url: str) -> None:
    outcome, figures = run_profile(PROFILES[name], SMALL_N, moto_url)
    assert outcome.holds and not outcome.problems, (outcome.line(), outcome.problems)
    assert outcome.credits_charged == outcome.credits_expected
    if name in CONFIG_PROFILES:  # a wrong configuration fails every image, clearly, for free
        assert outcome.processed == 0 and outcome.credits_charged == 0
        assert outcome.failed_explained == outcome.images
    elif name == "bad-input":
        assert outcome.failed_explained == sum(1 for r in outcome.reasons.values() if r)
    else:  # a transient fault, once recovered from, costs no image
        assert outcome.processed == outcome.images, figures
    notes = figures["notes"]
    if name == "refresh-revoked":
        assert notes["revoked: token refreshes tried"] <= 2 * notes["revoked: runs"]  # no loop
    if name == "sandbox-restart":
        assert notes["sandbox state restored"] is True
    if name.startswith("kill-"):
        assert "marker not reached" not in str(notes)
    if name == "s3-errors":
        assert figures["s3_faults"] > 0
    if name == "in-qa":
        assert notes["IN_QA approved after the runs ended"] == SMALL_N
    if name == "balance-exhausted":
        assert notes["PAYMENT_REQUIRED before top-up"] > 0
    if name == "instance-loss":  # never a baseline in disguise: wiped mid-run, then the restart had work
        assert notes["instance wiped"] == "during the first pass", notes
        assert notes["images not completed at the wipe"] > 0, notes
        assert notes["after the wipe: adopted"] + notes["after the wipe: bought"] > 0, notes


def test_a_secret_stored_by_a_lost_instance_counts_as_leaked(moto_url: str) -> None:
    """The wiped instance's storage is scanned too, not only the DAGSTER_HOME in use at the end."""
    profile = PROFILES["instance-loss"]
    config = sandbox_config_for(profile, 0, None)
    stack = ProfileStack(moto_url, config, profile.autoretouch, profile.workflow)
    try:
        lost_home = stack.home
        stack.lose_instance()
        (lost_home / "planted.log").write_text(f"refresh_token={stack.token}\n")
        outcome = evaluate(stack, {}, None, [], [])
        assert outcome.leaked_secrets == 1, outcome.problems
        assert any(str(lost_home / "planted.log") in p for p in outcome.problems), outcome.problems
    finally:
        stack.close()


@pytest.mark.parametrize("key", ODD_KEYS_UNSTORABLE_IN_MOTO)
def test_keys_moto_cannot_store_map_reversibly_and_stay_below_the_prefix(key: str) -> None:
    """Newlines and `../` segments: real S3 stores them, moto's server does not, so the mapping is checked."""
    partition = partition_key_for(key)
    assert "\n" not in partition and "..." not in partition
    assert s3_key_from_partition_key(partition) == key
    out = output_key("retouched", key, ".png")
    assert out.startswith("retouched/") and "/../" not in out and "\n" not in out


def test_the_command_shows_progress_on_a_terminal_only() -> None:
    """Piped (CI, a script): the same lines as ever and no bar; stderr on a terminal: the profile's phase."""
    command = [CLI, "chaos", "--images", "1", "--profile", "wrong-workflow"]
    summary = (
        "images=1 processed=0 failed_explained=1 lost=0 double_charged=0 partial_objects=0 leaked_secrets=0 "
        "wrong_org_credits=0"
    )
    piped = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    lines = piped.stdout.splitlines()
    assert lines[0] == "chaos: 1 profile(s) x 1 images: wrong-workflow" and lines[-1] == summary
    assert "\x1b[" not in piped.stdout + piped.stderr  # no bar, no cursor movement, no colour
    assert "wrong-workflow: first pass" not in piped.stderr

    status, stdout, terminal = on_terminal(command, dict(os.environ), timeout=300)
    assert status == 0, terminal[-2000:]
    assert stdout.splitlines()[-1] == summary and "\x1b[" not in stdout  # stdout stays what a script reads
    assert "wrong-workflow: first pass" in terminal
