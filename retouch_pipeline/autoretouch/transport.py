"""HTTP transport: one pooled `requests.Session`, explicit timeouts, retries with backoff, error mapping.

Retry policy (`RetryConfig`, defaults in parentheses): up to `max_retries` (5) resends, exponential backoff
from `initial_delay` (0.5 s) doubling up to `max_delay` (30 s), each delay reduced by up to `jitter` (25 %) at
random so many threads do not retry in lock-step, and never past `total_timeout` (300 s) from the first try. A
`Retry-After` header (seconds or HTTP date) on 429/503 replaces the computed delay.

What is retried depends on whether a resend is safe:
- 429 always (the server refused the request, nothing happened) unless the caller handles 429 itself;
- 5xx, read timeouts and broken connections only for idempotent requests, because a non-idempotent request
  (execution create) may already have taken effect: those are raised for the caller to reconcile;
- connection refused / DNS / connect timeouts always (the request never left this machine).

The session is shared by every thread of a client; its HTTPAdapter pool is sized to `pool_size` so that many
threads do not churn connections ("Connection pool is full, discarding connection").

A request that must not be resent blindly (`send(..., fresh_connection=True)`: the execution create, the
retry) goes over a connection of its own, opened for it and closed after its answer (`Connection: close`),
never over a pooled one. A pooled connection may have sat idle until the server closes it just as the request
is written (every server has an idle timeout; uvicorn's is 5 s, load balancers' 60-600 s): the request then
fails with a broken connection, and for a create that means "may have been created", settled only after the
executions list's settle window. An idempotent request in that race is simply resent; a create is not, so it
pays one connection set-up instead.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AutoRetouchError,
    RateLimitError,
    ServerError,
    describe_request,
    status_error_for,
)

__all__ = ["USER_AGENT", "RetryConfig", "Transport", "parse_retry_after", "translate_request_exception"]

log = logging.getLogger("retouch_pipeline.autoretouch")
# A library must not print through logging's last-resort stderr handler: the application decides.
log.addHandler(logging.NullHandler())

T = TypeVar("T")

try:
    _VERSION = metadata.version("retouch-pipeline")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = "0"
USER_AGENT = f"retouch-pipeline/{_VERSION}"

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryConfig:
    """How hard to try. `RetryConfig(max_retries=0)` disables retries."""

    max_retries: int = 5
    initial_delay: float = 0.5
    max_delay: float = 30.0
    total_timeout: float = 300.0
    jitter: float = 0.25
    unreachable_timeout: float = 20.0
    """A call whose server cannot even be connected to (refused, DNS, connect timeout) gives up once
    another attempt could end later than this many seconds after the first one."""

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Delay before resend number `attempt + 1` (attempt counts from 0), jittered downwards."""
        base = min(self.initial_delay * (2.0**attempt), self.max_delay)
        return max(0.0, base * (1.0 - self.jitter * rand()))

    def delay_for(
        self, attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
    ) -> float:
        """`Retry-After` wins when the server sent one; otherwise exponential backoff."""
        if retry_after is not None:
            return max(0.0, retry_after)
        return self.backoff(attempt, rand)


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _never_sent(exc: BaseException) -> bool:
    """True when the connection was never established, so the request cannot have reached the server."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(cur, urllib3.exceptions.MaxRetryError) and cur.reason is not None:
            cur = cur.reason
            continue
        nxt = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        cur = nxt or cur.__cause__ or cur.__context__
    return False


def translate_request_exception(
    exc: BaseException, method: str, url: str, *, service: str = "API", setting: str = "the API URL"
) -> APIConnectionError:
    """Map a requests/urllib3 exception (also one raised while streaming a body) into our hierarchy.

    `service` ("API" or "OAuth server") and `setting` (which URL setting, and where it came from) go into
    the message, so that one line says what failed and what to fix.
    """
    request = describe_request(method, url, with_host=True)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return APITimeoutError(
            request, "connect timeout", may_have_reached_server=False, service=service, setting=setting
        )
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError):
        return APITimeoutError(request, "read timeout: no response in time", service=service, setting=setting)
    if isinstance(exc, requests.exceptions.ConnectionError) and any(
        isinstance(a, urllib3.exceptions.ReadTimeoutError) for a in exc.args
    ):
        return APITimeoutError(
            request, "read timeout while receiving the body", service=service, setting=setting
        )
    if _never_sent(exc):
        return APIConnectionError(
            request, "could not connect", may_have_reached_server=False, service=service, setting=setting
        )
    return APIConnectionError(
        request, f"connection broken ({type(exc).__name__})", service=service, setting=setting
    )


def _server_message(response: requests.Response) -> tuple[str | None, Any]:
    """The Spring `message` (or OAuth `error_description`/`error`) and the parsed error body."""
    try:
        text = response.text
    except requests.RequestException:
        return None, None
    try:
        body: Any = response.json()
    except ValueError:
        return (text.strip()[:300] or None), text
    if isinstance(body, dict):
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str) and body[key].strip():
                return body[key].strip()[:300], body
    return None, body


def _status_error(response: requests.Response, method: str, url: str, service: str) -> APIStatusError:
    """The `APIStatusError` subclass for a non-2xx response (which is closed here)."""
    try:
        message, body = _server_message(response)
    finally:
        response.close()
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    cls = status_error_for(response.status_code)
    return cls(
        response.status_code, method, url, message, body=body, retry_after=retry_after, service=service
    )


class Transport:
    """Sends requests; `request()` = one `send()` wrapped in `retrying()`."""

    def __init__(
        self,
        *,
        retry: RetryConfig | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        pool_size: int = 32,
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry or RetryConfig()
        self.timeout = (connect_timeout, read_timeout)
        self.sleep = sleep
        self.clock = clock
        self._rand_lock = threading.Lock()
        self._rand = random.Random()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent
        self.one_shot = requests.Session()
        """The session of `fresh_connection` requests: each opens its own connection and closes it."""
        self.one_shot.mount("http://", HTTPAdapter(pool_maxsize=pool_size, max_retries=0))
        self.one_shot.mount("https://", HTTPAdapter(pool_maxsize=pool_size, max_retries=0))
        self.one_shot.headers.update({"User-Agent": user_agent, "Connection": "close"})

    def close(self) -> None:
        self.session.close()
        self.one_shot.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        stream: bool = False,
        timeout: tuple[float, float] | None = None,
        service: str = "API",
        setting: str = "the API URL",
        fresh_connection: bool = False,
    ) -> requests.Response:
        """One attempt. Returns a 2xx response (close it if `stream`); raises our exceptions otherwise.

        `service` and `setting` name, in error messages, the server called and the setting giving its URL.
        `fresh_connection`: never over a pooled connection (the module's docstring says why).
        """
        started = time.monotonic()
        session = self.one_shot if fresh_connection else self.session
        try:
            response = session.request(
                method,
                url,
                params=params,
                headers=dict(headers or {}),
                json=json,
                data=data,
                files=files,
                stream=stream,
                timeout=timeout or self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            err = translate_request_exception(exc, method, url, service=service, setting=setting)
            log.debug("%s failed: %s", err.request, type(exc).__name__)
            raise err from exc
        full_url = response.url or url
        log.debug(
            "%s -> %d in %.3fs",
            describe_request(method, full_url),
            response.status_code,
            time.monotonic() - started,
        )
        if response.status_code < 300:
            return response
        raise _status_error(response, method, full_url, service)

    def should_retry(
        self, exc: AutoRetouchError, *, idempotent: bool, retry_rate_limits: bool = True
    ) -> bool:
        if getattr(exc, "before_request", False):
            # Getting the access token failed: the API request itself was never sent, and a refresh is safe.
            return isinstance(exc, RateLimitError | ServerError | APIConnectionError)
        if isinstance(exc, RateLimitError):
            return retry_rate_limits
        if isinstance(exc, ServerError):
            return idempotent
        if isinstance(exc, APIConnectionError):
            return idempotent or not exc.may_have_reached_server
        return False

    def retrying(
        self,
        op: Callable[[], T],
        *,
        idempotent: bool = True,
        retry_rate_limits: bool = True,
        retry: RetryConfig | None = None,
    ) -> T:
        """Run `op` (which does one attempt, including reading the body), resending per the retry policy."""
        config = retry or self.retry
        started = self.clock()
        attempt = 0
        while True:
            try:
                return op()
            except (APIStatusError, APIConnectionError) as exc:
                if attempt >= config.max_retries or not self.should_retry(
                    exc, idempotent=idempotent, retry_rate_limits=retry_rate_limits
                ):
                    raise
                with self._rand_lock:
                    delay = config.delay_for(attempt, getattr(exc, "retry_after", None), self._rand.random)
                budget = self._budget(exc, config)
                if self.clock() + delay - started > budget:
                    log.info("giving up on %s: the retry budget of %.0fs is spent", exc.request, budget)
                    raise
                attempt += 1
                log.info(
                    "%s failed (%s); retry %d/%d in %.2fs",
                    exc.request,
                    type(exc).__name__,
                    attempt,
                    config.max_retries,
                    delay,
                )
                self.sleep(delay)

    def _budget(self, exc: AutoRetouchError, config: RetryConfig) -> float:
        """Seconds a call may take: short when nothing answers (the next try must fit its connect timeout)."""
        if isinstance(exc, APIConnectionError) and not exc.may_have_reached_server:
            return min(config.total_timeout, config.unreachable_timeout - self.timeout[0])
        return config.total_timeout

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool | None = None,
        retry_rate_limits: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """`send()` with retries; idempotency defaults from the method (POST is not idempotent)."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        return self.retrying(
            lambda: self.send(method, url, **kwargs),
            idempotent=idempotent,
            retry_rate_limits=retry_rate_limits,
        )
