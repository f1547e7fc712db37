"""Run the OFFICIAL client's `process_folder` (autoretouch==0.3.0, unchanged) and time it.

Runs in `.venv-official` (the client pins click==8.1.3) with HOME set to a temporary directory by the caller
(the client reads ~/.config at import time). Usage: `python official_driver.py CONFIG_JSON`, CONFIG_JSON =
{"api_url", "auth_url", "refresh_token", "organization_id", "workflow_id", "input_dir", "output_dir",
"work_dir"}. Prints one JSON line: {"seconds", "outputs"}. Imports nothing of this project.
"""

import json
import os
import sys
import time
from pathlib import Path
from uuid import UUID


def main() -> None:
    cfg = json.loads(sys.argv[1])
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
    client = AutoRetouchAPIClient(
        organization_id=None,
        workflow_id=None,
        api_config=api_config,
        credentials_path=str(Path(cfg["work_dir"]) / "credentials.json"),
        refresh_token=cfg["refresh_token"],
        user_agent="retouch-pipeline-benchmark",
    )
    org = UUID(cfg["organization_id"])
    # process_image() reads details without passing the organization: like the official CLI (which takes
    # it from ~/.config/autoretouch-config.json), the instance needs a default one.
    client.organization_id = org
    started = time.monotonic()
    client.process_folder(cfg["input_dir"], cfg["output_dir"], UUID(cfg["workflow_id"]), org)
    seconds = time.monotonic() - started
    outputs = len(os.listdir(cfg["output_dir"])) if os.path.isdir(cfg["output_dir"]) else 0
    print(json.dumps({"seconds": seconds, "outputs": outputs}), flush=True)


if __name__ == "__main__":
    main()
