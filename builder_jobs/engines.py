"""Container engines on the node: argv builders and ``inspect`` parsers, nothing that runs.

:class:`ContainerEngine` is what a save needs from an engine: locate the container
(inspect and its parser), pause and resume it, commit it (or say that its storage can
be streamed, :attr:`ContainerEngine.streams_overlay`), export its filesystem (SIF),
push the image and remove local names. Any engine that gives those fits as one more
class and one entry in :mod:`builder_jobs.engine_choice` (containerd's ``ctr`` is
:mod:`builder_jobs.engine_containerd`; enroot, ...).

The engines with docker's command line (podman, docker, nerdctl) share :class:`Engine`;
one small subclass each fills in the few places where their command lines differ. Every
method returns an argv list for :func:`core.runner.run_command`, and every
parser is a pure function on the engine's JSON output, so both are tested without the
engine installed.

Registry credentials and TLS:

- podman takes ``--authfile FILE`` (a docker ``config.json``) and ``--tls-verify=false``
  per command; we pass the site's ``registry.credentials_file`` and turn TLS
  verification off only when ``engine.tls_verify = false``.
- docker has no per-command flags for either: the daemon reads ``insecure-registries``
  from ``/etc/docker/daemon.json`` and the client reads ``~/.docker/config.json`` (or
  ``DOCKER_CONFIG``) of the user the job runs as. Sites configure those.
- nerdctl reads ``~/.docker/config.json`` like docker; its documented global flag
  ``--insecure-registry`` (skip TLS checks, allow plain HTTP) is added when
  ``engine.tls_verify = false``, and ``--namespace NS`` comes before the subcommand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from builder_jobs.image_config import ContainerConfig, parse_container_config
from core.errors import ConfigError, ImgsaveError
from site_configs.schema import EngineKind

TEMP_REPOSITORY = "localhost/imgsave-tmp"


class InspectParseError(ImgsaveError):
    """The engine's ``inspect`` output is not the JSON we expect."""


@dataclass(frozen=True)
class ContainerInfo:
    """What the node needs to know about one container."""

    name: str
    id: str
    image: str  # the image name the container was started from ("" if unknown)
    image_digest: str | None  # manifest digest of that image, when the engine knows it
    labels: Mapping[str, str] = field(default_factory=dict)
    running: bool = False
    image_id: str = ""  # the engine's local image id (config digest), when known
    config: ContainerConfig = field(default_factory=ContainerConfig)  # what a save keeps


def temporary_image(request_id: str) -> str:
    """The local tag a save commits to: unique per request, never pushed by that name."""
    if not request_id.isalnum() or not request_id.isascii():
        raise ConfigError(f"bad request id {request_id!r}")
    return f"{TEMP_REPOSITORY}:{request_id}"


class ContainerEngine(Protocol):
    """What a save needs from a container engine (every command an argv list)."""

    kind: ClassVar[EngineKind]
    # the streaming commit can read this engine's storage (kernel overlay, podman's
    # inspect format: builder_jobs.streaming.overlay_storage); else the engine commits
    streams_overlay: ClassVar[bool]
    # in the error of ``inspect_container`` of a container this engine does not have
    not_found_text: ClassVar[str]

    @property
    def base(self) -> list[str]:
        """The argv prefix every command of this engine starts with."""
        ...

    def inspect_container(self, container: str) -> list[str]:
        """Locate: the container's details, or an error naming no such container."""
        ...

    def parse_container(self, text: str) -> ContainerInfo:
        """Locate: :meth:`inspect_container`'s output as :class:`ContainerInfo`."""
        ...

    def inspect_image(self, image: str) -> list[str]:
        """A local image's details (size, digests), for :func:`parse_image_size` and
        :func:`parse_repo_digest`."""
        ...

    def pause(self, container: str) -> list[str]:
        """Freeze the container's processes (for a consistent read of its files)."""
        ...

    def resume(self, container: str) -> list[str]:
        """Undo :meth:`pause`."""
        ...

    def commit(self, container: str, image: str, *, clear_labels: Sequence[str] = ()
               ) -> list[str]:
        """Commit the container to a local image, paused meanwhile."""
        ...

    def export(self, container: str, output: str) -> list[str]:
        """The container's whole filesystem as a tar file (for SIF)."""
        ...

    def push(self, local_image: str, target: str, *, authfile: str = "") -> list[list[str]]:
        """The commands that push a local image to the registry as ``target``, in order."""
        ...

    def local_names_after_push(self, local_image: str, target: str) -> list[str]:
        """Every local name :meth:`push` leaves behind, for :meth:`rmi` afterwards."""
        ...

    def rmi(self, images: Sequence[str]) -> list[str]:
        """Remove these local image names."""
        ...

    def list_containers(self) -> list[str]:
        """Print the full id of every container on the node, running or not, one a line."""
        ...


@dataclass(frozen=True)
class Engine:
    """Argv builders for an engine with docker's command line; subclasses change only
    what differs. Implements :class:`ContainerEngine`.

    ``command`` is the site's argv prefix (e.g. ``("sudo", "-n", "/usr/bin/podman")``).
    """

    command: tuple[str, ...]
    namespace: str = ""
    tls_verify: bool = True
    kind: ClassVar[EngineKind]
    # Engines whose ``commit --change`` accepts LABEL (nerdctl: only CMD, ENTRYPOINT).
    change_label_supported: ClassVar[bool] = True
    streams_overlay: ClassVar[bool] = False
    not_found_text: ClassVar[str] = "no such container"

    @property
    def base(self) -> list[str]:
        """The argv prefix, with any global flags that go before the subcommand."""
        return list(self.command)

    def inspect_container(self, container: str) -> list[str]:
        """``container inspect NAME``: JSON array with one object, or an error if absent."""
        return [*self.base, "container", "inspect", container]

    def parse_container(self, text: str) -> ContainerInfo:
        """``container inspect`` JSON as :class:`ContainerInfo`."""
        return parse_container_inspect(text, self.kind)

    @staticmethod
    def image_fields(obj: Mapping[str, Any]) -> tuple[str, str, str | None]:
        """From ``container inspect``: the image's name, local id and manifest digest.
        nerdctl's (the default) has only the image *name* in ``Image``."""
        return str(obj.get("Image") or ""), "", None

    def inspect_image(self, image: str) -> list[str]:
        """``image inspect IMAGE``: JSON array with one object (RepoDigests, RootFS...)."""
        return [*self.base, "image", "inspect", image]

    def pause(self, container: str) -> list[str]:
        return [*self.base, "pause", container]

    def resume(self, container: str) -> list[str]:
        return [*self.base, "unpause", container]

    def commit(self, container: str, image: str, *, clear_labels: Sequence[str] = ()) -> list[str]:
        """Commit ``container`` to the local ``image``, pausing it meanwhile.

        ``clear_labels`` are set to "" in the new image where the engine allows a LABEL
        change, so that e.g. the session's owner label is not inherited by containers
        other users start from the saved image.
        """
        argv = [*self.base, "commit", "--pause=true", *self._commit_format()]
        if self.change_label_supported:
            for label in clear_labels:
                argv += ["--change", f'LABEL {label}=""']
        return [*argv, container, image]

    def _commit_format(self) -> list[str]:
        return []

    def push(self, local_image: str, target: str, *, authfile: str = "") -> list[list[str]]:
        """The commands that push ``local_image`` to the registry as ``target``, in order.

        docker and nerdctl push an image by its own name, so they first tag it.
        """
        return [
            [*self.base, "tag", local_image, target],
            [*self.base, "push", target],
        ]

    def local_names_after_push(self, local_image: str, target: str) -> list[str]:
        """Every local name :meth:`push` leaves behind, for :meth:`rmi` afterwards."""
        return [local_image, target]

    def rmi(self, images: Sequence[str]) -> list[str]:
        """Remove these local image names (untag; the data goes when no tag is left)."""
        return [*self.base, "rmi", *images]

    def list_containers(self) -> list[str]:
        return [*self.base, "ps", "-a", "-q", "--no-trunc"]

    def export(self, container: str, output: str) -> list[str]:
        """Write the container's whole filesystem as a tar file (for SIF)."""
        return [*self.base, "export", "--output", output, container]


@dataclass(frozen=True)
class Podman(Engine):
    """podman: pushes a local image straight to any destination name."""

    kind: ClassVar[EngineKind] = EngineKind.PODMAN
    streams_overlay: ClassVar[bool] = True

    @staticmethod
    def image_fields(obj: Mapping[str, Any]) -> tuple[str, str, str | None]:
        # podman: ``ImageName`` and ``ImageDigest``, and a bare image id in ``Image``
        digest = str(obj.get("ImageDigest") or "") or None
        return str(obj.get("ImageName") or ""), str(obj.get("Image") or ""), digest

    def _commit_format(self) -> list[str]:
        # OCI, so the pushed manifest can carry annotations (podman's default, made explicit)
        return ["--format", "oci"]

    def push(self, local_image: str, target: str, *, authfile: str = "") -> list[list[str]]:
        argv = [*self.base, "push", "--format", "oci"]
        if authfile:
            argv += ["--authfile", authfile]
        if not self.tls_verify:
            argv.append("--tls-verify=false")
        return [[*argv, local_image, f"docker://{target}"]]

    def local_names_after_push(self, local_image: str, target: str) -> list[str]:
        return [local_image]


@dataclass(frozen=True)
class Docker(Engine):
    """docker: daemon-side TLS and client-side credentials (see the module docstring)."""

    kind: ClassVar[EngineKind] = EngineKind.DOCKER
    streams_overlay: ClassVar[bool] = True  # overlay2: the kernel's overlay, its UpperDir

    @staticmethod
    def image_fields(obj: Mapping[str, Any]) -> tuple[str, str, str | None]:
        # docker: ``sha256:<id>`` in ``Image`` and the name in ``Config.Image``
        image = str((obj.get("Config") or {}).get("Image") or "")
        return image, str(obj.get("Image") or "").removeprefix("sha256:"), None


@dataclass(frozen=True)
class Nerdctl(Engine):
    """nerdctl (containerd), per its command reference (docs/command-reference.md).

    Not installable on the development machines: its argv is tested against the
    documented CLI only. ``nerdctl export`` is missing from older releases (their
    reference lists ``docker export`` as unimplemented), so SIF needs a recent nerdctl.
    """

    kind: ClassVar[EngineKind] = EngineKind.NERDCTL
    change_label_supported: ClassVar[bool] = False

    @property
    def base(self) -> list[str]:
        argv = list(self.command)
        if self.namespace:
            argv += ["--namespace", self.namespace]
        if not self.tls_verify:
            argv.append("--insecure-registry")
        return argv


# the engines with docker's command line; every engine, containerd too, is chosen by
# builder_jobs.engine_choice
ENGINES: dict[EngineKind, type[Engine]] = {
    EngineKind.PODMAN: Podman,
    EngineKind.DOCKER: Docker,
    EngineKind.NERDCTL: Nerdctl,
}


def parse_container_inspect(text: str, kind: EngineKind) -> ContainerInfo:
    """Parse ``container inspect`` JSON of podman, docker or nerdctl (dockercompat).

    Where they differ: podman has ``ImageName`` and ``ImageDigest`` and a bare image id
    in ``Image``; docker has ``sha256:<id>`` in ``Image`` and the name in
    ``Config.Image``; nerdctl has the image *name* in ``Image`` (each engine's
    :meth:`Engine.image_fields`). docker's ``Name`` starts with "/". The container's
    settings a saved image keeps: :func:`builder_jobs.image_config.parse_container_config`.
    """
    obj = _single_object(text, "container inspect")
    labels = _labels((obj.get("Config") or {}).get("Labels"))
    state = obj.get("State") or {}
    running = bool(state.get("Running")) if isinstance(state, dict) else False
    image, image_id, digest = ENGINES[EngineKind(kind)].image_fields(obj)
    try:
        return ContainerInfo(
            name=str(obj["Name"]).lstrip("/"),
            id=str(obj["Id"]),
            image=image,
            image_digest=digest,
            labels=labels,
            running=running,
            image_id=image_id,
            config=parse_container_config(obj),
        )
    except KeyError as e:
        raise InspectParseError(f"container inspect output has no {e.args[0]!r} field") from e


def parse_repo_digest(text: str) -> str | None:
    """The manifest digest from ``image inspect`` ``RepoDigests`` ("repo@sha256:..."), if any."""
    obj = _single_object(text, "image inspect")
    for entry in obj.get("RepoDigests") or []:
        if isinstance(entry, str) and "@" in entry:
            return entry.rsplit("@", 1)[1]
    digest = obj.get("Digest")  # podman's own field
    return str(digest) if digest else None


def parse_image_size(text: str) -> int:
    """The image's unpacked size in bytes (``Size`` of ``image inspect``), 0 if absent."""
    obj = _single_object(text, "image inspect")
    try:
        return int(obj.get("Size") or 0)
    except (TypeError, ValueError) as e:
        raise InspectParseError(f"image inspect has a non-numeric Size: {e}") from e


def _single_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InspectParseError(f"{what} did not print JSON: {e}") from e
    if isinstance(data, list):
        if len(data) != 1:
            raise InspectParseError(f"{what} printed {len(data)} objects, expected 1")
        data = data[0]
    if not isinstance(data, dict):
        raise InspectParseError(f"{what} printed {type(data).__name__}, expected an object")
    return data


def _labels(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items()}
