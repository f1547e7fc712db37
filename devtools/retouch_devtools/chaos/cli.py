"""`retouch-pipeline chaos`: profile selection, quiet logs, progress, the summary line last, the exit status.

Kept out of `retouch_pipeline/cli.py` (which only registers the command) so the harness owns its interface;
its progress bar is the product's `ProgressLine`, shown only when stderr is a terminal, so CI logs and piped
output get the same lines as before and nothing else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from retouch_devtools.chaos.harness import run_profiles
from retouch_devtools.chaos.profiles import PROFILES
from retouch_devtools.sandbox.realism import Realism
from retouch_pipeline.cli import ProgressLine


def resolve(profile: str) -> list[str]:
    """`all`, one name, or a comma-separated list; ValueError names the valid ones."""
    names = list(PROFILES) if profile == "all" else [p.strip() for p in profile.split(",") if p.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise ValueError(
            f"unknown profile {', '.join(unknown) or profile!r}; one of: all, {', '.join(PROFILES)}"
        )
    return names


@contextmanager
def terminal_progress() -> Iterator[ProgressLine]:
    """The product's progress line, drawn on a copy of stderr's descriptor when stderr is a terminal.

    While a step runs in process, Dagster points descriptors 1 and 2 at the run's compute logs: a bar drawn
    on descriptor 2 would be written into them (and into the leak scan's input) instead of the terminal.
    """
    if not sys.stderr.isatty():
        with ProgressLine(False) as progress:
            yield progress
        return
    with (
        os.fdopen(os.dup(sys.stderr.fileno()), "w") as terminal,
        ProgressLine(True, Console(file=terminal)) as progress,
    ):
        yield progress


def run_cli(
    images: int,
    profile: str,
    json_path: Path | None,
    echo: Callable[[str], None],
    realism: Realism | None = None,
) -> int:
    """Run, print one line per profile and the summed summary line last; 0 only if every invariant holds."""
    names = resolve(profile)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    started = time.monotonic()
    echo(f"chaos: {len(names)} profile(s) x {images} images: {', '.join(names)}")
    with terminal_progress() as progress:
        above = functools.partial(progress.echo, plain=echo)
        total, table = run_profiles(names, images, echo=above, realism=realism, progress=progress.stage)
    if json_path is not None:
        json_path.write_text(json.dumps({"images": images, "profiles": table}, indent=2, default=str) + "\n")
    echo(f"total wall time {time.monotonic() - started:.0f}s; {len(total.problems)} problem(s)")
    echo(total.line())
    return 0 if total.holds and not total.problems else 1
