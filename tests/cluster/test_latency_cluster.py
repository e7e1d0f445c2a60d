"""Issue 12 on the real local cluster: ``imgsave submit --wait`` as alice (the runtime in
/opt, real Slurm with accounting, podman on n1, the registry), and the job's environment
built from the account database, whatever alice's environment holds."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from builder_jobs.spec import OUTPUT_FILE, spool_dir_for
from tests.support.cluster_helpers import (
    IMGSAVE,
    as_user,
    imgsave_as,
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


def test_submit_wait_follows_the_save_to_completed_and_exits_0() -> None:
    repo = unique("alice/wait")
    with session_container("n1", "alice") as name:
        done = imgsave_as("alice", "submit", name, f"{repo}:v1", "--node", "n1", "--wait")
        first, _, table = done.stdout.partition("\n")
        assert first.startswith("Submitted image save job "), done.stdout
        job = first.rsplit(" ", 1)[1]
        row = next(line for line in table.splitlines() if line.startswith(job + " "))
        assert " COMPLETED " in row and " done " in row and "100%" in row
        assert f"{job} [" in done.stderr and "100% done" in done.stderr  # the progress bar
        assert registry_tags(repo) == ["v1"]
        # --json: one document on stdout, the job id and progress on stderr
        js = imgsave_as("alice", "--json", "submit", name, f"{repo}:v2", "--node", "n1",
                        "--wait")
        answer = json.loads(js.stdout)
        assert answer["status"]["state"] == "completed" and answer["status"]["stage"] == "done"
        assert js.stderr.startswith(f"Submitted image save job {answer['job_id']}\n")
        assert sorted(registry_tags(repo)) == ["v1", "v2"]


def test_submit_wait_exits_1_with_the_reason_when_the_save_fails() -> None:
    # no such container on n1: the node refuses, the job fails, --wait says why
    failed = imgsave_as("alice", "submit", unique("no-such-container"), "alice/x:v1",
                        "--node", "n1", "--wait", check=False)
    assert failed.returncode == 1, failed
    assert failed.stdout.startswith("Submitted image save job ")
    assert " FAILED " in failed.stdout or " failed " in failed.stdout.lower()
    assert "imgsave: error: job " in failed.stderr


def test_the_job_gets_the_accounts_environment_not_the_submitters() -> None:
    """bob plants a ``sudo`` in a directory on alice's PATH, a BASH_ENV file and an
    LD_PRELOAD; alice's environment names them (and a token). The job's environment is
    built from the account database (sbatch under env -i, --export ALL): the save works,
    none of the planted files runs, nothing of them reaches the job's output."""
    planted = Path(tempfile.mkdtemp(prefix="imgsave-planted-", dir="/tmp"))
    marker = planted / "ran"
    try:
        shutil.chown(planted, "bob", "bob")
        planted.chmod(0o777)  # so the planted programs could write their marker as alice
        for program in ("sudo", "rc.sh"):
            path = planted / program
            path.write_text(f"#!/bin/sh\necho {program} >> {marker}\n")
            path.chmod(0o755)
            shutil.chown(path, "bob", "bob")
        rc = str(planted / "rc.sh")
        env = {"PATH": f"{planted}:/usr/bin:/bin:/usr/sbin:/sbin", "BASH_ENV": rc, "ENV": rc,
               "LD_PRELOAD": str(planted / "evil.so"), "PYTHONPATH": str(planted),
               "HOME": str(planted), "IMGSAVE_TOKEN": "secret-token",
               "SBATCH_PARTITION": "debug", "SLURM_EXPORT_ENV": "ALL"}
        repo = unique("alice/env")
        with session_container("n1", "alice") as name:
            done = as_user("alice", IMGSAVE, "--json", "submit", name, f"{repo}:v1", "--node",
                           "n1", "--wait", env=env, check=False)
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
        assert answer["status"]["state"] == "completed"
        assert not marker.exists(), marker.read_text()
        spool = site().config.spool_for("alice")
        output = subprocess.run(["cat", str(spool_dir_for(spool, answer["request_id"]) /
                                            OUTPUT_FILE)], capture_output=True, text=True,
                                check=False).stdout  # fmt: skip
        assert str(planted) not in output and "secret-token" not in output, output
        assert registry_tags(repo) == ["v1"]
    finally:
        shutil.rmtree(planted, ignore_errors=True)
