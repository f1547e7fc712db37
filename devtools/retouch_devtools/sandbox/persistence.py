"""Sandbox state that survives a restart: one JSON snapshot in `data_dir`, written on stop, read on start.

Why: the real service keeps executions, charges and refresh tokens in a database; a restart of one of its
servers loses nothing. A sandbox that forgot everything on restart would make "the service restarted" a
different world (unknown executions, a fresh balance, refresh tokens answered `invalid_grant`) and the
chaos harness's restart profile meaningless. Persistence is on only when `SandboxConfig.data_dir` is given
(a temporary data directory dies with the server anyway).

What is kept: balance, ledger and charged execution ids (so nothing is charged twice after a restart),
executions (in-flight ones, CREATED or ACTIVE, are queued again: a worker of the restarted server picks them
up, as a real queue would redeliver them), content metadata (bytes are files in `data_dir/content`), the
JWT signing secret with refresh tokens and access-token expiries (tokens issued before the restart stay
valid). Call counters and fault counters restart from zero. The snapshot is written to a temporary file
and renamed into place, so a crash during the write leaves the previous snapshot intact.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from retouch_devtools.sandbox.accounting import Accounting, Charge
from retouch_devtools.sandbox.auth import AuthService
from retouch_devtools.sandbox.catalog import WORKFLOWS_BY_ID
from retouch_devtools.sandbox.content import ContentStore, StoredContent
from retouch_devtools.sandbox.executions import Execution, ExecutionEngine, Result

SNAPSHOT_NAME = "sandbox-state.json"


class SandboxState(Protocol):
    """What a snapshot holds of `state.SandboxState` (a protocol: this module does not import `state`)."""

    data_dir: Path
    engine: ExecutionEngine
    accounting: Accounting
    auth: AuthService
    store: ContentStore


_EXECUTION_FIELDS = (
    "id",
    "seq",
    "workflow_version",
    "organization_id",
    "user_id",
    "input_file_name",
    "input_content_hash",
    "labels",
    "settings",
    "webhooks",
    "created_at",
    "status",
    "started_at",
    "finished_at",
    "charged_credits",
    "attempts",
    "feedback",
)


def snapshot_path(data_dir: Path) -> Path:
    return data_dir / SNAPSHOT_NAME


def _result(value: dict[str, Any] | None) -> Result | None:
    return Result(**value) if value else None


def dump(state: SandboxState) -> dict[str, Any]:
    """Everything listed in the module docstring, as JSON-ready values."""
    engine, accounting, auth, store = state.engine, state.accounting, state.auth, state.store
    with engine.lock:
        executions = [
            {
                **{name: getattr(e, name) for name in _EXECUTION_FIELDS},
                "workflow": e.workflow.id,
                "result": asdict(e.result) if e.result else None,
                "pending_result": asdict(e.pending_result) if e.pending_result else None,
            }
            for e in engine._executions.values()
        ]
        seq = engine._seq
    with accounting._lock:
        money = {
            "balance": accounting._balance,
            "ledger": [asdict(c) for c in accounting._ledger],
            "charged_ids": sorted(accounting._charged_ids),
        }
    with auth._lock:
        tokens = {
            "secret": base64.b64encode(auth._secret).decode("ascii"),
            "refresh_tokens": dict(auth._refresh_tokens),
            "expiry": dict(auth._expiry),
        }
    with store._lock:
        content = [{**asdict(s), "path": str(s.path.relative_to(store.root))} for s in store._meta.values()]
    return {
        "version": 1,
        "seq": seq,
        "executions": executions,
        "accounting": money,
        "auth": tokens,
        "content": content,
    }


def save(state: SandboxState) -> Path:
    """Write the snapshot atomically (temporary file, fsync, rename)."""
    path = snapshot_path(state.data_dir)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(dump(state), out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def load(state: SandboxState) -> bool:
    """Restore a snapshot into a fresh (not yet started) state; False when there is none."""
    path = snapshot_path(state.data_dir)
    if not path.exists():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    engine, accounting, auth, store = state.engine, state.accounting, state.auth, state.store
    for raw in data["content"]:
        stored = StoredContent(**{**raw, "path": store.root / raw["path"]})
        if stored.path.exists():
            store._meta[stored.content_hash] = stored
    money = data["accounting"]
    accounting._balance = int(money["balance"])
    accounting._ledger = [Charge(**c) for c in money["ledger"]]
    accounting._charged_ids = set(money["charged_ids"])
    tokens = data["auth"]
    auth._secret = base64.b64decode(tokens["secret"])
    auth._refresh_tokens = {k: bool(v) for k, v in tokens["refresh_tokens"].items()}
    auth._expiry = {k: float(v) for k, v in tokens["expiry"].items()}
    engine._seq = int(data["seq"])
    for raw in data["executions"]:
        workflow = WORKFLOWS_BY_ID[raw["workflow"]]
        fields = {name: raw[name] for name in _EXECUTION_FIELDS}
        execution = Execution(
            workflow=workflow,
            result=_result(raw["result"]),
            pending_result=_result(raw["pending_result"]),
            **fields,
        )
        if execution.status in ("CREATED", "ACTIVE"):  # interrupted by the restart: process again
            execution.status = "CREATED"
            execution.started_at = None
            engine._queue.put(execution.id)
        engine._executions[execution.id] = execution
    return True
