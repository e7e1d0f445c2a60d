"""Where users' running session containers are: one locator per kind of site.

A locator answers "which containers of user U run, and on which node?" so the portal can
offer a Save button for each. It is chosen by name (``[api].session_locator``):

- ``none``: no discovery; users name the container and node (or job) themselves.
- ``local-podman``: the one-machine cluster of ``scripts/cluster.sh``: every slurmd runs
  in its own mount namespace, so ``nsenter -t <slurmd pid> -m podman ps --filter
  label=<owner_label>=<user>`` lists the containers "on" that node.

On a real site a locator would ask the Kubernetes API (pods labelled with the owner,
``spec.nodeName``) or the engine on each node through a small agent; the scheduler's
own list of running jobs is added by the route, not by the locator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError, ImgsaveError
from core.runner import CommandResult, run_command
from site_configs.schema import EngineSection, SiteConfig

log = logging.getLogger(__name__)

LOCAL_PID_DIR = Path("/run/imgsave-cluster")  # scripts/cluster.sh: slurmd-<node>.pid
LOCAL_SESSIONS = ["sudo", "-n", "/usr/local/sbin/imgsave-local-sessions"]
LIST_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class RunningSession:
    """A running container of a user that can be saved."""

    container: str
    node: str
    owner: str
    image: str
    state: str
    started: str  # ISO 8601, UTC, or ""

    def to_dict(self) -> dict[str, object]:
        return {
            "container": self.container,
            "node": self.node,
            "owner": self.owner,
            "image": self.image,
            "state": self.state,
            "started": self.started,
        }


class SessionLocator(Protocol):
    """Finds running session containers; ``user=None`` means every user's."""

    def sessions(self, user: str | None) -> list[RunningSession]:
        """The running containers of ``user`` (all users' with None)."""
        ...


class NoLocator:
    """No discovery: the user names container and node themselves."""

    def sessions(self, user: str | None) -> list[RunningSession]:
        """Always empty."""
        return []


Run = Callable[..., CommandResult]


class LocalPodmanLocator:
    """The local cluster: ``podman ps`` inside each slurmd's mount namespace."""

    def __init__(
        self, engine: EngineSection, pid_dir: Path = LOCAL_PID_DIR, run: Run = run_command
    ) -> None:
        self.engine = engine
        self.pid_dir = pid_dir
        self.run = run

    def nodes(self) -> dict[str, str]:
        """Node name → pid of its slurmd, from the cluster's pid files."""
        found: dict[str, str] = {}
        for pid_file in sorted(self.pid_dir.glob("slurmd-*.pid")):
            try:
                pid = pid_file.read_text().strip()
            except OSError:
                continue  # the node stopped between the listing and the read
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                found[pid_file.stem.removeprefix("slurmd-")] = pid
        return found

    def sessions(self, user: str | None) -> list[RunningSession]:
        """Every node is asked at once; a node that fails is logged and skipped."""
        nodes = self.nodes()
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            per_node = pool.map(lambda node: self._on_node(node, nodes[node], user), nodes)
            return [s for found in per_node for s in found]

    def _on_node(self, node: str, pid: str, user: str | None) -> list[RunningSession]:
        label = self.engine.owner_label + (f"={user}" if user is not None else "")
        argv = ["nsenter", "-t", pid, "-m", "--", *self.engine.command,
                "ps", "--filter", f"label={label}", "--format", "json"]
        if os.geteuid() != 0:
            # the portal's service account: the cluster's read-only listing, through its
            # own sudoers rule (never podman itself); filtered by user below
            argv = [*LOCAL_SESSIONS, node]
        try:
            result = self.run(argv, timeout=LIST_TIMEOUT_SECONDS)
        except ImgsaveError as e:
            log.warning("cannot list containers on %s: %s", node, e.message)
            return []
        found = parse_podman_ps(result.stdout, node, self.engine.owner_label)
        return [s for s in found if user is None or s.owner == user]


def parse_podman_ps(output: str, node: str, owner_label: str) -> list[RunningSession]:
    """Running, owned containers from ``podman ps --format json`` output."""
    try:
        entries = json.loads(output or "[]")
    except ValueError:
        log.warning("podman ps on %s printed no JSON: %.200s", node, output)
        return []
    found = []
    for entry in entries if isinstance(entries, list) else []:
        session = _session(entry, node, owner_label)
        if session is not None:
            found.append(session)
    return found


def _session(entry: Any, node: str, owner_label: str) -> RunningSession | None:
    if not isinstance(entry, dict):
        return None
    labels = entry.get("Labels") or {}
    names = entry.get("Names") or []
    owner = labels.get(owner_label, "") if isinstance(labels, dict) else ""
    if not owner or not names or entry.get("State") != "running":
        return None
    started = entry.get("StartedAt")
    return RunningSession(
        container=str(names[0]),
        node=node,
        owner=str(owner),
        image=str(entry.get("Image", "")),
        state="running",
        started=(datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
                 if isinstance(started, int) and started > 0 else ""),
    )


LOCATORS: dict[str, Callable[[SiteConfig], SessionLocator]] = {
    "none": lambda config: NoLocator(),
    "local-podman": lambda config: LocalPodmanLocator(config.engine),
}


def make_locator(config: SiteConfig) -> SessionLocator:
    """The locator named by ``[api].session_locator``."""
    name = config.api.session_locator
    try:
        factory = LOCATORS[name]
    except KeyError as e:
        raise ConfigError(
            f"[api] session_locator {name!r} is unknown; use one of {', '.join(LOCATORS)}"
        ) from e
    return factory(config)
