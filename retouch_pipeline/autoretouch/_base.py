"""Plumbing shared by the client's endpoint methods: URLs, auth headers, 401 handling, pagination, and the
organization every organization-scoped call names (never left to the server's "selected" one, which on a
multi-organization account may not be the one to bill)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import requests
from pydantic import BaseModel

from .auth import TokenManager
from .constants import DEFAULT_API_URL, DEFAULT_AUTH_URL, DEFAULT_CLIENT_ID
from .errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    NotLoggedInError,
    OrganizationRequiredError,
)
from .models import Organization, Page, Secret
from .transport import IDEMPOTENT_METHODS, RetryConfig, Transport, translate_request_exception

log = logging.getLogger("retouch_pipeline.autoretouch")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Params = list[tuple[str, str]]
BodyFactory = Callable[[], AbstractContextManager[dict[str, Any]]]


@contextlib.contextmanager
def _no_body() -> Iterator[dict[str, Any]]:
    yield {}


class ClientBase:
    """Holds the transport and the token manager; every request goes through `_request()`."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        auth_url: str = DEFAULT_AUTH_URL,
        *,
        refresh_token: str | Secret | None = None,
        token_manager: TokenManager | None = None,
        organization_id: str | None = None,
        client_id: str = DEFAULT_CLIENT_ID,
        retry: RetryConfig | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        pool_size: int = 32,
        page_size: int = 50,
        create_settle_seconds: float = 30.0,
        sources: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.auth_url = auth_url.rstrip("/")
        self.organization_id = organization_id
        self._org_lock = threading.Lock()
        self.client_id = client_id
        self.page_size = page_size
        #: How long after a create attempt an execution may still be missing from the list (E3) before its
        #: absence counts as proof that the create did not happen (see `executions.py`).
        self.create_settle_seconds = create_settle_seconds
        #: Where `api_url`, `auth_url` and `refresh_token` came from (option, variable, file), for errors.
        self.sources = dict(sources or {})
        origin = self.sources.get("api_url")
        self._api_setting = f"the API URL ({origin})" if origin else "the API URL"
        self.transport = Transport(
            retry=retry,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            pool_size=pool_size,
            sleep=sleep,
            clock=clock,
        )
        if token_manager is None and refresh_token is not None:
            token_manager = TokenManager(
                refresh_token,
                auth_url=self.auth_url,
                client_id=client_id,
                transport=self.transport,
                source=self.sources.get("refresh_token"),
                auth_url_source=self.sources.get("auth_url"),
            )
        self.tokens = token_manager

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r}, organization_id={self.organization_id!r})"

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- plumbing ---------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.api_url}{path if path.startswith('/') else '/' + path}"

    def _params(self, params: Params | None = None, organization_id: str | None = None) -> Params:
        """`params` plus `organization=` (the given id, else the client's resolved one)."""
        return [*(params or []), ("organization", organization_id or self.resolve_organization())]

    def resolve_organization(self) -> str:
        """The organization this client bills, resolved once: the configured id, else the account's only one.

        Raises `OrganizationRequiredError` (listing the account's organizations) when there are several.
        """
        if self.organization_id:
            return self.organization_id
        with self._org_lock:
            if not self.organization_id:
                found = list(self._paginate(Organization, "/v1/organization", scoped=False))
                if len(found) != 1:
                    raise OrganizationRequiredError([(o.id, o.name) for o in found], self.api_url)
                self.organization_id = found[0].id
                log.info("organization %s (%s): the account's only one", found[0].id, found[0].name)
            return self.organization_id

    def _access_token(self) -> Secret:
        if self.tokens is None:
            raise NotLoggedInError(["the refresh_token argument", "the token_manager argument"])
        return self.tokens.access_token()

    def _attempt(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: BodyFactory = _no_body,
        auth: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """One send; on a 401, invalidate the rejected token, refresh once and resend once."""
        url = self._url(path)
        kwargs.setdefault("setting", self._api_setting)
        if not auth:
            with body() as extra:
                return self.transport.send(method, url, params=params, **extra, **kwargs)
        token = self._token_before_request()
        try:
            with body() as extra:
                return self._send_with(token, method, url, params, extra, kwargs)
        except AuthenticationError:
            assert self.tokens is not None
            log.info("access token rejected (401): refreshing once")
            self.tokens.invalidate(token)
            token = self._token_before_request()
            with body() as extra:
                return self._send_with(token, method, url, params, extra, kwargs)

    def _token_before_request(self) -> Secret:
        """`_access_token()`, marking its failures as happening before the API request was sent."""
        try:
            return self._access_token()
        except (APIStatusError, APIConnectionError) as exc:
            exc.before_request = True
            raise

    def _send_with(
        self,
        token: Secret,
        method: str,
        url: str,
        params: Params | None,
        extra: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> requests.Response:
        headers = {**extra.get("headers", {}), **kwargs.get("headers", {})}
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        rest = {k: v for k, v in {**extra, **kwargs}.items() if k != "headers"}
        return self.transport.send(method, url, params=params, headers=headers, **rest)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """`_attempt()` with the transport's retry policy."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        return self.transport.retrying(
            lambda: self._attempt(method, path, params=params, **dict(kwargs)), idempotent=idempotent
        )

    def _get_json(self, path: str, params: Params | None = None, *, scoped: bool = True) -> Any:
        """GET and parse JSON; `scoped` adds `organization=` (everything but the organization routes)."""
        response = self._request("GET", path, params=self._params(params) if scoped else list(params or []))
        try:
            return response.json()
        except ValueError as exc:
            raise APIConnectionError(f"GET {path}", "the response was not valid JSON") from exc

    def _get_model(
        self, model: type[M], path: str, params: Params | None = None, *, scoped: bool = True
    ) -> M:
        return model.model_validate(self._get_json(path, params, scoped=scoped))

    def _paginate(
        self, model: type[M], path: str, params: Params | None = None, *, scoped: bool = True
    ) -> Iterator[M]:
        """Every entry of every page."""
        for page in self._pages(model, path, params, scoped=scoped):
            yield from page.entries

    def _pages(
        self, model: type[M], path: str, params: Params | None = None, offset: int = 0, *, scoped: bool = True
    ) -> Iterator[Page[M]]:
        """The pages from `offset` on: offsets advance by what arrived; stop at `total` or an empty page."""
        while True:
            page = self._page(model, path, params, offset, scoped=scoped)
            if not page.entries:
                return
            yield page
            offset += len(page.entries)
            if offset >= page.total:
                return

    def _page(
        self, model: type[M], path: str, params: Params | None, offset: int, *, scoped: bool = True
    ) -> Page[M]:
        """One page of a list endpoint: `page_size` entries from `offset`, with the list's `total`."""
        page_params = [*(params or []), ("limit", str(self.page_size)), ("offset", str(offset))]
        data = self._get_json(path, page_params, scoped=scoped)
        return Page[model].model_validate(data)  # type: ignore[valid-type]

    def _stream(self, method: str, path: str, fn: Callable[[requests.Response], T], **kwargs: Any) -> T:
        """Send with `stream=True` and run `fn` on the open response, mapping mid-body network errors."""
        response = self._attempt(method, path, stream=True, **kwargs)
        try:
            return fn(response)
        except requests.RequestException as exc:
            raise translate_request_exception(exc, method, response.url or self._url(path)) from exc
        finally:
            response.close()
