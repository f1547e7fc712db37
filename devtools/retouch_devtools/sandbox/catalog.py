"""The fixed world of the sandbox: its user, two organizations and three workflows.

Ids are derived with uuid5 so they are stable across runs (benchmarks and saved configs can refer
to them), yet valid UUIDs as the official client requires.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

_NS = uuid.UUID("5a4d6b0e-7f43-4d3c-9a52-2f1f0c1e5b7a")

CLIENT_ID = "V8EkfbxtBi93cAySTVWAecEum4d6pt4J"
AUDIENCE = "https://api.autoretouch.com"
SELECTED_ORG_CLAIM = "https://autoretouch.com/selectedOrganization"

USER_ID = "auth0|sandbox-user"
USER = {
    "id": USER_ID,
    "givenName": "Sandy",
    "familyName": "Box",
    "email": "sandbox@example.com",
    "picture": "https://example.com/sandbox.png",
}


def stable_uuid(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


ORGANIZATION_ID = stable_uuid("organization:Sandbox Organization")
FOREIGN_ORGANIZATION_ID = stable_uuid("organization:Someone Else's Organization")

ORGANIZATIONS: dict[str, dict[str, Any]] = {
    ORGANIZATION_ID: {
        "id": ORGANIZATION_ID,
        "name": "Sandbox Organization",
        "version": stable_uuid("organization-version:Sandbox Organization"),
        "members": [{**USER, "roles": ["admin"]}],
    },
    FOREIGN_ORGANIZATION_ID: {
        "id": FOREIGN_ORGANIZATION_ID,
        "name": "Someone Else's Organization",
        "version": stable_uuid("organization-version:Someone Else's Organization"),
        "members": [
            {
                "id": "auth0|someone-else",
                "givenName": "Someone",
                "familyName": "Else",
                "email": "else@example.com",
                "picture": None,
                "roles": ["admin"],
            }
        ],
    },
}

BACKGROUND_REMOVAL = "background-removal"
QUALITY_ASSURANCE = "quality-assurance"


@dataclass(frozen=True)
class Workflow:
    """A workflow with one current version; `components` drive what the worker does."""

    name: str
    price: int
    export_format: str
    export_mode: str
    steps: tuple[str, ...] = ()
    date: str = "2020-03-13T09:26:37.705284Z"
    id: str = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", stable_uuid(f"workflow:{self.name}"))
        object.__setattr__(self, "version", stable_uuid(f"workflow-version:{self.name}:1"))

    @property
    def removes_background(self) -> bool:
        return BACKGROUND_REMOVAL in self.steps

    @property
    def has_qa(self) -> bool:
        return QUALITY_ASSURANCE in self.steps

    def components(self) -> list[dict[str, Any]]:
        comps: list[dict[str, Any]] = [{"type": "input", "label": "input", "settings": {}}]
        comps += [{"type": step, "label": step, "settings": {}} for step in self.steps]
        comps.append(
            {
                "type": "export",
                "label": "export",
                "settings": {"targetFormat": self.export_format, "targetMode": self.export_mode},
            }
        )
        return comps

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "date": self.date,
            "author": {"id": USER_ID, "firstName": None, "lastName": None, "email": None},
            "workflowComponents": self.components(),
            "executionPrice": self.price,
        }

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "executionPrice": self.price}


WORKFLOWS: tuple[Workflow, ...] = (
    Workflow("Background Removal", 10, "PNG", "RGBA", (BACKGROUND_REMOVAL,)),
    Workflow("Export Only", 1, "JPEG", "RGB"),
    Workflow("Background Removal with QA", 25, "PNG", "RGBA", (BACKGROUND_REMOVAL, QUALITY_ASSURANCE)),
)
WORKFLOWS_BY_ID: dict[str, Workflow] = {w.id: w for w in WORKFLOWS}


def organization_json(org_id: str) -> dict[str, Any]:
    return copy.deepcopy(ORGANIZATIONS[org_id])
