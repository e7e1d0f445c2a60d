"""What a saved image's config holds: one rule for every commit method and engine.

The rule (docs/saved-image.md): the image config keeps what the engine's own commit
(``podman commit``, ``nerdctl commit``) takes from the *container*: its command
(``Cmd``, ``Entrypoint``), ``Env``, ``WorkingDir``, ``User``, exposed ports,
``Labels``, a ``StopSignal`` other than the default SIGTERM, and its anonymous
volumes; MINUS imgsave's own labels (the site's owner label, ``imgsave.*`` and
``io.imgsave.*``) and MINUS the env vars whose *names* match the site's secret-looking
patterns (``save.secret_env_patterns``). ``HOSTNAME`` and ``HOME``, which the engine sets
in every container when it starts, are kept only where the base image sets them.
The rest of the image config (architecture, os, rootfs, history) is the image's own;
keys outside the OCI image spec (docker's ``container_config``, which repeats the
container's env, ``container``, ``docker_version``) are left out.

Both commit methods put their image through :func:`saved_config`: the streaming commit
on the base image's config, the engine commit on the config the engine pushed. So
the method a node uses does not change what a user gets. Pure functions only: the
container's settings come from ``container inspect`` (:func:`parse_container_config`,
on real podman and docker captures in ``tests/captures/engines``).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from site_configs.schema import DEFAULT_SECRET_ENV_PATTERNS

if TYPE_CHECKING:
    from site_configs.schema import SiteConfig

# the image-spec config keys (image-spec config.md, "Properties"); the rest is dropped
OCI_TOP_LEVEL = ("created", "author", "architecture", "os", "os.version", "os.features",
                 "variant", "config", "rootfs", "history")
OWN_LABEL_PREFIXES = ("imgsave.", "io.imgsave.")
RUNTIME_ENV = ("HOSTNAME", "HOME")  # set by the engine in every container at start
DEFAULT_STOP_SIGNAL = "SIGTERM"
_ANONYMOUS_VOLUME = re.compile(r"[0-9a-f]{64}")  # podman names an anonymous volume so
MAX_REPORTED = 50  # names of dropped env vars a result lists; then "(N more)"
MAX_NAME = 100  # characters of one reported name
SETTINGS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
            "Labels", "StopSignal")  # the image-spec config keys a save takes from a container


@dataclass(frozen=True)
class ContainerConfig:
    """The container's own settings, as its engine's ``container inspect`` reports them."""

    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "NAME=value", in the container's order
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()  # "8888/tcp"
    stop_signal: str = ""  # "SIGINT"; "" for the default
    volumes: tuple[str, ...] = ()  # anonymous volumes' mount points
    # the SETTINGS the engine's inspect reports; for the others the image's own value
    # stays (nerdctl's inspect reports only Labels; the config its commit pushed has them)
    reported: frozenset[str] = frozenset(SETTINGS)


@dataclass(frozen=True)
class ConfigRule:
    """The site's part of the rule: secret-looking env names and the owner label."""

    secret_env_patterns: tuple[str, ...] = DEFAULT_SECRET_ENV_PATTERNS
    owner_label: str = "imgsave.owner"

    @classmethod
    def from_site(cls, site: SiteConfig) -> ConfigRule:
        """The rule with the site's ``save.secret_env_patterns`` and owner label."""
        return cls(tuple(site.save.secret_env_patterns), site.engine.owner_label)

    def is_secret(self, name: str) -> bool:
        """Whether an env var called ``name`` looks secret (patterns match any case)."""
        upper = name.upper()
        return any(fnmatch.fnmatchcase(upper, p.upper()) for p in self.secret_env_patterns)

    def is_own_label(self, key: str) -> bool:
        """Whether ``key`` is one of imgsave's labels (never carried into an image)."""
        return key == self.owner_label or key.startswith(OWN_LABEL_PREFIXES)


@dataclass(frozen=True)
class SavedConfig:
    """An image config after the rule, and what the rule left out (names only)."""

    config: dict[str, Any]
    dropped_env: tuple[str, ...] = ()  # names of secret-looking env vars, never values
    dropped_labels: tuple[str, ...] = ()


def saved_config(
    image: Mapping[str, Any], container: ContainerConfig, rule: ConfigRule,
    base_env: Sequence[str] = (),
) -> SavedConfig:
    """``image`` (an OCI/docker image config) with its ``config`` replaced by the rule's.

    ``base_env`` is the base image's ``Env``: ``HOSTNAME`` and ``HOME`` are kept only
    when it has them. A setting the container's inspect does not report
    (:attr:`ContainerConfig.reported`) is taken from ``image``, through the same rule.
    """
    container = _completed(container, image.get("config") or {})
    base_names = {_env_name(e) for e in base_env}
    env: list[str] = []
    dropped_env: list[str] = []
    for entry in container.env:
        name = _env_name(entry)
        if rule.is_secret(name):
            dropped_env.append(name)
        elif name not in RUNTIME_ENV or name in base_names:
            env.append(entry)
    labels = {k: v for k, v in container.labels.items() if not rule.is_own_label(k)}
    dropped_labels = sorted(k for k in container.labels if rule.is_own_label(k))
    inner: dict[str, Any] = {}
    if container.user:
        inner["User"] = container.user
    if container.exposed_ports:
        inner["ExposedPorts"] = {p: {} for p in sorted(set(container.exposed_ports))}
    if env:
        inner["Env"] = env
    if container.entrypoint:
        inner["Entrypoint"] = list(container.entrypoint)
    if container.cmd:
        inner["Cmd"] = list(container.cmd)
    if container.volumes:
        inner["Volumes"] = {v: {} for v in sorted(set(container.volumes))}
    if container.working_dir:
        inner["WorkingDir"] = container.working_dir
    if labels:
        inner["Labels"] = labels
    if container.stop_signal and container.stop_signal != DEFAULT_STOP_SIGNAL:
        inner["StopSignal"] = container.stop_signal
    out = {k: v for k, v in image.items() if k in OCI_TOP_LEVEL}
    out["config"] = inner
    return SavedConfig(out, reported_names(dropped_env), tuple(dropped_labels))


def reported_names(names: Sequence[str]) -> tuple[str, ...]:
    """Names as a result and the status may show them: each once, control characters
    escaped (a name is the user's text, and admins read statuses in a terminal), at
    most :data:`MAX_NAME` characters each and :data:`MAX_REPORTED` names, then a count."""
    unique = list(dict.fromkeys(names))
    shown = [_printable(n) for n in unique[:MAX_REPORTED]]
    if len(unique) > MAX_REPORTED:
        shown.append(f"({len(unique) - MAX_REPORTED} more)")
    return tuple(shown)


def _printable(name: str) -> str:
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in name)
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 3] + "..."


def _completed(container: ContainerConfig, image: Mapping[str, Any]) -> ContainerConfig:
    """``container`` with the settings its inspect did not report taken from ``image``."""
    missing = set(SETTINGS) - container.reported
    if not missing or not isinstance(image, Mapping):
        return container
    own = parse_container_config({"Config": {k: image[k] for k in missing if k in image}})
    taken: dict[str, dict[str, Any]] = {
        "User": {"user": own.user}, "ExposedPorts": {"exposed_ports": own.exposed_ports},
        "Env": {"env": own.env}, "Entrypoint": {"entrypoint": own.entrypoint},
        "Cmd": {"cmd": own.cmd}, "Volumes": {"volumes": own.volumes},
        "WorkingDir": {"working_dir": own.working_dir}, "Labels": {"labels": own.labels},
        "StopSignal": {"stop_signal": own.stop_signal},
    }
    changes: dict[str, Any] = {}
    for key in missing:
        changes.update(taken[key])
    return replace(container, **changes, reported=frozenset(SETTINGS))


def image_env(image: Mapping[str, Any]) -> tuple[str, ...]:
    """``Env`` of an image config (``{"config": {"Env": [...]}}``) or of an engine's
    ``image inspect`` object (``{"Config": {"Env": [...]}}``)."""
    inner = image.get("config") or image.get("Config") or {}
    return _strings(inner.get("Env") if isinstance(inner, Mapping) else None)


def parse_container_config(obj: Mapping[str, Any]) -> ContainerConfig:
    """The container's settings from one ``container inspect`` object (podman or docker).

    Where the engines differ (podman 4.3 and docker 20.10, real captures): podman's
    ``Entrypoint`` is one string with the words joined by spaces, so the exact list
    is taken from ``Path`` + ``Args`` (the process: entrypoint + cmd); its
    ``StopSignal`` is a number, docker's a name; podman lists no ``ExposedPorts`` (its
    ports are the keys of ``HostConfig.PortBindings`` and ``NetworkSettings.Ports``)
    and no ``Volumes`` (anonymous volumes are ``Mounts`` of type volume named by 64 hex
    digits); docker has both in ``Config``.
    """
    config = obj.get("Config") or {}
    if not isinstance(config, Mapping):
        config = {}
    cmd = _strings(config.get("Cmd"))
    labels = config.get("Labels")
    reported = {k for k in SETTINGS if k in config}
    if any(isinstance(obj.get(k), Mapping) and obj[k].get(p) is not None
           for k, p in (("HostConfig", "PortBindings"), ("NetworkSettings", "Ports"))):
        reported.add("ExposedPorts")  # podman: its ports are there, not in Config
    return ContainerConfig(
        cmd=cmd,
        entrypoint=_entrypoint(obj, config.get("Entrypoint"), cmd),
        env=_strings(config.get("Env")),
        working_dir=str(config.get("WorkingDir") or ""),
        user=str(config.get("User") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        exposed_ports=_ports(obj, config),
        stop_signal=_signal_name(config.get("StopSignal")),
        volumes=_volumes(obj, config),
        reported=frozenset(reported),
    )


def _entrypoint(obj: Mapping[str, Any], raw: object, cmd: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(raw, list):  # docker
        return _strings(raw)
    if not raw:
        return ()
    process = (str(obj.get("Path") or ""), *_strings(obj.get("Args")))
    if process[0] and (not cmd or process[len(process) - len(cmd):] == cmd):
        return process[: len(process) - len(cmd)]
    return tuple(shlex.split(str(raw)))  # podman's joined string; exact unless quoted


def _ports(obj: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    host = obj.get("HostConfig") or {}
    network = obj.get("NetworkSettings") or {}
    for source in (config.get("ExposedPorts"), host.get("PortBindings"), network.get("Ports")):
        if isinstance(source, Mapping):
            found += [str(p) if "/" in str(p) else f"{p}/tcp" for p in source]
    return tuple(dict.fromkeys(found))


def _volumes(obj: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, ...]:
    found = [str(v) for v in config.get("Volumes") or {}] if isinstance(
        config.get("Volumes"), Mapping) else []
    for mount in obj.get("Mounts") or []:
        if (isinstance(mount, Mapping) and mount.get("Type") == "volume"
                and _ANONYMOUS_VOLUME.fullmatch(str(mount.get("Name") or ""))):
            found.append(str(mount.get("Destination") or ""))
    return tuple(dict.fromkeys(v for v in found if v))


def _signal_name(raw: object) -> str:
    if raw in (None, "", 0):
        return ""
    if isinstance(raw, int) or str(raw).isdigit():
        try:
            return signal.Signals(int(str(raw))).name
        except ValueError:
            return str(raw)
    name = str(raw).upper()
    return name if name.startswith("SIG") else f"SIG{name}"


def _strings(raw: object) -> tuple[str, ...]:
    return tuple(str(x) for x in raw) if isinstance(raw, list) else ()


def _env_name(entry: str) -> str:
    return entry.split("=", 1)[0]
