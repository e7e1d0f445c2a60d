"""Registry credentials: from a mode-0600 docker ``config.json`` or a credential helper.

Secrets never go into argv, job scripts, job environments or logs (all visible in ``ps``
or kept in scheduler accounting, see DESIGN.md "Security model"). The only places a
password lives are the file the site protects, the helper's stdout, and the
:class:`Credentials` object, whose ``repr`` hides it.

File format (what ``docker login`` writes)::

    {"auths": {"harbor.example.org": {"auth": "<base64 of user:password>"}}}
    {"auths": {"https://harbor.example.org": {"username": "u", "password": "p"}}}

Credential helpers follow docker's protocol: ``docker-credential-<name> get`` reads the
server host on stdin and prints ``{"ServerURL": ..., "Username": ..., "Secret": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CommandFailed, ConfigError, PermissionDenied
from core.runner import Runner, run_command
from registry.refs import host_of
from site_configs.schema import RegistryAuth, RegistrySection

log = logging.getLogger(__name__)

_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*", re.ASCII)
HELPER_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Credentials:
    """A registry user name and password (or robot token); ``repr`` hides the password."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def load_credentials(
    section: RegistrySection, *, runner: Runner = run_command
) -> Credentials | None:
    """The credentials the site configured for ``section``'s registry, or None.

    A credential helper wins over a file. With neither, anonymous and bearer sites get
    None (bearer registries may hand out anonymous tokens); a ``basic`` site without
    either is a :class:`ConfigError`.
    """
    host = section.host
    if section.credential_helper:
        return credentials_from_helper(section.credential_helper, host, runner=runner)
    if section.credentials_file:
        return credentials_from_file(Path(section.credentials_file).expanduser(), host)
    if section.auth == RegistryAuth.BASIC:
        raise ConfigError(
            f"registry auth is 'basic' for {host}, but neither registry.credentials_file "
            "nor registry.credential_helper is set in the site configuration"
        )
    return None


def credentials_from_file(path: Path, host: str) -> Credentials:
    """Read ``host``'s entry from a docker ``config.json``-style file.

    The file must be owned by the reading user and not readable or writable by group
    or others; otherwise :class:`PermissionDenied` says how to fix it. A missing file,
    bad JSON, or no entry for ``host`` is a :class:`ConfigError`.
    """
    config = _read_private_json(path)
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        raise ConfigError(f'credentials file {path} has no "auths" object (docker config.json)')
    wanted = host_of(host).lower()
    for key, entry in auths.items():
        if _entry_host(str(key)) == wanted:
            return _entry_credentials(entry, path, key)
    known = ", ".join(sorted(str(k) for k in auths)) or "none"
    raise ConfigError(
        f"credentials file {path} has no entry for registry {wanted} (entries: {known}); "
        f"add one with 'docker login {wanted}' or by hand"
    )


def credentials_from_helper(
    name: str, host: str, *, runner: Runner = run_command
) -> Credentials | None:
    """Ask ``docker-credential-<name> get`` for ``host``'s credentials.

    The host goes on stdin and the secret comes back on stdout; neither is in argv.
    Returns None when the helper returns an empty user name and secret.
    """
    if not _HELPER_NAME.fullmatch(name):
        raise ConfigError(
            f"credential helper name {name!r} is invalid: give the part after "
            "'docker-credential-', e.g. 'pass' or 'secretservice'"
        )
    program = f"docker-credential-{name}"
    try:
        result = runner([program, "get"], timeout=HELPER_TIMEOUT_SECONDS, input_text=host_of(host))
    except CommandFailed as e:
        # The helper's failure output is an error text ("credentials not found"), not a
        # secret, so it may be shown.
        raise ConfigError(
            f"credential helper {program} could not give credentials for {host}: {e.message}",
            retryable=e.retryable,
        ) from e
    try:
        answer = json.loads(result.stdout)
        username = answer["Username"]
        secret = answer["Secret"]
    except (ValueError, KeyError, TypeError):
        # Do not chain or quote: the output may hold the secret in a malformed shape.
        raise ConfigError(
            f"credential helper {program} printed something other than "
            '{"Username": ..., "Secret": ...} for ' + host
        ) from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise ConfigError(f"credential helper {program} gave non-text credentials for {host}")
    if not username and not secret:
        return None
    log.debug("registry credentials for %s from %s (user %s)", host, program, username)
    return Credentials(username, secret)


def _read_private_json(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"credentials file {path} does not exist") from None
    except PermissionError:
        raise PermissionDenied(
            f"credentials file {path} cannot be read by this user (uid {os.geteuid()})"
        ) from None
    try:
        # fstat the open file, not the path: no window to swap the file in between.
        _check_private(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError(f"credentials file {path} is not valid JSON") from None


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"credentials file {path} is not a regular file")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise PermissionDenied(
            f"credentials file {path} is owned by uid {info.st_uid}, not by this user "
            f"(uid {uid}); use a file of your own, then run: chmod 600 {path}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise PermissionDenied(
            f"credentials file {path} has mode {mode:04o}, so other users may read it; "
            f"run: chmod 600 {path}"
        )


def _entry_host(key: str) -> str:
    # docker writes "host", "https://host" or (Docker Hub) "https://index.docker.io/v1/".
    return host_of(key).split("/", 1)[0].lower()


def _entry_credentials(entry: object, path: Path, key: str) -> Credentials:
    if not isinstance(entry, dict):
        raise ConfigError(f"credentials file {path}: entry {key!r} is not an object")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(
                f'credentials file {path}: entry {key!r} has an "auth" that is not '
                "base64 of user:password"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise ConfigError(
                f'credentials file {path}: entry {key!r} has an "auth" that does not '
                "decode to user:password"
            )
        return Credentials(username, password)
    plain_user, plain_password = entry.get("username"), entry.get("password")
    if isinstance(plain_user, str) and isinstance(plain_password, str) and plain_user:
        return Credentials(plain_user, plain_password)
    raise ConfigError(
        f'credentials file {path}: entry {key!r} needs "auth" (base64 of user:password) '
        'or "username" and "password"'
    )
