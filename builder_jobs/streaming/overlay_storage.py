"""Where a container's changes are stored, and whether the streaming commit can read them.

Checked before anything is paused: the engine must keep the container in the kernel's
overlay (its upper dir *is* the container's diff), and this process must see the mount
and read the upper dir. Otherwise :class:`StreamingUnavailable` says why and the save
falls back to the engine's commit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from builder_jobs.engines import ContainerEngine
from builder_jobs.streaming.overlay_layer import StreamingUnavailable
from core.runner import Runner

if TYPE_CHECKING:
    from builder_jobs.streaming.base_image import LocalImage
    from registry.oci import RegistryClient

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class OverlayContainer:
    """What a streaming commit needs from ``container inspect`` (podman's or docker's)."""

    name: str
    id: str
    image_id: str
    image_name: str
    upper_dir: str
    running: bool
    paused: bool
    created: str = ""  # when the container was created and last started: an incremental
    started: str = ""  # re-save trusts its record only for the same container life



@runtime_checkable
class ReadsOwnStorage(Protocol):
    """An engine whose container storage takes more than one ``inspect`` to find
    (containerd: container record, snapshot, task, content store); the streaming commit
    asks it through these instead of parsing ``inspect`` JSON."""

    def overlay_container(self, container: str, runner: Runner) -> OverlayContainer:
        """The container's upper dir, image name and state (raises StreamingUnavailable)."""
        ...

    def local_image(self, container: OverlayContainer, runner: Runner) -> LocalImage:
        """The image the container was created from."""
        ...

    def push_base(self, client: RegistryClient, image: LocalImage, reference: str,
                  runner: Runner) -> None:
        """Push that image once, as ``reference``, when the registry has no copy."""
        ...


# the kernel's overlay as each engine names its driver: podman "overlay", docker "overlay2"
OVERLAY_DRIVERS = ("overlay", "overlay2")


def parse_overlay_container(text: str) -> OverlayContainer:
    """``container inspect`` JSON (podman's or docker's) → :class:`OverlayContainer`.

    Raises :class:`StreamingUnavailable` when the storage driver is not overlay or the
    upper dir is unknown.
    """
    try:
        data = json.loads(text)
        obj = data[0] if isinstance(data, list) else data
        driver = obj.get("GraphDriver") or {}
        state = obj.get("State") or {}
        name, cid, image_id = str(obj["Name"]), str(obj["Id"]), str(obj["Image"])
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:
        raise StreamingUnavailable(f"container inspect printed unexpected JSON ({e})") from e
    if driver.get("Name") not in OVERLAY_DRIVERS:
        raise StreamingUnavailable(f"storage driver is {driver.get('Name')!r}, not overlay")
    upper = str((driver.get("Data") or {}).get("UpperDir") or "")
    if not upper:
        raise StreamingUnavailable("the overlay driver reports no UpperDir for the container")
    return OverlayContainer(
        name=name.lstrip("/"),
        id=cid,
        image_id=image_id.removeprefix("sha256:"),
        # podman: ImageName; docker: the name the container was created from, Config.Image
        image_name=str(obj.get("ImageName") or (obj.get("Config") or {}).get("Image") or ""),
        upper_dir=upper,
        running=bool(state.get("Running")),
        paused=bool(state.get("Paused")) or state.get("Status") == "paused",
        created=str(obj.get("Created") or ""),
        started=str(state.get("StartedAt") or ""),
    )


def check_overlay_mount(upper_dir: str, mountinfo: str) -> None:
    """Refuse mounts whose upper dir does not hold the whole diff in plain form.

    ``mountinfo`` is ``/proc/self/mountinfo``. The container's mount must be the kernel's
    overlay (not fuse-overlayfs) without ``metacopy=on`` (data left in lower layers),
    ``redirect_dir=on`` (renamed directories point into lower layers) or ``userxattr``
    (rootless: whiteouts in ``user.overlay.*``).
    """
    wanted = "upperdir=" + _mangle(upper_dir)
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = tail.split()
        if not sep or len(fields) < 3:
            continue
        options = fields[2].split(",")
        if wanted not in options:
            continue
        if fields[0] != "overlay":
            raise StreamingUnavailable(f"the container is mounted by {fields[0]}, not overlay")
        for option in ("metacopy=on", "redirect_dir=on", "userxattr"):
            if option in options:
                raise StreamingUnavailable(f"the overlay mount has {option}")
        return
    raise StreamingUnavailable(
        "the container's overlay mount is not visible here (another mount namespace?)"
    )


def readable_overlay(container: str, engine: ContainerEngine, runner: Runner) -> OverlayContainer:
    """The container's overlay storage, if this process can read its upper dir whole;
    raises :class:`StreamingUnavailable` (nothing paused) when it cannot."""
    if not engine.streams_overlay:
        raise StreamingUnavailable(f"implemented for podman, docker and containerd, not "
                                   f"{engine.kind}")
    if os.geteuid() != 0:
        raise StreamingUnavailable("needs root to read the engine's storage (rootless?)")
    if isinstance(engine, ReadsOwnStorage):
        info = engine.overlay_container(container, runner)
    else:
        info = parse_overlay_container(runner(engine.inspect_container(container)).stdout)
    if not os.access(info.upper_dir, os.R_OK | os.X_OK):
        raise StreamingUnavailable(f"cannot read the upper dir {info.upper_dir}")
    if info.running or info.paused:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            check_overlay_mount(info.upper_dir, f.read())
    return info


def _mangle(path: str) -> str:
    # The kernel escapes these in mountinfo as octal (fs/proc_namespace.c, mangle()).
    for char in ("\\", " ", "\t", "\n"):
        path = path.replace(char, f"\\{ord(char):03o}")
    return path
