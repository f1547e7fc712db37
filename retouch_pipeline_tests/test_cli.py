"""The command line as a user runs it: the installed console script in a subprocess, against the sandbox."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from retouch_pipeline.autoretouch import DEFAULT_CLIENT_ID

CLI = str(Path(sys.executable).with_name("retouch-pipeline"))


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin)


@pytest.fixture
def cli_env(tmp_path: Path, sandbox: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORETOUCH_", "RETOUCH_PIPELINE_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        AUTORETOUCH_API_URL=sandbox.api_url,
        AUTORETOUCH_AUTH_URL=sandbox.auth_url,
        AUTORETOUCH_ORGANIZATION_ID=sandbox.organization_id,  # the account has several (strict sandbox)
    )
    return env


def credentials_path(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".config" / "retouch-pipeline" / "credentials.json"


def test_login_stores_credentials_0600_and_commands_work(sandbox_factory: Any, tmp_path: Path) -> None:
    sandbox = sandbox_factory(auto_approve=True, device_poll_interval=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORETOUCH_", "RETOUCH_PIPELINE_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        AUTORETOUCH_API_URL=sandbox.api_url,
        AUTORETOUCH_AUTH_URL=sandbox.auth_url,
        AUTORETOUCH_ORGANIZATION_ID=sandbox.organization_id,  # saved by login: the account has several
    )
    result = run_cli(["login", "--no-browser"], env)
    assert result.returncode == 0, result.stderr
    assert "Logged in" in result.stdout
    assert "/activate" in result.stderr  # the user is told where to confirm

    path = credentials_path(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    refresh_token = stored["refresh_token"]
    assert refresh_token and refresh_token not in result.stdout + result.stderr

    # Later commands need no URL: the saved login carries it.
    bare_env = {k: v for k, v in env.items() if not k.startswith("AUTORETOUCH_")}
    orgs = run_cli(["organizations", "--json"], bare_env)
    assert orgs.returncode == 0, orgs.stderr
    assert sandbox.organization_id in {o["id"] for o in json.loads(orgs.stdout)}

    workflows = run_cli(["workflows", "--json"], bare_env)
    assert workflows.returncode == 0, workflows.stderr
    listed = {w["id"]: w["executionPrice"] for w in json.loads(workflows.stdout)}
    assert listed == {w["id"]: w["executionPrice"] for w in sandbox.workflows}

    balance = run_cli(["balance", "--json"], bare_env)
    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout)["balance"] == sandbox.state.balance

    table = run_cli(["workflows"], bare_env)
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["ID", "NAME", "VERSION", "EXECUTIONPRICE"]  # one unwrapped line per row when piped
    assert {row[0]: row[-1] for row in rows[1:]} == {
        w["id"]: str(w["executionPrice"]) for w in sandbox.workflows
    }

    # Logout revokes the token at the auth server, then forgets it.
    out = run_cli(["logout"], bare_env)
    assert out.returncode == 0, out.stderr
    assert not path.exists()
    refreshed = requests.post(
        f"{sandbox.auth_url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": DEFAULT_CLIENT_ID},
        timeout=10,
    )
    assert refreshed.status_code == 403
    assert refreshed.json()["error"] == "invalid_grant"

    after = run_cli(["balance"], bare_env)
    assert after.returncode == 1
    assert after.stderr.count("\n") == 1 and "login" in after.stderr


def test_refresh_token_from_environment(cli_env: dict[str, str], sandbox: Any) -> None:
    cli_env["AUTORETOUCH_REFRESH_TOKEN"] = sandbox.refresh_token
    result = run_cli(["balance"], cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{sandbox.state.balance} credits"


def test_revoked_token_fails_with_one_clear_line(cli_env: dict[str, str], sandbox: Any) -> None:
    cli_env["AUTORETOUCH_REFRESH_TOKEN"] = "not-a-valid-token"
    result = run_cli(["workflows"], cli_env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "login" in lines[0]
    assert "not-a-valid-token" not in result.stderr
    # The token came from the variable, which overrides the file: logging in again alone would not help.
    assert "from $AUTORETOUCH_REFRESH_TOKEN" in lines[0] and "unset it" in lines[0]


def test_unreachable_api_fails_clearly(cli_env: dict[str, str], sandbox: Any) -> None:
    cli_env["AUTORETOUCH_REFRESH_TOKEN"] = sandbox.refresh_token
    cli_env["AUTORETOUCH_API_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    result = run_cli(["balance"], cli_env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0]


def test_sandbox_command_prints_json_first_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [CLI, "sandbox", "--port", "0", "--processing-seconds", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert {"api_url", "auth_url", "organization_id", "workflows", "refresh_token"} <= set(info)
        assert info["api_url"].startswith("http://127.0.0.1:")
        assert requests.get(f"{info['api_url']}/health", timeout=5).status_code == 200
        assert {w["name"] for w in info["workflows"]} >= {"Background Removal", "Export Only"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_development_commands_come_from_the_devtools_entry_points() -> None:
    """`sandbox`, `dev` and `chaos` are registered by retouch-devtools, not defined by the product."""
    from importlib.metadata import entry_points

    registered = {ep.name: ep.value for ep in entry_points(group="retouch_pipeline.commands")}
    assert registered == {
        "sandbox": "retouch_devtools.commands:sandbox",
        "dev": "retouch_devtools.commands:dev",
        "chaos": "retouch_devtools.commands:chaos",
    }
    listed = run_cli(["--help"], dict(os.environ))
    assert {"sandbox", "dev", "chaos", "backfill"} <= set(listed.stdout.split())
    unknown = run_cli(["chaos", "--profile", "no-such-profile"], dict(os.environ))
    assert unknown.returncode == 2
    assert "unknown profile 'no-such-profile'" in unknown.stderr and "api-5xx" in unknown.stderr


def test_verbose_logs_each_retry_and_an_unreachable_auth_server_fails_within_20_s(
    cli_env: dict[str, str], sandbox: Any
) -> None:
    cli_env["AUTORETOUCH_REFRESH_TOKEN"] = sandbox.refresh_token
    started = time.monotonic()
    result = run_cli(["-v", "balance", "--auth-url", "http://127.0.0.1:9"], cli_env, timeout=60)
    assert result.returncode == 1 and time.monotonic() - started < 20
    lines = result.stderr.strip().splitlines()
    assert sum("retry" in line for line in lines) >= 3  # each retry logged
    assert lines[-1].startswith("error: OAuth server POST http://127.0.0.1:9/oauth/token: could not connect")
    assert "--auth-url or $AUTORETOUCH_AUTH_URL" in lines[-1]
    assert sandbox.refresh_token not in result.stderr


def test_an_account_with_several_organizations_must_choose_one(cli_env: dict[str, str], sandbox: Any) -> None:
    cli_env["AUTORETOUCH_REFRESH_TOKEN"] = sandbox.refresh_token
    del cli_env["AUTORETOUCH_ORGANIZATION_ID"]
    result = run_cli(["balance"], cli_env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "AUTORETOUCH_ORGANIZATION_ID" in lines[0]
    assert all(org in lines[0] for org in sandbox.state.config.realism.member_organizations())


def test_help_names_the_variable_of_every_connection_option() -> None:
    names = (
        "AUTORETOUCH_API_URL",
        "AUTORETOUCH_AUTH_URL",
        "AUTORETOUCH_ORGANIZATION_ID",
        "RETOUCH_PIPELINE_CREDENTIALS",
    )
    for command in ("balance", "workflows", "login", "backfill"):
        shown = run_cli([command, "--help"], dict(os.environ), timeout=60)
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())  # click wraps long lines
        assert all(f"env var: {name}" in text for name in names), (command, text)
    backfill = " ".join(run_cli(["backfill", "--help"], dict(os.environ), timeout=60).stdout.split())
    assert "--dagster-url TEXT" in backfill and "env var: RETOUCH_PIPELINE_DAGSTER_URL" in backfill
