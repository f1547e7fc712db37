"""The one settings reader: typed values, production defaults, one error naming every bad variable."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retouch_pipeline.settings import VARIABLES, SettingsError, read_settings

REPO = Path(__file__).resolve().parents[1]
SHOP = {"CATALOG_SOURCE_BUCKET": "shop"}


def test_production_defaults() -> None:
    settings = read_settings(SHOP)
    assert settings.autoretouch.api_url == "https://api.autoretouch.com"
    assert settings.autoretouch.auth_url == "https://auth.autoretouch.com"
    assert settings.autoretouch.workflow_id is None and settings.autoretouch.budget_credits is None
    assert settings.s3_endpoint_url is None and settings.aws_region == "us-east-1"
    assert (settings.catalog.source_bucket, settings.catalog.output_bucket) == ("shop", "shop")
    assert (settings.catalog.source_prefix, settings.catalog.output_prefix) == ("incoming/", "retouched/")
    assert settings.catalog.scan.mode == "listing" and settings.sensors_running


def test_values_are_typed() -> None:
    settings = read_settings(
        {
            **SHOP,
            "AUTORETOUCH_BUDGET_CREDITS": "250",
            "AUTORETOUCH_MAX_WAIT_SECONDS": "0",
            "AUTORETOUCH_POLL_SECONDS": "0.5",
            "AUTORETOUCH_CONCURRENCY": "4",
            "CATALOG_BATCH_SIZE": " 20 ",
            "AUTORETOUCH_API_URL": "http://127.0.0.1:8765/",
            "RETOUCH_SENSORS_RUNNING": "0",
        }
    )
    ar = settings.autoretouch
    assert (ar.budget_credits, ar.max_wait_seconds, ar.poll_interval_seconds, ar.concurrency) == (
        250,
        0.0,
        0.5,
        4,
    )
    assert settings.catalog.batch_size == 20 and ar.api_url == "http://127.0.0.1:8765"
    assert not settings.sensors_running


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTORETOUCH_BUDGET_CREDITS", "abc"),
        ("AUTORETOUCH_BUDGET_CREDITS", "-5"),
        ("AUTORETOUCH_BUDGET_CREDITS", "1.5"),
        ("CATALOG_BATCH_SIZE", "0"),
        ("AUTORETOUCH_CONCURRENCY", "many"),
        ("AUTORETOUCH_POLL_SECONDS", "0"),
        ("AUTORETOUCH_MAX_WAIT_SECONDS", "-1"),
        ("AUTORETOUCH_API_URL", "api.autoretouch.com"),
        ("AUTORETOUCH_AUTH_URL", "ftp://auth"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_fix(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        read_settings({**SHOP, name: value})
    assert str(raised.value).startswith(f"{name}={value!r} is not valid: set it to ")
    assert "or unset it for the default" in str(raised.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as raised:
        read_settings(
            {"AUTORETOUCH_BUDGET_CREDITS": "abc", "CATALOG_BATCH_SIZE": "0", "CATALOG_SCAN_MODE": "x"}
        )
    named = [re.match(r"[A-Z_]+", line).group(0) for line in raised.value.problems]  # type: ignore[union-attr]
    assert named == [
        "AUTORETOUCH_BUDGET_CREDITS",
        "CATALOG_SOURCE_BUCKET",
        "CATALOG_BATCH_SIZE",
        "CATALOG_SCAN_MODE",
    ]


def test_the_definitions_do_not_load_with_a_bad_variable() -> None:
    env = {**SHOP, "PATH": "/usr/bin:/bin", "AUTORETOUCH_BUDGET_CREDITS": "abc"}
    out = subprocess.run(
        [sys.executable, "-c", "import retouch_pipeline.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("retouch_pipeline.settings.SettingsError: AUTORETOUCH_BUDGET_CREDITS='abc'"), last
    assert "invalid literal" not in out.stderr and "ValidationError" not in out.stderr


def test_the_registry_is_the_readme_table_and_what_the_reader_reads() -> None:
    """Every variable read is registered, and every registered one is documented in the README."""
    names = {v.name for v in VARIABLES}
    source = (REPO / "retouch_pipeline" / "settings.py").read_text()
    read = {  # the first argument of every `read.<kind>("NAME", ...)` call
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "read"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert len(read) > 15 and read <= names, sorted(read - names)
    readme = (REPO / "README.md").read_text()
    assert not [n for n in names if f"`{n}`" not in readme], "document these in the README"


def test_only_the_settings_module_reads_the_environment() -> None:
    """One reader: no other product module reads os.environ (the credentials store is the client's)."""
    allowed = {"settings.py", "definitions.py", "credentials.py"}
    offenders = []
    for path in (REPO / "retouch_pipeline").rglob("*.py"):
        if path.name in allowed:
            continue
        text = path.read_text()
        if re.search(r"os\.environ|os\.getenv|getenv\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_the_stacks_set_the_settings_variables() -> None:
    """The dev stack, the deploy tests and the benchmarks set the pipeline's variables by these names."""
    from retouch_devtools.stack.env import PIPELINE_ENV

    assert set(PIPELINE_ENV.values()) <= {v.name for v in VARIABLES}
