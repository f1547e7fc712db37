"""The `retouch-pipeline` command line.

Every command that talks to AutoRetouch takes `--api-url` and `--auth-url` (also read from
`AUTORETOUCH_API_URL` / `AUTORETOUCH_AUTH_URL`), so that the same commands work against the sandbox.
Where neither is given, the URLs saved by `login` are used, then the production defaults. Errors exit
with status 1 and one line on stderr; secrets are never printed.

Output: rich (kept by Dagster already) draws the tables on stdout and the progress of every long command on
stderr (`ProgressLine`); progress is shown only when stderr is a terminal and never with `--json`, so stdout
stays what a script parses.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from retouch_pipeline.autoretouch import (
    DEFAULT_API_URL,
    DEFAULT_AUTH_URL,
    AutoRetouchClient,
    AutoRetouchError,
    CredentialStore,
    DeviceFlow,
    revoke,
)
from retouch_pipeline.catalog.scanner import BucketError
from retouch_pipeline.settings import DAGSTER_URL_VARIABLE, SettingsError
from retouch_pipeline.webserver_launch import DagsterWebserverError

if TYPE_CHECKING:
    from retouch_pipeline.backfill import Access, BackfillEstimate


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

    def access(self) -> Access:
        """The resolved URLs, organization and refresh token (`NotLoggedInError` when there is none)."""
        from retouch_pipeline.backfill import Access  # here: it imports Dagster

        saved = self.store.load_file()
        return Access(
            self.resolved_api_url(),
            self.resolved_auth_url(),
            self.organization_id or (saved.organization_id if saved else None),
            self.store.require().refresh_token,
        )

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
    click.option(
        "--api-url",
        envvar="AUTORETOUCH_API_URL",
        show_envvar=True,
        default=None,
        help="AutoRetouch API base URL (default: the one saved at login, else the real service).",
    ),
    click.option(
        "--auth-url",
        envvar="AUTORETOUCH_AUTH_URL",
        show_envvar=True,
        default=None,
        help="OAuth server base URL (default: the one saved at login, else the real service's).",
    ),
    click.option(
        "--organization",
        "organization_id",
        envvar="AUTORETOUCH_ORGANIZATION_ID",
        show_envvar=True,
        default=None,
        help="Organization id (default: the one saved at login, else the account's only one).",
    ),
    click.option(
        "--credentials-file",
        envvar="RETOUCH_PIPELINE_CREDENTIALS",
        show_envvar=True,
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Credentials file (default: credentials.json in the platform's config folder, e.g. "
        "$XDG_CONFIG_HOME/retouch-pipeline/).",
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
    except (AutoRetouchError, SettingsError, BucketError, DagsterWebserverError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    table = Table(*(c.upper() for c in columns), box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    # Not a terminal: no width limit, so a piped table is never wrapped or cut.
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)


class ProgressLine:
    """One progress line on stderr: a spinner, what is being done, a bar once the total is known, the time.

    Shown only when `enabled` (stderr is a terminal and the output is not JSON); a context manager. `console`
    replaces stderr's for a command whose work redirects descriptor 2 (Dagster's compute-log capture while a
    step runs in process) and must keep its bar out of what it captures.
    """

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=True,
            disable=not enabled,
            redirect_stdout=False,  # stdout is the command's output, whatever stderr shows
            redirect_stderr=False,
        )
        self._task: TaskID | None = None

    @classmethod
    def for_terminal(cls, as_json: bool = False) -> ProgressLine:
        return cls(not as_json and sys.stderr.isatty())

    def __enter__(self) -> ProgressLine:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def echo(self, line: str, plain: Callable[[str], None] = click.echo) -> None:
        """One line of the command's output: above the bar while the bar is drawn and stdout is a terminal
        too (a line written under the live bar is drawn over by its next refresh); through `plain` otherwise,
        so a piped stdout gets exactly the line."""
        if self.progress.live.is_started and sys.stdout.isatty():
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            plain(line)

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        if self._task is None:
            self._task = self.progress.add_task(description, total=total, completed=done)
        else:
            self.progress.update(self._task, description=description, total=total, completed=done)


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
        with ProgressLine.for_terminal() as waiting:
            waiting.stage("Waiting for confirmation (Ctrl-C to abort)")
            tokens = flow.poll(
                code, on_pending=lambda: waiting.stage("Waiting for confirmation (Ctrl-C to abort)")
            )
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
@with_connection
@click.argument("collection")
@click.option("--dry-run", is_flag=True, help="Only print the images, the projected credits and the verdict.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (projection, verdict, backfill ids)."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Launch without asking (the question is asked on a terminal only)."
)
@click.option(
    "--dagster-url",
    envvar=DAGSTER_URL_VARIABLE,
    show_envvar=True,
    default=None,
    help="Launch through this running Dagster webserver's GraphQL API (default: the DAGSTER_HOME instance).",
)
def backfill(
    conn: Connection, collection: str, dry_run: bool, as_json: bool, yes: bool, dagster_url: str | None
) -> None:
    """Backfill one product collection: images, the run's projection vs balance and budget, then a backfill.

    Shows the projection and asks before launching when stdin is a terminal; --yes, or no terminal (a
    script, CI), launches without asking. Exits 1, launching nothing, when the projection does not fit (the
    run would be refused), when the collection is empty or when the answer is no.

    Reads the event log of DAGSTER_HOME and launches there, or through --dagster-url; AutoRetouch is reached
    with the login's credentials and the connection options, S3 and the catalog with the pipeline's variables.
    """
    from retouch_pipeline.backfill import BackfillRequest, run_backfill

    request = BackfillRequest(collection, dry_run, dagster_url)
    with clear_errors(), ProgressLine.for_terminal(as_json) as progress:
        feedback = BackfillFeedback(progress, as_json, ask=not yes and sys.stdin.isatty())
        outcome = run_backfill(request, conn.access(), feedback)
    if as_json:
        click.echo(json.dumps(outcome.to_json()))
    sys.exit(outcome.exit_status)


@dataclass
class BackfillFeedback:
    """`backfill`'s text lines (none with --json: stdout is then one JSON object), progress and question."""

    progress: ProgressLine
    as_json: bool
    ask: bool

    def echo(self, line: str) -> None:
        if not self.as_json:
            click.echo(line)

    def stage(self, description: str, total: int | None = None, done: int = 0) -> None:
        self.progress.stage(description, total, done)

    def confirm(self, estimate: BackfillEstimate) -> bool:
        if not self.ask:
            return True
        p, budget = estimate.projection, estimate.budget
        self.progress.progress.stop()  # the question, not a spinner, on the terminal
        try:
            return click.confirm(
                f"Launch the backfill of {estimate.images} image(s): {p.credits} credits projected, balance "
                f"{estimate.balance}, budget {budget if budget is not None else 'none'}?",
                default=False,
                err=True,
            )
        except click.Abort:
            return False
        finally:
            self.progress.progress.start()


@main.command("migrate-outputs")
@click.option("--dry-run", is_flag=True, help="Only print what would move.")
def migrate_outputs(dry_run: bool) -> None:
    """Move outputs written under the old key scheme (`a.png` for `a.jpg`) to their key (`a.jpg.png`).

    Outputs already at their key are not touched: running it twice moves nothing the second time. Uses the
    pipeline's environment variables (CATALOG_*, S3_ENDPOINT_URL).
    """
    from retouch_pipeline.migrate_outputs import run_migration

    with clear_errors(), ProgressLine.for_terminal() as progress:
        sys.exit(run_migration(dry_run, echo=click.echo, progress=progress.stage))


COMMANDS_GROUP = "retouch_pipeline.commands"


def add_installed_commands(group: click.Group) -> None:
    """Add the click commands other distributions register under the entry-point group `COMMANDS_GROUP`.

    The development tools (`retouch-devtools`: `sandbox`, `dev`, `chaos`) are not part of the product; where
    they are installed, the same `retouch-pipeline` command offers them. A product command keeps its name.
    """
    for entry_point in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        if entry_point.name not in group.commands:
            group.add_command(entry_point.load(), entry_point.name)


add_installed_commands(main)

if __name__ == "__main__":
    main()
