"""Hosts and OAuth constants of the production AutoRetouch service (API contract, section 2)."""

from __future__ import annotations

DEFAULT_API_URL = "https://api.autoretouch.com"
DEFAULT_AUTH_URL = "https://auth.autoretouch.com"
DEFAULT_CLIENT_ID = "V8EkfbxtBi93cAySTVWAecEum4d6pt4J"
DEFAULT_SCOPE = "offline_access"
DEFAULT_AUDIENCE = "https://api.autoretouch.com"

#: Label carried by every execution this package creates; see `client.py` on idempotent creates.
IDEMPOTENCY_LABEL = "retouch_pipeline_idempotency_key"
