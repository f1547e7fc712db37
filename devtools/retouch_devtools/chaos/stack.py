"""The world one chaos profile runs in, and the Dagster machinery it drives.

World: one moto S3 server per harness (each profile gets its own bucket), a fault-injecting proxy in front
of it per profile (`s3proxy`), one sandbox AutoRetouch per profile with a caller-owned `data_dir` (so it can
be restarted without forgetting anything), and one on-disk Dagster instance per profile
(`DagsterInstance.local_temp`, SQLite under a temporary DAGSTER_HOME) that child run processes open too.

Machinery (why this and not the daemon): the real catalog sensor and pending sensor of `definitions.py`
are evaluated tick by tick (`build_sensor_context` + `evaluate_tick` on the persistent instance); their
dynamic-partition requests are applied to the instance and each of their run requests becomes one run
of the real `catalog_pipeline` multi-asset with the real in-process executor (`dg.materialize`, tagged with
the partition range exactly as a `multi_run` backfill tags its runs). Driving ticks explicitly makes a
profile deterministic (a fault can be placed between a listing and a read) and spares it the daemon's
polling delays (timings: docs/reliability.md); the daemon's own backfill path is covered by
`retouch_pipeline_tests/deploy/`. Runs that must be SIGKILLed go to a child process on the same instance
(`killer`).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from retouch_devtools.chaos.s3proxy import S3FaultProxy
from retouch_devtools.sandbox import SandboxConfig, SandboxServer
from retouch_devtools.stack.env import OUTPUT_PREFIX, SOURCE_PREFIX, TOKEN_ENV, workflow_named
from retouch_devtools.stack.inprocess import materialize_range, range_tags
from retouch_devtools.stack.s3 import CREDENTIALS, new_bucket, s3_client
from retouch_pipeline.assets import PIPELINE_KEYS, RETOUCHED, catalog_pipeline
from retouch_pipeline.assets.common import iter_materializations
from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.catalog.requests import requested_partition_keys
from retouch_pipeline.catalog.sensor import ScanConfig, build_catalog_sensor
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME, catalog_images
from retouch_pipeline.resources import AutoRetouchResource, CatalogResource
from retouch_pipeline.sensors import build_pending_sensor

BATCH_SIZE = 50

log = logging.getLogger(__name__)


def build_resources(settings: dict[str, Any]) -> dict[str, Any]:
    """Resources from plain settings (also used by the child run process); the token stays an EnvVar."""
    autoretouch = {k: v for k, v in settings["autoretouch"].items() if k != "refresh_token"}
    return {
        "autoretouch": AutoRetouchResource(refresh_token=dg.EnvVar(TOKEN_ENV), **autoretouch),
        "catalog": CatalogResource(**settings["catalog"]),
        "s3": S3Resource(endpoint_url=settings["s3_endpoint"], **CREDENTIALS),
    }


class ProfileStack:
    """Sandbox + S3 proxy + bucket + Dagster instance for one profile; see the module docstring."""

    def __init__(
        self,
        moto_url: str,
        sandbox_config: SandboxConfig,
        autoretouch: dict[str, Any],
        workflow_name: str,
        s3_seed: int = 0,
    ) -> None:
        self.moto_url = moto_url
        self.root = Path(tempfile.mkdtemp(prefix="retouch-chaos-"))
        self.home = self.root / "dagster_home"
        self.home.mkdir()
        sandbox_config.data_dir = self.root / "sandbox"
        sandbox_config.data_dir.mkdir()
        self.sandbox_config = sandbox_config
        self.sandbox = SandboxServer(sandbox_config).start()
        self.secrets: set[str] = set()
        self._watch_tokens()
        self.secrets.add(self.sandbox.refresh_token)
        self.token = self.sandbox.refresh_token
        self.proxy = S3FaultProxy(moto_url, seed=s3_seed).start()
        self.s3 = s3_client(moto_url)  # the world's view, never faulted
        self.bucket = new_bucket(self.s3, "chaos")
        self.instance = dg.DagsterInstance.local_temp(str(self.home))
        self.lost_instances: list[dg.DagsterInstance] = []
        self.homes: list[Path] = [self.home]
        """Every DAGSTER_HOME this stack used, lost ones included: the leak scan reads them all."""
        self.workflow = workflow_named(self.sandbox.workflows, workflow_name)
        self.autoretouch = {
            "api_url": self.sandbox.api_url,
            "auth_url": self.sandbox.auth_url,
            "organization_id": self.sandbox.organization_id,
            "workflow_id": self.workflow["id"],
            "poll_interval_seconds": 0.2,
            "max_wait_seconds": 60.0,
            "concurrency": 8,
            **autoretouch,
        }
        self.run_partitions: dict[str, list[str]] = {}
        self.launch_failures: dict[str, str] = {}
        """Partitions whose run could not start (configuration error raised at launch) -> the error."""
        self._catalog_cursor: str | None = None
        self._pending_cursor: str | None = None
        self._catalog_sensor = build_catalog_sensor(
            "catalog_sensor",
            catalog_images,
            list(PIPELINE_KEYS),
            config=ScanConfig(source_bucket=self.bucket, source_prefix=SOURCE_PREFIX, batch_size=BATCH_SIZE),
        )
        self._pending_sensor = build_pending_sensor(batch_size=BATCH_SIZE)
        os.environ[TOKEN_ENV] = self.token

    # ---- configuration --------------------------------------------------------------------------

    def _watch_tokens(self) -> None:
        """Remember every access token the sandbox mints: the leak scan looks for all of them."""
        auth = self.sandbox.state.auth
        mint = auth.mint_access_token

        def recording(organization_id: str | None = None) -> str:
            token = mint() if organization_id is None else mint(organization_id)
            self.secrets.add(token)
            return token

        auth.mint_access_token = recording  # type: ignore[method-assign]

    def settings(self) -> dict[str, Any]:
        return {
            "autoretouch": dict(self.autoretouch),
            "catalog": {
                "source_bucket": self.bucket,
                "source_prefix": SOURCE_PREFIX,
                "output_bucket": self.bucket,
                "output_prefix": OUTPUT_PREFIX,
                "batch_size": BATCH_SIZE,
            },
            "s3_endpoint": self.proxy.url,
        }

    def set_token(self, token: str) -> None:
        """What an operator does after `retouch-pipeline login`: the runs' variable holds the new token."""
        self.token = token
        if token:
            self.secrets.add(token)
            os.environ[TOKEN_ENV] = token
        else:
            os.environ.pop(TOKEN_ENV, None)

    def mint_refresh_token(self) -> str:
        token = self.sandbox.state.auth.mint_refresh_token()
        self.secrets.add(token)
        return token

    def restart_sandbox(self, down_seconds: float = 1.0) -> None:
        """Stop the sandbox (state saved to its data_dir), stay down a moment, start it on the same port."""
        import time

        port = int(self.sandbox.base_url.rsplit(":", 1)[1])
        auth_port = int(self.sandbox.auth_url.rsplit(":", 1)[1])
        self.sandbox.stop()
        time.sleep(down_seconds)
        self.sandbox_config.port = port
        if auth_port != port:  # OAuth on its own port (strict realism): same URL after the restart
            self.sandbox_config.auth_port = auth_port
        self.sandbox = SandboxServer(self.sandbox_config).start()
        self._watch_tokens()

    def lose_instance(self) -> None:
        """Dagster's storage wiped: from now on a new, empty instance (new DAGSTER_HOME) drives the pipeline.

        The sandbox, the bucket and the runs already in flight (on the old instance) keep going, as they do
        when a database is lost under a running deployment and the pipeline is restarted on a fresh one.
        The old home stays on disk (its run still writes there) until `close`, so the leak scan still reads
        what the lost instance stored: a secret there leaked as surely as one in the live instance.
        """
        self.lost_instances.append(self.instance)
        self.home = Path(tempfile.mkdtemp(prefix="dagster_home-", dir=self.root))
        self.homes.append(self.home)
        self.instance = dg.DagsterInstance.local_temp(str(self.home))
        self._catalog_cursor = self._pending_cursor = None

    def twin(self) -> ProfileStack:
        """A second deployment over the same catalog and organization: same sandbox, bucket and settings,
        its own Dagster instance and sensor cursors."""
        other = copy.copy(self)
        other.lost_instances = []
        other.home = Path(tempfile.mkdtemp(prefix="dagster_home-twin-", dir=self.root))
        other.homes = [other.home]
        other.instance = dg.DagsterInstance.local_temp(str(other.home))
        other._catalog_cursor = other._pending_cursor = None
        other.run_partitions, other.launch_failures = {}, {}
        return other

    def definitions(self) -> dg.Definitions:
        return dg.Definitions(
            assets=[catalog_pipeline, autoretouch_costs],
            sensors=[self._catalog_sensor, self._pending_sensor],
            resources=build_resources(self.settings()),
        )

    # ---- the machinery ------------------------------------------------------------------------------

    def registered(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(CATALOG_PARTITIONS_NAME))

    def _evaluate(
        self, sensor: dg.SensorDefinition, cursor: str | None, needs: str
    ) -> dg.SensorExecutionData:
        defs = self.definitions()
        resources = {needs: build_resources(self.settings())[needs]}  # only what the sensor requires
        with dg.build_sensor_context(
            instance=self.instance, cursor=cursor, definitions=defs, resources=resources
        ) as context:
            result = sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            keys = list(request.partition_keys or [])
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(CATALOG_PARTITIONS_NAME, keys)
            else:
                for key in keys:
                    self.instance.delete_dynamic_partition(CATALOG_PARTITIONS_NAME, key)
        return result

    def _batches(self, result: dg.SensorExecutionData) -> list[tuple[list[dg.AssetKey], list[str]]]:
        order = self.registered() if result.run_requests else []
        out = []
        for request in result.run_requests or []:
            keys = sorted(request.asset_selection or [])
            out.append((keys, sorted(requested_partition_keys(request, order))))
        return out

    def tick_catalog(self) -> list[tuple[list[dg.AssetKey], list[str]]]:
        """One catalog-sensor tick; its (selection, partitions) batches, partitions already registered."""
        result = self._evaluate(self._catalog_sensor, self._catalog_cursor, "s3")
        self._catalog_cursor = result.cursor
        return self._batches(result)

    def tick_pending(self) -> list[tuple[list[dg.AssetKey], list[str]]]:
        result = self._evaluate(self._pending_sensor, self._pending_cursor, "autoretouch")
        self._pending_cursor = result.cursor
        return self._batches(result)

    def run(self, keys: Sequence[str], selection: Sequence[dg.AssetKey] = PIPELINE_KEYS) -> list[str]:
        """Run `keys` as backfill-shaped runs (contiguous ranges); the run ids, whatever their outcome."""
        run_ids = []
        registered = self.registered()
        selection = list(selection)
        for tags in range_tags(registered, keys):
            start = registered.index(tags["dagster/asset_partition_range_start"])
            end = registered.index(tags["dagster/asset_partition_range_end"])
            try:
                result = self._materialize(selection, tags)
            except dg.DagsterInvalidConfigError as exc:  # resources unresolvable: the run cannot start
                reason = f"DagsterInvalidConfigError: {' '.join(str(exc).split())[:300]}"
                self.launch_failures.update(dict.fromkeys(registered[start : end + 1], reason))
                continue
            self.run_partitions[result.run_id] = registered[start : end + 1]
            run_ids.append(result.run_id)
        return run_ids

    def _materialize(self, selection: Sequence[dg.AssetKey], tags: dict[str, str]) -> Any:
        resources = build_resources(self.settings())
        return materialize_range(self.instance, resources, selection, {**tags, "retouch/trigger": "chaos"})

    def retouched_partitions(self) -> set[str]:
        """Partitions with at least one `retouched_image` materialization."""
        return {r.partition_key for r in iter_materializations(self.instance, RETOUCHED) if r.partition_key}

    def source_keys(self) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=SOURCE_PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def close(self) -> None:
        self.proxy.stop()
        self.sandbox.stop()
        for instance in [*self.lost_instances, self.instance]:
            instance.dispose()
        shutil.rmtree(self.root, ignore_errors=True)
