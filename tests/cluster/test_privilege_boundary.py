"""The privilege boundary, attacked as a second local user would (issue 10).

Every attack runs as the real Unix users of the local cluster (``runuser -u bob --``),
against the real Slurm with accounting, podman on the nodes, the registry, sudo and the
installed ``imgsave-node-save``. Each asserts the refusal and that nothing changed: the
victim's job still runs, the directory is still root's, alice can still save.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.reports.report import build_report
from scheduler_glue.states import JobState
from tests.support.cluster_helpers import (
    as_user,
    imgsave_as,
    job_state,
    registry_tags,
    require_cluster,
    sacct_owner,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster
ENTRY = "/usr/local/sbin/imgsave-node-save"
SPOOL_ROOT = Path("/var/spool/imgsave")


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


@pytest.fixture
def alices_sleeper() -> Iterator[str]:
    """A job of alice's that is not a save: the victim of bob's attempts."""
    job = as_user("alice", "sbatch", "--parsable", "-p", "batch", "-w", "n2", "-o", "/dev/null",
                  "--wrap", "sleep 300").stdout.strip()
    deadline = time.monotonic() + 30
    while job_state(job) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    try:
        yield job
    finally:
        subprocess.run(["scancel", job], check=False)


def _bob_forges_a_save_for(user: str, marker: str) -> str:
    """bob submits a job named like a save whose comment claims ``user`` (its category
    is ``marker``, so any report that counted it would show a row for it)."""
    comment = (f"imgsave/1 category={marker};container=jupyter-{user};formats=oci;"
               f"request_id={'e' * 32};target=127.0.0.1:5000/{user}/{marker}:v1;user={user}")
    return as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n1",
                   "--job-name", f"imgsave-{marker}", "--comment", comment, "-o", "/dev/null",
                   "--wrap", "sleep 1").stdout.strip()


def _wait_accounted(job: str, timeout: float = 30) -> None:
    """Until slurmdbd has the job (a moment after sbatch) and it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sacct_owner(job) and job_state(job) not in ("PENDING", "RUNNING", "COMPLETING"):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} not finished in accounting after {timeout}s")


# --- 1. root via the SIF directory --------------------------------------------------------


def test_a_sif_directory_linked_to_a_root_directory_stays_roots() -> None:
    """bob links his SIF directory (``{home}/sif``) to a root-owned one and saves a SIF:
    the file is written with bob's own uid, so the kernel refuses; the directory stays
    root's and empty, and nothing is pushed."""
    victim = Path(tempfile.mkdtemp(prefix="imgsave-victim-", dir="/var/lib"))
    victim.chmod(0o755)
    link = Path("/home/bob/sif")
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    as_user("bob", "ln", "-s", str(victim), str(link))
    repo = unique("bob/sifattack")
    try:
        with session_container("n1", "bob") as name:
            job = submit_as("bob", name, f"{repo}:v1", "--format", "sif", node="n1")
            status = wait_final(site(), job, "bob")
        assert status.state is JobState.FAILED
        assert "Permission denied" in status.reason, status.reason
        assert list(victim.iterdir()) == []
        info = victim.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o755)
        assert registry_tags(repo) == []
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(victim, ignore_errors=True)


# --- 2. cancelling someone else's job ------------------------------------------------------


def test_bob_cannot_cancel_alices_job_by_any_door(alices_sleeper: str) -> None:
    """No shared index to plant into; cancel asks the scheduler whose job it is."""
    refused = imgsave_as("bob", "cancel", alices_sleeper, check=False)
    assert refused.returncode == 1
    assert f"job {alices_sleeper} is not an imgsave save job of yours" in refused.stderr
    missing = imgsave_as("bob", "cancel", "999999", check=False)
    assert missing.stderr.replace("999999", "N") == refused.stderr.replace(alices_sleeper, "N")
    # there is no world-writable spool to plant an index entry in
    if SPOOL_ROOT.exists():
        assert not SPOOL_ROOT.stat().st_mode & 0o002
    bob_spool = site().config.spool_for("bob")
    planted = as_user("bob", "sh", "-c", 'umask 077 && mkdir -p "$1/by-job" && '
                      'ln -sfn /home/alice/.imgsave/spool "$1/by-job/$2"', "sh",
                      str(bob_spool), alices_sleeper, check=False)
    assert planted.returncode == 0
    again = imgsave_as("bob", "cancel", alices_sleeper, check=False)
    assert again.returncode == 1 and "not an imgsave save job of yours" in again.stderr
    assert job_state(alices_sleeper) == "RUNNING"
    (bob_spool / "by-job" / alices_sleeper).unlink()


def test_a_forged_save_is_not_alices(alices_sleeper: str) -> None:
    """bob's job whose comment says user=alice: not in her queue, not hers to cancel or
    to see, not in her report; and the node's entry refuses to run it."""
    marker = unique("forged").replace("-", "")
    forged = _bob_forges_a_save_for("alice", marker)
    _wait_accounted(forged)
    queue = json.loads(imgsave_as("alice", "--json", "queue").stdout)
    assert forged not in [row["job_id"] for row in queue]
    seen = imgsave_as("alice", "status", forged, check=False)
    assert seen.returncode == 1 and "not an imgsave save job of yours" in seen.stderr
    report = build_report(site(), by="user,category")  # root's view: every user
    categories = {str(r.to_dict().get("category")) for r in report.rows}
    assert "cpu" in categories and marker not in categories
    assert sacct_owner(forged) == "bob"


# --- 3. locking another user out -----------------------------------------------------------


def test_bob_cannot_write_into_alices_spool_and_a_bad_result_is_no_traceback() -> None:
    s = site()
    spool = s.config.spool_for("alice")
    as_user("alice", "sh", "-c", 'umask 077 && mkdir -p "$1"', "sh", str(spool))
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    planted = as_user("bob", "ln", "-s", "/etc/shadow", str(spool / "by-job" / "1"),
                      check=False)
    assert planted.returncode != 0 and "Permission denied" in planted.stderr
    # alice's own mistake (a result.json linked to a root-only file) is ignored, not a
    # traceback; her next save and queue still work
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, unique("alice/locked") + ":v1", node="n1")
        status = wait_final(s, job, "alice")
        result = spool / status.request_id / "result.json"
        result.unlink()
        result.symlink_to("/etc/shadow")
        os.lchown(result, pwd.getpwnam("alice").pw_uid, -1)
        shown = imgsave_as("alice", "status", job, check=False)
        result.unlink()  # alice tidies up her own mistake
        assert shown.returncode == 0 and "Traceback" not in shown.stderr
        assert "COMPLETED" in shown.stdout
        assert imgsave_as("alice", "queue").returncode == 0
        again = submit_as("alice", name, unique("alice/after") + ":v1", node="n1")
        assert wait_final(s, again, "alice").state is JobState.COMPLETED


# --- 5. disclosure ------------------------------------------------------------------------


def test_spool_files_and_the_database_are_their_owners_alone() -> None:
    s = site()
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, unique("alice/modes") + ":v1", node="n1")
        status = wait_final(s, job, "alice")
    work = s.config.spool_for("alice") / status.request_id
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    for path in work.iterdir():
        assert path.stat().st_uid == pwd.getpwnam("alice").pw_uid, path
        assert not path.stat().st_mode & 0o077, (path, oct(path.stat().st_mode))
    peek = as_user("bob", "cat", str(work / "result.json"), check=False)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    other = imgsave_as("bob", "status", job, check=False)
    assert other.returncode == 1 and status.target not in other.stderr
    assert sacct_owner(job) == "alice"  # CLI mode: the job is alice's own


# --- the privileged entry itself -----------------------------------------------------------


def _entry_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(user, "sudo", "-n", ENTRY, *args, check=False)


def test_the_entry_refuses_another_users_job_and_forged_requests(alices_sleeper: str) -> None:
    """bob runs the root entry on alice's job, on his own forged save, with extra
    arguments, and without sudo: every one is refused and nothing is saved."""
    on_alices = _entry_as("bob", alices_sleeper, "a" * 32)
    assert on_alices.returncode == 2 and "is not yours" in on_alices.stderr
    assert job_state(alices_sleeper) == "RUNNING"
    for args in ((alices_sleeper,), (alices_sleeper, "a" * 32, "--config"),
                 ("--config", "/tmp/evil.toml", alices_sleeper, "a" * 32), ("1;id", "a" * 32)):
        refused = _entry_as("bob", *args)
        assert refused.returncode == 2, (args, refused.stderr)
    direct = as_user("bob", ENTRY, alices_sleeper, "a" * 32, check=False)
    assert direct.returncode == 2 and "must run as root" in direct.stderr
    no_rule = as_user("bob", "sudo", "-n", "/usr/bin/podman", "ps", check=False)
    assert no_rule.returncode != 0  # no sudo for the engine


def test_a_running_job_of_bobs_own_cannot_be_turned_against_alice() -> None:
    """bob's own running job with a comment naming alice and her container: the entry
    refuses (the metadata names another user than the job's owner)."""
    marker = unique("turned")
    with session_container("n1", "alice") as name:
        comment = (f"imgsave/1 category=cpu;container={name};formats=oci;"
                   f"request_id={'d' * 32};target=127.0.0.1:5000/bob/{marker}:v1;user=alice")
        job = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n1",
                      "--job-name", "imgsave-bob", "--comment", comment, "-o", "/dev/null",
                      "--wrap", f"sudo -n {ENTRY} $SLURM_JOB_ID {'d' * 32}; sleep 2"
                      ).stdout.strip()
        deadline = time.monotonic() + 60
        while job_state(job) not in ("COMPLETED", "FAILED") and time.monotonic() < deadline:
            time.sleep(0.5)
        paused = subprocess.run(["scripts/cluster.sh", "node-exec", "n1", "podman", "inspect",
                                 "-f", "{{.State.Status}}", name], capture_output=True,
                                text=True, check=True, cwd=Path(__file__).parents[2])
        assert paused.stdout.strip() == "running"
    assert registry_tags(f"bob/{marker}") == [] and registry_tags(f"alice/{marker}") == []


def test_a_finished_request_cannot_be_replayed() -> None:
    s = site()
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, unique("alice/replay") + ":v1", node="n1")
        status = wait_final(s, job, "alice")
        assert status.state is JobState.COMPLETED
        replay = _entry_as("alice", job, status.request_id)
    assert replay.returncode == 2
    assert "not running" in replay.stderr or "already ran" in replay.stderr


# --- root never submits --------------------------------------------------------------------


def test_root_is_refused_and_submits_nothing() -> None:
    marker = unique("asroot")
    refused = subprocess.run(["/opt/imgsave/venv/bin/imgsave", "submit", "jupyter-alice",
                              f"{marker}:v1", "--node", "n1"], capture_output=True, text=True,
                             timeout=60, check=False, cwd="/")
    assert refused.returncode == 1 and "never submits jobs as root" in refused.stderr
    for_alice = subprocess.run(["/opt/imgsave/venv/bin/imgsave", "--user", "alice", "submit",
                                "jupyter-alice", f"{marker}:v1", "--node", "n1"],
                               capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert for_alice.returncode == 1 and "never submits jobs as root" in for_alice.stderr
    listed = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1hours", "-o",
                             "JobID,Comment"], capture_output=True, text=True, check=True).stdout
    assert marker not in listed


def test_alice_cannot_save_as_bob() -> None:
    as_bob = imgsave_as("alice", "--user", "bob", "submit", "jupyter-bob", "x:v1", "--node",
                        "n1", check=False)
    assert as_bob.returncode == 2 and "service account" in as_bob.stderr
    env_bob = as_user("alice", "/opt/imgsave/venv/bin/imgsave", "--json", "submit",
                      "jupyter-nothing", unique("alice/envbob") + ":v1", "--node", "n1",
                      env={"USER": "bob", "LOGNAME": "bob"})
    job = json.loads(env_bob.stdout)["job_id"]
    _wait_accounted(job)
    assert sacct_owner(job) == "alice"  # the kernel's uid, not $USER
    (status,) = site().saves.status([job], "alice")
    assert status.user == "alice" and "/alice/" in status.target
    imgsave_as("alice", "cancel", job, check=False)
