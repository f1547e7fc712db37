"""Static checks of the Dagster+ Hybrid files: `dagster_cloud.yaml` and the Kubernetes agent's values.

What they cannot prove (a real agent, a Dagster+ organization) is said in the README ("Running on Dagster+").
"""

from __future__ import annotations

import tomllib
from typing import Any

import yaml

from retouch_devtools.stack.deploy import DEPLOY, HELM_VALUES, REPO
from retouch_pipeline.autoretouch.credentials import ENV_REFRESH_TOKEN
from retouch_pipeline.settings import VARIABLES

CLOUD_YAML = REPO / "dagster_cloud.yaml"
AGENT_VALUES = DEPLOY / "dagster-plus" / "agent-values.yaml"
REQUIRED = ("CATALOG_SOURCE_BUCKET", "AUTORETOUCH_WORKFLOW_ID")


def _location() -> dict[str, Any]:
    data = yaml.safe_load(CLOUD_YAML.read_text())
    assert isinstance(data, dict) and len(data["locations"]) == 1
    location: dict[str, Any] = data["locations"][0]
    return location


def test_dagster_cloud_yaml_names_the_code_location_the_repo_uses() -> None:
    location = _location()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert location["location_name"] == project["code_location_name"] == workspace["location_name"]
    assert location["code_source"] == {"module_name": project["module_name"]}
    assert workspace["module_name"] == project["module_name"]
    assert location["build"]["directory"] == "."


def test_dagster_cloud_yaml_lists_the_settings_variables_and_the_secret_as_a_secret() -> None:
    k8s = _location()["container_context"]["k8s"]
    listed = [entry.split("=", 1)[0] for entry in k8s["env_vars"]]
    known = {v.name for v in VARIABLES}
    assert sorted(set(listed) - known) == []  # only the pipeline's own variables
    assert len(listed) == len(set(listed))
    assert set(REQUIRED) <= set(listed)
    assert ENV_REFRESH_TOKEN in known and ENV_REFRESH_TOKEN not in listed  # a secret, never a value
    assert k8s["env_secrets"] == ["retouch-pipeline-autoretouch"]
    helm = yaml.safe_load(HELM_VALUES.read_text())
    assert k8s["service_account_name"] == helm["serviceAccount"]["name"]  # the account with the S3 role


def test_agent_values_take_the_token_from_a_secret() -> None:
    values = yaml.safe_load(AGENT_VALUES.read_text())
    cloud = values["dagsterCloud"]
    assert cloud["agentTokenSecretName"] == "dagster-cloud-agent-token"
    assert "agentToken" not in cloud
    assert _location()["container_context"]["k8s"]["namespace"] in AGENT_VALUES.read_text()
