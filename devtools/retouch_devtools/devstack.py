"""The embedded default stack behind `make dev` and `retouch-pipeline dev`.

One foreground process owns everything: the sandbox AutoRetouch and moto's S3 server run as threads in it,
Dagster (`dg dev`) runs as a child in its own process group. Why this shape:

- Threads for the sandbox and S3 cannot outlive the process, so the only thing that could leak is Dagster.
  `dg dev` and everything it starts share one process group, stopped as a whole (`procgroup`).
- Because Dagster is not in the terminal's foreground group, a Ctrl-C reaches only us, and we decide the
  order: Dagster first (its runs may still talk to S3 and the sandbox), then S3, then the sandbox.
- S3 and the sandbox are in memory, so they start empty every time. Dagster's instance storage in
  `DAGSTER_HOME` is therefore reset at each start (unless `--keep-state`): a kept instance would remember
  partitions whose objects no longer exist, and the catalog sensor's baseline pass would adopt the freshly
  seeded images silently instead of processing them. Only a folder this module created (marker file) is reset,
  and never one a running stack holds (an exclusive lock on `LOCK_FILE` for the stack's life): a second
  `make dev` in the same checkout refuses to start instead of wiping the first one's storage.
- The banner ends with the pipeline's environment as `export NAME=value` lines (the names of
  `retouch_pipeline.settings.VARIABLES`), so the CLI points at the same sandbox, S3 and Dagster (its
  DAGSTER_HOME and webserver URL), and with `--no-dagster` a Dagster started by hand does too.

Names and addresses: see `DevSettings` (own `RETOUCH_DEV_*` variables) and `stack.env.PIPELINE_ENV` (the
variables the Dagster definitions read; bucket and prefixes are read from them too, so one override moves both
sides). The pieces (moto's S3, the pipeline's environment) come from the stack builder (`stack`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from retouch_devtools.procgroup import StopSignals, start_in_own_group, stop_process_group, wait_for_http
from retouch_devtools.stack.env import PIPELINE_ENV, pipeline_variables
from retouch_devtools.stack.s3 import DUMMY_AWS, REMOVED_AWS, ensure_bucket, running_moto, s3_client
from retouch_pipeline.settings import DAGSTER_URL_VARIABLE, VARIABLES

if TYPE_CHECKING:
    from retouch_devtools.sandbox.realism import Realism

MARKER = ".retouch-dev-home"
LOCK_FILE = ".retouch-dev.lock"
DAGSTER_YAML = """\
# Written by `retouch-pipeline dev` at every start; edit devstack.py instead.
telemetry:
  enabled: false
nux:
  enabled: false
"""
# The same code location name as the repository's workspace.yaml and [tool.dagster], whatever the cwd.
WORKSPACE_YAML = """\
# Written by `retouch-pipeline dev` at every start.
load_from:
  - python_module:
      module_name: retouch_pipeline.definitions
      location_name: retouch_pipeline
"""


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    return int(value) if value else default


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name, "").strip()
    return float(value) if value else default


def _env_str(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name, "").strip() or default


@dataclass(frozen=True)
class DevSettings:
    """Every address and name of the dev stack; `from_env` documents the variable of each."""

    host: str = "127.0.0.1"
    sandbox_port: int = 8765
    s3_port: int = 9000
    dagster_port: int = 3000
    dagster_home: Path = Path(".dagster_home")
    source_bucket: str = "catalog"
    source_prefix: str = "incoming/"
    output_bucket: str = "catalog"
    output_prefix: str = "retouched/"
    processing_seconds: float = 2.0
    workers: int = 8
    balance: int = 100_000
    workflow_name: str = "Background Removal"
    collections: tuple[str, ...] = ("spring-2026", "summer-2026")
    images_per_collection: int = 6
    dagster_stop_seconds: float = 20.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DevSettings:
        env = os.environ if environ is None else environ
        d = cls()
        bucket = _env_str(env, PIPELINE_ENV["source_bucket"], d.source_bucket)
        collections = tuple(
            c.strip() for c in _env_str(env, "RETOUCH_DEV_COLLECTIONS", ",".join(d.collections)).split(",")
        )
        return cls(
            host=_env_str(env, "RETOUCH_DEV_HOST", d.host),
            sandbox_port=_env_int(env, "RETOUCH_DEV_SANDBOX_PORT", d.sandbox_port),
            s3_port=_env_int(env, "RETOUCH_DEV_S3_PORT", d.s3_port),
            dagster_port=_env_int(env, "RETOUCH_DEV_DAGSTER_PORT", d.dagster_port),
            dagster_home=Path(_env_str(env, "RETOUCH_DEV_DAGSTER_HOME", str(d.dagster_home))),
            source_bucket=bucket,
            source_prefix=_env_str(env, PIPELINE_ENV["source_prefix"], d.source_prefix),
            output_bucket=_env_str(env, PIPELINE_ENV["output_bucket"], bucket),
            output_prefix=_env_str(env, PIPELINE_ENV["output_prefix"], d.output_prefix),
            processing_seconds=_env_float(env, "RETOUCH_DEV_PROCESSING_SECONDS", d.processing_seconds),
            workers=_env_int(env, "RETOUCH_DEV_WORKERS", d.workers),
            balance=_env_int(env, "RETOUCH_DEV_BALANCE", d.balance),
            workflow_name=_env_str(env, "RETOUCH_DEV_WORKFLOW", d.workflow_name),
            collections=tuple(c for c in collections if c),
            images_per_collection=_env_int(env, "RETOUCH_DEV_IMAGES_PER_COLLECTION", d.images_per_collection),
        )

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def dagster_url(self) -> str:
        return f"http://{self.host}:{self.dagster_port}"


def check_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Fail early with the variable to change; moto's server would otherwise hang on a taken port."""
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers themselves do: a TIME_WAIT left by the last run must not count as taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                raise RuntimeError(
                    f"{host}:{port} is already in use ({error.strerror}); "
                    f"is another `make dev` running? Otherwise set RETOUCH_DEV_{name}_PORT."
                ) from error


def seed_catalog(
    client: Any, bucket: str, prefix: str, collections: Mapping[str, int]
) -> tuple[list[str], list[str]]:
    """Put the deterministic sample photos under `prefix`; returns (written, unchanged) keys.

    Idempotent by content: an object whose ETag is already the MD5 of the sample is left alone, so re-seeding
    neither duplicates nor bumps LastModified (which a sensor could take for a change).
    """
    from retouch_devtools.samples import sample_catalog

    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    written: list[str] = []
    unchanged: list[str] = []
    for photo in sample_catalog(dict(collections)):
        key = base + photo.relative_key
        digest = hashlib.md5(photo.data, usedforsecurity=False).hexdigest()
        try:
            etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        except client.exceptions.ClientError:
            etag = None
        if etag == digest:
            unchanged.append(key)
            continue
        client.put_object(Bucket=bucket, Key=key, Body=photo.data, ContentType=photo.content_type)
        written.append(key)
    return written, unchanged


def hold_dagster_home(path: Path) -> IO[str]:
    """Lock DAGSTER_HOME for the stack's life (closing the file releases it); refuse one that is held."""
    home = path.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    lock = (home / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RuntimeError(
            f"{home} belongs to a running `retouch-pipeline dev` ({holder}); starting would wipe its "
            "Dagster storage. Stop that stack first, or give this one its own folder with "
            "RETOUCH_DEV_DAGSTER_HOME (and its own RETOUCH_DEV_*_PORT)."
        ) from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


def prepare_dagster_home(path: Path, *, keep_state: bool) -> Path:
    """Create DAGSTER_HOME with its dagster.yaml; reset its storage unless keep_state (see module doc)."""
    home = path.expanduser().resolve()
    marker = home / MARKER
    if home.exists() and any(e.name != LOCK_FILE for e in home.iterdir()) and not marker.exists():
        raise RuntimeError(
            f"{home} exists and was not created by `retouch-pipeline dev`; "
            "choose another RETOUCH_DEV_DAGSTER_HOME (it would be reset at each start)."
        )
    if home.exists() and not keep_state:
        for entry in home.iterdir():
            if entry.name not in (MARKER, LOCK_FILE):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    home.mkdir(parents=True, exist_ok=True)
    marker.write_text("Created by `retouch-pipeline dev`; reset at each start unless --keep-state.\n")
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    (home / "workspace.yaml").write_text(WORKSPACE_YAML)
    return home


def pipeline_environment(
    settings: DevSettings, sandbox: Any, dagster_home: Path | None, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment of `dg dev`: the pipeline's variables pointed at the embedded services."""
    announced = {
        name: getattr(sandbox, name)
        for name in ("api_url", "auth_url", "organization_id", "refresh_token", "workflows")
    }
    env = {k: v for k, v in base.items() if k not in REMOVED_AWS}
    env.update(DUMMY_AWS)
    env.update(
        pipeline_variables(
            announced,
            settings.s3_endpoint_url,
            workflow_name=settings.workflow_name,
            source_bucket=settings.source_bucket,
            source_prefix=settings.source_prefix,
            output_bucket=settings.output_bucket,
            output_prefix=settings.output_prefix,
        )
    )
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    env.update(settings.extra_env)
    return env


def start_dagster(
    settings: DevSettings, home: Path, env: Mapping[str, str], output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """`dg dev` in a new process group (see module doc), output straight to our terminal (or `output`).

    Dagster's own CLI (`dg`, dagster-dg-cli) rather than `dagster dev`, which is superseded by it; with an
    explicit workspace file it starts the same webserver, daemon and code server.
    """
    command = [
        str(Path(sys.executable).parent / "dg"), "dev",
        "--host", settings.host, "--port", str(settings.dagster_port),
        "--workspace", str(home / "workspace.yaml"),
    ]  # fmt: skip
    return start_in_own_group(command, env, output)


def export_lines(env: Mapping[str, str]) -> list[str]:
    """`export NAME=value` of the pipeline's variables set in `env` (and moto's dummy AWS keys)."""
    names = [v.name for v in VARIABLES] + ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    return [f"export {name}={shlex.quote(env[name])}" for name in names if name in env]


def environment_block(settings: DevSettings, sandbox: Any, dagster_home: Path | None) -> str:
    """The banner's tail: the `export` lines that point the CLI (and, without Dagster, a Dagster of one's
    own) at this stack; with Dagster also its DAGSTER_HOME and webserver, so `backfill` launches there."""
    env = pipeline_environment(settings, sandbox, dagster_home, {})
    if dagster_home is not None:
        env[DAGSTER_URL_VARIABLE] = settings.dagster_url
    own = (
        "; for a Dagster of your own, then `dg dev` with its own DAGSTER_HOME" if dagster_home is None else ""
    )
    example = (
        f"retouch-pipeline backfill {settings.collections[0]}" if settings.collections else "retouch-pipeline"
    )
    lines = [
        f"  Point the CLI at this stack: eval these lines, then e.g. `{example}`{own}.",
        "  AUTORETOUCH_REFRESH_TOKEN is the sandbox's own dev token, the one the dev stack hands to Dagster;",
        "  the AWS keys are moto's dummies. No other secret is printed.",
        "",
        *export_lines(env),
        "",
    ]
    return "\n".join(lines)


def banner(settings: DevSettings, sandbox: Any, dagster: bool, seeded: tuple[int, int] | None) -> str:
    endpoint = settings.s3_endpoint_url
    out = f"s3://{settings.output_bucket}/{settings.output_prefix}"
    port_env = "" if settings.s3_port == DevSettings.s3_port else f"RETOUCH_DEV_S3_PORT={settings.s3_port} "
    lines = ["", "retouch-pipeline dev stack is up", ""]
    if dagster:
        lines.append(f"  Dagster UI        {settings.dagster_url}   (sensors start by themselves)")
    lines += [
        f"  AutoRetouch       {sandbox.api_url}   (sandbox; GET /_sandbox/state shows credits)",
        f"  S3 (moto)         {endpoint}   sources s3://{settings.source_bucket}/{settings.source_prefix}"
        f"  results {out}",
    ]
    if seeded is not None:
        lines.append(f"  sample catalog    {seeded[0]} photos written, {seeded[1]} already there")
    lines += [
        "",
        "  Look at the results:",
        f"    {port_env}{sys.executable} -m retouch_devtools.devstack ls {settings.output_prefix}",
        f"    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing aws --endpoint-url {endpoint} "
        f"s3 ls --recursive {out}",
        f"    {endpoint}/moto-api/   (moto's dashboard)",
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def run_dev(
    settings: DevSettings,
    *,
    dagster: bool = True,
    seed: bool = True,
    keep_state: bool = False,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    realism: Realism | None = None,
) -> int:
    """Start the stack, serve until a stop signal (or `stop` is set), stop everything; the exit status."""
    from retouch_devtools.sandbox import SandboxConfig, SandboxServer

    ports = {"SANDBOX": settings.sandbox_port, "S3": settings.s3_port}
    if dagster:
        ports["DAGSTER"] = settings.dagster_port
    check_ports_free(settings.host, ports)
    stop_event = stop if stop is not None else threading.Event()
    with StopSignals(stop_event), contextlib.ExitStack() as stack:
        sandbox_config = SandboxConfig(
            host=settings.host,
            port=settings.sandbox_port,
            processing_seconds=settings.processing_seconds,
            workers=settings.workers,
            balance=settings.balance,
            auto_approve=True,
        )
        if realism is not None:  # else SandboxConfig's default: strict
            sandbox_config.realism = realism
        stack.callback(echo, "Sandbox AutoRetouch stopped.")  # callbacks run last-in first-out
        sandbox = stack.enter_context(SandboxServer(sandbox_config))
        stack.enter_context(running_moto(settings.s3_port, settings.host))
        client = s3_client(settings.s3_endpoint_url)
        for bucket in {settings.source_bucket, settings.output_bucket}:
            ensure_bucket(client, bucket)
        seeded: tuple[int, int] | None = None
        if seed:
            counts = dict.fromkeys(settings.collections, settings.images_per_collection)
            written, unchanged = seed_catalog(client, settings.source_bucket, settings.source_prefix, counts)
            seeded = (len(written), len(unchanged))
        process: subprocess.Popen[bytes] | None = None
        home: Path | None = None
        if dagster and not stop_event.is_set():
            stack.callback(hold_dagster_home(settings.dagster_home).close)  # before any reset
            home = prepare_dagster_home(settings.dagster_home, keep_state=keep_state)
            env = pipeline_environment(settings, sandbox, home, os.environ)
            process = start_dagster(settings, home, env)
            stack.callback(echo, "Dagster stopped.")
            stack.callback(stop_process_group, process, settings.dagster_stop_seconds)
            # The banner waits for the UI, so it comes after Dagster's start-up logs.
            if not wait_for_http(f"{settings.dagster_url}/server_info", process, stop_event, 180.0):
                return 0 if stop_event.is_set() else 1
        echo(banner(settings, sandbox, dagster, seeded))
        echo(environment_block(settings, sandbox, home if process is not None else None))
        while not stop_event.wait(0.5):
            if process is not None and process.poll() is not None:
                echo(f"dg dev exited on its own (status {process.returncode}); stopping the rest.")
                return 1
        echo("Stopping: Dagster first, then S3, then the sandbox...")
    return 0


def list_objects(settings: DevSettings, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under `prefix` in the dev bucket (the banner's `ls`)."""
    client = s3_client(settings.s3_endpoint_url)
    rows: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=settings.output_bucket, Prefix=prefix
    ):
        rows += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m retouch_devtools.devstack ls [PREFIX]`: list the dev S3 without the AWS CLI."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "ls" or len(args) > 2:
        print("usage: python -m retouch_devtools.devstack ls [PREFIX]", file=sys.stderr)
        return 2
    settings = DevSettings.from_env()
    for key, size in list_objects(settings, args[1] if len(args) == 2 else ""):
        print(f"{size:>10}  s3://{settings.output_bucket}/{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DevSettings",
    "list_objects",
    "pipeline_environment",
    "run_dev",
    "seed_catalog",
]
