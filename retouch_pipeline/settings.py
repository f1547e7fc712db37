"""The one reader of the pipeline's environment: variables in, typed settings out.

Why one reader: the code location, the run workers, the daemon and the command line all need the same
settings, and a variable read in two places drifts (different defaults, different errors). Everything that
configures the pipeline from the environment goes through :func:`read_settings`; every variable it knows is
listed once in :data:`VARIABLES` (the README's configuration table and the deploy files' forwarded variables
are checked against it).

Defaults are production defaults: the real AutoRetouch, AWS's S3, no workflow until one is chosen. The dev
stack and the tests supply their own values (``retouch_devtools``), so a deployment that forgets a variable
never silently talks to a sandbox on 127.0.0.1.

Bad values stop the definitions from loading with one :class:`SettingsError` that names every bad variable,
the value it got and what to set instead. Secrets are never read here: the refresh token stays a
``dg.EnvVar`` resolved inside runs and ticks (:mod:`retouch_pipeline.definitions`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from retouch_pipeline.autoretouch.constants import DEFAULT_API_URL, DEFAULT_AUTH_URL
from retouch_pipeline.autoretouch.credentials import ENV_REFRESH_TOKEN

__all__ = [
    "DAGSTER_URL_VARIABLE",
    "DEFAULT_APP_URL",
    "VARIABLES",
    "AutoRetouchSettings",
    "CatalogSettings",
    "CommandSettings",
    "ScanSettings",
    "Settings",
    "SettingsError",
    "Variable",
    "read_command_settings",
    "read_settings",
]

DEFAULT_APP_URL = "https://app.autoretouch.com"
DAGSTER_URL_VARIABLE = "RETOUCH_PIPELINE_DAGSTER_URL"
T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One environment variable of the pipeline: its name, its default as text, and what it means."""

    name: str
    default: str
    meaning: str
    command_line_only: bool = False
    """Read by `retouch-pipeline` commands only, never by the definitions or the runs."""


VARIABLES: tuple[Variable, ...] = (
    Variable("AUTORETOUCH_API_URL", DEFAULT_API_URL, "AutoRetouch API base URL"),
    Variable("AUTORETOUCH_AUTH_URL", DEFAULT_AUTH_URL, "OAuth server base URL"),
    Variable(ENV_REFRESH_TOKEN, "(required at run time)", "refresh token, read by runs and ticks only"),
    Variable(
        "AUTORETOUCH_ORGANIZATION_ID",
        "unset",
        "organization to bill; unset = the account's only one (several: error)",
    ),
    Variable("AUTORETOUCH_WORKFLOW_ID", "(required at run time)", "workflow every image is processed with"),
    Variable("AUTORETOUCH_WORKFLOW_VERSION", "unset = current version", "pin a workflow version"),
    Variable("AUTORETOUCH_BUDGET_CREDITS", "unset = balance only", "per-run spending cap in credits"),
    Variable("AUTORETOUCH_MAX_WAIT_SECONDS", "600", "longest a run waits; the rest goes to the sensor"),
    Variable("AUTORETOUCH_POLL_SECONDS", "5", "pause between batched status reads"),
    Variable(
        "AUTORETOUCH_CREATE_SETTLE_SECONDS",
        "30",
        "after a create's lost answer, how long a missing execution may still appear in the list",
    ),
    Variable("AUTORETOUCH_CONCURRENCY", "16", "upload threads per step, as many for creates and downloads"),
    Variable("AUTORETOUCH_APP_URL", DEFAULT_APP_URL, "web app base URL of the links in metadata"),
    Variable(
        "S3_ENDPOINT_URL", "unset = AWS", "S3 endpoint (MinIO, a local S3); must honour conditional PUTs"
    ),
    Variable("AWS_REGION", "us-east-1", "S3 region (and the SQS queue's)"),
    Variable("CATALOG_SOURCE_BUCKET", "(required)", "bucket of the catalog"),
    Variable("CATALOG_SOURCE_PREFIX", "incoming/", "prefix of the catalog"),
    Variable("CATALOG_OUTPUT_BUCKET", "the source bucket", "bucket of the results"),
    Variable("CATALOG_OUTPUT_PREFIX", "retouched/", "prefix of the results"),
    Variable("CATALOG_BATCH_SIZE", "100", "images per sensor-requested run; per backfill of refresh and CLI"),
    Variable(
        "CATALOG_ARCHIVE_PREFIX",
        "unset = keep",
        "outputs of deleted sources: unset keeps them; a prefix (archived/): the refresh moves them there",
    ),
    Variable("CATALOG_SCAN_MODE", "listing", "listing: list the prefix every tick; sqs: S3 events via SQS"),
    Variable("CATALOG_SQS_QUEUE_URL", "(required when the mode is sqs)", "queue of the bucket's S3 events"),
    Variable("CATALOG_SQS_ENDPOINT_URL", "unset = AWS", "SQS endpoint; does not follow S3_ENDPOINT_URL"),
    Variable("RETOUCH_SENSORS_RUNNING", "1", "sensors and schedules start running (0: stopped)"),
    Variable(
        "DAGSTER_HOME",
        "(required by `backfill` without a Dagster URL)",
        "`backfill`: the Dagster instance whose event log it reads and, by default, launches on",
        command_line_only=True,
    ),
    Variable(
        DAGSTER_URL_VARIABLE,
        "unset = launch on the DAGSTER_HOME instance",
        "`backfill --dagster-url`: a running Dagster webserver to launch through (GraphQL API)",
        command_line_only=True,
    ),
)


class SettingsError(ValueError):
    """Settings that cannot work: one line per bad variable, naming it, its value and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class AutoRetouchSettings:
    """Where AutoRetouch is, which workflow to run, and how patient and thrifty to be."""

    api_url: str = DEFAULT_API_URL
    auth_url: str = DEFAULT_AUTH_URL
    app_url: str = DEFAULT_APP_URL
    organization_id: str | None = None
    workflow_id: str | None = None  # None: required at run time (a run or tick names the variable)
    workflow_version: str | None = None
    budget_credits: int | None = None
    max_wait_seconds: float = 600.0
    poll_interval_seconds: float = 5.0
    concurrency: int = 16
    create_settle_seconds: float = 30.0


@dataclass(frozen=True)
class ScanSettings:
    """How the catalog sensor finds new and changed images."""

    mode: Literal["listing", "sqs"] = "listing"
    sqs_queue_url: str | None = None
    sqs_endpoint_url: str | None = None


@dataclass(frozen=True)
class CatalogSettings:
    """Where the catalog and its results live."""

    source_bucket: str = ""
    source_prefix: str = "incoming/"
    output_bucket: str = ""
    output_prefix: str = "retouched/"
    batch_size: int = 100
    archive_prefix: str | None = None
    """Where the refresh moves the outputs of deleted sources (output bucket); None keeps them in place."""
    scan: ScanSettings = field(default_factory=ScanSettings)


@dataclass(frozen=True)
class Settings:
    """Everything the environment says about the pipeline."""

    autoretouch: AutoRetouchSettings = field(default_factory=AutoRetouchSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    sensors_running: bool = True


@dataclass(frozen=True)
class CommandSettings:
    """What `backfill` reads beyond the pipeline's settings: where the Dagster instance is."""

    dagster_home: str | None = None
    dagster_url: str | None = None


class _Reader:
    """Reads variables from one mapping and collects every problem before raising once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str = "") -> str:
        return (self.env.get(name) or "").strip() or default

    def optional(self, name: str) -> str | None:
        return self.text(name) or None

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            self.fail(name, value, "an http(s) URL such as https://host[:port]")
            return default
        return value.rstrip("/")

    def number(
        self, name: str, default: T, parse: Callable[[str], T], what: str, low: float, strict: bool
    ) -> T:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = parse(raw)
        except ValueError:
            self.fail(name, raw, what)
            return default
        if value < low or (strict and value == low):  # type: ignore[operator]
            self.fail(name, raw, what)
            return default
        return value

    def fail(self, name: str, value: str, expected: str) -> None:
        self.problems.append(
            f"{name}={value!r} is not valid: set it to {expected}, or unset it for the default"
        )


def read_settings(env: Mapping[str, str]) -> Settings:
    """The pipeline's settings from `env` (pure: tests pass a dict); raises one SettingsError for all."""
    read = _Reader(env)
    settings = Settings(
        autoretouch=_autoretouch(read),
        catalog=_catalog(read),
        s3_endpoint_url=read.optional("S3_ENDPOINT_URL"),
        aws_region=read.text("AWS_REGION", "us-east-1"),
        sensors_running=read.text("RETOUCH_SENSORS_RUNNING", "1").lower() not in ("0", "false", "no", "off"),
    )
    if read.problems:
        raise SettingsError(read.problems)
    return settings


def _autoretouch(read: _Reader) -> AutoRetouchSettings:
    return AutoRetouchSettings(
        api_url=read.url("AUTORETOUCH_API_URL", DEFAULT_API_URL),
        auth_url=read.url("AUTORETOUCH_AUTH_URL", DEFAULT_AUTH_URL),
        app_url=read.url("AUTORETOUCH_APP_URL", DEFAULT_APP_URL),
        organization_id=read.optional("AUTORETOUCH_ORGANIZATION_ID"),
        workflow_id=read.optional("AUTORETOUCH_WORKFLOW_ID"),
        workflow_version=read.optional("AUTORETOUCH_WORKFLOW_VERSION"),
        budget_credits=read.number(
            "AUTORETOUCH_BUDGET_CREDITS", None, int, "a whole number of credits (0 or more)", 0, False
        ),
        max_wait_seconds=read.number(
            "AUTORETOUCH_MAX_WAIT_SECONDS", 600.0, float, "a number of seconds (0 or more)", 0, False
        ),
        poll_interval_seconds=read.number(
            "AUTORETOUCH_POLL_SECONDS", 5.0, float, "a number of seconds above 0", 0, True
        ),
        concurrency=read.number(
            "AUTORETOUCH_CONCURRENCY", 16, int, "a whole number of threads (1 or more)", 0, True
        ),
        create_settle_seconds=read.number(
            "AUTORETOUCH_CREATE_SETTLE_SECONDS", 30.0, float, "a number of seconds above 0", 0, True
        ),
    )


def _catalog(read: _Reader) -> CatalogSettings:
    source_bucket = read.text("CATALOG_SOURCE_BUCKET")
    if not source_bucket:
        read.problems.append(
            "CATALOG_SOURCE_BUCKET is not set: set it to the S3 bucket holding the catalog "
            "(CATALOG_SOURCE_PREFIX says where in it; CATALOG_OUTPUT_BUCKET defaults to the same bucket)"
        )
    return CatalogSettings(
        source_bucket=source_bucket,
        source_prefix=read.text("CATALOG_SOURCE_PREFIX", "incoming/"),
        output_bucket=read.text("CATALOG_OUTPUT_BUCKET", source_bucket),
        output_prefix=read.text("CATALOG_OUTPUT_PREFIX", "retouched/"),
        batch_size=read.number(
            "CATALOG_BATCH_SIZE", 100, int, "a whole number of images (1 or more)", 0, True
        ),
        archive_prefix=_archive_prefix(read),
        scan=_scan(read, source_bucket),
    )


def _archive_prefix(read: _Reader) -> str | None:
    raw = read.text("CATALOG_ARCHIVE_PREFIX")
    prefix = raw.strip("/")
    if raw and (not prefix or prefix == read.text("CATALOG_OUTPUT_PREFIX", "retouched/").strip("/")):
        read.fail(
            "CATALOG_ARCHIVE_PREFIX", raw, "a prefix of its own such as archived/ (not the output prefix)"
        )
        return None
    return prefix + "/" if prefix else None


def _scan(read: _Reader, source_bucket: str) -> ScanSettings:
    mode = read.text("CATALOG_SCAN_MODE", "listing").lower()
    if mode == "listing":
        return ScanSettings()
    if mode != "sqs":
        read.problems.append(
            f"CATALOG_SCAN_MODE={read.text('CATALOG_SCAN_MODE')!r} is not a catalog scan mode: set it to "
            "'listing' (the default: list the source prefix every tick) or 'sqs' (S3 event notifications "
            "read from the queue at CATALOG_SQS_QUEUE_URL)"
        )
        return ScanSettings()
    queue_url = read.text("CATALOG_SQS_QUEUE_URL")
    if not queue_url:
        read.problems.append(
            "CATALOG_SCAN_MODE=sqs needs CATALOG_SQS_QUEUE_URL: set it to the URL of the SQS queue receiving "
            f"the S3 event notifications of bucket {source_bucket!r} (https://sqs.<region>.amazonaws.com/"
            "<account>/<queue>; switch the notifications on before the first tick), or set "
            "CATALOG_SCAN_MODE=listing"
        )
    elif urlsplit(queue_url).scheme not in ("http", "https"):
        read.problems.append(
            f"CATALOG_SQS_QUEUE_URL={queue_url!r} is not a queue URL: give the queue's URL "
            "(https://sqs.<region>.amazonaws.com/<account>/<queue>, as `aws sqs get-queue-url` prints it), "
            "not its name or ARN"
        )
    return ScanSettings("sqs", queue_url or None, read.optional("CATALOG_SQS_ENDPOINT_URL"))


def read_command_settings(
    dagster_url: str | None = None, env: Mapping[str, str] | None = None
) -> CommandSettings:
    """`backfill`'s Dagster (from `os.environ` unless `env`): `dagster_url` (the option) wins over its
    variable; one SettingsError for all."""
    env = os.environ if env is None else env
    read = _Reader({**env, DAGSTER_URL_VARIABLE: dagster_url or env.get(DAGSTER_URL_VARIABLE, "")})
    url = read.url(DAGSTER_URL_VARIABLE, "") if read.text(DAGSTER_URL_VARIABLE) else None
    if read.problems:
        raise SettingsError(read.problems)
    return CommandSettings(dagster_home=read.optional("DAGSTER_HOME"), dagster_url=url or None)
