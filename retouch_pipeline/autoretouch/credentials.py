"""Where the refresh token lives between runs.

Lookup order: the `AUTORETOUCH_REFRESH_TOKEN` environment variable (servers, CI, Dagster `EnvVar`), then a
JSON file at `RETOUCH_PIPELINE_CREDENTIALS` or `credentials.json` in the platform's config folder
(`config_directory`: `$XDG_CONFIG_HOME/retouch-pipeline/` on Linux; a file at the old fixed path is moved):

    {"version": 1, "refresh_token": "...", "api_url": "...", "auth_url": "...",
     "organization_id": "..." | null, "client_id": "...", "saved_at": "2024-01-01T00:00:00+00:00"}

The file is created with mode 0600 from the first byte (os.open with 0o600 on a temp file in the same
folder, then os.replace), its folder with 0700, so the token is never readable by others, not even briefly,
and a crash mid-write never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .errors import NotLoggedInError
from .models import Secret

__all__ = [
    "ENV_CREDENTIALS_PATH",
    "ENV_REFRESH_TOKEN",
    "CredentialStore",
    "StoredCredentials",
    "default_credentials_path",
]

log = logging.getLogger("retouch_pipeline.autoretouch")

ENV_REFRESH_TOKEN = "AUTORETOUCH_REFRESH_TOKEN"  # noqa: S105 - a variable name
ENV_CREDENTIALS_PATH = "RETOUCH_PIPELINE_CREDENTIALS"
FILE_VERSION = 1


APP_NAME = "retouch-pipeline"
#: Where releases before the platform's config folder kept the file: read once, then moved.
LEGACY_PATH = "~/.config/retouch-pipeline/credentials.json"


def config_directory(environ: Mapping[str, str] | None = None) -> Path:
    """The platform's per-user config folder of this program.

    `$XDG_CONFIG_HOME/retouch-pipeline` (else `~/.config/...`) on Linux and the BSDs, as the XDG base
    directory specification says; click's app folder elsewhere (`~/Library/Application Support/...` on macOS,
    `%APPDATA%\\...` on Windows).
    """
    env = os.environ if environ is None else environ
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return Path(env.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / APP_NAME
    return Path(click.get_app_dir(APP_NAME))


def default_credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV_CREDENTIALS_PATH):
        return Path(env[ENV_CREDENTIALS_PATH]).expanduser()
    return config_directory(env) / "credentials.json"


@dataclass(frozen=True)
class StoredCredentials:
    """A refresh token and the service it belongs to; `source` says where it was found (for messages)."""

    refresh_token: Secret
    api_url: str | None = None
    auth_url: str | None = None
    organization_id: str | None = None
    client_id: str | None = None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FILE_VERSION,
            "refresh_token": self.refresh_token.get_secret_value(),
            "api_url": self.api_url,
            "auth_url": self.auth_url,
            "organization_id": self.organization_id,
            "client_id": self.client_id,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


class CredentialStore:
    """Loads, saves and deletes `StoredCredentials`; `path` None means the default location."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.path = Path(path).expanduser() if path is not None else default_credentials_path(self.environ)
        defaulted = path is None and not self.environ.get(ENV_CREDENTIALS_PATH)
        self._legacy = Path(LEGACY_PATH).expanduser() if defaulted else None

    def __repr__(self) -> str:
        return f"CredentialStore(path={str(self.path)!r})"

    @property
    def checked(self) -> list[str]:
        return [f"${ENV_REFRESH_TOKEN}", str(self.path)]

    def load(self) -> StoredCredentials | None:
        """The environment variable first, else the file; None when neither has a token."""
        from_env = self.environ.get(ENV_REFRESH_TOKEN, "").strip()
        if from_env:
            return StoredCredentials(refresh_token=Secret(from_env), source=f"${ENV_REFRESH_TOKEN}")
        return self.load_file()

    def _move_legacy_file(self) -> None:
        """A file at the old fixed path moves to the platform's config folder, once, still 0600."""
        legacy = self._legacy
        if legacy is None or legacy == self.path or self.path.exists() or not legacy.is_file():
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.replace(legacy, self.path)
        except OSError:  # another file system: copy, then remove the old one
            shutil.copyfile(legacy, self.path)
            legacy.unlink()
        os.chmod(self.path, 0o600)
        log.info("moved the credentials file from %s to %s", legacy, self.path)

    def load_file(self) -> StoredCredentials | None:
        self._move_legacy_file()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("credentials file %s is readable by others: chmod 600 it", self.path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable credentials file %s (%s)", self.path, type(exc).__name__)
            return None
        token = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return None

        def opt(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        return StoredCredentials(
            refresh_token=Secret(token),
            api_url=opt("api_url"),
            auth_url=opt("auth_url"),
            organization_id=opt("organization_id"),
            client_id=opt("client_id"),
            source=str(self.path),
        )

    def require(self) -> StoredCredentials:
        """Like `load()` but raises `NotLoggedInError` naming what was checked."""
        creds = self.load()
        if creds is None:
            raise NotLoggedInError(self.checked)
        return creds

    def save(
        self,
        credentials: StoredCredentials | Secret | str,
        *,
        api_url: str | None = None,
        auth_url: str | None = None,
        organization_id: str | None = None,
        client_id: str | None = None,
    ) -> Path:
        """Write atomically with mode 0600 (folder 0700); takes `StoredCredentials` or a token plus fields."""
        if not isinstance(credentials, StoredCredentials):
            credentials = StoredCredentials(
                refresh_token=Secret(credentials),
                api_url=api_url,
                auth_url=auth_url,
                organization_id=organization_id,
                client_id=client_id,
            )
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        payload = json.dumps(credentials.to_json(), indent=2).encode("utf-8") + b"\n"
        tmp = folder / f".{self.path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)  # in case a umask or ACL widened it
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return self.path

    def delete(self) -> bool:
        """Remove the file; True if there was one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
