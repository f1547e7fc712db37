"""Launching a collection's backfills through a running Dagster webserver (`backfill --dagster-url`).

Why: a deployed Dagster (Docker, Kubernetes) is reached through its webserver, not through a local
`DAGSTER_HOME`. The requests are the UI's own GraphQL mutations: `addDynamicPartition` for each image the
catalog sensor has not registered yet (the partition keys the asset already has are read first, so only the
missing ones are added), then one `launchPartitionBackfill` per batch (`launch.backfill_batches`: one
collection each, at most `CATALOG_BATCH_SIZE` images, tagged with the collection), as
`launch.submit_backfills` does on a local instance. That deployment's backfill daemon then runs them with the
assets' `BackfillPolicy`.

Plain JSON over `requests`; no token is sent, so a webserver behind authentication (Dagster+) is not
supported. Every failure is one `DagsterWebserverError` line naming the URL and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import requests

from retouch_pipeline.settings import DAGSTER_URL_VARIABLE

if TYPE_CHECKING:  # the CLI imports this module for its error class: Dagster only when launching
    import dagster as dg

REPOSITORIES = """
query { repositoriesOrError { __typename ... on RepositoryConnection {
  nodes { name location { name } assetNodes { assetKey { path } partitionKeys } } }
  ... on PythonError { message } } }
"""
ADD_PARTITION = """
mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on Error { message } } }
"""
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }
"""


class DagsterWebserverError(RuntimeError):
    """The webserver cannot launch the backfill: one line naming the URL and the fix."""


class DagsterWebserver:
    """The GraphQL endpoint of one running Dagster webserver."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        where = f"the Dagster webserver at {self.url}"
        try:
            response = requests.post(
                f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise DagsterWebserverError(
                f"{where} does not answer ({type(exc).__name__}): start it, or point --dagster-url / "
                f"${DAGSTER_URL_VARIABLE} at its address"
            ) from None
        payload = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        if response.status_code != 200 or "data" not in payload or payload.get("errors"):
            detail = (
                "; ".join(str(e.get("message")) for e in payload.get("errors") or []) or response.text[:200]
            )
            raise DagsterWebserverError(
                f"{where} refused the request (HTTP {response.status_code}): {detail}"
            )
        data: dict[str, Any] = payload["data"]
        return data

    def catalog_repository(self, asset_key: dg.AssetKey) -> tuple[dict[str, str], set[str]]:
        """The repository selector of the code location serving `asset_key`, and its partition keys."""
        listing = self.graphql(REPOSITORIES)["repositoriesOrError"]
        for repository in listing.get("nodes", []):
            for node in repository["assetNodes"]:
                if node["assetKey"]["path"] == list(asset_key.path):
                    selector = {
                        "repositoryLocationName": repository["location"]["name"],
                        "repositoryName": repository["name"],
                    }
                    return selector, set(node["partitionKeys"])
        raise DagsterWebserverError(
            f"no code location of the Dagster webserver at {self.url} has the asset "
            f"{asset_key.to_user_string()}: deploy retouch_pipeline there, or fix --dagster-url"
        )

    def register_partitions(self, asset_key: dg.AssetKey, partition_keys: Sequence[str]) -> None:
        """Add the catalog partitions the asset does not have yet (images the sensor has not seen)."""
        from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME

        selector, known = self.catalog_repository(asset_key)
        for key in (k for k in dict.fromkeys(partition_keys) if k not in known):
            added = self.graphql(ADD_PARTITION, selector=selector, name=CATALOG_PARTITIONS_NAME, key=key)
            result = added["addDynamicPartition"]
            if result["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
                raise DagsterWebserverError(
                    f"{self.url} did not add partition {key}: {result.get('message')}"
                )

    def launch_backfills(
        self,
        partition_keys: Sequence[str],
        asset_keys: Sequence[dg.AssetKey],
        *,
        batch_size: int,
        title: str,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> list[str]:
        """Register the missing partitions, then one backfill per batch; the backfill ids."""
        from retouch_pipeline.catalog.requests import COLLECTION_TAG
        from retouch_pipeline.launch import backfill_batches

        self.register_partitions(asset_keys[0], partition_keys)
        batches = backfill_batches(partition_keys, batch_size)
        ids: list[str] = []
        images = 0
        for collection, batch in batches:
            params = {
                "partitionNames": batch,
                "assetSelection": [{"path": list(k.path)} for k in asset_keys],
                "fromFailure": False,
                "tags": [{"key": COLLECTION_TAG, "value": collection}],
                "title": title,
            }
            result = self.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
            if result["__typename"] != "LaunchBackfillSuccess":
                raise DagsterWebserverError(
                    f"{self.url} did not launch the backfill: {result.get('message')}"
                )
            ids.append(str(result["backfillId"]))
            images += len(batch)
            if progress is not None:
                progress(len(ids), len(batches), images)
        return ids
