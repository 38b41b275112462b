"""Secrets and variables: bridge.secretstore and the function.secrets / function.variables API."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import function.secrets as secrets
from bridge import secretstore
from bridge.errors import BridgeError
from bridge.secretstore import SecretError, SecretStore, check_permissions
from function import variables

pytest_plugins = ["tests.support.standin"]

pytestmark = pytest.mark.usefixtures("clean_environment")

VALUE = "hunter2-do-not-log"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    _write(directory / "db_password", VALUE + "\n")
    _write(
        directory / secretstore.VARIABLES_FILE,
        json.dumps(
            {
                "threshold": {"value": 21.5, "type": "number"},
                "labels": {"value": {"room": "lab", "tags": [1, 2]}, "type": "object"},
                "name": {"value": "gateway-7", "type": "string"},
                "off": {"value": False, "type": "boolean"},
            }
        ),
    )
    return directory


def test_get_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    cases = {"plain": "v", "lf": "v\n", "two": "v\n\n", "crlf": "v\r\n", "inner": "a\nb\n"}
    for name, text in cases.items():
        _write(tmp_path / name, text)
    assert {name: store.get(name) for name in cases} == {
        "plain": "v",
        "lf": "v",
        "two": "v\n",
        "crlf": "v",
        "inner": "a\nb",
    }


def test_missing_secret_is_empty_and_not_found(
    secrets_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SecretStore(secrets_dir)
    assert store.get("nope") == ""
    assert not store.exists("nope")
    assert store.exists("db_password")
    assert not caplog.records  # a missing secret is an ordinary answer, not a warning
    with pytest.raises(SecretError, match="'nope' not found") as caught:
        store.read("nope")
    assert isinstance(caught.value, BridgeError)


def test_an_unreadable_secret_is_empty_with_a_warning(
    secrets_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (secrets_dir / "a_directory").mkdir()
    _write(secrets_dir / "binary", "")
    (secrets_dir / "binary").write_bytes(b"\xff\xfe" + VALUE.encode())
    store = SecretStore(secrets_dir)
    assert store.get("a_directory") == ""
    assert store.get("binary") == ""
    assert "'a_directory' cannot be read" in caplog.text
    assert "'binary' cannot be read" in caplog.text
    assert VALUE not in caplog.text


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".", "", "a\\b", "x\0y", "..hidden"])
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    _write(tmp_path / "outside", VALUE)
    (inner / "a").mkdir()
    _write(inner / "a" / "b", VALUE)
    store = SecretStore(inner)
    assert store.get(name) == ""
    assert not store.exists(name)
    with pytest.raises(SecretError, match="invalid secret name"):
        store.read(name)


def test_variables_are_json_values(secrets_dir: Path) -> None:
    store = SecretStore(secrets_dir)
    assert store.variable("threshold") == 21.5
    assert store.variable("labels") == {"room": "lab", "tags": [1, 2]}
    assert store.variable("off") is False
    assert store.variable_exists("off")
    assert store.variable("missing") == ""
    assert not store.variable_exists("missing")


@pytest.mark.parametrize(
    "content, warned",
    [
        (None, False),
        ('{"x": {"value": "' + VALUE + '"', True),  # truncated JSON
        ('["' + VALUE + '"]', True),  # not an object
        ('{"x": "' + VALUE + '"}', True),  # entry without "value"
    ],
)
def test_missing_or_malformed_variables_give_empty_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | None, warned: bool
) -> None:
    if content is not None:
        _write(tmp_path / secretstore.VARIABLES_FILE, content)
    store = SecretStore(tmp_path)
    assert store.variable("x") == ""
    assert not store.variable_exists("x")
    assert bool(caplog.records) is warned
    assert VALUE not in caplog.text


def test_function_api_reads_the_configured_directory(secrets_dir: Path) -> None:
    assert secrets.get("db_password") == "" and not secrets.exists("db_password")
    assert variables.get("name") == "" and not variables.exists("name")
    secretstore.configure(secrets_dir)
    assert secrets.get("db_password") == VALUE
    assert secrets.exists("db_password")
    assert not secrets.exists("other")
    assert variables.get("name") == "gateway-7"
    assert variables.exists("threshold")
    assert variables.get("missing") == ""


def test_location_order_config_then_credentials_directory_then_secrets_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = {}
    for name in ("configured", "credentials", "runner"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        _write(dirs[name] / "which", name)
    assert secretstore.location() is None
    monkeypatch.setenv("_SECRETS_PATH", str(dirs["runner"]))
    assert secrets.get("which") == "runner"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(dirs["credentials"]))
    assert secrets.get("which") == "credentials"
    secretstore.configure(dirs["configured"])
    assert secrets.get("which") == "configured"
    assert secretstore.location() == dirs["configured"]


def test_check_permissions_warns_about_group_or_world_readable_files(tmp_path: Path) -> None:
    _write(tmp_path / "private", "x", 0o600)
    _write(tmp_path / "owner_only", "x", 0o400)
    _write(tmp_path / "group", "x", 0o640)
    _write(tmp_path / "world", "x", 0o604)
    _write(tmp_path / "both", "x", 0o644)
    # Kubernetes-style bookkeeping entries are not secrets.
    (tmp_path / "..data").mkdir()
    _write(tmp_path / "..data" / "inner", "x", 0o644)
    warnings = check_permissions(tmp_path)
    assert len(warnings) == 3
    text = "\n".join(warnings)
    assert "group (mode 0640)" in text
    assert "others (mode 0604)" in text
    assert "group and others (mode 0644)" in text
    assert "private" not in text and "owner_only" not in text


def test_check_permissions_follows_symlinks_to_the_real_file(tmp_path: Path) -> None:
    target = _write(tmp_path / "real", "x", 0o644)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    os.symlink(target, secrets_dir / "linked")
    assert len(check_permissions(secrets_dir)) == 1
    target.chmod(0o600)
    assert check_permissions(secrets_dir) == []


def test_check_permissions_reports_a_missing_directory(tmp_path: Path) -> None:
    assert "does not exist" in check_permissions(tmp_path / "absent")[0]


def test_no_secret_value_in_logs_reprs_or_errors(
    secrets_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = SecretStore(secrets_dir)
    secretstore.configure(secrets_dir)
    (secrets_dir / "unreadable").mkdir()
    texts = [repr(store), str(store)]
    for name in ("db_password", "nope", "../db_password", "unreadable"):
        secrets.get(name)
        secrets.exists(name)
        try:
            store.read(name)
        except SecretError as exc:
            texts += [str(exc), repr(exc)]
    assert store.read("db_password") == VALUE
    assert caplog.records
    for text in texts + [caplog.text]:
        assert VALUE not in text


def test_a_name_too_long_for_the_file_system_is_simply_not_found(tmp_path: Path) -> None:
    """As the docs say of names that cannot exist; exists() raised OSError (File name too long)."""
    store = SecretStore(tmp_path)
    assert store.exists("a" * 300) is False
    assert store.get("a" * 300) == ""
