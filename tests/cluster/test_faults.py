"""Faults injected on the real local cluster (issue 11): a save that dies outright, two
saves of one container, helper tags, cancelled saves. Each asserts what the user sees
and that nothing is left behind: no paused container, no temporary image, no record.
Saves are submitted by alice herself; see docs/faults.md for the table.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from builder_jobs.events import Stage
from builder_jobs.node_guard import JobGuard, lock_path, record_path
from registry.catalog import is_helper_tag
from scheduler_glue.states import JobState
from tests.support.cluster_helpers import (
    CLUSTER,
    IMGSAVE,
    REGISTRY,
    TOP,
    as_user,
    imgsave_as,
    job_state,
    node_exec,
    require_cluster,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster
STATE_DIR = Path("/var/lib/imgsave-node")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]  # local.toml's


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def container_state(node: str, name: str) -> str:
    out = node_exec(node, "podman", "inspect", "-f", "{{.State.Status}}", name, check=False)
    return out.stdout.strip()


def container_id(node: str, name: str) -> str:
    return node_exec(node, "podman", "inspect", "-f", "{{.Id}}", name).stdout.strip()


def local_images(node: str, pattern: str) -> list[str]:
    out = node_exec(node, "podman", "images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    return [line for line in out.splitlines() if pattern in line]


def _fill(node: str, name: str, megabytes: int) -> None:
    """An afternoon of installs: incompressible files, so the paused read takes a while."""
    node_exec(node, "podman", "exec", name, "sh", "-c",
              f"mkdir -p /opt/big && for i in $(seq 1 {megabytes // 10}); do "
              "dd if=/dev/urandom of=/opt/big/f$i bs=1M count=10 2>/dev/null; done")


def test_the_epilog_resumes_a_container_a_dead_save_left_paused() -> None:
    """The record a killed save leaves, replayed by the real epilog inside node n1:
    the container runs again, the temporary image is gone, so is the record."""
    job = "990000" + str(os.getpid())
    with session_container("n1", "alice") as name:
        cid = container_id("n1", name)
        temp = f"localhost/imgsave-tmp-{unique('x').replace('-', '')}:latest"
        node_exec("n1", "podman", "tag", "localhost/imgsave-base:latest", temp)
        node_exec("n1", "podman", "pause", name)
        guard = JobGuard(record_path(STATE_DIR, job), "f" * 32,
                         cleanup=[[*PODMAN, "rmi", temp]], unpause=[*PODMAN, "unpause", cid])
        guard.write()
        assert container_state("n1", name) == "paused"
        done = subprocess.run([str(CLUSTER), "node-exec", "n1", "env", f"SLURM_JOB_ID={job}",
                               "/usr/local/sbin/imgsave-epilog"], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert container_state("n1", name) == "running"
        assert local_images("n1", temp.split(":")[0].removeprefix("localhost/")) == []
        assert not guard.path.exists()
    # a job without a record: nothing to do, exit 0 (every job on the node runs it)
    quiet = subprocess.run(["/usr/local/sbin/imgsave-epilog", "12345"], capture_output=True,
                           text=True, timeout=30, check=False)
    assert (quiet.returncode, quiet.stderr) == (0, "")


def _wait_guarded(job: str, seconds: float = 120) -> bool:
    """Until the job's record holds an unpause (written just before the save pauses)."""
    record = record_path(STATE_DIR, job)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        guard = JobGuard.load(record)
        if guard is not None and guard.unpause:
            return True
        if job_state(job) in ("COMPLETED", "FAILED"):
            return False
        time.sleep(0.02)
    return False


def _wait_paused(node: str, name: str, seconds: float) -> bool:
    """Until the save has the container paused (its 300 MB read takes a second or more)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if container_state(node, name) == "paused":
            return True
    return False


def _entry_pid(job: str) -> int:
    """The root entry's process for ``job`` (``python -I -m api.node_entry CONFIG JOB ID``)."""
    out = subprocess.run(["pgrep", "-f", f"api.node_entry .* {job} "], capture_output=True,
                         text=True, check=False).stdout.split()
    assert out, f"no imgsave-node-save process for job {job}"
    return int(out[0])


@pytest.mark.parametrize("kill", ["the save process", "the whole job"])
def test_a_save_killed_outright_never_leaves_the_container_paused(kill: str) -> None:
    """SIGKILL while the save reads the paused container, to the root entry alone (the
    job then ends; the scheduler's epilog resumes the container) or to every process
    of the job (the entry is told by the kernel that its parent died and cleans up;
    the epilog covers what it cannot). Either way: the container runs, the save is
    FAILED or CANCELLED with a reason, no temporary image, no record, no tag."""
    s = site()
    repo = unique("alice/killed")
    with session_container("n1", "alice") as name:
        _fill("n1", name, 300)
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        record = record_path(STATE_DIR, job)
        assert _wait_guarded(job), "the save never recorded a pause before pausing"
        paused_seen = _wait_paused("n1", name, seconds=5)
        if kill == "the save process":
            os.kill(_entry_pid(job), signal.SIGKILL)
        else:
            as_user("alice", "scancel", "--signal=KILL", "--full", job)
        status = wait_final(s, job, "alice")
        deadline = time.monotonic() + 60
        while container_state("n1", name) != "running" and time.monotonic() < deadline:
            time.sleep(0.5)  # the epilog runs as the job completes
        assert container_state("n1", name) == "running"
        # the epilog resumes first, then removes what else the record names, then it
        while record.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not record.exists()
    assert paused_seen, "the kill did not land while the container was paused"
    assert status.state in (JobState.CANCELLED, JobState.FAILED)
    assert status.stage is Stage.FAILED and status.reason, status
    if kill == "the save process":
        assert "signal 9" in status.reason, status.reason
    # no tag at all: not the user's, not the base's helper tag (the epilog removes it)
    assert registry_tags(repo) == []
    assert local_images("n1", status.request_id) == []


def registry_tags(repo: str) -> list[str]:
    answer = requests.get(f"http://{REGISTRY}/v2/{repo}/tags/list", timeout=10)
    return [] if answer.status_code == 404 else list(answer.json().get("tags") or [])


def test_a_save_killed_after_its_base_push_leaves_no_helper_tag() -> None:
    """The base image is not in this new repository, so the save pushes it once under a
    helper tag while it reads the container. SIGKILL to the entry once that tag is in
    the registry: the record named it before the push, and the epilog removes it with
    the node's registry credentials. Fails without the epilog's tag step (the tag stays)."""
    s = site()
    repo = unique("alice/killedbase")
    with session_container("n1", "alice") as name:
        _fill("n1", name, 300)
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        deadline = time.monotonic() + 120
        while not [t for t in registry_tags(repo) if is_helper_tag(t)]:
            assert time.monotonic() < deadline, "the base push never made its helper tag"
            assert job_state(job) not in ("COMPLETED", "FAILED"), "the save ended first"
            time.sleep(0.02)
        guard = JobGuard.load(record_path(STATE_DIR, job))
        os.kill(_entry_pid(job), signal.SIGKILL)
        status = wait_final(s, job, "alice")
        deadline = time.monotonic() + 60
        while registry_tags(repo) and time.monotonic() < deadline:
            time.sleep(0.5)  # the epilog runs as the job completes
        assert container_state("n1", name) == "running"
    assert guard is not None and [t for t in guard.drop_tags if is_helper_tag(t.rpartition(":")[2])]
    assert status.state is JobState.FAILED and "signal 9" in status.reason, status
    assert registry_tags(repo) == []
    assert not record_path(STATE_DIR, job).exists()


def test_a_second_save_of_a_container_being_saved_is_refused_at_once() -> None:
    """The node's lock on the container is held (as another save's entry holds it): the
    save fails at once, says why, and the container is untouched; then it saves."""
    s = site()
    with session_container("n1", "alice") as name:
        cid = container_id("n1", name)
        path = lock_path(STATE_DIR, cid)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            job = submit_as("alice", name, unique("alice/busy") + ":v1", node="n1")
            status = wait_final(s, job, "alice")
            assert status.state is JobState.FAILED
            assert "already being saved by another job" in status.reason
            assert status.result is not None and status.result.failure is not None
            assert status.result.failure.value == "busy"
            assert container_state("n1", name) == "running"
        finally:
            os.close(fd)
        again = submit_as("alice", name, unique("alice/notbusy") + ":v1", node="n1")
        assert wait_final(s, again, "alice").state is JobState.COMPLETED


def test_helper_tags_are_never_listed_as_the_users_images() -> None:
    """A save's own base tag (``imgsave-base-...``) stays out of ``imgsave images``."""
    repo = unique("alice/helper")
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        wait_final(site(), job, "alice")
    manifest = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/v1", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    planted = requests.put(f"http://{REGISTRY}/v2/{repo}/manifests/imgsave-base-0123abcd",
                           data=manifest.content, timeout=10,
                           headers={"Content-Type": manifest.headers["Content-Type"]})
    assert planted.status_code == 201
    listed = json.loads(imgsave_as("alice", "--json", "images").stdout)
    tags = {i["tag"] for i in listed if i["repository"] == repo}
    assert tags == {"v1"}


def test_a_cancelled_save_names_who_cancelled_it() -> None:
    s = site()
    cpus = os.cpu_count() or 1
    blocker = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-c",
                      str(cpus), "-o", "/dev/null", "--wrap", "sleep 60").stdout.strip()
    try:
        job = submit_as("alice", "jupyter-x", unique("alice/who") + ":v1", node="n2")
        imgsave_as("alice", "cancel", job)
        status = wait_final(s, job, "alice", timeout=60)
        assert status.reason == "the save job was cancelled by alice"
        shown = imgsave_as("alice", "status", job)
        assert "cancelled by alice" in shown.stdout
    finally:
        subprocess.run(["scancel", blocker], check=False)


def test_cancel_of_a_finished_save_says_so_and_fails() -> None:
    s = site()
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, unique("alice/ended") + ":v1", node="n1")
        assert wait_final(s, job, "alice").state is JobState.COMPLETED
    late = imgsave_as("alice", "cancel", job, check=False)
    assert late.returncode == 1
    assert f"job {job} has already ended (completed); nothing to cancel" in late.stderr
    assert "Cancelled" not in late.stdout


def test_saves_submitted_at_once_never_pass_the_limit(tmp_path: Path) -> None:
    """Six submits at once with ``max_saves_in_flight_per_user = 2`` while n2 is busy:
    exactly two jobs, four clear refusals (the check and the submit are one step)."""
    text = (TOP / "site_configs" / "local.toml").read_text().replace(
        "max_saves_in_flight_per_user = 8", "max_saves_in_flight_per_user = 2")
    config = Path(tempfile.mkdtemp(prefix="imgsave-config-", dir="/tmp")) / "site.toml"
    config.parent.chmod(0o755)
    config.write_text(text)
    config.chmod(0o644)
    cpus = os.cpu_count() or 1
    blocker = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-c",
                      str(cpus), "-o", "/dev/null", "--wrap", "sleep 120").stdout.strip()
    marker = unique("burst")
    try:
        burst = [subprocess.Popen(
            ["runuser", "-u", "alice", "--", IMGSAVE, "--config", str(config), "--json",
             "submit", "jupyter-x", f"{marker}:v{i}", "--node", "n2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
            for i in range(6)]
        outcomes = [(p.wait(timeout=120), *p.communicate()) for p in burst]
        accepted = [json.loads(out)["job_id"] for code, out, _ in outcomes if code == 0]
        refused = [err for code, _, err in outcomes if code != 0]
        assert len(accepted) == 2, outcomes
        assert len(refused) == 4 and all("allows 2 at a time" in e for e in refused), refused
        for job in accepted:
            imgsave_as("alice", "cancel", job)
    finally:
        subprocess.run(["scancel", blocker], check=False)


REGISTRY_ROOT = Path("/var/lib/imgsave-cluster/registry/docker/registry/v2/repositories")


def test_a_save_cancelled_while_uploading_leaves_no_partial_upload() -> None:
    """``imgsave cancel`` while the layer streams: the upload's body is ended cleanly,
    the registry accepts the DELETE of the partial upload, the container runs on."""
    s = site()
    repo = unique("alice/cut")
    with session_container("n1", "alice") as name:
        _fill("n1", name, 300)
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        # once the pause is recorded, the upload has started and the read begins
        assert _wait_guarded(job), "the save never recorded a pause before pausing"
        assert _wait_paused("n1", name, seconds=5), "the save never paused the container"
        imgsave_as("alice", "cancel", job)
        status = wait_final(s, job, "alice")
        # accounting says CANCELLED at once; the save resumes the container as it ends
        deadline = time.monotonic() + 30
        while container_state("n1", name) != "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert container_state("n1", name) == "running"
    assert status.state is JobState.CANCELLED
    # distribution 2.8 accepts the DELETE and removes the upload's data; it keeps its
    # hash state at offset 0 (108 bytes)
    uploads = REGISTRY_ROOT / repo / "_uploads"
    left = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    assert not [p for p in left if p.name == "data"], left
    assert sum(p.stat().st_size for p in left) < 4096, left
    assert requests.get(f"http://{REGISTRY}/v2/{repo}/tags/list",
                        timeout=10).json().get("tags") in (None, [])


def _slurmdbd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "slurmdbd"], capture_output=True,
                          check=False).returncode == 0


def test_slurmdbd_down_status_says_so_and_recovers() -> None:
    """slurmdbd stopped for real: a save the controller has forgotten and that left no
    result (cancelled while queued) is UNKNOWN with the reason, never FAILED or lost; a
    finished save with its result is still COMPLETED (from the node's result); a live
    one has its state from the controller; once slurmdbd is back, all are right."""
    s = site()
    cpus = os.cpu_count() or 1
    with session_container("n1", "alice") as name:
        done_job = submit_as("alice", name, unique("alice/dbd") + ":v1", node="n1")
        assert wait_final(s, done_job, "alice").state is JobState.COMPLETED
    blocker = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-c",
                      str(cpus), "-o", "/dev/null", "--wrap", "sleep 120").stdout.strip()
    try:
        gone_job = submit_as("alice", "jupyter-x", unique("alice/dbdgone") + ":v1", node="n2")
        imgsave_as("alice", "cancel", gone_job)
        deadline = time.monotonic() + 60  # MinJobAge: until the controller forgets them
        while (job_in_squeue(done_job) or job_in_squeue(gone_job)) and \
                time.monotonic() < deadline:
            time.sleep(1)
        subprocess.run(["pkill", "-x", "slurmdbd"], check=True)
        deadline = time.monotonic() + 30
        while _slurmdbd_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        live = submit_as("alice", "jupyter-x", unique("alice/dbdlive") + ":v1", node="n2")
        shown = json.loads(imgsave_as("alice", "--json", "status", done_job, gone_job,
                                      live).stdout)
        by_id = {row["job_id"]: row for row in shown}
        assert by_id[done_job]["state"] == "completed"  # the node's result says so
        assert by_id[gone_job]["state"] == "unknown" and not by_id[gone_job]["final"]
        assert "slurmdbd" in by_id[gone_job]["reason"], by_id[gone_job]
        assert by_id[live]["state"] == "pending"
        imgsave_as("alice", "cancel", live)
        # a save followed with --wait while accounting is down ends when the save does
        with session_container("n1", "alice") as name:
            waited = submit_as("alice", name, unique("alice/dbdwait") + ":v1", node="n1")
            started = time.monotonic()
            followed = as_user("alice", IMGSAVE, "--json", "status", waited, "--wait",
                               "--timeout", "150")
            took = time.monotonic() - started
        assert json.loads(followed.stdout)[0]["state"] == "completed", followed.stdout
        assert took < 120, f"--wait took {took:.0f} s"
    finally:
        subprocess.run(["scancel", blocker], check=False)
        subprocess.run([str(CLUSTER), "up"], capture_output=True, timeout=300, check=True)
    (back,) = s.saves.status([gone_job], "alice")
    assert back.state is JobState.CANCELLED


def job_in_squeue(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job], capture_output=True, text=True,
                         check=False)
    return job in out.stdout


def test_concurrent_api_saves_lose_nothing(
    served: tuple[str, list[str], dict[str, str]],  # noqa: F811
) -> None:
    """200 save requests at once through ``imgsave serve`` (the service account) for
    three users: every request gets a job or a retryable error, never a 500; every job
    answered exists in the scheduler exactly once; the per-user limit holds."""
    url, argv, env = served
    tokens = {}
    for user in ("alice", "bob", "dana"):
        made = subprocess.run([*argv, "--json", "token", "create", user], env=env,
                              capture_output=True, text=True, check=True, timeout=60)
        tokens[user] = json.loads(made.stdout)["token"]
    marker = unique("load").replace("-", "")
    cpus = os.cpu_count() or 1
    blocker = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-c",
                      str(cpus), "-o", "/dev/null", "--wrap", "sleep 120").stdout.strip()

    def post(i: int) -> tuple[str, int, dict[str, object]]:
        user = ("alice", "bob", "dana")[i % 3]
        r = requests.post(f"{url}/api/v1/saves", timeout=120,
                          headers={"Authorization": f"Bearer {tokens[user]}"},
                          json={"container": "jupyter-x", "target": f"{marker}:v{i}",
                                "node": "n2"})
        return user, r.status_code, r.json()

    answers: list[tuple[str, int, dict[str, object]]] = []
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(post, range(200)))
        assert len(answers) == 200
        assert [a for a in answers if a[1] >= 500] == []
        accepted = [(user, body["job_id"]) for user, code, body in answers if code == 202]
        refused = [body for _, code, body in answers if code != 202]
        assert all(b["error"]["retryable"] for b in refused), refused  # type: ignore[index]
        per_user = {u: sum(1 for a, _ in accepted if a == u) for u in tokens}
        assert all(0 < n <= 8 for n in per_user.values()), per_user
        # the controller's record of the queued jobs, with their comments
        listed = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%u|%k"],
                                capture_output=True, text=True, check=True).stdout
        jobs = [line.split("|") for line in listed.splitlines() if marker in line]
        assert sorted(j for j, _, _ in jobs) == sorted(j for _, j in accepted)
        assert {owner for _, owner, _ in jobs} == {"imgsave"}  # the service account's
    finally:
        ids = [str(body["job_id"]) for _, code, body in answers if code == 202]
        subprocess.run(["scancel", blocker, *ids], check=False)


def test_a_pause_whose_command_failed_stays_on_record() -> None:
    """The engine's ``pause`` paused the container but its command failed (scancel's
    SIGTERM reaches every process of the job, ``podman pause`` too): the save's runner
    keeps the unpause on record, which the entry runs as the save ends (and the epilog,
    should the entry die first)."""
    from builder_jobs.node_guard import GuardedRunner
    from core.errors import CommandFailed
    from core.runner import run_command

    with session_container("n1", "alice") as name:
        cid = container_id("n1", name)
        guard = JobGuard(record_path(STATE_DIR, "990001" + str(os.getpid())), "e" * 32)
        node = ["nsenter", "-t", _slurmd_pid("n1"), "-m", "--", *PODMAN]

        def pause_then_fail(argv: object, **kwargs: object) -> object:
            run_command([*node, "pause", cid])  # the pause happens ...
            raise CommandFailed(list(map(str, argv)), -15, "", "killed")  # type: ignore[call-overload]

        runner = GuardedRunner(pause_then_fail, guard, node)  # type: ignore[arg-type]
        with pytest.raises(CommandFailed):
            runner([*node, "pause", cid])
        try:
            assert guard.unpause == [*node, "unpause", cid]  # ... and is still on record
            assert JobGuard.load(guard.path) == guard
            assert container_state("n1", name) == "paused"
        finally:
            run_command([*node, "unpause", cid], check=False)
            guard.clear()


def _slurmd_pid(node: str) -> str:
    return Path(f"/run/imgsave-cluster/slurmd-{node}.pid").read_text().strip()


def test_serve_killed_mid_save_loses_nothing(
    served: tuple[str, list[str], dict[str, str]],  # noqa: F811
) -> None:
    """``imgsave serve`` is SIGKILLed while a save it submitted runs, then started again
    on the same database: the save goes on (the scheduler holds it, not the server), its
    status is its true one, and the same request sent again (same Idempotency-Key)
    answers the same job instead of submitting a second."""
    from tests.cluster.test_api_cluster import token_for, wait_done
    from tests.support.serve import serve_pid, start_serve

    url, argv, env = served
    alice = token_for(served, "alice")
    name = unique("servekill")
    with session_container("n1", "alice") as container:
        _fill("n1", container, 300)
        body = {"container": container, "target": f"{name}:v1", "node": "n1"}
        headers = {**alice, "Idempotency-Key": f"key-{name}"}
        first = requests.post(f"{url}/api/v1/saves", json=body, headers=headers, timeout=60)
        assert first.status_code == 202, first.text
        job = str(first.json()["job_id"])
        assert _wait_guarded(job), "the save never began its read"
        os.kill(serve_pid(url), signal.SIGKILL)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
        restarted = start_serve(url, argv, env)
        try:
            during = requests.get(f"{url}/api/v1/saves/{job}", headers=alice, timeout=30)
            again = requests.post(f"{url}/api/v1/saves", json=body, headers=headers,
                                  timeout=60)
            status = wait_done(url, job, alice)
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)
        assert container_state("n1", container) == "running"
    assert during.status_code == 200 and during.json()["state"] in ("running", "completed")
    assert again.status_code == 202 and str(again.json()["job_id"]) == job, again.text
    assert status["state"] == "completed" and status["digest"].startswith("sha256:"), status
    listed = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i %k"],
                            capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in listed.splitlines() if f"/{name}:" in line] == [job]
    assert registry_tags(f"alice/{name}") == ["v1"]
