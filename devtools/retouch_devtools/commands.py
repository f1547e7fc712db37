"""The development commands of `retouch-pipeline`: `sandbox`, `dev` and `chaos`.

They are registered under the entry-point group `retouch_pipeline.commands` (devtools/pyproject.toml), which
the product's command line reads: installed with the development tools, they appear beside the product's
commands; the production image, without this distribution, simply lacks them. Each imports its machinery
only when it runs, so the product's other commands do not pay for it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from retouch_devtools.sandbox.realism import Realism

REALISM_OPTIONS = [
    click.option(
        "--realism",
        type=click.Choice(["lenient", "strict"]),
        default="strict",
        show_default=True,
        help="strict: every switch below at its most adversarial plausible value (docs/api-assumptions.md).",
    ),
    click.option("--organizations", type=click.IntRange(1), default=None, help="Organizations (strict: 2)."),
    click.option(
        "--separate-auth-port/--shared-auth-port", default=None, help="OAuth on its own port (strict: on)."
    ),
    click.option(
        "--list-order",
        type=click.Choice(["newest", "oldest", "unordered"]),
        default=None,
        help="Executions list order (strict: oldest).",
    ),
    click.option(
        "--list-lag", type=click.FloatRange(0), default=None, help="Seconds before a new execution is listed."
    ),
    click.option(
        "--retry-recharges/--no-retry-recharges", default=None, help="E8 on COMPLETED re-runs and re-charges."
    ),
    click.option(
        "--strict-oauth/--lenient-oauth", default=None, help="Only the public client id; audience required."
    ),
    click.option(
        "--strict-file-names/--any-file-name", default=None, help="I4/E7 need the file name the API gave."
    ),
    click.option(
        "--max-page-size",
        type=click.IntRange(1),
        default=None,
        help="Most entries per list page (strict: 20).",
    ),
    click.option(
        "--ignore-list-filters/--honour-list-filters",
        default=None,
        help="E3 ignores its workflow filter (strict: on).",
    ),
    click.option(
        "--upload-retention",
        type=click.FloatRange(0),
        default=None,
        help="Seconds an upload is kept, 0 = forever (strict: 60).",
    ),
    click.option(
        "--failed-results",
        type=click.Choice(["conflict", "not-found", "empty"]),
        default=None,
        help="E6 on a FAILED execution: 409, 404 or a 200 with no body (strict: empty).",
    ),
    click.option(
        "--stream-format",
        type=click.Choice(["simple", "messy"]),
        default=None,
        help="E5 events: simple, or comments, unknown events, split data and an early close (strict: messy).",
    ),
    click.option(
        "--rotate-refresh-tokens",
        type=click.Choice(["off", "rotate", "rotate-and-revoke"]),
        default=None,
        help="A3 returns a new refresh token; rotate-and-revoke also revokes the used one (strict: off).",
    ),
    click.option(
        "--queue-order",
        type=click.Choice(["oldest", "any"]),
        default=None,
        help="Which waiting execution a free worker starts: the oldest, or any (strict: any).",
    ),
]


def with_realism(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the sandbox realism options, handed to it as one `realism` argument (a `Realism`)."""

    @functools.wraps(func)
    def command(*, realism: str, **kwargs: Any) -> None:
        from retouch_devtools.sandbox.realism import Realism

        names = [f.replace("-", "_") for f in Realism.__dataclass_fields__]
        switches = {name: kwargs.pop(name) for name in names}
        func(realism=Realism.named(realism, **switches), **kwargs)

    for option in reversed(REALISM_OPTIONS):
        command = option(command)
    return command


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback).")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--processing-seconds", default=2.0, show_default=True, type=float, help="Time per execution.")
@click.option("--workers", default=4, show_default=True, type=int, help="Executions processed in parallel.")
@click.option("--balance", "balance_credits", default=100_000, show_default=True, type=int, help="Credits.")
@click.option("--auto-approve", is_flag=True, help="Approve device-flow logins without the /activate page.")
@click.option("--access-token-ttl", default=86400, show_default=True, type=int, help="Access token lifetime.")
@click.option("--qa-seconds", default=None, type=float, help="Auto-approve IN_QA after this many seconds.")
@click.option("--error-rate", default=0.0, type=float, help="Fraction of API calls answered 500/503.")
@click.option("--rate-limit-rate", default=0.0, type=float, help="Fraction of API calls answered 429.")
@click.option("--retry-after", default=1.0, type=float, help="Retry-After seconds sent with 429s.")
@click.option("--latency", default=0.0, type=float, help="Seconds added to every API call.")
@click.option("--drop-rate", default=0.0, type=float, help="Fraction of API calls whose connection drops.")
@click.option("--lose-create-rate", default=0.0, type=float, help="Fraction of creates whose answer is lost.")
@click.option(
    "--stale-connection-rate",
    default=0.0,
    type=float,
    help="Fraction of creates/retries on a kept-alive connection dropped unread (closed as idle).",
)
@click.option("--failure-rate", default=0.0, type=float, help="Fraction of executions that end FAILED.")
@click.option("--seed", default=0, type=int, help="Seed for the fault dice.")
@with_realism
def sandbox(
    host: str,
    port: int,
    processing_seconds: float,
    workers: int,
    balance_credits: int,
    auto_approve: bool,
    access_token_ttl: int,
    qa_seconds: float | None,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float,
    latency: float,
    drop_rate: float,
    lose_create_rate: float,
    stale_connection_rate: float,
    failure_rate: float,
    seed: int,
    realism: Realism,
) -> None:
    """Run a local AutoRetouch. The first stdout line is JSON with URLs, ids and a refresh token."""
    from retouch_devtools.sandbox import FaultConfig, SandboxConfig, run_foreground

    faults = FaultConfig(
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        retry_after_seconds=retry_after,
        latency_seconds=latency,
        drop_rate=drop_rate,
        lose_create_rate=lose_create_rate,
        stale_connection_rate=stale_connection_rate,
        execution_failure_rate=failure_rate,
    )
    config = SandboxConfig(
        host=host,
        port=port,
        processing_seconds=processing_seconds,
        workers=workers,
        balance=balance_credits,
        auto_approve=auto_approve,
        access_token_ttl=access_token_ttl,
        qa_seconds=qa_seconds,
        seed=seed,
        faults=faults,
        realism=realism,
    )
    run_foreground(config)


@click.command()
@click.option("--dagster/--no-dagster", default=True, help="--no-dagster: only sandbox, S3 and the seed.")
@click.option("--seed/--no-seed", default=True, help="Put the sample catalog under the source prefix.")
@click.option("--keep-state", is_flag=True, help="Keep Dagster's run history from the previous start.")
@click.option("--sandbox-port", type=int, default=None, help="Default RETOUCH_DEV_SANDBOX_PORT or 8765.")
@click.option("--s3-port", type=int, default=None, help="Default RETOUCH_DEV_S3_PORT or 9000.")
@click.option("--dagster-port", type=int, default=None, help="Default RETOUCH_DEV_DAGSTER_PORT or 3000.")
@with_realism
def dev(
    dagster: bool,
    seed: bool,
    keep_state: bool,
    sandbox_port: int | None,
    s3_port: int | None,
    dagster_port: int | None,
    realism: Realism,
) -> None:
    """Run the embedded stack: sandbox AutoRetouch, local S3 with a sample catalog, Dagster. Ctrl-C stops it.

    Every address and name is read from RETOUCH_DEV_* and the pipeline's variables (README, configuration).
    """
    import dataclasses

    from retouch_devtools.devstack import DevSettings, run_dev

    settings = DevSettings.from_env()
    settings = dataclasses.replace(
        settings,
        sandbox_port=settings.sandbox_port if sandbox_port is None else sandbox_port,
        s3_port=settings.s3_port if s3_port is None else s3_port,
        dagster_port=settings.dagster_port if dagster_port is None else dagster_port,
    )
    try:
        status = run_dev(
            settings,
            dagster=dagster,
            seed=seed,
            keep_state=keep_state,
            echo=lambda m: click.echo(m),
            realism=realism,
        )
    except (RuntimeError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    sys.exit(status)


@click.command()
@click.option(
    "--images", default=300, show_default=True, type=click.IntRange(1), help="Catalog size per profile."
)
@click.option("--profile", default="all", show_default=True, help="A profile name, a comma list, or all.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write figures here."
)
@with_realism
def chaos(images: int, profile: str, json_path: Path | None, realism: Realism) -> None:
    """Run the real pipeline under fault profiles and check its invariants (docs/reliability.md)."""
    from retouch_devtools.chaos.cli import run_cli

    try:
        sys.exit(run_cli(images, profile, json_path, echo=click.echo, realism=realism))
    except ValueError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
