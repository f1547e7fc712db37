"""Outgoing webhooks, delivered from a background thread with a few retries.

Events (the real service documents only the first; the others are the sandbox's choice):
WORKFLOW_EXECUTION_COMPLETED, WORKFLOW_EXECUTION_FAILED, WORKFLOW_EXECUTION_PAYMENT_REQUIRED,
WORKFLOW_EXECUTION_IN_QA. Body: `{"event": <name>, "content": <WorkflowExecution>}`.
A delivery is attempted up to 4 times (backoff 0.2, 0.5, 1 s) until the receiver answers 2xx.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

EVENTS: dict[str, str] = {
    "COMPLETED": "WORKFLOW_EXECUTION_COMPLETED",
    "FAILED": "WORKFLOW_EXECUTION_FAILED",
    "PAYMENT_REQUIRED": "WORKFLOW_EXECUTION_PAYMENT_REQUIRED",
    "IN_QA": "WORKFLOW_EXECUTION_IN_QA",
}
BACKOFF_SECONDS = (0.2, 0.5, 1.0)


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on localhost / 127.0.0.0/8 / ::1 (the only hosts allowed by default)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


@dataclass
class Delivery:
    url: str
    event: str
    execution_id: str
    payload: dict[str, Any]
    attempts: int = 0
    status: str = "pending"
    """pending, delivered, failed, or skipped (non-loopback URL while remote access is off)."""
    last_status_code: int | None = None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "event": self.event,
            "executionId": self.execution_id,
            "attempts": self.attempts,
            "status": self.status,
            "lastStatusCode": self.last_status_code,
        }


class WebhookDispatcher:
    def __init__(self, allow_remote: bool) -> None:
        self.allow_remote = allow_remote
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def emit(self, status: str, execution: dict[str, Any], urls: list[str]) -> None:
        event = EVENTS.get(status)
        if event is None:
            return
        for url in urls:
            delivery = Delivery(url, event, execution["id"], {"event": event, "content": execution})
            with self._lock:
                self._deliveries.append(delivery)
            if not (self.allow_remote or is_loopback_url(url)):
                delivery.status = "skipped"
                continue
            self._queue.put(delivery)

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.to_json() for d in self._deliveries]

    def _run(self) -> None:
        with requests.Session() as session:
            while (delivery := self._queue.get()) is not None:
                self._deliver(session, delivery)

    def _deliver(self, session: requests.Session, delivery: Delivery) -> None:
        for attempt in range(len(BACKOFF_SECONDS) + 1):
            if attempt and self._stop.wait(BACKOFF_SECONDS[attempt - 1]):
                break
            delivery.attempts += 1
            try:
                resp = session.post(
                    delivery.url,
                    json=delivery.payload,
                    timeout=5,
                    headers={"User-Agent": "autoretouch-sandbox-webhooks"},
                )
                delivery.last_status_code = resp.status_code
                if 200 <= resp.status_code < 300:
                    delivery.status = "delivered"
                    return
                delivery.errors.append(f"HTTP {resp.status_code}")
            except requests.RequestException as exc:
                delivery.errors.append(str(exc))
        delivery.status = "failed"
        log.warning("webhook %s to %s failed: %s", delivery.event, delivery.url, delivery.errors[-1:])
