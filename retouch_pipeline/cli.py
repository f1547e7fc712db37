"""The `retouch-pipeline` command line.

Every command that talks to AutoRetouch takes `--api-url` and `--auth-url` (also read from
`AUTORETOUCH_API_URL` / `AUTORETOUCH_AUTH_URL`), so that the same commands work against the sandbox.
Where neither is given, the URLs saved by `login` are used, then the production defaults. Errors exit
with status 1 and one line on stderr; secrets are never printed.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from retouch_pipeline.autoretouch import (
    DEFAULT_API_URL,
    DEFAULT_AUTH_URL,
    AutoRetouchClient,
    AutoRetouchError,
    CredentialStore,
    DeviceFlow,
    revoke,
)
from retouch_pipeline.settings import SettingsError

if TYPE_CHECKING:
    from retouch_pipeline.sandbox.realism import Realism


@dataclass
class Connection:
    """What a command needs to reach AutoRetouch, resolved from options, environment and saved login."""

    api_url: str | None
    auth_url: str | None
    organization_id: str | None
    store: CredentialStore

    def resolved_api_url(self) -> str:
        saved = self.store.load_file()
        return self.api_url or (saved.api_url if saved else None) or DEFAULT_API_URL

    def resolved_auth_url(self) -> str:
        saved = self.store.load_file()
        return self.auth_url or (saved.auth_url if saved else None) or DEFAULT_AUTH_URL

    def client(self) -> AutoRetouchClient:
        """A client from the stored login; options and environment win over what `login` saved."""
        saved = self.store.load_file()

        def origin(given: str | None, option: str, saved_value: str | None) -> str:
            if given:
                return f"--{option} or $AUTORETOUCH_{option.upper().replace('-', '_')}"
            return str(self.store.path) if saved_value else "the production default"

        return AutoRetouchClient.from_credentials(
            self.store,
            api_url=self.resolved_api_url(),
            auth_url=self.resolved_auth_url(),
            organization_id=self.organization_id,
            sources={
                "api_url": origin(self.api_url, "api-url", saved.api_url if saved else None),
                "auth_url": origin(self.auth_url, "auth-url", saved.auth_url if saved else None),
            },
        )


CONNECTION_OPTIONS = [
    click.option("--api-url", envvar="AUTORETOUCH_API_URL", default=None, help="AutoRetouch API base URL."),
    click.option("--auth-url", envvar="AUTORETOUCH_AUTH_URL", default=None, help="OAuth server base URL."),
    click.option(
        "--organization",
        "organization_id",
        envvar="AUTORETOUCH_ORGANIZATION_ID",
        default=None,
        help="Organization id (default: the one saved at login, else the account's selected one).",
    ),
    click.option(
        "--credentials-file",
        envvar="RETOUCH_PIPELINE_CREDENTIALS",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Credentials file (default ~/.config/retouch-pipeline/credentials.json).",
    ),
]


def with_connection(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared connection options, handed to it as one `Connection` argument."""

    @functools.wraps(func)
    def command(
        *,
        api_url: str | None,
        auth_url: str | None,
        organization_id: str | None,
        credentials_file: Path | None,
        **kwargs: Any,
    ) -> None:
        func(Connection(api_url, auth_url, organization_id, CredentialStore(credentials_file)), **kwargs)

    for option in reversed(CONNECTION_OPTIONS):
        command = option(command)
    return command


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn library errors into one line on stderr and exit status 1, as a shell user expects."""
    try:
        yield
    except (AutoRetouchError, SettingsError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


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
]


def with_realism(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the sandbox realism options, handed to it as one `realism` argument (a `Realism`)."""

    @functools.wraps(func)
    def command(*, realism: str, **kwargs: Any) -> None:
        from retouch_pipeline.sandbox.realism import Realism

        names = [f.replace("-", "_") for f in Realism.__dataclass_fields__]
        switches = {name: kwargs.pop(name) for name in names}
        func(realism=Realism.named(realism, **switches), **kwargs)

    for option in reversed(REALISM_OPTIONS):
        command = option(command)
    return command


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


@click.group()
@click.version_option(package_name="retouch-pipeline")
@click.option("-v", "--verbose", is_flag=True, help="Log each retry and wait on stderr (never a token).")
def main(verbose: bool) -> None:
    """Run an e-commerce image catalog through AutoRetouch, with every credit accounted for."""
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        client_log = logging.getLogger("retouch_pipeline.autoretouch")
        client_log.addHandler(handler)
        client_log.setLevel(logging.INFO)


@main.command()
@with_connection
@click.option("--no-browser", is_flag=True, help="Only print the activation URL.")
def login(conn: Connection, no_browser: bool) -> None:
    """Log in with the OAuth device flow and store the refresh token (file mode 0600)."""
    with clear_errors():
        flow = DeviceFlow(conn.resolved_auth_url())
        code = flow.start()
        click.echo(f"Your confirmation code: {code.user_code}", err=True)
        click.echo(f"Open {code.verification_uri_complete} to confirm this device.", err=True)
        if not no_browser and sys.stdin.isatty():
            click.launch(code.verification_uri_complete)
        started = time.monotonic()

        def on_pending() -> None:
            waited = int(time.monotonic() - started)
            click.echo(f"\rWaiting for confirmation... {waited}s (Ctrl-C to abort)", nl=False, err=True)

        tokens = flow.poll(code, on_pending=on_pending)
        click.echo("", err=True)
        path = conn.store.save(
            tokens.refresh_token_value(),
            api_url=conn.resolved_api_url(),
            auth_url=conn.resolved_auth_url(),
            organization_id=conn.organization_id,
        )
        click.echo(f"Logged in. Credentials stored in {path} (mode 0600).")


@main.command()
@with_connection
def logout(conn: Connection) -> None:
    """Revoke the stored refresh token and delete the credentials file."""
    with clear_errors():
        saved = conn.store.load_file()
        if saved is None:
            click.echo("Not logged in: nothing to do.")
            return
        revoke(conn.resolved_auth_url(), saved.refresh_token)
        conn.store.delete()
        click.echo("Logged out: refresh token revoked and credentials deleted.")


@main.command()
@with_connection
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def organizations(conn: Connection, as_json: bool) -> None:
    """List the organizations this account belongs to."""
    with clear_errors(), conn.client() as client:
        rows = [{"id": o.id, "name": o.name, "members": len(o.members)} for o in client.iter_organizations()]
    emit(rows, as_json, ["id", "name", "members"])


@main.command()
@with_connection
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def workflows(conn: Connection, as_json: bool) -> None:
    """List the organization's workflows with their price in credits."""
    with clear_errors(), conn.client() as client:
        rows = [
            {"id": w.id, "name": w.name, "version": w.version, "executionPrice": w.execution_price}
            for w in client.iter_workflows()
        ]
    emit(rows, as_json, ["id", "name", "version", "executionPrice"])


@main.command()
@with_connection
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def balance(conn: Connection, as_json: bool) -> None:
    """Show the organization's credit balance (1 credit = 1 euro cent excl. VAT)."""
    with clear_errors(), conn.client() as client:
        credits = client.get_balance()
    if as_json:
        click.echo(json.dumps({"balance": credits}))
    else:
        click.echo(f"{credits} credits")


@main.command()
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
    failure_rate: float,
    seed: int,
    realism: Realism,
) -> None:
    """Run a local AutoRetouch. The first stdout line is JSON with URLs, ids and a refresh token."""
    from retouch_pipeline.sandbox import FaultConfig, SandboxConfig, run_foreground

    faults = FaultConfig(
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        retry_after_seconds=retry_after,
        latency_seconds=latency,
        drop_rate=drop_rate,
        lose_create_rate=lose_create_rate,
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


@main.command()
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

    from retouch_pipeline.devstack import DevSettings, run_dev

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


@main.command()
@click.argument("collection")
@click.option("--dry-run", is_flag=True, help="Only print the number of images and the projected credits.")
def backfill(collection: str, dry_run: bool) -> None:
    """Backfill one product collection: images, projected credits vs balance, then a real Dagster backfill.

    Uses the Dagster instance of DAGSTER_HOME and the pipeline's environment variables (definitions.py).
    """
    from retouch_pipeline.backfill import run_backfill

    with clear_errors():
        sys.exit(run_backfill(collection, dry_run, echo=click.echo))


@main.command()
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
    from retouch_pipeline.chaos.cli import run_cli

    try:
        sys.exit(run_cli(images, profile, json_path, echo=click.echo, realism=realism))
    except ValueError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
