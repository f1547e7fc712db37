"""How far the sandbox leans towards the adversarial answer of each question the public AutoRetouch material
leaves open (docs/api-assumptions.md lists them).

A lenient sandbox answers the convenient way: one organization, OAuth and API on one port, a newest-first
executions list that shows a new execution at once, E8 on a finished execution a no-op, any OAuth client,
any file name. A client can be green against that and still pay twice, bill the wrong organization or fail
its first login against the real service. `Realism.strict()` (the default of `SandboxConfig`) gives every
switch its most adversarial plausible value, so the suite proves the client needs none of the conveniences.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Literal, TypeVar

from starlette.types import Scope, Send

from retouch_devtools.sandbox.catalog import (
    ORGANIZATION_ID,
    ORGANIZATIONS,
    USER,
    stable_uuid,
)

ListOrder = Literal["newest", "oldest", "unordered"]
LIST_ORDERS: tuple[ListOrder, ...] = ("newest", "oldest", "unordered")
FailedResults = Literal["conflict", "not-found", "empty"]
FAILED_RESULTS: tuple[FailedResults, ...] = ("conflict", "not-found", "empty")
StreamFormat = Literal["simple", "messy"]
STREAM_FORMATS: tuple[StreamFormat, ...] = ("simple", "messy")
QueueOrder = Literal["oldest", "any"]
QUEUE_ORDERS: tuple[QueueOrder, ...] = ("oldest", "any")
Rotation = Literal["off", "rotate", "rotate-and-revoke"]
ROTATIONS: tuple[Rotation, ...] = ("off", "rotate", "rotate-and-revoke")
LEVELS = ("lenient", "strict")
T = TypeVar("T")


@dataclass(frozen=True)
class Realism:
    """The switches; field names match the CLI options (`--list-lag` is `list_lag`)."""

    organizations: int = 1
    """Organizations the account belongs to; with 2 or more the token selects the second one."""
    separate_auth_port: bool = False
    """OAuth on its own port (`auth_url`); neither port serves the other's routes, `/v1` is not stripped
    from OAuth paths."""
    list_order: ListOrder = "newest"
    """Order of the executions list (E3); `unordered` is stable across pages but follows no time order."""
    list_lag: float = 0.0
    """Seconds before a new execution appears in the executions list (E4 by id shows it at once)."""
    retry_recharges: bool = False
    """E8 on a COMPLETED execution runs it again and charges it again (else a no-op)."""
    strict_oauth: bool = False
    """Only the reference's public client id; `audience` required; a refresh token only with
    `offline_access` in the scope."""
    strict_file_names: bool = False
    """I4/E7 answer 404 unless the file name is the one the API gave for that content."""
    max_page_size: int = 100
    """Most entries any list (E3, O1, W1, B1) answers, whatever `limit` asks."""
    ignore_list_filters: bool = False
    """E3 ignores its `workflow` filter: the executions of every workflow come back."""
    upload_retention: float = 0.0
    """Seconds an upload is kept (0: forever): then I3 HEAD answers 404, I4 too, and E1 referencing it 404
    "Image not found". Re-uploading the bytes restarts the clock; results and executions under way keep
    theirs."""
    failed_results: FailedResults = "conflict"
    """E6 on a FAILED/PAYMENT_REQUIRED execution: `conflict` 409 JSON error, `not-found` 404, `empty` a 200
    with an empty body (a client trusting the status code writes an empty result)."""
    stream_format: StreamFormat = "simple"
    """E5: `simple` one `data: {json}` line per status change until a final status; `messy` adds comments,
    `retry:` and unknown `event:` types, splits each JSON over several `data:` lines and closes the stream
    after the first status (a proxy cutting it), so only E4 says how the execution ended."""
    rotate_refresh_tokens: Rotation = "off"
    """A3: `off` no refresh token in the answer; `rotate` a new one in every answer, the old one still valid;
    `rotate-and-revoke` a new one and the used one revoked (reuse detection; a reuse is `invalid_grant`).
    Off even in `strict`: the official client 0.3.0 crashes on any A3 answer carrying a refresh token
    (`Credentials(refresh_token=..., **answer)`: a TypeError), so the vendor's own client is evidence that the
    service does not rotate, and the official client must pass every flow against `strict`. Our client
    follows `rotate`; only the credentials file (CLI) follows `rotate-and-revoke`, Dagster's variable cannot
    (docs/api-assumptions.md)."""

    queue_order: QueueOrder = "oldest"
    """Which waiting execution a free worker starts: the `oldest`, or `any` of them (picked at random)."""

    @classmethod
    def lenient(cls) -> Realism:
        return cls()

    @classmethod
    def strict(cls) -> Realism:
        return cls(
            organizations=2,
            separate_auth_port=True,
            list_order="oldest",
            list_lag=10.0,
            retry_recharges=True,
            strict_oauth=True,
            strict_file_names=True,
            max_page_size=20,
            ignore_list_filters=True,
            upload_retention=60.0,
            failed_results="empty",
            stream_format="messy",
            rotate_refresh_tokens="off",  # not "rotate": the official client crashes on it (see the field)
            queue_order="any",
        )

    @classmethod
    def named(cls, level: str, **overrides: Any) -> Realism:
        """`lenient` or `strict`, with the given switches (None = keep the level's value) overridden."""
        if level not in LEVELS:
            raise ValueError(f"realism must be one of {', '.join(LEVELS)}, not {level!r}")
        base = cls.strict() if level == "strict" else cls.lenient()
        changes = {k: v for k, v in overrides.items() if v is not None}
        for name, allowed in (
            ("list_order", LIST_ORDERS),
            ("failed_results", FAILED_RESULTS),
            ("stream_format", STREAM_FORMATS),
            ("rotate_refresh_tokens", ROTATIONS),
            ("queue_order", QUEUE_ORDERS),
        ):
            if name in changes and changes[name] not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if changes.get("max_page_size", 1) < 1 or changes.get("upload_retention", 0.0) < 0:
            raise ValueError("max_page_size must be at least 1 and upload_retention not negative")
        if changes.get("organizations", 1) < 1 or changes.get("list_lag", 0.0) < 0:
            raise ValueError("organizations must be at least 1 and list_lag not negative")
        return replace(base, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- organizations ---------------------------------------------------------------------

    def member_organizations(self) -> list[str]:
        """The account's organizations: the sandbox organization first, then `organizations - 1` more."""
        extra = [
            stable_uuid(f"organization:Sandbox Organization {n}") for n in range(2, self.organizations + 1)
        ]
        return [ORGANIZATION_ID, *extra]

    def selected_organization(self) -> str:
        """The token's selected organization: not the first one when there are several."""
        members = self.member_organizations()
        return members[1] if len(members) > 1 else members[0]

    # ---- the executions list ---------------------------------------------------------------

    def listed(self, newest_first: list[T], created: Iterable[str], now: datetime) -> list[T]:
        """E3's view of `newest_first` (whose ISO creation times are `created`): lagging and reordered."""
        visible = [
            item
            for item, at in zip(newest_first, created, strict=True)
            if (now - datetime.fromisoformat(at.replace("Z", "+00:00"))).total_seconds() >= self.list_lag
        ]
        if self.list_order == "oldest":
            return visible[::-1]
        if self.list_order == "unordered":  # stable across pages, unrelated to time (ids are random)
            return sorted(visible, key=lambda item: str(getattr(item, "id", item)))
        return visible


def organization_json(org_id: str) -> dict[str, Any]:
    """O2 body of any organization: the catalog's two, or an extra one of the sandbox user."""
    if org_id in ORGANIZATIONS:
        copied: dict[str, Any] = json.loads(json.dumps(ORGANIZATIONS[org_id]))  # a deep copy
        return copied
    number = next(
        (n for n in range(2, 100) if stable_uuid(f"organization:Sandbox Organization {n}") == org_id), 0
    )
    return {
        "id": org_id,
        "name": f"Sandbox Organization {number}",
        "version": stable_uuid(f"organization-version:Sandbox Organization {number}"),
        "members": [{**USER, "roles": ["admin"]}],
    }


class FileNames:
    """The file names the API gave for each content hash (uploads, execution inputs, results)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, set[str]] = {}

    def add(self, content_hash: str, name: str) -> None:
        with self._lock:
            self._names.setdefault(content_hash.lower(), set()).add(name)

    def allows(self, content_hash: str, name: str) -> bool:
        with self._lock:
            return name in self._names.get(content_hash.lower(), set())


async def send_not_found(scope: Scope, send: Send, original_path: str) -> None:
    """A Spring-style 404 from the ASGI layer (a route served only on the other port)."""
    body = json.dumps(
        {
            "timestamp": datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "status": 404,
            "error": "Not Found",
            "message": "",
            "path": original_path,
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
