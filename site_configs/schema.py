"""The site configuration: one TOML file per centre, validated once into a SiteConfig.

Unknown keys and bad values are errors naming the key and the file. The keys are
documented in docs/site-config.md; keep the two in step.
"""

from __future__ import annotations

import enum
import fnmatch
import ipaddress
import os
import pwd
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError

CONFIG_ENV = "IMGSAVE_SITE_CONFIG"
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "local.toml"


class EngineKind(enum.StrEnum):
    PODMAN = "podman"
    DOCKER = "docker"
    NERDCTL = "nerdctl"
    CONTAINERD = "containerd"  # driven with ctr (builder_jobs/engine_containerd.py)


class RegistryAuth(enum.StrEnum):
    ANONYMOUS = "anonymous"
    BASIC = "basic"
    BEARER = "bearer"


class ImageFormat(enum.StrEnum):
    OCI = "oci"
    SIF = "sif"


class Compression(enum.StrEnum):
    ZSTD = "zstd"
    GZIP = "gzip"


class CommitMethod(enum.StrEnum):
    AUTO = "auto"  # streaming where the storage allows it, else the engine's commit
    STREAMING = "streaming"  # read the overlay upper dir; fail if that is impossible
    ENGINE = "engine"  # podman/nerdctl/docker commit + push


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]


def _lower_case_name(value: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", value):
        raise ValueError(f"{value!r} is not a lower-case name (e.g. 'slurm')")
    return value


# A backend's name: scheduler.kind and registry.kind. The schema knows no backend; the
# table that owns the kinds (scheduler_glue.BACKENDS, registry.kinds.KINDS) refuses an
# unknown one, listing the valid names, when the config is used. So a new backend is
# its own folder or module plus one table entry, and nothing here changes.
KindName = Annotated[str, AfterValidator(_lower_case_name)]


class SchedulerSection(_Section):
    kind: KindName  # a name in scheduler_glue.BACKENDS
    partition: NonEmpty = Field(description="Slurm partition or PBS queue for save jobs")
    qos: str = ""
    account: str = ""
    time_limit_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 30
    command_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    # Slurm only: add the submitting user's share of the node? See docs/install-slurm.md.
    extra_submit_args: list[str] = Field(default_factory=list)
    # PBS only: is job history on (qstat -x)? Where are the server's accounting logs
    # (the fallback for finished jobs when history is off or purged)?
    pbs_job_history: bool = True
    pbs_accounting_log_dir: str = ""
    # PBS only: the server's time zone (IANA name), in which tracejob prints its times;
    # "" = this machine's
    pbs_server_timezone: str = ""

    @field_validator("pbs_server_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"{value!r} is not a time zone name (e.g. UTC)") from e
        return value


class EngineRuntime(_Section):
    """One engine users' sessions run under: what the node entry runs, on which nodes."""

    kind: EngineKind
    # argv prefix, e.g. ["sudo", "-n", "/usr/bin/nerdctl"]; never a shell string
    command: list[NonEmpty] = Field(min_length=1)
    namespace: str = Field(
        "", description="containerd namespace: nerdctl --namespace, ctr -n (default k8s.io)"
    )
    # containerd only: its root directory, whose content store holds the base image's
    # blobs ("" = /var/lib/containerd)
    root: str = ""
    # the nodes whose sessions run under this engine: shell-style patterns ("gpu*",
    # "n[1-4]"); empty = every node
    nodes: list[NonEmpty] = Field(default_factory=list)

    def runs_on(self, node: str) -> bool:
        """Does this engine run sessions on ``node``?"""
        return not self.nodes or any(fnmatch.fnmatchcase(node, p) for p in self.nodes)


class EngineSection(EngineRuntime):
    """The engine (``kind``, ``command``, ...) and how saves use every engine."""

    owner_label: NonEmpty = "imgsave.owner"
    commit_timeout_seconds: Annotated[float, Field(gt=0)] = 1800.0
    tls_verify: bool = True
    commit_method: CommitMethod = CommitMethod.AUTO
    layer_compression: Compression = Compression.ZSTD  # the streaming commit's new layer
    # more engines the node entry looks in, in order after this one, for the container a
    # save names (a node running sessions under podman and docker, ...); the first engine
    # holding a container of that name labelled as the user's saves it
    others: list[EngineRuntime] = Field(default_factory=list)

    def runtimes_on(self, node: str) -> list[EngineRuntime]:
        """The engines that may hold a session on ``node``, in the order they are asked."""
        return [r for r in (self, *self.others) if r.runs_on(node)]
    # a re-save adds one layer of what changed (docs/incremental-save.md) until the image
    # has this many over its base; the next save is one layer again. 1: always full.
    max_layers: Annotated[int, Field(ge=1, le=100)] = 16


class RegistrySection(_Section):
    kind: KindName = "oci"  # a name in registry.kinds.KINDS
    url: NonEmpty = Field(description="https://harbor.example.org or http://127.0.0.1:5000")
    auth: RegistryAuth = RegistryAuth.ANONYMOUS
    credentials_file: str = Field("", description="docker config.json style, mode 0600")
    credential_helper: str = Field("", description="docker-credential-<name> helper")
    tls_verify: bool = True
    ca_bundle: str = ""
    # repository prefix per user; {user} and {group} are substituted
    namespace: NonEmpty = "{user}"
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    # Save jobs retry registry requests that are safe to repeat (docs/site-config.md):
    # tries in all per request, and the most time one request waits between them.
    retry_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    retry_wait_seconds: Annotated[float, Field(ge=0, le=600)] = 10.0

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("namespace")
    @classmethod
    def _namespace_has_user(cls, value: str) -> str:
        if "{user}" not in value and "{group}" not in value:
            raise ValueError("must contain {user} or {group}")
        return value

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]


class SifSection(_Section):
    compression: Compression = Compression.ZSTD
    processors: Annotated[int, Field(ge=0)] = 0  # 0 = all cores
    # per-user directory on shared storage; must contain {user} or {home}; empty = no
    # file copy. Written by a process with the user's own uid and groups.
    output_dir: str = ""
    push_oras: bool = True

    @field_validator("output_dir")
    @classmethod
    def _output_dir_per_user(cls, value: str) -> str:
        if value and "{user}" not in value and "{home}" not in value:
            raise ValueError(
                "must contain {user} or {home} so each user writes only their own directory"
            )
        return value


# env var names a saved image never keeps (fnmatch patterns, any case): docs/saved-image.md
DEFAULT_SECRET_ENV_PATTERNS = (
    "*TOKEN*", "*PASSWORD*", "*PASSWD*", "*SECRET*", "*_KEY", "*API_KEY*", "*APIKEY*",
    "*CREDENTIAL*", "*PRIVATE*", "AWS_*",
)


def _env_pattern(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", value):
        raise ValueError(f"{value!r} is not an env var name pattern (letters, digits, _ * ? [ ])")
    return value


class SaveSection(_Section):
    secret_env_patterns: list[Annotated[str, AfterValidator(_env_pattern)]] = Field(
        default_factory=lambda: list(DEFAULT_SECRET_ENV_PATTERNS),
        description="env vars whose names match are left out of every saved image",
    )


class NodeSection(_Section):
    """The one privileged entry on the nodes (docs/security.md)."""

    # argv the save job (running as its owner) uses to enter it; the sudoers rule in
    # site_configs/deploy/sudoers-imgsave allows exactly this program, nothing else.
    privileged_command: list[NonEmpty] = Field(
        default_factory=lambda: ["sudo", "-n", "/usr/local/sbin/imgsave-node-save"], min_length=1
    )
    # root-owned directory where the entry records each request it ran (once only)
    state_dir: NonEmpty = "/var/lib/imgsave-node"


class LimitsSection(_Section):
    max_image_bytes: Annotated[int, Field(gt=0)] = 50 * 1024**3
    max_saves_in_flight_per_user: Annotated[int, Field(ge=1)] = 4


UNIX_SOCKET_PROXY = "unix"  # in trusted_proxies: the connection came over serve's socket


class ApiSection(_Section):
    """The REST API and portal (``imgsave serve``); see docs/api.md."""

    # Addresses/networks of reverse proxies whose Remote-User header is trusted, or
    # "unix": whoever reaches `imgsave serve --unix-socket` (the socket's directory lets
    # only the proxy's group in; docs/install-portal.md).
    trusted_proxies: list[NonEmpty] = Field(default_factory=list)
    # Portal cookies only over HTTPS (set it behind a TLS proxy, as every site should).
    secure_cookies: bool = False
    # Status polls about live saves share one scheduler query per this many seconds per
    # server (0: every poll asks the scheduler).
    status_interval_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    admins: list[NonEmpty] = Field(default_factory=list)
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024**2)] = 65536
    token_ttl_days: Annotated[int, Field(ge=1, le=3650)] = 90
    # How GET /sessions finds users' running containers: "none" or "local-podman".
    session_locator: NonEmpty = "none"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == UNIX_SOCKET_PROXY:
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as e:
                raise ValueError(f"{entry!r} is not an IP address or network") from e
        return value


class SiteConfig(_Section):
    name: NonEmpty
    # Each user's own spool (specs, events, results), on storage the nodes share; {user}
    # and {home} are substituted with the account that submits (the user in CLI mode, the
    # service account in portal mode). Never a shared world-writable directory: a spool
    # that is not the submitting account's own, mode 0700, is refused at submit.
    spool_dir: NonEmpty = Field("{home}/.imgsave/spool", description="per-user spool")
    # The Unix account `imgsave serve` runs as (portal mode); its jobs carry the
    # requesting user in their metadata. Never root.
    service_account: NonEmpty = "imgsave"
    node_python: str = Field("", description="python on the nodes; empty = the submitter's")
    formats: list[ImageFormat] = Field(default_factory=lambda: [ImageFormat.OCI])
    categories: list[NonEmpty] = Field(default_factory=lambda: ["cpu", "gpu"])
    scheduler: SchedulerSection
    engine: EngineSection
    registry: RegistrySection
    sif: SifSection = Field(default_factory=SifSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    api: ApiSection = Field(default_factory=ApiSection)
    node: NodeSection = Field(default_factory=NodeSection)
    save: SaveSection = Field(default_factory=SaveSection)
    database_url: str = ""
    source_path: str = Field("", exclude=True)

    def spool_for(self, account: str) -> Path:
        """The spool of ``account`` (the submitting Unix user): ``spool_dir`` expanded."""
        return Path(expand_user_path(self.spool_dir, account))

    @field_validator("service_account")
    @classmethod
    def _service_account_not_root(cls, value: str) -> str:
        if value == "root":
            raise ValueError("the portal's service account must not be root")
        return value


def expand_user_path(rule: str, user: str) -> str:
    """``rule`` with ``{user}`` and ``{home}`` (from the passwd database) substituted.

    Raises :class:`ConfigError` for an account unknown here or a rule that is not an
    absolute path once expanded.
    """
    if not user or "/" in user or user in (".", ".."):
        raise ConfigError(f"{user!r} is not a user name")
    home = ""
    if "{home}" in rule:
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError as e:
            raise ConfigError(f"user {user} is unknown on this machine") from e
    path = rule.replace("{user}", user).replace("{home}", home)
    if not os.path.isabs(path):
        raise ConfigError(f"{rule!r} expands to {path!r}, which is not an absolute path")
    return path


def load_site_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and validate one site config file; errors name the key and the file."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as e:
        raise ConfigError(f"site config {file} does not exist") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"site config {file} cannot be read: {e}") from e
    raw["source_path"] = str(file)
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {_reason(err)}" for err in e.errors()
        )
        raise ConfigError(f"site config {file}: {problems}") from e


def _reason(err: object) -> str:
    assert isinstance(err, dict)
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    return str(err.get("msg", "invalid"))


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


@lru_cache(maxsize=8)
def _cached(path: str) -> SiteConfig:
    return load_site_config(path)


def get_site_config(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    """The site config, loaded once per path (``$IMGSAVE_SITE_CONFIG`` or local.toml)."""
    return _cached(str(Path(path) if path else config_path()))


def current_account() -> str:
    """The Unix account this process acts as (its effective uid)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
