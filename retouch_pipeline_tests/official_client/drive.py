"""Drive the OFFICIAL `autoretouch==0.3.0` client, unchanged, against a sandbox.

Runs in the isolated `.venv-official` interpreter (the client pins click==8.1.3). Usage:
    python drive.py CONFIG_JSON
CONFIG_JSON: {"mode": "full"|"device", "api_url", "auth_url", "refresh_token", "work_dir"}.
Writes `result.json` (and downloaded images) into work_dir; the test asserts on them.
The caller must set HOME to a temporary directory: the client reads ~/.config at import time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def make_client(cfg: dict[str, Any], refresh_token: str | None) -> Any:
    from autoretouch.api_client.client import AutoRetouchAPIClient
    from autoretouch.api_client.model import ApiConfig

    api_config = ApiConfig(
        BASE_API_URL=cfg["api_url"],
        BASE_API_URL_CURRENT=cfg["api_url"] + "/v1",
        CLIENT_ID="V8EkfbxtBi93cAySTVWAecEum4d6pt4J",
        SCOPE="offline_access",
        AUDIENCE="https://api.autoretouch.com",
        AUTH_DOMAIN=cfg["auth_url"],
    )
    return AutoRetouchAPIClient(
        organization_id=None,
        workflow_id=None,
        api_config=api_config,
        credentials_path=str(Path(cfg["work_dir"]) / "credentials.json"),
        refresh_token=refresh_token,
        user_agent="retouch-pipeline-compat-test",
    )


def device_login(cfg: dict[str, Any]) -> dict[str, Any]:
    """No refresh token: the client runs the device flow (the sandbox auto-approves)."""
    client = make_client(cfg, None).login()
    orgs = client.get_organizations()
    stored = json.loads((Path(cfg["work_dir"]) / "credentials.json").read_text())
    return {"organizations": [str(o.id) for o in orgs], "stored_keys": sorted(stored)}


def full(cfg: dict[str, Any]) -> dict[str, Any]:
    work = Path(cfg["work_dir"])
    inputs = work / "inputs"
    client = make_client(cfg, cfg["refresh_token"])
    out: dict[str, Any] = {"health": client.get_api_status()}

    orgs = client.get_organizations()
    org = client.get_organization(orgs[0].id)
    out["organizations"] = [str(o.id) for o in orgs]
    out["organization"] = {"id": str(org.id), "name": org.name}
    workflows = client.get_workflows(org.id)
    out["workflows"] = {w.name: {"id": str(w.id), "price": w.executionPrice} for w in workflows}
    wf = client.get_workflow(next(w.id for w in workflows if w.name == "Background Removal"), org.id)
    out["balance_before"] = int(client.get_balance(org.id))

    product = inputs / "product.png"
    out["hash_file"] = client.upload_image(str(product), org.id)
    out["hash_bytes"] = client.upload_image_from_bytes(
        product.read_bytes(), "product.png", "image/png", org.id
    )
    with open(product, "rb") as stream:
        out["hash_stream"] = client.upload_image_from_stream(stream, org.id)

    by_ref = client.create_workflow_execution_for_image_reference(
        workflow_id=wf.id,
        image_content_hash=out["hash_file"],
        image_name="product.png",
        labels={"myLabel": "myValue"},
        workflow_version_id=wf.version,
        organization_id=org.id,
        settings={"input": {"some": "settings"}},
    )
    started = client.get_workflow_execution_details(by_ref, org.id)
    out["started"] = {
        "status": started.status,
        "labels": started.labels,
        "version": str(started.workflowVersion),
    }
    out["status_stream"] = client.get_workflow_execution_status_blocking(by_ref, org.id)
    (work / "result_blocking.png").write_bytes(client.download_result_blocking(by_ref, org.id))
    done = client.get_workflow_execution_details(by_ref, org.id)
    out["completed"] = {
        "status": done.status,
        "chargedCredits": done.chargedCredits,
        "resultPath": done.resultPath,
        "resultFileName": done.resultFileName,
        "labels": done.labels,
    }
    (work / "result_by_path.png").write_bytes(client.download_result(done.resultPath, org.id))
    image = client.download_image(done.resultContentHash, done.resultFileName, org.id)
    (work / "result_download_image.png").write_bytes(image)

    by_file = client.create_workflow_execution_for_image_file(
        workflow_id=wf.id,
        image_path=str(inputs / "shoe.jpg"),
        labels={"sku": "S-1"},
        workflow_version_id=wf.version,
        organization_id=org.id,
    )
    (work / "result_by_file.png").write_bytes(client.download_result_blocking(by_file, org.id))
    file_done = client.get_workflow_execution_details(by_file, org.id)
    out["by_file"] = {"labels": file_done.labels, "inputFileName": file_done.inputFileName}
    page = client.get_workflow_executions(wf.id, org.id)
    deadline = time.monotonic() + 30
    while page.total < 2 and time.monotonic() < deadline:  # a strict sandbox lists new executions late
        time.sleep(0.5)
        page = client.get_workflow_executions(wf.id, org.id)
    out["executions"] = {"total": page.total, "ids": [str(e.id) for e in page.entries]}
    out["by_ref_id"], out["by_file_id"] = str(by_ref), str(by_file)
    client.send_feedback(by_ref, True, [out["hash_file"]], org.id)
    out["retry_status"] = client.retry_workflow_execution(by_ref, org.id)

    # process_image() asks for details without passing the organization, so like the official CLI
    # (which reads it from ~/.config/autoretouch-config.json) the instance needs a default one.
    client.organization_id = org.id
    client.process_folder(str(inputs), str(work / "processed"), wf.id, org.id)
    out["processed"] = sorted(os.listdir(work / "processed"))
    out["balance_after"] = int(client.get_balance(org.id))
    client.revoke_credentials()
    return out


def main() -> None:
    cfg = json.loads(sys.argv[1])
    result = device_login(cfg) if cfg["mode"] == "device" else full(cfg)
    (Path(cfg["work_dir"]) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
