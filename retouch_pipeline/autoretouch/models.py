"""Typed models of the AutoRetouch API objects (section 4 of the API contract).

Pydantic v2, camelCase aliases, snake_case attributes. Unlike the official client these models ignore unknown
keys, and unknown execution statuses parse as `ExecutionStatus.UNKNOWN`, so a server that grows a field or a
status does not break a running pipeline. Tokens live in `Secret`, whose str/repr are masked.
"""

from __future__ import annotations

import enum
import mimetypes
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import core_schema

__all__ = [
    "Author",
    "Batch",
    "DeviceCode",
    "ExecutionStatus",
    "ImageRef",
    "Member",
    "Organization",
    "Page",
    "Secret",
    "TokenResponse",
    "UploadResult",
    "Workflow",
    "WorkflowComponent",
    "WorkflowExecution",
]

MASK = "**********"


class Secret:
    """A string that does not leak through str(), repr(), f-strings, logging or pydantic dumps."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.get_secret_value() == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("Secret values are not picklable: pass the token explicitly")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(lambda _: MASK)
        )


class _ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown keys ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class ExecutionStatus(enum.StrEnum):
    CREATED = "CREATED"
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    IN_QA = "IN_QA"
    PAYMENT_REQUIRED = "PAYMENT_REQUIRED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def _missing_(cls, value: object) -> ExecutionStatus:
        return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """No change without action: COMPLETED, or FAILED/PAYMENT_REQUIRED (which need a retry, E8)."""
        return self in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.PAYMENT_REQUIRED)

    @property
    def is_processing(self) -> bool:
        """Still with the machines (CREATED/ACTIVE); IN_QA is a human review that can take hours."""
        return self in (ExecutionStatus.CREATED, ExecutionStatus.ACTIVE)


class Member(_ApiModel):
    id: str
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    picture: str | None = None
    roles: list[str] = Field(default_factory=list)


class Organization(_ApiModel):
    id: str
    name: str
    version: str | None = None
    members: list[Member] = Field(default_factory=list)


class Author(_ApiModel):
    id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None


class WorkflowComponent(_ApiModel):
    type: str
    label: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "JPG": ".jpg", "TIFF": ".tiff", "WEBP": ".webp"}


class Workflow(_ApiModel):
    id: str
    version: str
    name: str
    date: datetime | None = None
    author: Author | None = None
    workflow_components: list[WorkflowComponent] = Field(default_factory=list)
    execution_price: int = 0

    @property
    def export_component(self) -> WorkflowComponent | None:
        return next((c for c in self.workflow_components if c.type == "export"), None)

    @property
    def export_format(self) -> str | None:
        """`targetFormat` of the export component (e.g. "PNG"), upper-cased; None when unspecified."""
        component = self.export_component
        value = component.settings.get("targetFormat") if component else None
        return str(value).upper() if value else None

    @property
    def export_mode(self) -> str | None:
        """`targetMode` of the export component (e.g. "RGBA")."""
        component = self.export_component
        value = component.settings.get("targetMode") if component else None
        return str(value) if value else None

    @property
    def export_extension(self) -> str | None:
        """File extension of results (".png", ".jpg", …), for naming outputs before they exist."""
        fmt = self.export_format
        return _EXTENSIONS.get(fmt, f".{fmt.lower()}") if fmt else None


class WorkflowExecution(_ApiModel):
    id: str
    workflow: str
    workflow_version: str | None = None
    workflow_name: str | None = None
    organization_id: str | None = None
    status: ExecutionStatus
    user_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    input_file_name: str | None = None
    input_content_hash: str | None = None
    result_content_hash: str | None = None
    result_content_type: str | None = None
    result_file_name: str | None = None
    result_path: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    charged_credits: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class Batch(_ApiModel):
    id: str
    name: str | None = None
    author: Any = None
    created_at: datetime | None = None
    executions: int = 0
    price: int = 0
    workflow_id: str | None = None
    workflow_name: str | None = None


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list endpoint: exactly `{"entries": [...], "total": int}`."""

    model_config = ConfigDict(extra="ignore")

    entries: list[T]
    total: int


class DeviceCode(BaseModel):
    """A1 response. `device_code` is a bearer secret until confirmed, hence `Secret`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    device_code: Secret
    user_code: str
    verification_uri: str = ""
    verification_uri_complete: str = ""
    expires_in: int = 900
    interval: float = 5

    @model_validator(mode="after")
    def _complete_uri(self) -> DeviceCode:
        # Some servers send only `verification_uri`; RFC 8628 makes the complete form optional.
        if not self.verification_uri_complete and self.verification_uri:
            sep = "&" if "?" in self.verification_uri else "?"
            object.__setattr__(
                self, "verification_uri_complete", f"{self.verification_uri}{sep}user_code={self.user_code}"
            )
        return self


class TokenResponse(BaseModel):
    """A2/A3 response; A3 has no `refresh_token` (no rotation)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: Secret
    refresh_token: Secret | None = None
    scope: str | None = None
    expires_in: int = 86400
    token_type: str = "Bearer"  # noqa: S105 - a token type, not a token

    def refresh_token_value(self) -> str:
        """The raw refresh token, for storing it; raises if the response carried none."""
        if self.refresh_token is None:
            raise ValueError("this token response has no refresh token")
        return self.refresh_token.get_secret_value()


@dataclass(frozen=True)
class ImageRef:
    """An uploaded image as E1 references it: display name, content hash, MIME type."""

    name: str
    content_hash: str
    content_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        content_type = self.content_type or mimetypes.guess_type(self.name)[0] or "application/octet-stream"
        return {"name": self.name, "contentHash": self.content_hash, "contentType": content_type}


@dataclass(frozen=True)
class UploadResult:
    """`uploaded` is False when HEAD /upload said the server already had these bytes."""

    content_hash: str
    uploaded: bool
