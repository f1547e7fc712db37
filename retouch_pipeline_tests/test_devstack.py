"""`retouch-pipeline dev` (what `make dev` runs): the stack comes up, and a signal leaves no process behind.

The stack runs as a real subprocess on free ports (a developer's own `make dev` on the default ports is left
alone) with DAGSTER_HOME in a temporary folder. Process checks read /proc, so they are Linux-only.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from PIL import Image

from retouch_devtools.devstack import (
    DevSettings,
    hold_dagster_home,
    pipeline_environment,
    prepare_dagster_home,
    seed_catalog,
)
from retouch_devtools.sandbox.realism import Realism
from retouch_devtools.stack.dev import CLI, DevProcess, start_dev_process
from retouch_devtools.stack.env import PIPELINE_ENV
from retouch_devtools.stack.process import descendants, live_processes, process_stat
from retouch_devtools.stack.s3 import running_moto, s3_client
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.settings import DAGSTER_URL_VARIABLE, VARIABLES

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")

SAMPLE_COUNT = 12  # two collections of six: the defaults


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[Callable[..., DevProcess]]:
    stacks: list[DevProcess] = []

    def start(*args: str, terminal: bool = False, **overrides: str) -> DevProcess:
        stack = start_dev_process(
            tmp_path, *args, log_name=f"dev-{len(stacks)}.log", terminal=terminal, **overrides
        )
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:  # a failed test must not leave a stack running either
        stack.kill()


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# ---- tests ----------------------------------------------------------------------------------------


def test_sandbox_and_seeded_s3_come_up_and_sigterm_stops_them(start_dev: Callable[..., DevProcess]) -> None:
    stack = start_dev("--no-dagster")
    stack.wait_until(stack.sandbox_healthy, 30, "the sandbox /health")
    keys = stack.wait_until(lambda: len(stack.source_keys()) == SAMPLE_COUNT, 30, "the seed")
    assert keys
    collections = {key.split("/")[1] for key in stack.source_keys()}
    assert collections == {"spring-2026", "summer-2026"}
    assert "Ctrl-C stops everything" in stack.output()
    assert descendants({stack.proc.pid}) == set(), "sandbox and S3 are threads: no child process"
    exports = stack.exports()
    assert set(exports) <= {v.name for v in VARIABLES} | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert exports[PIPELINE_ENV["s3_endpoint_url"]] == stack.settings.s3_endpoint_url
    assert exports[PIPELINE_ENV["api_url"]].startswith(f"http://127.0.0.1:{stack.settings.sandbox_port}")
    assert (
        exports[PIPELINE_ENV["output_prefix"]] == "retouched/"
        and exports["AWS_SECRET_ACCESS_KEY"] == "testing"
    )
    assert {PIPELINE_ENV["refresh_token"], PIPELINE_ENV["workflow_id"]} <= set(exports)
    assert "sandbox's own dev token" in stack.output()

    assert stack.send(signal.SIGTERM, timeout=15) == 0
    assert port_free(stack.settings.sandbox_port) and port_free(stack.settings.s3_port)


def test_full_stack_answers_and_ctrl_c_leaves_no_process(start_dev: Callable[..., DevProcess]) -> None:
    """On a real (pseudo-)terminal, as a developer runs it: Ctrl-C is typed, not sent to one pid."""
    stack = start_dev(terminal=True)
    stack.wait_until(stack.sandbox_healthy, 30, "the sandbox /health")
    stack.wait_until(lambda: len(stack.source_keys()) == SAMPLE_COUNT, 30, "the seed")
    ui = stack.settings.dagster_url
    info = stack.wait_until(lambda: requests.get(f"{ui}/server_info", timeout=2).json(), 120, "dagster")
    assert "dagster_webserver_version" in info
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    graphql = requests.post(f"{ui}/graphql", json={"query": query}, timeout=10).json()
    assert graphql["data"]["workspaceOrError"]["locationEntries"] == [{"name": "retouch_pipeline"}]
    # The banner comes once the UI answers.
    stack.wait_until(lambda: "Ctrl-C stops everything" in stack.output(), 10, "the banner")

    children = descendants({stack.proc.pid})
    groups = {process_stat(pid)[2] for pid in children if process_stat(pid)}  # type: ignore[index]
    assert len(children) >= 4, f"dagster dev, webserver, daemon, code server: {children}"
    assert len(groups) == 1 and os.getpgid(stack.proc.pid) not in groups, "dagster runs in its own group"

    started = time.monotonic()
    assert stack.press_ctrl_c(timeout=60) == 0
    elapsed = time.monotonic() - started
    survivors = {pid for pid, (_, pgid) in live_processes().items() if pid in children or pgid in groups}
    assert survivors == set(), f"left running after Ctrl-C: {survivors}"
    assert elapsed < 30, f"shutdown took {elapsed:.1f} s"
    assert "Dagster stopped." in stack.output()
    assert "SupersessionWarning" not in stack.output(), "started through dg dev, not dagster dev"
    for port in (stack.settings.sandbox_port, stack.settings.s3_port, stack.settings.dagster_port):
        assert port_free(port), port


def test_sample_catalog_is_retouched_without_a_click(start_dev: Callable[..., DevProcess]) -> None:
    """The issue's promise for `make dev`, with its real settings (2 s per image, 8 workers): every sample
    image retouched under retouched/ within three minutes of the start, nothing clicked."""
    started = time.monotonic()
    stack = start_dev(RETOUCH_DEV_PROCESSING_SECONDS="2")
    client = s3_client(stack.settings.s3_endpoint_url)

    def outputs() -> list[str]:
        listing = client.list_objects_v2(Bucket="catalog", Prefix="retouched/")
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def all_retouched() -> bool:
        return len([k for k in outputs() if k.endswith(".png")]) == SAMPLE_COUNT

    stack.wait_until(all_retouched, 180 - (time.monotonic() - started), "12 retouched PNGs")
    expected = {k.replace("incoming/", "retouched/") + ".png" for k in stack.source_keys()}
    keys = outputs()
    assert expected <= set(keys)
    assert {k + ".json" for k in expected} <= set(keys), "one provenance sidecar per image"
    for key in sorted(expected)[:2]:
        image = Image.open(io.BytesIO(client.get_object(Bucket="catalog", Key=key)["Body"].read()))
        assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0, "background removed"
    state = requests.get(f"http://127.0.0.1:{stack.settings.sandbox_port}/_sandbox/state", timeout=5).json()
    assert state["creditsCharged"] == SAMPLE_COUNT * 10, "Background Removal: 10 credits each, bought once"
    assert state["realism"] == Realism.named("strict").to_dict(), "make dev runs the strict sandbox"
    billed = {org: o["creditsCharged"] for org, o in state["organizations"].items() if o["creditsCharged"]}
    assert billed == {state["organizationId"]: SAMPLE_COUNT * 10}, "all of it to the configured organization"

    children = descendants({stack.proc.pid})
    assert stack.send(signal.SIGINT, timeout=60) == 0
    assert not (children & set(live_processes())), "left running after Ctrl-C"


def test_seed_is_idempotent_by_content() -> None:
    with running_moto() as url:
        client = s3_client(url)
        client.create_bucket(Bucket="catalog")
        written, unchanged = seed_catalog(client, "catalog", "incoming", {"a": 2, "b": 3})
        assert (len(written), unchanged) == (5, [])
        assert all(key.startswith(("incoming/a/", "incoming/b/")) for key in written)
        before = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket="catalog")["Contents"]}
        time.sleep(1.1)  # LastModified has one-second resolution
        written, unchanged = seed_catalog(client, "catalog", "incoming/", {"a": 2, "b": 3})
        assert (written, len(unchanged)) == ([], 5)
        after = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket="catalog")["Contents"]}
        assert after == before


def test_child_environment_points_the_pipeline_at_the_stack() -> None:
    settings = DevSettings.from_env(
        {
            "RETOUCH_DEV_S3_PORT": "9100",
            PIPELINE_ENV["source_bucket"]: "shop",
            "RETOUCH_DEV_COLLECTIONS": "x, y",
        }
    )
    assert (settings.source_bucket, settings.output_bucket, settings.collections) == (
        "shop",
        "shop",
        ("x", "y"),
    )
    sandbox = SimpleNamespace(
        api_url="http://127.0.0.1:8765",
        auth_url="http://127.0.0.1:8765",
        organization_id="org",
        refresh_token="token",
        workflows=[{"id": "wf-1", "name": "Background Removal"}],
    )
    base = {"AWS_PROFILE": "prod", "AWS_SESSION_TOKEN": "real", "PATH": "/bin"}
    env = pipeline_environment(settings, sandbox, Path("/tmp/home"), base)
    assert env[PIPELINE_ENV["s3_endpoint_url"]] == env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9100"
    assert env[PIPELINE_ENV["refresh_token"]] == "token"
    assert env[PIPELINE_ENV["workflow_id"]] == "wf-1"
    assert env["DAGSTER_HOME"] == "/tmp/home" and env["PATH"] == "/bin"
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "testing"


def test_dagster_home_is_reset_only_when_ours(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "runs.db").write_text("precious")
    with pytest.raises(RuntimeError, match="not created by"):
        prepare_dagster_home(foreign, keep_state=False)
    assert (foreign / "runs.db").exists()

    home = prepare_dagster_home(tmp_path / "home", keep_state=False)
    assert "telemetry" in (home / "dagster.yaml").read_text()
    (home / "history").mkdir()
    prepare_dagster_home(home, keep_state=True)
    assert (home / "history").exists()
    prepare_dagster_home(home, keep_state=False)
    assert not (home / "history").exists() and (home / "workspace.yaml").exists()


def test_a_running_stacks_dagster_home_is_never_wiped(tmp_path: Path) -> None:
    """A second `make dev` in the same checkout refuses while the first holds `.dagster_home/`."""
    held = hold_dagster_home(tmp_path / "home")
    home = prepare_dagster_home(tmp_path / "home", keep_state=False)
    (home / "runs.db").write_text("the running stack's runs")
    with pytest.raises(
        RuntimeError, match=r"belongs to a running `retouch-pipeline dev`.*RETOUCH_DEV_DAGSTER_HOME"
    ):
        hold_dagster_home(tmp_path / "home")
    assert (home / "runs.db").read_text() == "the running stack's runs"
    held.close()  # the first stack stopped: the next start may reset it
    hold_dagster_home(tmp_path / "home").close()


def test_the_banners_exports_point_backfill_at_the_stack_through_its_webserver(
    start_dev: Callable[..., DevProcess], tmp_path: Path
) -> None:
    """With Dagster too, the banner ends with the `export` lines; evaluated in a clean shell (no login, no
    DAGSTER_HOME: the deployed case), `backfill --json` launches through the webserver the banner names."""
    stack = start_dev()
    stack.wait_until(
        lambda: "export " in stack.output().partition("Ctrl-C stops everything")[2], 180, "exports"
    )
    exports = stack.exports()
    assert exports[DAGSTER_URL_VARIABLE] == stack.settings.dagster_url
    assert exports["DAGSTER_HOME"] == str(stack.settings.dagster_home.resolve())
    assert exports[PIPELINE_ENV["s3_endpoint_url"]] == stack.settings.s3_endpoint_url
    stack.stop_sensor("catalog_sensor")  # the new collection is the CLI's to launch, not the sensor's
    written, _ = seed_catalog(stack.s3(), "catalog", "incoming/", {"autumn-2026": 2})
    partitions = sorted(partition_key_for(key.removeprefix("incoming/")) for key in written)

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "AWS_EC2_METADATA_DISABLED": "true"}
    env.update({name: value for name, value in exports.items() if name != "DAGSTER_HOME"})
    result = subprocess.run(
        [CLI, "backfill", "autumn-2026", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "launched" and report["dagster"] == stack.settings.dagster_url
    assert report["images"] == report["launched_images"] == 2
    [backfill_id] = report["backfill_ids"]
    assert backfill_id in stack.backfill_ids()  # visible in that webserver
    backfill = stack.backfill(backfill_id)
    assert backfill["numPartitions"] == 2
    assert {"key": "retouch/collection", "value": "autumn-2026"} in backfill["tags"]
    registered = stack.graphql(
        "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode { partitionKeys } } }",
        k={"path": ["retouched_image"]},
    )["assetNodeOrError"]["partitionKeys"]
    assert set(partitions) <= set(registered)  # registered through GraphQL, not by the stopped sensor
