"""Configuration of the sandbox server.

`SandboxConfig` is fixed once the server starts; `FaultConfig` is read on every request, so tests
and the chaos harness may change it at runtime (directly on `server.state.faults` or through the
`/_sandbox/faults` control route).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retouch_devtools.sandbox.realism import Realism


@dataclass
class FaultConfig:
    """Injected misbehaviour; each rate is a probability in [0, 1] drawn from a seeded RNG."""

    error_rate: float = 0.0
    """Fraction of API requests answered 500 or 503 (Spring-style body) without being handled."""
    rate_limit_rate: float = 0.0
    """Fraction of API requests answered 429 with `Retry-After: retry_after_seconds`."""
    retry_after_seconds: float = 1.0
    """Sent as an integer when integral; fractions (for fast tests) are sent as decimals."""
    latency_seconds: float = 0.0
    """Delay added before every API request is handled."""
    drop_rate: float = 0.0
    """Fraction of API requests whose connection is closed without any response (not handled)."""
    lose_create_rate: float = 0.0
    """Fraction of execution creates (E1/E2) that ARE created, after which the connection is closed."""
    create_error_rate: float = 0.0
    """Fraction of execution creates (E1/E2) answered 500 or 503 without being handled (nothing created):
    the client cannot tell them from a create that happened until the list proves the execution absent."""
    stale_connection_rate: float = 0.0
    """Fraction of creates and retries (E1/E2/E8) arriving on a kept-alive connection that already carried a
    request which are dropped unread: the server closed the idle connection as the request arrived (the
    race every idle timeout allows; uvicorn's is 5 s). Nothing is created; the client sees a broken
    connection it cannot tell from a lost answer."""
    execution_failure_rate: float = 0.0
    """Fraction of executions that end FAILED (never charged)."""
    include_auth: bool = False
    """Whether error/rate-limit/latency/drop faults also hit the auth routes (/oauth/*)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool):
                setattr(self, f.name, float(value))

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update (from the control route), validating names and types."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown fault setting {name!r}")
        for name, value in changes.items():
            current = getattr(self, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            elif name.endswith("_rate") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
            elif float(value) < 0:
                raise ValueError(f"{name} must not be negative")
            setattr(self, name, value if isinstance(current, bool) else float(value))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SandboxConfig:
    """Static settings; defaults mimic the real service closely enough for the pipeline."""

    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port; read the real one from `SandboxServer.api_url`."""
    auth_port: int = 0
    """The OAuth port with `realism.separate_auth_port` (0 picks a free one; see `SandboxServer.auth_url`)."""
    processing_seconds: float = 2.0
    """Wall time one worker spends on one execution (N images take N*T/W)."""
    workers: int = 4
    balance: int = 100_000
    """Initial credits of the sandbox organization (1 credit = 1 euro cent)."""
    auto_approve: bool = False
    """Approve a device code right after its first poll (one `authorization_pending` is still seen)."""
    access_token_ttl: int = 86_400
    device_code_ttl: int = 900
    device_poll_interval: int = 5
    qa_seconds: float | None = None
    """None: IN_QA waits for a manual approval (control route); else approved after this delay."""
    data_dir: Path | None = None
    """Where content bytes live; None = a temporary directory removed on stop. When given, the state
    (executions, ledger, balance, tokens) is saved there on stop and restored on start
    (`sandbox.persistence`): a restarted sandbox continues where the previous one stopped."""
    seed: int = 0
    blocking_timeout_seconds: float = 300.0
    """Longest E6 (blocking result) waits before answering 503 + Retry-After."""
    allow_remote_fetch: bool = False
    """Allow webhooks and I2 (upload by URL) to reach non-loopback hosts. Off: loopback only."""
    image_work_max_side: int | None = None
    """Do the image work (and produce the result) at most this many pixels on a side; None = full size
    (up to 4,096). For benchmarks on small machines: with T seconds per image modelled by
    `processing_seconds`, full-size Pillow work on many large inputs would otherwise eat the CPU of the
    client under test. Uploads are still fully decoded and validated."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    realism: Realism = field(default_factory=Realism.strict)
    """The adversarial answers to the reference's open questions (`sandbox.realism`); strict by default."""
