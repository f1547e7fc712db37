"""`AutoRetouchClient`: one method per AutoRetouch endpoint, safe to share between threads.

    with AutoRetouchClient.from_credentials() as client:
        upload = client.upload_image(Path("shoe.jpg"), filename="shoe.jpg")
        execution_id = client.create_execution(workflow_id, image=ImageRef("shoe.jpg", upload.content_hash),
                                               idempotency_key=f"catalog-42/shoe.jpg")
        execution = client.wait_for_status(execution_id)
        client.download_result(execution, Path("out/shoe.png"))

Organizations, workflows, images and batches live here; executions (including the idempotent create and
its rationale) in `executions.py`; HTTP plumbing in `_base.py` and `transport.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import quote

from .constants import DEFAULT_API_URL, DEFAULT_AUTH_URL, DEFAULT_CLIENT_ID
from .credentials import CredentialStore, StoredCredentials
from .errors import APIConnectionError, APIStatusError, NotFoundError
from .executions import ExecutionsMixin, multipart_factory
from .models import Batch, Organization, Secret, UploadResult, Workflow
from .streams import DownloadResult, UploadSource

__all__ = ["AutoRetouchClient"]

log = logging.getLogger("retouch_pipeline.autoretouch")


class AutoRetouchClient(ExecutionsMixin):
    """Typed AutoRetouch API client.

    Pass a `refresh_token` (or a shared `token_manager`). Every organization-scoped call sends
    `organization=`: `organization_id` when set, else the account's only organization (looked up once);
    an account with several and none configured raises `OrganizationRequiredError`. Retries follow
    `retry` (see `transport.py`); timeouts are per request.
    """

    @classmethod
    def from_credentials(
        cls,
        store: CredentialStore | None = None,
        *,
        api_url: str | None = None,
        auth_url: str | None = None,
        organization_id: str | None = None,
        **kwargs: Any,
    ) -> AutoRetouchClient:
        """A client from the stored login (env var, then credentials file); explicit arguments win.

        Raises `NotLoggedInError` naming the places checked when there is no refresh token.
        """
        creds = (store or CredentialStore()).require()
        client_id = kwargs.pop("client_id", None) or creds.client_id or DEFAULT_CLIENT_ID
        given = dict(kwargs.pop("sources", None) or {})

        def source(name: str, explicit: str | None, saved: str | None) -> str:
            return given.get(name) or ("the caller" if explicit else creds.source if saved else "the default")

        sources = {
            "api_url": source("api_url", api_url, creds.api_url),
            "auth_url": source("auth_url", auth_url, creds.auth_url),
            "refresh_token": creds.source,
        }
        client = cls(
            api_url or creds.api_url or DEFAULT_API_URL,
            auth_url or creds.auth_url or DEFAULT_AUTH_URL,
            refresh_token=creds.refresh_token,
            organization_id=organization_id or creds.organization_id,
            client_id=client_id,
            sources=sources,
            **kwargs,
        )
        if client.tokens is not None and not creds.source.startswith("$"):
            # A server rotating refresh tokens may revoke the used one: keep the new one in the file.
            saving = store or CredentialStore()
            client.tokens.on_refresh_token_rotated = lambda token: _keep_rotated(saving, creds, token)
        return client

    # -- health, organizations, workflows ------------------------------------------------------------------

    def health(self) -> bool:
        """H1: True when the API answers 200 (no auth, no retries: a probe should be quick and honest)."""
        try:
            self._attempt("GET", "/health", auth=False)
        except (APIStatusError, APIConnectionError):
            return False
        return True

    def iter_organizations(self) -> Iterator[Organization]:
        """O1: every organization of this account, across all pages."""
        return self._paginate(Organization, "/v1/organization", scoped=False)

    def get_organization(self, organization_id: str) -> Organization:
        """O2."""
        path = f"/v1/organization/{quote(organization_id, safe='')}"
        return self._get_model(Organization, path, scoped=False)

    def get_balance(self, organization_id: str | None = None) -> int:
        """O3: credits (euro cents excl. VAT) of the organization."""
        response = self._request(
            "GET", "/v1/organization/balance", params=self._params(None, organization_id)
        )
        text = response.text.strip()
        try:
            return int(text)
        except ValueError:
            value = response.json()  # tolerate `{"balance": 1990}`-style bodies
            if isinstance(value, dict) and len(value) == 1:
                return int(next(iter(value.values())))
            raise

    def iter_workflows(self) -> Iterator[Workflow]:
        """W1: every workflow of the organization, across all pages."""
        return self._paginate(Workflow, "/v1/workflow")

    def get_workflow(self, workflow_id: str) -> Workflow:
        """W2."""
        return self._get_model(Workflow, f"/v1/workflow/{quote(workflow_id, safe='')}")

    # -- images ---------------------------------------------------------------------------------------------

    def image_exists(self, content_hash: str) -> bool:
        """I3: HEAD /upload?contentHash=…: 200 → the server has these bytes, 404 → it does not (any more)."""
        try:
            self._request("HEAD", "/upload", params=self._params([("contentHash", content_hash)]))
        except NotFoundError:
            return False
        return True

    def upload_image(
        self,
        source: str | os.PathLike[str] | bytes | BinaryIO,
        *,
        filename: str,
        content_type: str | None = None,
        skip_if_exists: bool = True,
    ) -> UploadResult:
        """I1, de-duplicated by I3: the hash is computed locally; known bytes are not sent again.

        An upload is content-addressed, so a resend after a lost response is harmless and is retried.
        """
        with UploadSource(source) as src:
            if skip_if_exists and self.image_exists(src.content_hash):
                log.debug("upload of %s skipped: the server has %s", filename, src.content_hash)
                return UploadResult(src.content_hash, uploaded=False)
            response = self._request(
                "POST",
                "/v1/upload",
                params=self._params(),
                body=multipart_factory(src, filename, content_type, {"filesize": str(src.size)}),
                idempotent=True,
            )
            returned = response.text.strip().strip('"')
            if returned != src.content_hash:
                log.warning(
                    "server hash %s differs from local SHA-256 %s for %s",
                    returned,
                    src.content_hash,
                    filename,
                )
            return UploadResult(returned or src.content_hash, uploaded=True)

    def upload_from_urls(self, urls: Mapping[str, str]) -> dict[str, str]:
        """I2: the server fetches public URLs; returns {name: content hash}."""
        response = self._request(
            "POST", "/v1/upload", params=self._params(), json={"urls": dict(urls)}, idempotent=True
        )
        body = response.json()
        result = body.get("urls", body) if isinstance(body, dict) else {}
        return {str(k): str(v) for k, v in result.items()}

    def download_image(
        self, content_hash: str, filename: str, dest: str | os.PathLike[str] | BinaryIO
    ) -> DownloadResult:
        """I4: stream an uploaded (or result) image to a path or stream, verified against its hash."""
        path = f"/v1/image/{quote(content_hash, safe='')}/{quote(filename, safe='')}"
        return self._download(path, dest, expected_hash=content_hash)

    # -- batches --------------------------------------------------------------------------------------------

    def iter_batches(self, batch_id: str | None = None) -> Iterator[Batch]:
        """B1: batches ("orders"), optionally just one."""
        return self._paginate(Batch, "/v1/batch", [("batchId", batch_id)] if batch_id else [])


def _keep_rotated(store: CredentialStore, creds: StoredCredentials, token: Secret) -> None:
    """Save a rotated refresh token over the one read from the credentials file (same other fields)."""
    store.save(dataclasses.replace(creds, refresh_token=token))
    log.info("the auth server rotated the refresh token: saved the new one to %s", creds.source)
