"""CredentialStore: lookup order, 0600/0700 from creation, atomic writes, deletion, not-logged-in errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from retouch_pipeline.autoretouch import (
    AutoRetouchClient,
    CredentialStore,
    NotLoggedInError,
    Secret,
    StoredCredentials,
)


def test_save_creates_0600_file_in_0700_folder_atomically(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "cfg" / "retouch-pipeline" / "credentials.json"
    store = CredentialStore(path, environ={})
    created_modes: list[int] = []
    real_open = os.open

    def spy_open(file: Any, flags: int, mode: int = 0o777, *a: Any, **kw: Any) -> int:
        if flags & os.O_CREAT:
            created_modes.append(mode)
        return real_open(file, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy_open)
    old_umask = os.umask(0)  # even with a permissive umask nothing is ever group/world readable
    try:
        saved = store.save("rt-secret", api_url="http://api", auth_url="http://auth", organization_id="org-1")
    finally:
        os.umask(old_umask)
    assert saved == path
    assert created_modes == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["refresh_token"] == "rt-secret" and data["api_url"] == "http://api"
    assert data["organization_id"] == "org-1" and data["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp file left behind

    # overwrite keeps the mode and replaces the content
    store.save(StoredCredentials(Secret("rt-2"), api_url="http://api2"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = store.load()
    assert loaded is not None and loaded.refresh_token.get_secret_value() == "rt-2"
    assert loaded.api_url == "http://api2" and loaded.source == str(path)
    assert "rt-2" not in repr(loaded) and "rt-2" not in repr(store)


def test_env_var_wins_over_file_and_path_env_var_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    env = {"RETOUCH_PIPELINE_CREDENTIALS": str(path)}
    store = CredentialStore(environ=env)
    assert store.path == path
    store.save("from-file", api_url="http://api")
    from_file = store.load()
    assert from_file is not None and from_file.refresh_token == Secret("from-file")
    env["AUTORETOUCH_REFRESH_TOKEN"] = "from-env"
    creds = store.load()
    assert creds is not None and creds.refresh_token == Secret("from-env")
    assert creds.source == "$AUTORETOUCH_REFRESH_TOKEN"
    saved = store.load_file()  # what logout revokes, and where the saved URLs are
    assert saved is not None and saved.refresh_token == Secret("from-file")
    assert saved.api_url == "http://api"


def test_default_location_is_the_platforms_config_folder(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CredentialStore(environ={}).path == tmp_path / "home/.config/retouch-pipeline/credentials.json"
    xdg = CredentialStore(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert xdg.path == tmp_path / "xdg/retouch-pipeline/credentials.json"


def test_the_old_fixed_path_is_read_once_and_moved(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = CredentialStore(tmp_path / "home/.config/retouch-pipeline/credentials.json", environ={})
    old.save("rt-old", api_url="http://127.0.0.1:1")
    store = CredentialStore(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    loaded = store.load()
    assert loaded is not None and loaded.refresh_token.get_secret_value() == "rt-old"
    assert loaded.api_url == "http://127.0.0.1:1" and loaded.source == str(store.path)
    assert not old.path.exists() and store.path.exists()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    old.save("rt-newer-at-old-path")  # the new file exists: the old path is never read again
    again = CredentialStore(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).load()
    assert again is not None and again.refresh_token.get_secret_value() == "rt-old"


def test_not_logged_in_names_what_was_checked(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "none.json", environ={})
    assert store.load() is None
    with pytest.raises(NotLoggedInError) as info:
        store.require()
    message = str(info.value)
    assert "AUTORETOUCH_REFRESH_TOKEN" in message and str(tmp_path / "none.json") in message
    assert "retouch-pipeline login" in message
    with pytest.raises(NotLoggedInError):
        AutoRetouchClient.from_credentials(store)


def test_delete_and_garbled_files(tmp_path: Path, caplog: Any) -> None:
    store = CredentialStore(tmp_path / "c.json", environ={})
    assert store.delete() is False
    store.save("x")
    assert store.delete() is True and not store.path.exists()
    store.path.write_text("{not json")
    assert store.load() is None
    store.path.write_text(json.dumps({"refresh_token": "loose"}))
    os.chmod(store.path, 0o644)
    with caplog.at_level("WARNING"):
        assert store.load() is not None
    assert "readable by others" in caplog.text and "loose" not in caplog.text


def test_from_credentials_uses_saved_urls_and_organization(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "c.json", environ={})
    store.save("rt", api_url="http://127.0.0.1:1/", auth_url="http://127.0.0.1:2", organization_id="org")
    with AutoRetouchClient.from_credentials(store) as client:
        assert client.api_url == "http://127.0.0.1:1" and client.auth_url == "http://127.0.0.1:2"
        assert client.organization_id == "org"
        assert client.tokens is not None and client.tokens.refresh_token == Secret("rt")
        assert "rt" not in repr(client.tokens).replace("retouch", "")
    with AutoRetouchClient.from_credentials(store, organization_id="other") as client:
        assert client.organization_id == "other"
