"""A faithful local AutoRetouch server: API and auth routes on one loopback port.

It exists so the client, the CLI and the pipeline can be developed, tested and benchmarked
without spending credits, and so failures the real service may produce (5xx, 429, dropped
connections, lost create responses, failed executions) can be provoked on demand.

    from retouch_devtools.sandbox import SandboxConfig, SandboxServer
    with SandboxServer(SandboxConfig(processing_seconds=0.05, auto_approve=True)) as sb:
        sb.api_url, sb.auth_url, sb.organization_id, sb.workflows, sb.refresh_token
        sb.state.faults.error_rate = 0.1          # live fault settings
        sb.state.accounting.snapshot()            # balance, ledger, call counters

`run_foreground(config)` serves until interrupted; its first stdout line is one JSON object
`{"api_url", "auth_url", "organization_id", "workflows": [{id, name, executionPrice}], "refresh_token"}`.

World: one user (`auth0|sandbox-user`), admin of one organization; a second organization exists
that the user is not a member of (403). Workflows: "Background Removal" (10 credits, PNG/RGBA),
"Export Only" (1 credit, JPEG/RGB), "Background Removal with QA" (25 credits, passes IN_QA).
Ids are stable uuid5 values.

Decisions on the contract's open questions:
- Every route works with and without `/v1` and with trailing slashes; `organization` defaults
  to the token's `https://autoretouch.com/selectedOrganization` claim.
- Pages are exactly `{"entries", "total"}`; `limit` defaults to 50 and is capped at 100.
- E5 (status) is `text/event-stream`: one `data: {"id": <uuid>, "status": <STATUS>}` event per
  status change, starting with the current one, ending after COMPLETED, FAILED,
  PAYMENT_REQUIRED or IN_QA; `: keep-alive` comments every 10 s.
- E6 (blocking result) waits while CREATED/ACTIVE/IN_QA, then answers the bytes (200); FAILED
  and PAYMENT_REQUIRED answer 409 (retry with E8 first); after `blocking_timeout_seconds` it
  answers 503 with `Retry-After: 1`.
- E8 (retry) re-queues FAILED and PAYMENT_REQUIRED executions; in any other status it is a 200
  no-op, so repeating a retry whose response was lost is harmless. Charges happen once per
  execution, on COMPLETED, never again on a retry.
- PAYMENT_REQUIRED is decided at create (balance < price: not queued) and again at charge time.
- IN_QA waits for `/_sandbox/executions/{id}/approve|reject` or `qa_seconds`; rejection = FAILED.
- Webhook events: WORKFLOW_EXECUTION_COMPLETED, _FAILED, _PAYMENT_REQUIRED, _IN_QA; body
  `{"event", "content": <execution>}`; up to 4 attempts; loopback URLs only unless
  `allow_remote_fetch` (I2 upload-by-URL follows the same rule).
- `settings` of E1 are per-component overrides keyed by component label; the sandbox honours
  `{"export": {"targetFormat", "targetMode"}}` and ignores the rest.
- Unknown content hash in E1 -> 404 "Image not found"; unknown version -> 404.
- Refresh tokens do not rotate; revoked/unknown ones -> 403 `invalid_grant`. `client_id` must
  be present on auth calls but any value is accepted. Access tokens live exactly
  `access_token_ttl` seconds (checked server-side; the JWT `exp` is `iat + ttl` in whole seconds).
- 429 faults carry `Retry-After: <retry_after_seconds>`, an integer when integral, else a decimal
  (not RFC-valid, only meant for fast tests).
- Auth calls are counted as A1-A4 by the handlers; API calls by the middleware before any
  fault (E2 = multipart create, I2 = JSON upload, E7 = image route serving a result).

Control routes (no auth, loopback clients only, never faulted):
- GET  /_sandbox/state                      balance, creditsCharged, ledger, calls, faultsInjected,
                                            executionsByStatus, faults, webhookDeliveries, ...
- GET|PUT|POST /_sandbox/faults             partial update, e.g. {"error_rate": 0.2}
- PUT|POST /_sandbox/balance                {"balance": N} sets, {"add": N} tops up
- POST /_sandbox/executions/{id}/approve    IN_QA -> COMPLETED (charged); /reject -> FAILED
- POST /_sandbox/refresh-tokens             mint a refresh token -> {"refresh_token"}
- POST /_sandbox/refresh-tokens/revoke      {"token"} -> {"revoked": bool}
- POST /_sandbox/access-tokens/expire       every access token issued so far answers 401
- POST /_sandbox/calls/reset                zero the call and fault counters
- DELETE /_sandbox/content/{hash}           forget an upload (retention; HEAD then 404)
"""

from retouch_devtools.sandbox.config import FaultConfig, SandboxConfig
from retouch_devtools.sandbox.server import SandboxServer, run_foreground

__all__ = ["FaultConfig", "SandboxConfig", "SandboxServer", "run_foreground"]
