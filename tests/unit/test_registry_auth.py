"""Credentials from protected files and from a real (script) docker credential helper."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from core.errors import ConfigError, PermissionDenied
from registry.auth import (
    Credentials,
    credentials_from_file,
    credentials_from_helper,
    load_credentials,
)
from site_configs.schema import RegistrySection

HOST = "127.0.0.1:5000"
SECRET = "s3cret:with:colons"


def _write(path: Path, content: object, mode: int = 0o600) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(mode)
    return path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("alice", SECRET)
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert "alice" in repr(creds)


@pytest.mark.parametrize(
    "entries",
    [
        {HOST: {"auth": _auth("alice", SECRET)}},
        {f"http://{HOST}": {"auth": _auth("alice", SECRET)}},
        {f"https://{HOST}/v2/": {"auth": _auth("alice", SECRET)}},
        {HOST: {"username": "alice", "password": SECRET}},
        {"other.org": {"auth": _auth("x", "y")}, HOST: {"auth": _auth("alice", SECRET)}},
    ],
)
def test_file_entries(tmp_path: Path, entries: dict[str, object]) -> None:
    path = _write(tmp_path / "config.json", {"auths": entries})
    assert credentials_from_file(path, HOST) == Credentials("alice", SECRET)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_accepted(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("a", "b")}}}, mode)
    assert credentials_from_file(path, HOST) == Credentials("a", "b")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_open_modes_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("a", "b")}}}, mode)
    with pytest.raises(PermissionDenied) as err:
        credentials_from_file(path, HOST)
    assert f"mode {mode:04o}" in err.value.message
    assert f"chmod 600 {path}" in err.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_file_of_another_user_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("a", "b")}}})
    os.chown(path, 65534, 65534)
    with pytest.raises(PermissionDenied, match="owned by uid 65534, not by this user"):
        credentials_from_file(path, HOST)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ({"credsStore": "pass"}, 'has no "auths" object'),
        ({"auths": {"other.org": {"auth": _auth("a", "b")}}}, "no entry for registry 127.0.0.1"),
        ({"auths": {HOST: {"auth": "%%%"}}}, "not base64"),
        ({"auths": {HOST: {"auth": base64.b64encode(b"nocolon").decode()}}}, "user:password"),
        ({"auths": {HOST: {"username": "a"}}}, 'needs "auth"'),
        ({"auths": {HOST: "x"}}, "is not an object"),
    ],
)
def test_bad_files(tmp_path: Path, content: object, message: str) -> None:
    path = _write(tmp_path / "c.json", content)
    with pytest.raises(ConfigError) as err:
        credentials_from_file(path, HOST)
    assert message in err.value.message
    assert str(path) in err.value.message


def test_error_never_shows_the_secret(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", '{"auths": {"h": {"auth": "' + SECRET + '"}}')
    with pytest.raises(ConfigError) as err:
        credentials_from_file(path, HOST)
    assert SECRET not in err.value.message
    assert err.value.__cause__ is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        credentials_from_file(tmp_path / "nope.json", HOST)


def test_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        credentials_from_file(tmp_path / "d", HOST)


# --- credential helper: a real executable on PATH, run through run_command ---------


@pytest.fixture
def helper_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _helper(bin_dir: Path, name: str, body: str) -> None:
    script = bin_dir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(stat.S_IRWXU)


def test_helper_reads_host_on_stdin(helper_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    _helper(
        helper_dir,
        "test",
        f'echo "argv: $*" > {log}\nread host\necho "stdin: $host" >> {log}\n'
        'printf \'{"ServerURL":"%s","Username":"alice","Secret":"' + SECRET + '"}\' "$host"\n',
    )
    creds = credentials_from_helper("test", HOST)
    assert creds == Credentials("alice", SECRET)
    assert log.read_text().splitlines() == ["argv: get", f"stdin: {HOST}"]


def test_helper_not_found_message(helper_dir: Path) -> None:
    _helper(helper_dir, "empty", "echo 'credentials not found in native keychain'\nexit 1\n")
    with pytest.raises(ConfigError, match="credentials not found in native keychain"):
        credentials_from_helper("empty", HOST)


def test_helper_missing_program(helper_dir: Path) -> None:
    with pytest.raises(ConfigError, match="docker-credential-absent could not give"):
        credentials_from_helper("absent", HOST)


def test_helper_bad_output_not_quoted(helper_dir: Path) -> None:
    _helper(helper_dir, "bad", f"echo 'Username=alice Secret={SECRET}'\n")
    with pytest.raises(ConfigError) as err:
        credentials_from_helper("bad", HOST)
    assert SECRET not in err.value.message
    assert err.value.__cause__ is None


def test_helper_empty_answer_is_none(helper_dir: Path) -> None:
    _helper(helper_dir, "anon", 'echo \'{"ServerURL":"h","Username":"","Secret":""}\'\n')
    assert credentials_from_helper("anon", HOST) is None


@pytest.mark.parametrize("name", ["../evil", "a b", "", "-x", "x/y"])
def test_helper_name_validated(name: str) -> None:
    with pytest.raises(ConfigError, match="credential helper name"):
        credentials_from_helper(name, HOST)


# --- load_credentials: what the site section says ------------------------------------


def _section(**kwargs: object) -> RegistrySection:
    return RegistrySection.model_validate({"url": f"http://{HOST}", **kwargs})


def test_load_anonymous_is_none() -> None:
    assert load_credentials(_section()) is None
    assert load_credentials(_section(auth="bearer")) is None


def test_load_basic_without_source_is_config_error() -> None:
    with pytest.raises(ConfigError, match="neither registry.credentials_file"):
        load_credentials(_section(auth="basic"))


def test_load_from_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("alice", SECRET)}}})
    creds = load_credentials(_section(auth="basic", credentials_file=str(path)))
    assert creds == Credentials("alice", SECRET)


def test_load_from_file_0644_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("a", "b")}}}, 0o644)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        load_credentials(_section(auth="basic", credentials_file=str(path)))


def test_load_helper_wins_over_file(helper_dir: Path, tmp_path: Path) -> None:
    _helper(helper_dir, "t", 'echo \'{"ServerURL":"h","Username":"bob","Secret":"pw"}\'\n')
    path = _write(tmp_path / "c.json", {"auths": {HOST: {"auth": _auth("alice", "x")}}})
    section = _section(auth="basic", credentials_file=str(path), credential_helper="t")
    assert load_credentials(section) == Credentials("bob", "pw")
