"""The live state of one sandbox server, shared by the HTTP handlers, the workers and tests."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from retouch_devtools.sandbox import persistence
from retouch_devtools.sandbox.accounting import Accounting
from retouch_devtools.sandbox.auth import AuthService
from retouch_devtools.sandbox.catalog import ORGANIZATION_ID, WORKFLOWS
from retouch_devtools.sandbox.config import FaultConfig, SandboxConfig
from retouch_devtools.sandbox.content import ContentStore
from retouch_devtools.sandbox.executions import ExecutionEngine
from retouch_devtools.sandbox.faults import FaultInjector
from retouch_devtools.sandbox.realism import FileNames
from retouch_devtools.sandbox.webhooks import WebhookDispatcher


class SandboxState:
    """Everything the fake service knows; in-process tests read and poke it directly.

    Useful attributes: `accounting` (balance, ledger, call counters), `engine` (executions),
    `auth` (tokens, device codes), `store` (content), `faults` (the live `FaultConfig`).
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._own_dir = config.data_dir is None
        self.data_dir = config.data_dir or Path(tempfile.mkdtemp(prefix="ar-sandbox-"))
        # A temporary data dir also goes away if stop() is never called (GC or interpreter exit).
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.data_dir, True) if self._own_dir else None
        self.accounting = Accounting(config.balance, config.realism.member_organizations()[1:])
        self.injector = FaultInjector(config.faults, config.seed, self.accounting)
        self.store = ContentStore(self.data_dir / "content", config.realism.upload_retention)
        self.webhooks = WebhookDispatcher(config.allow_remote_fetch)
        self.engine = ExecutionEngine(config, self.store, self.accounting, self.injector, self.webhooks)
        self.auth = AuthService(config)
        self.base_url = ""
        self.auth_base_url = ""
        """The auth server's URL: `base_url`, or its own port with `realism.separate_auth_port`."""
        self.auth_port = 0
        """The auth server's own port, or 0 when it shares the API's."""
        self.file_names = FileNames()
        self.organization_id = ORGANIZATION_ID
        self.restored = persistence.load(self) if not self._own_dir else False
        """True when a given `data_dir` held the snapshot of a previous server (see `persistence`)."""

    @property
    def faults(self) -> FaultConfig:
        return self.config.faults

    @property
    def balance(self) -> int:
        return self.accounting.balance

    def start(self, base_url: str, auth_base_url: str = "") -> None:
        self.base_url = base_url
        self.auth_base_url = auth_base_url or base_url
        self.auth.issuer = self.auth_base_url + "/"
        self.webhooks.start()
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        self.webhooks.stop()
        if self._cleanup is not None:
            self._cleanup()
        else:  # a caller-owned data_dir: the next server on it continues from here
            persistence.save(self)

    def workflows(self) -> list[dict[str, Any]]:
        return [w.summary() for w in WORKFLOWS]

    def snapshot(self) -> dict[str, Any]:
        """What GET /_sandbox/state answers."""
        return {
            **self.accounting.snapshot(),
            "executionsByStatus": self.engine.counts_by_status(),
            "faults": self.faults.to_dict(),
            "webhookDeliveries": self.webhooks.deliveries(),
            "contentCount": self.store.count(),
            "organizationId": self.organization_id,
            "organizations": self.accounting.by_organization(self.organization_id),
            "realism": self.config.realism.to_dict(),
            "workflows": self.workflows(),
        }
