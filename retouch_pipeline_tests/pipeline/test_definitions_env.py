"""Dev-stack defaults only against a loopback (sandbox) API; production settings must be explicit."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from retouch_pipeline.assets.costs import autoretouch_costs
from retouch_pipeline.definitions import SANDBOX_WORKFLOW_ID, build_resources, is_loopback_url
from retouch_pipeline.resources import AutoRetouchResource

REAL = "https://api.autoretouch.com"


def test_loopback_detection() -> None:
    for url in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "http://127.1.2.3"):
        assert is_loopback_url(url), url
    for url in (REAL, "http://10.0.0.5:8765", "http://sandbox.internal:8765", "not a url"):
        assert not is_loopback_url(url), url


def test_dev_defaults_apply_to_the_sandbox_only() -> None:
    dev = build_resources({})
    assert isinstance(dev["autoretouch"], AutoRetouchResource) and isinstance(dev["s3"], S3Resource)
    assert dev["autoretouch"].workflow_id == SANDBOX_WORKFLOW_ID
    assert dev["autoretouch"].auth_url == "http://127.0.0.1:8765"
    assert dev["s3"].endpoint_url == "http://127.0.0.1:9000"
    assert build_resources({"S3_ENDPOINT_URL": ""})["s3"].endpoint_url is None  # explicitly AWS

    prod = build_resources({"AUTORETOUCH_API_URL": REAL})
    assert prod["autoretouch"].workflow_id == dg.EnvVar("AUTORETOUCH_WORKFLOW_ID")  # not the sandbox's id
    assert prod["autoretouch"].auth_url == "https://auth.autoretouch.com"
    assert prod["autoretouch"].app_url == "https://app.autoretouch.com"
    assert prod["s3"].endpoint_url is None  # AWS, not 127.0.0.1:9000
    explicit = build_resources(
        {
            "AUTORETOUCH_API_URL": REAL,
            "AUTORETOUCH_WORKFLOW_ID": "wf-1",
            "S3_ENDPOINT_URL": "https://s3.example",
        }
    )
    assert (
        explicit["autoretouch"].workflow_id == "wf-1" and explicit["s3"].endpoint_url == "https://s3.example"
    )


def test_missing_workflow_id_fails_at_run_time_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTORETOUCH_WORKFLOW_ID", raising=False)
    monkeypatch.setenv("AUTORETOUCH_REFRESH_TOKEN", "not-used")
    resources = build_resources({"AUTORETOUCH_API_URL": REAL})
    with pytest.raises(Exception, match="AUTORETOUCH_WORKFLOW_ID"):
        dg.materialize([autoretouch_costs], resources=resources, instance=dg.DagsterInstance.ephemeral())


def test_production_definitions_load_offline_without_workflow_id() -> None:
    env = {"AUTORETOUCH_API_URL": REAL, "PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9"}
    code = (
        "import retouch_pipeline.definitions as d; d.defs.get_repository_def().load_all_definitions(); "
        "print(d.resources['s3'].endpoint_url, d.resources['autoretouch'].workflow_id.env_var_name)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["None", "AUTORETOUCH_WORKFLOW_ID"]
