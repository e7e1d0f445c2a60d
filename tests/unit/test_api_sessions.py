"""GET /api/v1/sessions and the session locators."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.service.sessions import (
    LocalPodmanLocator,
    NoLocator,
    RunningSession,
    make_locator,
    parse_podman_ps,
)
from api.web.app import create_app
from core.errors import CommandFailed, ConfigError
from core.runner import CommandResult
from scheduler_glue.base import JobRecord
from scheduler_glue.states import JobState
from tests.support.api_support import MemorySite, any_account, bearer, make_token, site_config

FIXTURES = Path(__file__).resolve().parents[1] / "captures" / "api"


def test_parse_real_podman_ps_output() -> None:
    # Captured from `podman ps --filter label=imgsave.owner=alice --format json` (4.3.1).
    text = (FIXTURES / "podman_ps_owner_alice.json").read_text()
    (session,) = parse_podman_ps(text, "n1", "imgsave.owner")
    assert session.container == "jupyter-alice" and session.owner == "alice"
    assert session.node == "n1" and session.image == "localhost/imgsave-base:latest"
    assert session.started.endswith("+00:00")
    assert parse_podman_ps((FIXTURES / "podman_ps_none.json").read_text(), "n1", "x") == []


@pytest.mark.parametrize("output", ["", "not json", "{}", "[1, null]",
                                    '[{"Names": [], "Labels": {"imgsave.owner": "a"}}]',
                                    '[{"Names": ["c"], "Labels": null, "State": "running"}]'])
def test_parse_odd_output_yields_nothing(output: str) -> None:
    assert parse_podman_ps(output, "n1", "imgsave.owner") == []


class ScriptedRun:
    """Answers ``podman ps`` per pid, recording each argv (the runner interface)."""

    def __init__(self, outputs: dict[str, str | Exception]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], *, timeout: float = 60) -> CommandResult:
        self.calls.append(list(argv))
        out = self.outputs[argv[2]]
        if isinstance(out, Exception):
            raise out
        return CommandResult(tuple(argv), 0, out, "")


def _pid_dir(tmp_path: Path, nodes: dict[str, str]) -> Path:
    for node, pid in nodes.items():
        (tmp_path / f"slurmd-{node}.pid").write_text(pid + "\n")
    return tmp_path


def test_local_locator_asks_each_node_in_its_namespace(tmp_path: Path) -> None:
    pid = str(os.getpid())
    fixture = (FIXTURES / "podman_ps_owner_alice.json").read_text()
    run = ScriptedRun({pid: fixture})
    config = site_config(tmp_path)
    pid_dir = _pid_dir(tmp_path, {"n1": pid, "gone": "999999999"})
    locator = LocalPodmanLocator(config.engine, pid_dir, run=run)
    assert locator.nodes() == {"n1": pid}  # a dead slurmd's pid file is skipped
    (session,) = locator.sessions("alice")
    assert session.node == "n1"
    (argv,) = run.calls
    assert argv[:5] == ["nsenter", "-t", pid, "-m", "--"]
    assert argv[5:] == [*config.engine.command, "ps", "--filter",
                        "label=imgsave.owner=alice", "--format", "json"]
    locator.sessions(None)
    assert run.calls[-1][-3] == "label=imgsave.owner"


def test_a_failing_node_is_skipped(tmp_path: Path) -> None:
    pid = str(os.getpid())
    run = ScriptedRun({pid: CommandFailed(["podman"], 125, "", "storage is locked")})
    locator = LocalPodmanLocator(site_config(tmp_path).engine, _pid_dir(tmp_path, {"n1": pid}),
                                 run=run)
    assert locator.sessions("alice") == []


def test_locators_are_chosen_by_name(tmp_path: Path) -> None:
    assert isinstance(make_locator(site_config(tmp_path)), NoLocator)
    assert isinstance(make_locator(site_config(tmp_path, session_locator="local-podman")),
                      LocalPodmanLocator)
    with pytest.raises(ConfigError, match="none, local-podman"):
        make_locator(site_config(tmp_path, session_locator="kubernetes"))


class FixedLocator:
    """Returns fixed sessions, filtered by owner like a real locator."""

    def __init__(self, sessions: list[RunningSession]) -> None:
        self.found = sessions

    def sessions(self, user: str | None) -> list[RunningSession]:
        return [s for s in self.found if user is None or s.owner == user]


@pytest.fixture
def sessions_app(tmp_path: Path, memory_site: MemorySite) -> Flask:
    def session(name: str, node: str, owner: str) -> RunningSession:
        return RunningSession(name, node, owner, "localhost/base:latest", "running", "")

    memory_site.scheduler.running_user_jobs = [
        JobRecord("77", JobState.RUNNING, name="jupyter", user="alice", node="n2"),
        JobRecord("78", JobState.RUNNING, name="train", user="bob", node="n2"),
        JobRecord("79", JobState.COMPLETED, name="old", user="alice", node="n2"),
    ]
    locator = FixedLocator([session("jupyter-alice", "n1", "alice"),
                            session("rstudio-alice", "n2", "alice"),
                            session("jupyter-bob", "n2", "bob")])
    return create_app({"TESTING": True, "SITE_CONFIG": memory_site.config,
                       "SITE_FACTORY": lambda config: memory_site, "LOCATOR": locator,
                       "ACCOUNT_EXISTS": any_account,
                       "INSTANCE_DIR": str(tmp_path / "instance"), "SECRET_KEY": "t"})


def test_sessions_are_the_callers_joined_with_running_jobs(sessions_app: Flask) -> None:
    client = sessions_app.test_client()
    r = client.get("/api/v1/sessions", headers=bearer(make_token(sessions_app, "alice")))
    assert r.status_code == 200
    data: dict[str, Any] = r.json  # type: ignore[assignment]
    assert [(s["container"], s["node"], s["job_ids"]) for s in data["sessions"]] == [
        ("jupyter-alice", "n1", []), ("rstudio-alice", "n2", ["77"])]
    assert [j["job_id"] for j in data["jobs"]] == ["77"]
    assert data["warnings"] == []


def test_every_users_sessions_only_for_admins(sessions_app: Flask) -> None:
    client = sessions_app.test_client()
    alice = bearer(make_token(sessions_app, "alice"))
    assert client.get("/api/v1/sessions?all_users=1", headers=alice).status_code == 403
    admin = bearer(make_token(sessions_app, "carol"))
    r = client.get("/api/v1/sessions?all_users=1", headers=admin)
    assert len(r.json["sessions"]) == 3 and len(r.json["jobs"]) == 2


def test_no_locator_lists_nothing(client: FlaskClient, alice: dict[str, str]) -> None:
    r = client.get("/api/v1/sessions", headers=alice)
    assert r.status_code == 200 and r.json["sessions"] == []
