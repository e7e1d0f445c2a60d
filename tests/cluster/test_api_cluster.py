"""The REST API against the real local cluster: Slurm, podman on the nodes, the registry.

Portal mode for real: ``imgsave serve`` runs as the service account (never root) from
site_configs/local.toml with its ``local-podman`` session locator, tokens come from
``imgsave token create`` as that account; its jobs are the service account's in
accounting, with the requesting user in their metadata. Nothing here is faked.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from scheduler_glue.base import JobRecord
from tests.support.cluster_helpers import (
    registry_tags,
    require_cluster,
    session_container,
    site,
    unique,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def token_for(server: tuple[str, list[str], dict[str, str]], user: str) -> dict[str, str]:
    _, argv, env = server
    made = subprocess.run([*argv, "--json", "token", "create", user], env=env,
                          capture_output=True, text=True, check=True, timeout=60)
    return {"Authorization": f"Bearer {json.loads(made.stdout)['token']}"}


def wait_done(url: str, job_id: str, headers: dict[str, str],
              timeout: float = 180) -> dict[str, Any]:
    """Poll CHK until the save is final; return its last status."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{url}/api/v1/saves/{job_id}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        status: dict[str, Any] = r.json()
        if status["final"]:
            return status
        assert time.monotonic() < deadline, f"job {job_id} not final after {timeout}s: {status}"
        time.sleep(0.5)


def jobs_with_target(since: datetime, suffix: str) -> list[JobRecord]:
    """The save jobs in accounting whose target ends with ``suffix``.

    A job reaches slurmdbd shortly after sbatch returns, so an empty answer is asked
    again for a few seconds.
    """
    deadline = time.monotonic() + 15
    scheduler = site().scheduler
    while True:
        jobs = scheduler.list_jobs(since, name_prefix="imgsave")
        found = [j for j in jobs if j.metadata.get("target", "").endswith(suffix)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_save_a_real_container_through_the_api(
    served: tuple[str, list[str], dict[str, str]],  # noqa: F811
) -> None:
    url = served[0]
    alice, bob = token_for(served, "alice"), token_for(served, "bob")
    name = unique("apitest")
    started = datetime.now(UTC) - timedelta(minutes=1)
    with session_container("n1", "alice") as container:
        sessions = requests.get(f"{url}/api/v1/sessions", headers=alice,
                                timeout=60).json()["sessions"]
        assert {"container": container, "node": "n1"}.items() <= next(
            s for s in sessions if s["container"] == container).items()
        bobs_sessions = requests.get(f"{url}/api/v1/sessions", headers=bob,
                                     timeout=60).json()["sessions"]
        assert container not in [s["container"] for s in bobs_sessions]
        body = {"container": container, "target": f"{name}:v1", "node": "n1",
                "formats": ["oci"], "category": "gpu"}
        headers = {**alice, "Idempotency-Key": f"key-{name}"}
        first = requests.post(f"{url}/api/v1/saves", json=body, headers=headers, timeout=60)
        again = requests.post(f"{url}/api/v1/saves", json=body, headers=headers, timeout=60)
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        job_id = first.json()["job_id"]
        assert again.json()["job_id"] == job_id
        # The scheduler holds exactly one job for the two requests: the service
        # account's, working for alice.
        (record,) = jobs_with_target(started, f"/{name}:v1")
        assert record.job_id == job_id
        assert (record.user, record.metadata["user"]) == ("imgsave", "alice")
        assert requests.get(f"{url}/api/v1/saves/{job_id}", headers=bob,
                            timeout=30).status_code == 404
        assert requests.delete(f"{url}/api/v1/saves/{job_id}", headers=bob,
                               timeout=30).status_code == 404
        status = wait_done(url, job_id, alice)
    assert status["state"] == "completed", status
    assert status["stage"] == "done" and status["percent"] == 100
    assert status["digest"].startswith("sha256:") and status["node"] == "n1"
    listed = requests.get(f"{url}/api/v1/saves", headers=alice, timeout=60).json()["saves"]
    assert job_id in [s["job_id"] for s in listed]
    theirs = requests.get(f"{url}/api/v1/saves", headers=bob, timeout=60).json()["saves"]
    assert job_id not in [s["job_id"] for s in theirs]

    images = requests.get(f"{url}/api/v1/images", headers=alice, timeout=60).json()["images"]
    image = next(i for i in images if i["repository"] == f"alice/{name}")
    assert image["category"] == "gpu" and image["size_bytes"] > 0
    assert image["pull_command"] == f"podman pull 127.0.0.1:5000/alice/{name}:v1"
    assert requests.delete(f"{url}/api/v1/images/alice/{name}:v1", headers=bob,
                           timeout=30).status_code == 404
    r = requests.delete(f"{url}/api/v1/images/alice/{name}:v1", headers=alice, timeout=30)
    assert r.status_code == 200, r.text
    assert registry_tags(f"alice/{name}") == []


def test_a_save_of_a_missing_container_fails_with_a_reason(
    served: tuple[str, list[str], dict[str, str]],  # noqa: F811
) -> None:
    url = served[0]
    alice = token_for(served, "alice")
    body = {"container": unique("no-such-container"), "target": f"{unique('x')}:v1",
            "node": "n2"}
    r = requests.post(f"{url}/api/v1/saves", json=body, headers=alice, timeout=60)
    assert r.status_code == 202, r.text
    status = wait_done(url, r.json()["job_id"], alice)
    assert status["stage"] == "failed" and "not found on n2" in status["reason"]


def test_dry_run_checks_the_node_with_slurm(
    served: tuple[str, list[str], dict[str, str]],  # noqa: F811
) -> None:
    url = served[0]
    alice = token_for(served, "alice")
    body = {"container": "c", "target": "x:v1", "node": "n7"}
    r = requests.post(f"{url}/api/v1/saves?dry_run=1", json=body, headers=alice, timeout=60)
    assert r.status_code == 200 and set(r.json()["errors"]) == {"node"}
    body["node"] = "n2"
    assert requests.post(f"{url}/api/v1/saves?dry_run=1", json=body, headers=alice,
                         timeout=60).json()["valid"]
