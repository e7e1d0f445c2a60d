"""POST/GET/DELETE /api/v1/saves through the Flask test client (scheduler: in memory)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.web.state import state
from core.errors import SchedulerError
from scheduler_glue.states import JobState
from tests.support.api_support import MemorySite, bearer, make_token, save_body


def _submit(client: FlaskClient, headers: dict[str, str], **body: object) -> str:
    r = client.post("/api/v1/saves", json=save_body(**body), headers=headers)
    assert r.status_code == 202, r.json
    return str(r.json["job_id"])


def test_save_is_accepted_and_pinned_to_the_node(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    r = client.post("/api/v1/saves", json=save_body(), headers=alice)
    assert r.status_code == 202, r.json
    assert r.json["target"] == "127.0.0.1:5000/alice/torch-env:v1"
    assert r.json["node"] == "n1"
    assert r.json["status_url"] == f"/api/v1/saves/{r.json['job_id']}"
    assert r.headers["Location"] == r.json["status_url"]
    (job,) = memory_site.scheduler.submitted
    assert job.node == "n1" and job.metadata["user"] == "alice"


def test_chk_returns_the_status(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    job_id = _submit(client, alice)
    r = client.get(f"/api/v1/saves/{job_id}", headers=alice)
    assert r.status_code == 200
    assert r.json["state"] == "pending" and r.json["stage"] == "queued"
    assert r.json["final"] is False and r.json["percent"] == 0
    memory_site.scheduler.set_state(job_id, JobState.CANCELLED)
    r = client.get(f"/api/v1/saves/{job_id}", headers=alice)
    assert r.json["final"] is True and r.json["reason"] == "the save job was cancelled"


def test_list_shows_own_saves_newest_first_and_by_ids(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    first = _submit(client, alice)
    second = _submit(client, alice, target="other:v2")
    _submit(client, bob, container="jupyter-bob")
    r = client.get("/api/v1/saves", headers=alice)
    assert [s["job_id"] for s in r.json["saves"]] == [second, first]
    r = client.get(f"/api/v1/saves?job_ids={first}", headers=alice)
    assert [s["job_id"] for s in r.json["saves"]] == [first]


def test_another_users_save_is_not_found(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str], memory_site: MemorySite
) -> None:
    job_id = _submit(client, alice)
    assert client.get(f"/api/v1/saves/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/api/v1/saves?job_ids={job_id}", headers=bob).status_code == 404
    r = client.delete(f"/api/v1/saves/{job_id}", headers=bob)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert memory_site.scheduler.jobs[job_id].state is JobState.PENDING
    assert client.get("/api/v1/saves?all_users=1", headers=bob).status_code == 403


def test_an_admin_sees_every_users_saves(
    app: Flask, client: FlaskClient, alice: dict[str, str]
) -> None:
    job_id = _submit(client, alice)
    admin = bearer(make_token(app, "carol"))
    assert client.get(f"/api/v1/saves/{job_id}", headers=admin).status_code == 200
    r = client.get("/api/v1/saves?all_users=true", headers=admin)
    assert [s["job_id"] for s in r.json["saves"]] == [job_id]


def test_cancel(client: FlaskClient, alice: dict[str, str], memory_site: MemorySite) -> None:
    job_id = _submit(client, alice)
    r = client.delete(f"/api/v1/saves/{job_id}", headers=alice)
    assert r.status_code == 200 and r.json == {"job_id": job_id, "cancelled": True}
    assert memory_site.scheduler.jobs[job_id].state is JobState.CANCELLED


def test_an_unknown_or_malformed_job_id(client: FlaskClient, alice: dict[str, str]) -> None:
    assert client.get("/api/v1/saves/999999", headers=alice).status_code == 404
    r = client.get("/api/v1/saves/..%2F..%2Fetc", headers=alice)
    assert r.status_code in (400, 404) and "error" in r.json


def test_an_oversized_body_is_413(client: FlaskClient, alice: dict[str, str]) -> None:
    body = json.dumps(save_body(container="x" * 70_000))
    r = client.post("/api/v1/saves", data=body, content_type="application/json", headers=alice)
    assert r.status_code == 413
    assert r.json["error"]["code"] == "request_entity_too_large"


@pytest.mark.parametrize("data", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"', b"null",
                                  b"[" * 100_00 + b"]" * 100_00])
def test_a_malformed_body_is_400(client: FlaskClient, alice: dict[str, str], data: bytes) -> None:
    r = client.post("/api/v1/saves", data=data, content_type="application/json", headers=alice)
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "malformed_json"


def test_a_body_that_is_not_json_is_415(client: FlaskClient, alice: dict[str, str]) -> None:
    r = client.post("/api/v1/saves", data="container=x", headers=alice,
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415


@pytest.mark.parametrize(("body", "words"), [
    (save_body(extra=1), "unknown field"),
    (save_body(formats="oci"), "formats"),
    (save_body(formats=["tar"]), "oci or sif"),
    (save_body(container=7), "container must be a string"),
    (save_body(container=""), "container is required"),
    (save_body(target="bad target"), "spaces"),
    (save_body(target="torch-env"), "no tag"),
    (save_body(category="tpu"), "category"),
    (save_body(node="n1", job_id="5"), "exactly one"),
    (save_body(container="-rm"), "container name"),
])
def test_invalid_requests_are_400_with_a_reason(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite,
    body: dict[str, object], words: str,
) -> None:
    r = client.post("/api/v1/saves", json=body, headers=alice)
    assert r.status_code == 400, r.json
    assert words in r.json["error"]["message"]
    assert memory_site.scheduler.submitted == []


def test_saving_into_another_namespace_is_refused(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    r = client.post("/api/v1/saves", json=save_body(target="bob/x:v1"), headers=alice)
    assert r.status_code == 403


def test_an_unknown_node_is_404(client: FlaskClient, alice: dict[str, str]) -> None:
    r = client.post("/api/v1/saves", json=save_body(node="n9"), headers=alice)
    assert r.status_code == 404 and "n9" in r.json["error"]["message"]


def test_a_scheduler_outage_is_503_and_retryable(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(job: object) -> str:
        raise SchedulerError("slurmctld does not answer", retryable=True)

    monkeypatch.setattr(memory_site.scheduler, "submit", down)
    r = client.post("/api/v1/saves", json=save_body(), headers=alice)
    assert r.status_code == 503
    assert r.json["error"] == {"code": "scheduler_unavailable",
                               "message": "slurmctld does not answer", "retryable": True}


def test_the_same_idempotency_key_makes_one_job(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    headers = {**alice, "Idempotency-Key": "retry-me-1"}
    first = client.post("/api/v1/saves", json=save_body(), headers=headers)
    again = client.post("/api/v1/saves", json=save_body(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert list(memory_site.scheduler.jobs) == [first.json["job_id"]]


def test_keys_are_per_user(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str], memory_site: MemorySite
) -> None:
    a = client.post("/api/v1/saves", json=save_body(), headers={**alice, "Idempotency-Key": "k"})
    b = client.post("/api/v1/saves", json=save_body(container="jupyter-bob"),
                    headers={**bob, "Idempotency-Key": "k"})
    assert a.status_code == b.status_code == 202
    assert a.json["job_id"] != b.json["job_id"]


def test_a_reused_key_with_another_body_is_422(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    headers = {**alice, "Idempotency-Key": "k2"}
    assert client.post("/api/v1/saves", json=save_body(), headers=headers).status_code == 202
    r = client.post("/api/v1/saves", json=save_body(target="torch-env:v2"), headers=headers)
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_key_reused"
    assert len(memory_site.scheduler.submitted) == 1


def test_a_failed_submit_frees_its_key(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = {**alice, "Idempotency-Key": "k3"}
    real_submit = memory_site.scheduler.submit

    def down(job: object) -> str:
        raise SchedulerError("slurmctld does not answer", retryable=True)

    monkeypatch.setattr(memory_site.scheduler, "submit", down)
    assert client.post("/api/v1/saves", json=save_body(), headers=headers).status_code == 503
    monkeypatch.setattr(memory_site.scheduler, "submit", real_submit)
    assert client.post("/api/v1/saves", json=save_body(), headers=headers).status_code == 202


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_a_bad_idempotency_key_is_400(client: FlaskClient, alice: dict[str, str],
                                      key: str) -> None:
    headers = {**alice, "Idempotency-Key": key}
    assert client.post("/api/v1/saves", json=save_body(), headers=headers).status_code == 400


def test_an_in_flight_key_is_409(app: Flask, client: FlaskClient, alice: dict[str, str]) -> None:
    from api.web import idempotency

    with app.app_context():
        body_hash = idempotency.body_hash(save_body())
        claimed = idempotency.claim(state().db, "alice", "k4", body_hash, "r4")
        assert claimed.mine and claimed.request_id == "r4"
    # claimed by this very process, alive: in progress
    r = client.post("/api/v1/saves", json=save_body(), headers={**alice, "Idempotency-Key": "k4"})
    assert r.status_code == 409 and r.json["error"]["retryable"] is True


def _plant_claim(app: Flask, key: str, claimant: str, request_id: str) -> None:
    from api.db import IdempotencyKey, utcnow
    from api.web import idempotency

    with app.app_context(), state().db.session() as s:
        s.add(IdempotencyKey(user="alice", key=key, body_hash=idempotency.body_hash(save_body()),
                             created=utcnow(), request_id=request_id, claimant=claimant))


def test_a_claim_whose_server_died_before_submitting_is_taken_over(
    app: Flask, client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    # a pid that does not run here (or runs with another start time: a reused pid)
    for key, claimant in (("k5", f"{socket.gethostname()}:999999999:1"),
                          ("k6", f"{socket.gethostname()}:{os.getpid()}:0")):
        _plant_claim(app, key, claimant, f"req-{key}")
        r = client.post("/api/v1/saves", json=save_body(),
                        headers={**alice, "Idempotency-Key": key})
        assert r.status_code == 202, r.json
        # a save id of its own: the dead server may have left a half-made directory
        assert r.json["request_id"] != f"req-{key}"
    assert len(memory_site.scheduler.submitted) == 2


def test_a_claim_of_a_dead_server_whose_save_was_submitted_is_answered_with_it(
    app: Flask, client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    first = client.post("/api/v1/saves", json=save_body(), headers=alice)
    assert first.status_code == 202
    # as if the server died after submitting and indexing, before recording the job
    _plant_claim(app, "k7", f"{socket.gethostname()}:999999999:1", first.json["request_id"])
    r = client.post("/api/v1/saves", json=save_body(), headers={**alice, "Idempotency-Key": "k7"})
    assert r.status_code == 202 and r.headers["Idempotent-Replayed"] == "true"
    assert r.json["job_id"] == first.json["job_id"]
    assert r.json["target"] == first.json["target"] and r.json["node"] == first.json["node"]
    assert len(memory_site.scheduler.submitted) == 1


def test_a_claim_from_another_host_waits_for_the_stale_time(
    app: Flask, client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    _plant_claim(app, "k8", "another-host:1:1", "req-k8")
    r = client.post("/api/v1/saves", json=save_body(), headers={**alice, "Idempotency-Key": "k8"})
    assert r.status_code == 409  # this host cannot tell whether that server lives
    assert memory_site.scheduler.submitted == []


def test_dry_run_reports_each_field_and_submits_nothing(
    client: FlaskClient, alice: dict[str, str], memory_site: MemorySite
) -> None:
    ok = client.post("/api/v1/saves?dry_run=1", json=save_body(), headers=alice)
    assert ok.status_code == 200
    assert ok.json == {"valid": True, "errors": {},
                       "target": "127.0.0.1:5000/alice/torch-env:v1"}
    bad = client.post("/api/v1/saves?dry_run=true", headers=alice, json=save_body(
        container="", target="Bad Name:v1", category="tpu"))
    assert bad.status_code == 200 and bad.json["valid"] is False
    assert set(bad.json["errors"]) == {"container", "target", "category"}
    node = client.post("/api/v1/saves?dry_run=1", json=save_body(node="n9"), headers=alice)
    assert set(node.json["errors"]) == {"node"}
    assert memory_site.scheduler.submitted == []
    assert list(Path(memory_site.config.spool_dir).iterdir()) == []
