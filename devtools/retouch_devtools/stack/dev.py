"""`retouch-pipeline dev` as a child process, as the dev-stack and browser tests see it: started on free
ports, probed, prepared, stopped.

Why a real `retouch-pipeline dev` subprocess (and not Dagster's test helpers): the tests are about
`make dev`'s stack, so they run the very command a developer runs, with only ports, DAGSTER_HOME and the
sandbox's processing time overridden through its documented `RETOUCH_DEV_*` variables; on a pseudo-terminal
when a test types Ctrl-C as a developer does. A Dagster of one's own beside a `--no-dagster` stack
(`start_dagster_on`) is `dg dev` started by the dev stack's own `devstack.start_dagster`, on the environment
the banner's export lines give: what a developer does to point a second Dagster at the same sandbox and S3.

GraphQL is used only to *prepare* state (stop a sensor, register partitions) and to *verify* what the clicks
did (backfill status, run status); every action under test is a click in the browser.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shlex
import signal
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import requests

from retouch_devtools.devstack import DevSettings, prepare_dagster_home, seed_catalog, start_dagster
from retouch_devtools.procgroup import stop_process_group
from retouch_devtools.stack.net import free_port, wait_until
from retouch_devtools.stack.process import descendants, process_stat
from retouch_devtools.stack.s3 import clean_environment, s3_client
from retouch_pipeline.catalog.keys import partition_key_for
from retouch_pipeline.partitions import CATALOG_PARTITIONS_NAME

CLI = str(Path(sys.executable).parent / "retouch-pipeline")
LOCATION = "retouch_pipeline"
REPOSITORY = "__repository__"  # a `Definitions` object is served as Dagster's implicit repository
SAMPLE_COLLECTIONS = ("spring-2026", "summer-2026")  # the dev stack's defaults, 6 images each
SAMPLE_COUNT = 12

BANNER_END = "Ctrl-C stops everything"
T = TypeVar("T")


@dataclass
class DevProcess:
    """A running `retouch-pipeline dev` and the ways the tests talk to it."""

    proc: subprocess.Popen[bytes]
    settings: DevSettings
    log: Path
    terminal: int | None = None
    """Master side of the pseudo-terminal the stack runs on, if any."""

    # ---- waiting -------------------------------------------------------------------------------------

    def wait_until(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll `condition` until truthy; fail fast (with the log's tail) if the stack exits meanwhile."""

        def exited() -> str | None:
            status = self.proc.poll()
            return None if status is None else f"dev stack exited ({status}):\n{self.tail()}"

        return wait_until(condition, timeout, what=what, abort=exited)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def exports(self) -> dict[str, str]:
        """The `export NAME=value` lines printed after the banner (`--no-dagster`), as a shell reads them."""

        def after_banner() -> str | None:
            out = self.output()
            return out[out.index(BANNER_END) :] if BANNER_END in out else None

        return parse_exports(self.wait_until(after_banner, 60, "the banner's export lines"))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # ---- services ------------------------------------------------------------------------------------

    @property
    def ui(self) -> str:
        return self.settings.dagster_url

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.ui}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    def s3(self) -> Any:
        return s3_client(self.settings.s3_endpoint_url)

    def output_keys(self, collection: str = "") -> list[str]:
        prefix = self.settings.output_prefix + (f"{collection}/" if collection else "")
        listing = self.s3().list_objects_v2(Bucket=self.settings.output_bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def sandbox_healthy(self) -> bool:
        url = f"http://{self.settings.host}:{self.settings.sandbox_port}/health"
        return bool(requests.get(url, timeout=2).json().get("status") == "UP")

    def source_keys(self) -> list[str]:
        listing = self.s3().list_objects_v2(
            Bucket=self.settings.source_bucket, Prefix=self.settings.source_prefix
        )
        return [o["Key"] for o in listing.get("Contents", [])]

    def sandbox_state(self) -> dict[str, Any]:
        url = f"http://{self.settings.host}:{self.settings.sandbox_port}/_sandbox/state"
        state: dict[str, Any] = requests.get(url, timeout=10).json()
        return state

    # ---- Dagster state through GraphQL ---------------------------------------------------------------

    def materialized_partitions(self, asset: str) -> int:
        data = self.graphql(
            "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) {"
            " ... on AssetNode { partitionStats { numMaterialized } } } }",
            k={"path": [asset]},
        )
        return int(data["assetNodeOrError"]["partitionStats"]["numMaterialized"])

    def stop_sensor(self, name: str) -> None:
        """Stop a sensor and wait until none of its ticks is still being evaluated."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        state = self.graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {"
            " ... on Sensor { sensorState { id } } } }",
            s=selector,
        )["sensorOrError"]["sensorState"]
        stopped = self.graphql(
            "mutation($id: String!) { stopSensor(id: $id) { __typename"
            " ... on StopSensorMutationResult { instigationState { status } } } }",
            id=state["id"],
        )["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped

        def no_tick_in_flight() -> bool:
            ticks = self.graphql(
                "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {"
                " ... on Sensor { sensorState { ticks(limit: 1) { status } } } } }",
                s=selector,
            )["sensorOrError"]["sensorState"]["ticks"]
            return not ticks or ticks[0]["status"] != "STARTED"

        self.wait_until(no_tick_in_flight, 90, f"the last {name} tick to finish")

    def add_collection(self, collection: str, images: int) -> list[str]:
        """Put a collection's sample photos in S3 and register their partitions, as the catalog sensor's
        tick would (same key mapping), but without launching anything: the work is left to the UI."""
        written, _ = seed_catalog(
            self.s3(), self.settings.source_bucket, self.settings.source_prefix, {collection: images}
        )
        return [self.register(key.removeprefix(self.settings.source_prefix)) for key in written]

    def add_object(self, relative_key: str, body: bytes, content_type: str) -> str:
        """One arbitrary source object (a file that is not an image, say), registered like above."""
        self.s3().put_object(
            Bucket=self.settings.source_bucket,
            Key=self.settings.source_prefix + relative_key,
            Body=body,
            ContentType=content_type,
        )
        return self.register(relative_key)

    def register(self, relative_key: str) -> str:
        """Add the partition of a source object (relative to the source prefix); its partition key."""
        key = partition_key_for(relative_key)
        added = self.graphql(
            "mutation($r: RepositorySelector!, $n: String!, $k: String!) {"
            " addDynamicPartition(repositorySelector: $r, partitionsDefName: $n, partitionKey: $k)"
            " { __typename } }",
            r={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
            n=CATALOG_PARTITIONS_NAME,
            k=key,
        )["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added
        return key

    def launch_backfill(self, assets: Sequence[str], partition_keys: Sequence[str]) -> str:
        """Preparation only (the test under study clicks): what the launch dialog sends for a selection."""
        result = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {"
            " __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }",
            p={
                "partitionNames": list(partition_keys),
                "assetSelection": [{"path": [name]} for name in assets],
                "fromFailure": False,
            },
        )["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return str(result["backfillId"])

    def wait_for_backfill(self, backfill_id: str, timeout: float) -> dict[str, Any]:
        """The backfill once it has left REQUESTED/CANCELING (whatever its outcome)."""

        def finished() -> dict[str, Any] | None:
            backfill = self.backfill(backfill_id)
            return backfill if backfill["status"] not in ("REQUESTED", "CANCELING") else None

        return self.wait_until(finished, timeout, f"backfill {backfill_id} to finish")

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        data = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename"
            " ... on PartitionBackfill { status numPartitions tags { key value }"
            " runs(limit: 50) { runId status } } } }",
            id=backfill_id,
        )
        result: dict[str, Any] = data["partitionBackfillOrError"]
        return result

    def backfill_ids(self) -> list[str]:
        data = self.graphql(
            "{ partitionBackfillsOrError(limit: 100) { ... on PartitionBackfills { results { id } } } }"
        )
        return [b["id"] for b in data["partitionBackfillsOrError"]["results"]]

    def run_status(self, run_id_prefix: str) -> str | None:
        """Status of the newest run whose id starts with `run_id_prefix` (the UI's toasts show 8 chars)."""
        data = self.graphql("{ runsOrError(limit: 20) { ... on Runs { results { runId status } } } }")
        for run in data["runsOrError"]["results"]:
            if run["runId"].startswith(run_id_prefix):
                return str(run["status"])
        return None

    # ---- stopping ------------------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ctrl-C, as a developer stops `make dev`; whatever survives is killed. The exit status, or None
        when it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return None

    def send(self, sig: signal.Signals, timeout: float) -> int:
        """Send `sig` to the stack's own process; its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def press_ctrl_c(self, timeout: float) -> int:
        """Type Ctrl-C on the stack's terminal: the line discipline signals its foreground process group."""
        assert self.terminal is not None
        os.write(self.terminal, b"\x03")
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the stack and every process below it (their groups, never the caller's)."""
        for pid in descendants({self.proc.pid}) | {self.proc.pid}:
            stat = process_stat(pid)
            if stat is None:
                continue
            try:
                if stat[2] != os.getpgid(0):
                    os.killpg(stat[2], signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.proc.wait(timeout=10)
        if self.terminal is not None:
            os.close(self.terminal)
            self.terminal = None


def _take_terminal() -> None:
    """In the child: a new session whose controlling terminal is stdin (the pty), like a shell's job."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _drain(master: int, log: Path) -> None:
    """Copy the terminal's output to the log; a full pty buffer would block the stack's writes."""
    with log.open("ab") as out:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.write(chunk)
            out.flush()


def start_dev_process(
    workdir: Path, *args: str, log_name: str = "dev-stack.log", terminal: bool = False, **overrides: str
) -> DevProcess:
    """`retouch-pipeline dev ARGS` on free ports with its Dagster home in `workdir`, in its own session (a
    stray signal to the caller's process group never reaches it), or on a new pseudo-terminal."""
    env = {
        **os.environ,
        "RETOUCH_DEV_SANDBOX_PORT": str(free_port()),
        "RETOUCH_DEV_S3_PORT": str(free_port()),
        "RETOUCH_DEV_DAGSTER_PORT": str(free_port()),
        "RETOUCH_DEV_DAGSTER_HOME": str(workdir / "dagster_home"),
        # Short sandbox processing: the tests wait for Dagster, not for simulated retouching.
        "RETOUCH_DEV_PROCESSING_SECONDS": "0.2",
        **overrides,
    }
    log = workdir / log_name
    command = [CLI, "dev", *args]
    master: int | None = None
    if terminal:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            command, env=env, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_terminal
        )
        os.close(slave)
        threading.Thread(target=_drain, args=(master, log), daemon=True).start()
    else:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    return DevProcess(proc, DevSettings.from_env(env), log, master)


def parse_exports(text: str) -> dict[str, str]:
    """NAME -> value of each `export NAME=value` line of `text` (values shell-quoted, as `eval` reads)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export "):
            (assignment,) = shlex.split(line.removeprefix("export "))
            name, value = assignment.split("=", 1)
            found[name] = value
    return found


@dataclass
class HandStartedDagster:
    """`dg dev` started by hand as `make dev` starts it, on an environment of exports (`start_dagster_on`)."""

    process: subprocess.Popen[bytes]
    settings: DevSettings
    home: Path
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def instance(self) -> dg.DagsterInstance:
        """Its instance as a third process sees it (the storage `dg dev` writes in DAGSTER_HOME)."""
        return dg.DagsterInstance.from_config(str(self.home))

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- dg dev ({self.log}) ---\n" + "\n".join(text[-lines:])

    def stop(self, grace_seconds: float = 20.0) -> None:
        """Ctrl-C to its whole process group (webserver, daemon, code server, run workers), as `make dev`."""
        stop_process_group(self.process, grace_seconds)


def start_dagster_on(exports: Mapping[str, str], home: Path, log: Path) -> HandStartedDagster:
    """`dg dev` on a free port with a new, empty DAGSTER_HOME at `home` and the pipeline's environment from
    `exports` (what `retouch-pipeline dev --no-dagster` prints), started exactly as `make dev` starts its own
    (`devstack.start_dagster`): a second Dagster pointed at the same sandbox and S3."""
    if home.exists():
        raise FileExistsError(f"{home} exists; each Dagster here starts on an empty DAGSTER_HOME")
    home = prepare_dagster_home(home, keep_state=False)
    settings = replace(DevSettings(), dagster_port=free_port())
    env = {**clean_environment(), **exports, "DAGSTER_HOME": str(home)}
    with log.open("ab") as output:
        process = start_dagster(settings, home, env, output)
    return HandStartedDagster(process, settings, home, log)
