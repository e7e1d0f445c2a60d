"""The REST API against the real local cluster: Slurm, podman on the nodes, the registry.

Nothing here is faked: the app is built from site_configs/local.toml (with its
``local-podman`` session locator) and only its database lives in a temporary directory.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.state import state
from tests.api_support import bearer, make_token
from tests.cluster_helpers import registry_tags, require_cluster, session_container, unique

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


@pytest.fixture
def real_app(tmp_path: Path) -> Flask:
    return create_app({"TESTING": True, "INSTANCE_DIR": str(tmp_path),
                       "DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}"})


def wait_done(client: FlaskClient, job_id: str, headers: dict[str, str],
              timeout: float = 180) -> dict[str, Any]:
    """Poll CHK until the save is final; return its last status."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/v1/saves/{job_id}", headers=headers)
        assert r.status_code == 200, r.json
        status: dict[str, Any] = r.json  # type: ignore[assignment]
        if status["final"]:
            return status
        assert time.monotonic() < deadline, f"job {job_id} not final after {timeout}s: {status}"
        time.sleep(0.5)


def jobs_with_target(app: Flask, since: datetime, suffix: str) -> list[str]:
    """Ids of the save jobs in accounting whose target ends with ``suffix``.

    A job reaches slurmdbd shortly after sbatch returns, so an empty answer is asked
    again for a few seconds.
    """
    deadline = time.monotonic() + 15
    with app.app_context():
        scheduler = state().site.scheduler
        while True:
            jobs = scheduler.list_jobs(since, name_prefix="imgsave")
            found = [j.job_id for j in jobs if j.metadata.get("target", "").endswith(suffix)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def test_save_a_real_container_through_the_api(real_app: Flask) -> None:
    client = real_app.test_client()
    alice = bearer(make_token(real_app, "alice"))
    bob = bearer(make_token(real_app, "bob"))
    name = unique("apitest")
    started = datetime.now(UTC) - timedelta(minutes=1)
    with session_container("n1", "alice") as container:
        sessions = client.get("/api/v1/sessions", headers=alice).json["sessions"]
        assert {"container": container, "node": "n1"}.items() <= next(
            s for s in sessions if s["container"] == container).items()
        body = {"container": container, "target": f"{name}:v1", "node": "n1",
                "formats": ["oci"], "category": "gpu"}
        headers = {**alice, "Idempotency-Key": f"key-{name}"}
        first = client.post("/api/v1/saves", json=body, headers=headers)
        again = client.post("/api/v1/saves", json=body, headers=headers)
        assert first.status_code == again.status_code == 202, (first.json, again.json)
        job_id = first.json["job_id"]
        assert again.json["job_id"] == job_id
        # The scheduler holds exactly one job for the two requests.
        assert jobs_with_target(real_app, started, f"/{name}:v1") == [job_id]
        assert client.get(f"/api/v1/saves/{job_id}", headers=bob).status_code == 404
        status = wait_done(client, job_id, alice)
    assert status["state"] == "completed", status
    assert status["stage"] == "done" and status["percent"] == 100
    assert status["digest"].startswith("sha256:") and status["node"] == "n1"
    listed = client.get("/api/v1/saves", headers=alice).json["saves"]
    assert job_id in [s["job_id"] for s in listed]

    images = client.get("/api/v1/images", headers=alice).json["images"]
    image = next(i for i in images if i["repository"] == f"alice/{name}")
    assert image["category"] == "gpu" and image["size_bytes"] > 0
    assert image["pull_command"] == f"podman pull 127.0.0.1:5000/alice/{name}:v1"
    assert client.delete(f"/api/v1/images/alice/{name}:v1", headers=bob).status_code == 404
    r = client.delete(f"/api/v1/images/alice/{name}:v1", headers=alice)
    assert r.status_code == 200, r.json
    assert registry_tags(f"alice/{name}") == []


def test_a_save_of_a_missing_container_fails_with_a_reason(real_app: Flask) -> None:
    client = real_app.test_client()
    alice = bearer(make_token(real_app, "alice"))
    body = {"container": unique("no-such-container"), "target": f"{unique('x')}:v1",
            "node": "n2"}
    r = client.post("/api/v1/saves", json=body, headers=alice)
    assert r.status_code == 202, r.json
    status = wait_done(client, r.json["job_id"], alice)
    assert status["stage"] == "failed" and status["reason"]


def test_dry_run_checks_the_node_with_slurm(real_app: Flask) -> None:
    client = real_app.test_client()
    alice = bearer(make_token(real_app, "alice"))
    body = {"container": "c", "target": "x:v1", "node": "n7"}
    r = client.post("/api/v1/saves?dry_run=1", json=body, headers=alice)
    assert r.status_code == 200 and set(r.json["errors"]) == {"node"}
    body["node"] = "n2"
    assert client.post("/api/v1/saves?dry_run=1", json=body, headers=alice).json["valid"]
