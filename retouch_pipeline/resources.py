"""Dagster resources: configuration only, on the dagster-fivetran model.

Why configuration only: a `ConfigurableResource` is built in the webserver, the daemon and every run; keeping
HTTP out of it means loading definitions never calls AutoRetouch (dagster#14157 is what happens otherwise).
`AutoRetouchResource.get_client()` hands out the plain `AutoRetouchClient`, which owns retries, token refresh
and pooling and is testable without Dagster. Build one client per step and share it between the step's
threads (it is thread-safe and shares one token manager, so the access token is refreshed once).

The refresh token is meant to be passed as `dg.EnvVar("AUTORETOUCH_REFRESH_TOKEN")`: Dagster resolves it in
the run process, so it appears neither in run config nor in the UI.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dagster as dg
from pydantic import Field

from retouch_pipeline.autoretouch import (
    DEFAULT_API_URL,
    DEFAULT_AUTH_URL,
    AutoRetouchClient,
    RetryConfig,
)
from retouch_pipeline.catalog.scanner import normalize_prefix
from retouch_pipeline.settings import DEFAULT_APP_URL

__all__ = ["DEFAULT_APP_URL", "AutoRetouchResource", "CatalogResource"]


DAGSTER_SOURCES = {
    "api_url": "resource `autoretouch`, from $AUTORETOUCH_API_URL",
    "auth_url": "resource `autoretouch`, from $AUTORETOUCH_AUTH_URL",
    "refresh_token": "$AUTORETOUCH_REFRESH_TOKEN of the Dagster deployment",
}
"""Where a run's or a tick's settings come from, named in its errors (what to fix, and where)."""


class AutoRetouchResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # pyproject [tool.mypy]
    """Where AutoRetouch is, which workflow to run, and how patient and how thrifty to be."""

    api_url: str = Field(default=DEFAULT_API_URL, description="AutoRetouch API base URL.")
    auth_url: str = Field(default=DEFAULT_AUTH_URL, description="OAuth (Auth0) server base URL.")
    app_url: str = Field(
        default=DEFAULT_APP_URL,
        description="AutoRetouch web app base URL: the executions' links in the Dagster UI point there.",
    )
    organization_id: str | None = Field(
        default=None,
        description="Organization to bill; None uses the account's selected organization.",
    )
    workflow_id: str = Field(description="Workflow (UUID) every catalog image is processed with.")
    workflow_version: str | None = Field(
        default=None,
        description="Pin a workflow version (UUID). None: the workflow's current version, resolved at "
        "run time "
        "(part of the idempotency key, so a new version processes images again, once).",
    )
    refresh_token: str = Field(
        description="OAuth refresh token; pass dg.EnvVar('AUTORETOUCH_REFRESH_TOKEN'), never a literal.",
    )
    max_retries: int = Field(default=5, ge=0, description="Retries of a failed API call (5xx, 429, drops).")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, description="TCP connect timeout per request.")
    read_timeout_seconds: float = Field(default=60.0, gt=0, description="Read timeout per request.")
    poll_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Pause between two batched status reads (one executions-list pass) while a step waits.",
    )
    max_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="Longest a step waits for its executions; the rest is left to the pending-executions "
        "sensor (IN_QA can take hours and must not hold a run).",
    )
    concurrency: int = Field(
        default=16,
        gt=0,
        description="Threads per step for uploads, and as many for creates and downloads (creates start "
        "while uploads still run).",
    )
    budget_credits: int | None = Field(
        default=None,
        ge=0,
        description="Refuse a run whose projected spend (new executions and retries x executionPrice) "
        "exceeds this many credits. None: only the organization's balance limits it.",
    )
    create_settle_seconds: float = Field(
        default=30.0,
        gt=0,
        description="When a create's answer is lost, how long after the attempt a missing execution may "
        "still appear in the executions list: absence counts as proven only after it (the image waits as "
        "'create unconfirmed' until then; docs/api-assumptions.md). Must exceed the list's worst lag.",
    )
    max_status_pages: int = Field(
        default=20,
        gt=0,
        description="Executions-list pages (100 each) read per status pass before single lookups.",
    )

    # The web app's deep-link shape is not documented by AutoRetouch: these are a best guess (organization
    # as a query parameter, executions under their workflow, a batch as an order). One place to fix it.
    def execution_link(self, workflow_id: str, execution_id: str) -> str:
        """Best-guess web-app URL: `<app>/workflows/<wf>/executions/<id>?organization=<org>`."""
        return self._app(f"/workflows/{quote(workflow_id)}/executions/{quote(execution_id)}")

    def batch_link(self, batch_id: str) -> str:
        """Best-guess web-app URL of one batch (an order): `<app>/orders/<batch id>?organization=<org>`."""
        return self._app(f"/orders/{quote(batch_id)}")

    def _app(self, path: str) -> str:
        query = f"?organization={quote(self.organization_id)}" if self.organization_id else ""
        return self.app_url.rstrip("/") + path + query

    def get_client(self) -> AutoRetouchClient:
        """A new client (own connection pool and token manager); share it within a step or a tick."""
        return AutoRetouchClient(
            self.api_url,
            self.auth_url,
            refresh_token=self.refresh_token,
            organization_id=self.organization_id,
            retry=RetryConfig(max_retries=self.max_retries),
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
            pool_size=max(8, self.concurrency * 2),
            page_size=100,
            create_settle_seconds=self.create_settle_seconds,
            sources=DAGSTER_SOURCES,
        )


class CatalogResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # pyproject [tool.mypy]
    """Where the catalog lives in S3 and where results go."""

    source_bucket: str = Field(description="Bucket holding the source images.")
    source_prefix: str = Field(
        default="incoming/",
        description="Prefix of the catalog; the first segment below it is the collection.",
    )
    output_bucket: str = Field(description="Bucket receiving retouched images and their JSON sidecars.")
    output_prefix: str = Field(default="retouched/", description="Prefix of the outputs.")
    archive_prefix: str | None = Field(
        default=None,
        description="Deleted sources: None keeps their outputs in place; a prefix (in the output bucket) "
        "is where the daily refresh moves them (CATALOG_ARCHIVE_PREFIX).",
    )
    max_image_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="Larger source objects fail before any download."
    )
    max_image_side: int = Field(
        default=10_000, gt=0, description="Wider or taller images fail (AutoRetouch's documented limit)."
    )
    batch_size: int = Field(
        default=100,
        gt=0,
        description="Images per sensor-requested run; per backfill of the refresh and CLI.",
    )

    def source_key(self, relative_key: str) -> str:
        """The S3 key of a catalog image from its key below the source prefix."""
        return normalize_prefix(self.source_prefix) + relative_key

    def output_prefix_normalized(self) -> str:
        return normalize_prefix(self.output_prefix).rstrip("/")

    def describe(self) -> dict[str, Any]:
        """Locations for metadata (no secrets here)."""
        return {
            "source": f"s3://{self.source_bucket}/{normalize_prefix(self.source_prefix)}",
            "output": f"s3://{self.output_bucket}/{normalize_prefix(self.output_prefix)}",
        }
