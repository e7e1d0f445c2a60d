"""Warm-ups without the cluster: plans, hostlists, the image rule, the entry's refusals,
the node's digest check, the job script, and the service on the memory scheduler (a
fake, tests/support/api_support.py). The same paths run for real in
tests/cluster/test_warmup_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.service.warmup_plan import expand_nodes, parse_plan, same_images
from api.service.warmups import WarmupService
from builder_jobs.node_gate import JobOnRecord, Refused
from builder_jobs.warmup_gate import admit_warmup, held_digests
from builder_jobs.warmup_job import render_warmup_script
from builder_jobs.warmup_rules import allowed_image, checked_images
from builder_jobs.warmup_spec import (
    ImageOutcome,
    ImageResult,
    WarmupResult,
    parse_warmup_line,
    stream_line,
)
from core.errors import InvalidRequest, NotFound, PermissionDenied
from scheduler_glue.slurm.parse import parse_job_nodes
from scheduler_glue.states import JobState
from tests.support.api_support import MemorySite, site_config

HOST = "127.0.0.1:5000"


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return site_config(tmp_path)


# -- plans and hostlists ------------------------------------------------------------------
def test_hostlists_expand_in_order_without_repeats() -> None:
    assert expand_nodes("n[1-3],gpu[01-02],n2") == ["n1", "n2", "n3", "gpu01", "gpu02"]


@pytest.mark.parametrize("bad", ["", "  ", "n[1-", "n[3-1]", "-w", "n[1-5000]"])
def test_bad_hostlists_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        expand_nodes(bad)


def test_a_plan_gives_each_node_its_images_once() -> None:
    plan = parse_plan('''
[[warmup]]
nodes = "n[1-2]"
images = ["alice/torch:v1"]

[[warmup]]
nodes = "n2,n3"
images = ["alice/jax:v2", "alice/torch:v1"]
''')
    assert plan == {"n1": ["alice/torch:v1"], "n2": ["alice/torch:v1", "alice/jax:v2"],
                    "n3": ["alice/jax:v2", "alice/torch:v1"]}


@pytest.mark.parametrize("text, why", [
    ("nodes = 'n1'", "unknown keys"),
    ("[[warmup]]\nnodes = 'n1'", "images must be"),
    ("[[warmup]]\nimages = ['a:v1']", "nodes must be"),
    ("[[warmup]]\nnodes = 'n1'\nimages = []", "images must be"),
    ("[[warmup]]\nnodes = 'n1'\nimages = ['a:v1']\nextra = 1", "unknown keys"),
    ("[[warmup", "not valid TOML"),
    ("", "no [[warmup]]"),
])
def test_bad_plans_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why.replace("[", r"\[")):
        parse_plan(text)


def test_same_images_needs_an_image() -> None:
    with pytest.raises(InvalidRequest):
        same_images(["n1"], [])


# -- which images a user may warm up ------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("alice/torch:v1", f"{HOST}/alice/torch:v1"),
    ("torch:v1", f"{HOST}/alice/torch:v1"),
    (f"{HOST}/alice/torch:v1", f"{HOST}/alice/torch:v1"),
    ("alice/torch@sha256:" + "a" * 64, f"{HOST}/alice/torch@sha256:" + "a" * 64),
])
def test_own_images_are_allowed(config, text: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert str(allowed_image(config, "alice", text)) == expected


@pytest.mark.parametrize("text, error", [
    ("bob/private:v1", PermissionDenied),
    ("alicex/torch:v1", PermissionDenied),
    ("alice/../bob/x:v1", InvalidRequest),
    ("docker.io/alice/torch:v1", InvalidRequest),
    ("evil.example:5000/alice/torch:v1", InvalidRequest),
    ("alice/torch", InvalidRequest),
    ("alice/torch:v1 --privileged", InvalidRequest),
    ("-alice/torch:v1", InvalidRequest),
])
def test_other_images_are_refused(config, text: str, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        allowed_image(config, "alice", text)


def test_checked_images_drops_repeats_and_caps_the_count(config) -> None:  # type: ignore[no-untyped-def]
    assert checked_images(config, "alice", ["torch:v1", "alice/torch:v1"]) == (
        f"{HOST}/alice/torch:v1",)
    with pytest.raises(InvalidRequest, match="at most"):
        checked_images(config, "alice", [f"img{i}:v1" for i in range(33)])


# -- the privileged entry's admission, from the scheduler's record ------------------------
def record(**changes: object) -> JobOnRecord:
    fields = dict(job_id="7", owner="alice", state="RUNNING", running=True, works_for="alice",
                  node="n1", metadata={"kind": "warmup", "request_id": "r" * 32,
                                       "images": f"{HOST}/alice/a:v1 {HOST}/alice/b:v1"})
    fields.update(changes)
    return JobOnRecord(**fields)  # type: ignore[arg-type]


def test_the_entry_takes_the_images_from_the_job_record() -> None:
    assert admit_warmup(record(), "alice", "r" * 32) == (
        "alice", [f"{HOST}/alice/a:v1", f"{HOST}/alice/b:v1"])


@pytest.mark.parametrize("changes, caller, why", [
    ({}, "bob", "not yours"),
    ({"running": False, "state": "PENDING"}, "alice", "not running"),
    ({"works_for": ""}, "alice", "names no user"),
    ({"metadata": {"kind": "warmup", "request_id": "x" * 32, "images": "a:v1"}}, "alice",
     "not submitted for request"),
    ({"metadata": {"kind": "warmup", "request_id": "r" * 32}}, "alice", "names no images"),
])
def test_the_entry_refuses(changes: dict[str, object], caller: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        admit_warmup(record(**changes), caller, "r" * 32)


# podman 4.3's `images --digests --format json` (Debian 12), captured on this machine
PODMAN_IMAGES = json.dumps([{
    "Id": "332c5ea62b7b", "RepoDigests": [
        f"{HOST}/alice/acct-02a4e210@sha256:18fa4ab145e14014dc243a48a9fb60948f0ca824ee2826e76bd86dcce5e13ebd"],
    "Names": [f"{HOST}/alice/acct-02a4e210:v1"],
}])


def test_held_digests_are_per_repository() -> None:
    digest = "sha256:18fa4ab145e14014dc243a48a9fb60948f0ca824ee2826e76bd86dcce5e13ebd"
    assert held_digests(PODMAN_IMAGES, f"{HOST}/alice/acct-02a4e210") == {digest}
    assert held_digests(PODMAN_IMAGES, f"{HOST}/bob/acct-02a4e210") == set()
    assert held_digests("not json", f"{HOST}/alice/x") == set()


def test_results_travel_as_lines_and_back() -> None:
    image = ImageResult("x:v1", ImageOutcome.PRESENT, "sha256:" + "b" * 64, 10, 0.5)
    assert parse_warmup_line(stream_line("warmup_image", image.to_dict())) == image
    whole = WarmupResult(ok=True, node="n1", images=[image])
    assert parse_warmup_line(stream_line("warmup_result", json.loads(whole.to_json()))) == whole
    assert parse_warmup_line("imgsave-node-save: INFO hello") is None


# -- Slurm: the nodes of a job --------------------------------------------------------------
def test_slurm_nodes_of_a_running_and_a_pending_job() -> None:
    from tests.support.replay import CAPTURES, load_capture

    running = load_capture(CAPTURES / "slurm" / "60_squeue_nodes_running_two_nodes.txt")
    held = load_capture(CAPTURES / "slurm" / "60b_squeue_nodes_pending_begin.txt")
    assert parse_job_nodes(running.stdout) == ("RUNNING", ("n1", "n2"), "alice")
    assert parse_job_nodes(held.stdout) == ("PENDING", (), "alice")
    # not captured (a pending job Slurm has placed): %Y names its nodes
    assert parse_job_nodes("PENDING||alice|n[3-4]\n") == ("PENDING", ("n3", "n4"), "alice")
    assert parse_job_nodes("PENDING||alice|(null)\n") == ("PENDING", (), "alice")
    assert parse_job_nodes("") is None


# -- the job script --------------------------------------------------------------------------
def test_the_warmup_script_quotes_its_values(tmp_path: Path) -> None:
    spec = tmp_path / "it's $(here)" / "warmup.json"
    text = render_warmup_script(spec, "/opt/py thon", "a" * 32, job_id_variable="SLURM_JOB_ID",
                                node_variable="SLURMD_NODENAME")  # fmt: skip
    assert "-I -m builder_jobs.warmup_job" in text
    assert "'/opt/py thon'" in text and "'\"'\"'s $(here)/warmup.json'" in text
    with pytest.raises(InvalidRequest):
        render_warmup_script(spec, "-c", "a" * 32, job_id_variable="X", node_variable="")


# -- the service, on the memory scheduler ---------------------------------------------------
def service(tmp_path: Path) -> tuple[MemorySite, WarmupService]:
    site = MemorySite(site_config(tmp_path))
    return site, WarmupService(site.config, site.scheduler, python="/usr/bin/python3",
                               account=site.config.service_account)


def test_one_job_per_node_each_pinned_and_marked(tmp_path: Path) -> None:
    site, warmups = service(tmp_path)
    started = warmups.submit("alice", {"n1": ["torch:v1"], "n2": ["jax:v1", "torch:v1"]})
    jobs = {job.node: job for job in site.scheduler.submitted}
    assert set(jobs) == {"n1", "n2"}
    assert jobs["n2"].metadata["kind"] == "warmup"
    assert jobs["n2"].metadata["images"] == f"{HOST}/alice/jax:v1 {HOST}/alice/torch:v1"
    assert not jobs["n1"].name.startswith("imgsave")  # not listed among saves
    assert [(n.node, n.state, n.images_total) for n in started.nodes] == [
        ("n1", JobState.PENDING, 1), ("n2", JobState.PENDING, 2)]
    assert not started.finished
    site.scheduler.set_state(started.nodes[0].job_id, JobState.COMPLETED)
    site.scheduler.set_state(started.nodes[1].job_id, JobState.FAILED)
    later = warmups.status(started.warmup_id, "alice")
    assert later.finished and not later.ok
    assert "without a result" in later.nodes[1].error


def test_bad_input_submits_nothing(tmp_path: Path) -> None:
    site, warmups = service(tmp_path)
    for plan, error in (({"n1": ["bob/private:v1"]}, PermissionDenied),
                        ({"n1": ["torch:v1"], "n9": ["torch:v1"]}, NotFound),
                        ({}, InvalidRequest)):
        with pytest.raises(error):
            warmups.submit("alice", plan)  # type: ignore[arg-type]
    assert site.scheduler.submitted == []


def test_a_warmup_is_its_users_only(tmp_path: Path) -> None:
    _, warmups = service(tmp_path)
    started = warmups.submit("alice", {"n1": ["torch:v1"]})
    with pytest.raises(NotFound):
        warmups.status(started.warmup_id, "bob")
    assert warmups.status(started.warmup_id, "bob", admin=True).user == "alice"
    with pytest.raises(InvalidRequest):
        warmups.status("../../etc/x", "alice")


def test_the_api_submits_and_reports(client, alice, bob) -> None:  # type: ignore[no-untyped-def]
    answer = client.post("/api/v1/warmups", json={"images": ["torch:v1"], "nodes": "n[1-2]"},
                         headers=alice)
    assert answer.status_code == 202, answer.json
    warmup_id = answer.json["warmup_id"]
    assert [n["node"] for n in answer.json["nodes"]] == ["n1", "n2"]
    assert client.get(f"/api/v1/warmups/{warmup_id}", headers=alice).status_code == 200
    assert client.get(f"/api/v1/warmups/{warmup_id}", headers=bob).status_code == 404
    refused = client.post("/api/v1/warmups", json={"images": ["alice/torch:v1"],
                                                   "nodes": "n1"}, headers=bob)
    assert refused.status_code == 403
    assert client.post("/api/v1/warmups", json={"images": ["x:v1"]},
                       headers=alice).status_code == 400


# -- PBS: the hosts of a job (captures from a real OpenPBS 23.06; select by host) ---------
def test_pbs_exec_hosts_each_once() -> None:
    from scheduler_glue.pbs.parse import exec_hosts

    # the documented multi-host form (OpenPBS reference guide, exec_host); captures have
    # single-host jobs only (tests/captures/pbs)
    assert exec_hosts("n1/0*2+n2/1+n1/1") == ("n1", "n2")
    assert exec_hosts("vm/0") == ("vm",)
    assert exec_hosts("") == ()


def test_pbs_nodes_of_a_running_job_from_a_capture() -> None:
    from scheduler_glue.pbs.backend import PbsScheduler
    from tests.support.replay import ReplayRunner, Step, pbs_capture

    qstat_f = ["qstat", "-f", "-F", "json"]
    runner = ReplayRunner([
        Step.replay([*qstat_f, "0.vm"], pbs_capture("02_qstat_f_F_json_running")),
        Step.replay([*qstat_f, "3.vm"], pbs_capture("15b_qstat_f_F_json_invalid_host_job")),
    ])
    pbs = PbsScheduler(runner)
    found = pbs.nodes_of_job("0.vm")
    assert (found.nodes, found.owner) == (("vm",), "pbsuser")
    with pytest.raises(NotFound, match="not running"):
        pbs.nodes_of_job("3.vm")
    runner.assert_done()


# -- the node entry's dispatch: warm-up jobs here, every other job to the save ------------
def test_the_entry_sends_only_warmup_jobs_to_the_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder_jobs import warmup_gate
    from tests.support.api_support import LOCAL_TOML

    request_id = "a" * 32
    monkeypatch.setattr(warmup_gate.os, "geteuid", lambda: 0)
    monkeypatch.setattr(warmup_gate, "die_with_parent", lambda: None)  # not pytest's
    monkeypatch.setattr(warmup_gate.os, "umask", lambda mask: 0o022)
    ran: list[str] = []
    monkeypatch.setattr(warmup_gate, "warmup_main",
                        lambda args, rec, cfg: ran.append(f"warmup {rec.job_id}") or 0)
    asked: list[str] = []

    def lookup_for(_config: object):  # type: ignore[no-untyped-def]
        def lookup(job_id: str) -> JobOnRecord:
            asked.append(job_id)
            kind = {"7": "warmup", "8": ""}[job_id]
            return record(job_id=job_id, metadata={"kind": kind, "request_id": request_id})
        return lookup

    def save_main(args, lookup_for_save):  # type: ignore[no-untyped-def]
        ran.append(f"save {lookup_for_save(None)(args[1]).job_id}")
        return 0

    for job_id in ("7", "8"):
        assert warmup_gate.dispatch([str(LOCAL_TOML), job_id, request_id], lookup_for,
                                    save_main) == 0
    assert ran == ["warmup 7", "save 8"]
    assert asked == ["7", "8"]  # the save's record is not asked for twice


def test_slurm_backend_nodes_of_job_from_captures() -> None:
    from scheduler_glue.slurm.backend import SlurmScheduler
    from tests.support.replay import CAPTURES, ReplayRunner, Step, load_capture

    argv = ["squeue", "-h", "-t", "all", "-j"]
    runner = ReplayRunner([
        Step.replay([*argv, "3071", "-o", "%T|%N|%u|%Y"],
                    load_capture(CAPTURES / "slurm" / "60_squeue_nodes_running_two_nodes.txt")),
        Step.replay([*argv, "3072", "-o", "%T|%N|%u|%Y"],
                    load_capture(CAPTURES / "slurm" / "60b_squeue_nodes_pending_begin.txt")),
    ])
    slurm = SlurmScheduler(runner)
    assert slurm.nodes_of_job("3071").nodes == ("n1", "n2")
    with pytest.raises(NotFound, match="PENDING and has no nodes yet"):
        slurm.nodes_of_job("3072")
    runner.assert_done()
