"""A save through the real local cluster: Slurm with accounting, podman on the node, the
registry. Nothing here is faked (scripts/cluster.sh up starts every part)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from builder_jobs.events import Stage
from core.errors import InvalidRequest, NotFound, PermissionDenied
from scheduler_glue.states import JobState
from tests.support.cluster_helpers import (
    IMGSAVE,
    REGISTRY,
    REGISTRY_LOG,
    TOP,
    as_user,
    imgsave_as,
    job_state,
    node_exec,
    registry_tags,
    require_cluster,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", autouse=True)
def _cluster() -> None:
    require_cluster()


def _add_file(node: str, container: str, path: str, text: str) -> None:
    node_exec(node, "podman", "exec", container, "sh", "-c",
              'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', "sh", path, text)


def test_saved_image_runs_elsewhere_with_the_users_file() -> None:
    s = site()
    repo = unique("alice/e2e")
    with session_container("n1", "alice") as name:
        _add_file("n1", name, "/home/jovyan/added.txt", "from the session")
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        status = wait_final(s, job, "alice")
    assert status.state is JobState.COMPLETED, status.reason
    assert status.stage is Stage.DONE and status.percent == 100
    assert status.node == "n1"
    assert status.digest.startswith("sha256:")
    # Pulled back on the other node (its own storage: a real pull) and run.
    run = node_exec("n2", "podman", "run", "--rm", "--network", "none", "--tls-verify=false",
                    f"{REGISTRY}/{repo}:v1", "cat", "/home/jovyan/added.txt")
    assert run.stdout == "from the session"
    node_exec("n2", "podman", "rmi", "-f", f"{REGISTRY}/{repo}:v1", check=False)


def _uploaded_digests(log_text: str, repository: str) -> list[str]:
    # distribution's access log: "PUT /v2/<repo>/blobs/uploads/<uuid>?digest=sha256:..."
    pattern = re.compile(
        rf"PUT /v2/{re.escape(repository)}/blobs/uploads/[^ ?]+\?[^ ]*"
        r"digest=(sha256(?::|%3A)[0-9a-f]{64})"
    )
    return [d.replace("%3A", ":") for d in pattern.findall(log_text)]


def test_second_save_uploads_only_the_new_layer() -> None:
    s = site()
    repo = unique("alice/layers")
    with session_container("n1", "alice") as name:
        _add_file("n1", name, "/opt/one.txt", "1")
        first = submit_as("alice", name, f"{repo}:v1", node="n1")
        assert wait_final(s, first, "alice").state is JobState.COMPLETED
        offset = REGISTRY_LOG.stat().st_size
        _add_file("n1", name, "/opt/two.txt", "2")
        second = submit_as("alice", name, f"{repo}:v2", node="n1")
        assert wait_final(s, second, "alice").state is JobState.COMPLETED
    with REGISTRY_LOG.open() as fh:
        fh.seek(offset)
        uploaded = set(_uploaded_digests(fh.read(), repo))
    v2 = s.registry.manifest(repo, "v2")
    assert v2 is not None
    layers = [layer.digest for layer in v2.layers]
    base_layer = layers[0]
    assert base_layer not in uploaded, "the base layer was sent again"
    assert layers[-1] in uploaded, "the new layer was not uploaded"
    assert len(uploaded & set(layers)) == 1


def test_pinned_to_the_wrong_node_fails_with_the_reason() -> None:
    s = site()
    repo = unique("alice/wrongnode")
    with session_container("n1", "alice") as name:
        job = submit_as("alice", name, f"{repo}:v1", node="n2")
        status = wait_final(s, job, "alice")
    assert status.state is JobState.FAILED
    assert status.stage is Stage.FAILED
    assert f"container {name} not found on n2" in status.reason
    assert registry_tags(repo) == []


def test_another_users_container_is_refused_and_nothing_is_pushed() -> None:
    s = site()
    repo = unique("alice/stolen")
    with session_container("n1", "bob", name=unique("jupyter-lab")) as name:
        job = submit_as("alice", name, f"{repo}:v1", node="n1")
        status = wait_final(s, job, "alice")
    assert status.state is JobState.FAILED
    assert "alice" in status.reason or "owner" in status.reason
    assert "bob" not in status.reason  # never reveal who owns it
    assert registry_tags(repo) == []


def test_status_comes_from_accounting_after_the_job_leaves_squeue() -> None:
    s = site()
    repo = unique("alice/acct")
    with session_container("n2", "alice") as name:
        job = submit_as("alice", name, f"{repo}:v1", node="n2")
        wait_final(s, job, "alice")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                             text=True, check=False)
        if job not in out.stdout:
            break
        time.sleep(2)
    else:
        pytest.fail("job never left squeue (MinJobAge)")
    (status,) = s.saves.status([job], "alice")
    assert status.state is JobState.COMPLETED
    assert status.node == "n2"
    assert status.end_time is not None and status.start_time is not None
    queue = json.loads(imgsave_as("alice", "--json", "queue").stdout)  # as alice herself
    assert job in [row["job_id"] for row in queue]


def _jobs_mentioning(text: str) -> list[str]:
    """Job comments naming ``text``, live (squeue keeps finished jobs MinJobAge seconds)
    and in accounting."""
    live = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i %k"],
                          capture_output=True, text=True, check=True).stdout
    past = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o",
                           "JobID,Comment"], capture_output=True, text=True, check=True).stdout
    return [line for line in (live + past).splitlines() if text in line]


@pytest.mark.parametrize(
    ("container", "target", "node", "error", "words"),
    [
        ("jupyter alice", "alice/x:v1", "n1", InvalidRequest, "container name"),
        ("jupyter-alice", "alice/X:v1", "n1", InvalidRequest, "lowercase"),
        ("jupyter-alice", "alice/x:v1!", "n1", InvalidRequest, "tag"),
        ("jupyter-alice", "alice/x", "n1", InvalidRequest, "no tag"),
        ("jupyter-alice", "bob/x:v1", "n1", PermissionDenied, "namespace"),
        ("jupyter-alice", "alice/x:v1", "n9", NotFound, "n9"),
        ("jupyter-alice", "alice/x:v1", "n1,n2", InvalidRequest, "not a node name"),
        ("jupyter-alice", "alice/x:v1", "n[1-2]", InvalidRequest, "not a node name"),
    ],
)
def test_bad_requests_are_refused_before_anything_runs(
    container: str, target: str, node: str, error: type[Exception], words: str
) -> None:
    s = site()
    spool = s.config.spool_for("alice")
    spool_before = set(spool.iterdir()) if spool.exists() else set()
    marker = unique("bad")
    target = target.replace("/x", f"/{marker}")
    refused = imgsave_as("alice", "submit", container, target, "--node", node, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("imgsave: error: ")
    assert words in refused.stderr
    assert (set(spool.iterdir()) if spool.exists() else set()) == spool_before
    assert _jobs_mentioning(marker) == []


def _shared_config(text: str) -> Path:
    """A site config file every user may read (pytest's tmp_path is root's, 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="imgsave-config-", dir="/tmp"))
    directory.chmod(0o755)
    path = directory / "site.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_registry_down_is_refused_at_submit() -> None:
    config = (TOP / "site_configs" / "local.toml").read_text()
    down = _shared_config(config.replace("http://127.0.0.1:5000", "http://127.0.0.1:5999"))
    marker = unique("down")
    refused = imgsave_as("alice", "--config", str(down), "submit", "jupyter-alice",
                         f"alice/{marker}:v1", "--node", "n1", check=False)
    assert refused.returncode == 1
    assert "127.0.0.1:5999" in refused.stderr and "try again" in refused.stderr
    assert _jobs_mentioning(marker) == []


def test_cli_submit_status_queue_images_delete_cancel() -> None:
    repo = unique("alice/cli")

    def imgsave(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return imgsave_as("alice", *args, check=check)

    with session_container("n1", "alice") as name:
        out = imgsave("submit", name, f"{repo}:v1", "--node", "n1").stdout
        match = re.fullmatch(r"Submitted image save job (\d+)\n", out)
        assert match, out
        job = match.group(1)
        waited = imgsave("status", job, "--wait")
        assert "COMPLETED" in waited.stdout and "100%" in waited.stderr
        queue = imgsave("--json", "queue")
        assert job in [row["job_id"] for row in json.loads(queue.stdout)]
        listed = json.loads(imgsave("--json", "images").stdout)
        assert f"{repo}:v1" in [f"{i['repository']}:{i['tag']}" for i in listed]
        deleted = imgsave("delete", f"{repo}:v1")
        assert deleted.stdout.startswith(f"Deleted {repo}:v1")
        assert registry_tags(repo) == []
        # a save that cannot start (its node's share is held) is cancelled cleanly
        bad = imgsave("submit", name, "alice/x:v1", "--node", "n7", check=False)
        assert bad.returncode == 1 and bad.stderr.startswith("imgsave: error: ")
        other = imgsave_as("bob", "status", job, check=False)
        assert other.returncode == 1 and "not an imgsave save job of yours" in other.stderr
        assert imgsave_as("bob", "cancel", job, check=False).returncode == 1
        # alice cannot act as bob; $USER does not make her bob either
        assert imgsave("--user", "bob", "queue", check=False).returncode == 2
        as_bob = as_user("alice", IMGSAVE, "--json", "queue", env={"USER": "bob",
                                                                   "LOGNAME": "bob"})
        assert job in [row["job_id"] for row in json.loads(as_bob.stdout)]


def _block_node(node: str) -> str:
    """alice's job holding every CPU of ``node`` in the imgsave partition."""
    cpus = os.cpu_count() or 1
    return as_user("alice", "sbatch", "--parsable", "-p", "imgsave", "-w", node, "-c", str(cpus),
                   "-o", "/dev/null", "--wrap", "sleep 120").stdout.strip()


def test_cancel_a_queued_save() -> None:
    s = site()
    blocker = _block_node("n2")
    try:
        job = submit_as("alice", "jupyter-x", unique("alice/c") + ":v1", node="n2")
        (pending,) = s.saves.status([job], "alice")
        assert pending.state in (JobState.PENDING, JobState.UNKNOWN)
        assert pending.stage is Stage.QUEUED
        refused = imgsave_as("bob", "cancel", job, check=False)
        assert refused.returncode == 1 and "not an imgsave save job of yours" in refused.stderr
        assert job_state(job) == "PENDING"
        imgsave_as("alice", "cancel", job)
        status = wait_final(s, job, "alice", timeout=60)
        assert status.state is JobState.CANCELLED
        assert status.reason == "the save job was cancelled by alice"  # who, from accounting
    finally:
        subprocess.run(["scancel", blocker], check=False)


def test_both_formats_from_one_save_through_slurm(tmp_path: Path) -> None:
    """--format oci,sif: the OCI image, the SIF in alice's directory, and the SIF as an
    ORAS artifact laid out as `apptainer push oras://` does."""
    import hashlib
    import pwd

    s = site()
    repo = unique("alice/both")
    with session_container("n1", "alice") as name:
        _add_file("n1", name, "/home/jovyan/in-sif.txt", "squashed")
        job = submit_as("alice", name, f"{repo}:v1", "--format", "oci,sif", node="n1")
        status = wait_final(s, job, "alice")
    assert status.state is JobState.COMPLETED, status.reason
    assert status.result is not None
    sif = Path(status.result.sif_path)
    assert sif.parent == Path("/home/alice/sif")
    assert sif.stat().st_uid == pwd.getpwnam("alice").pw_uid
    assert sif.parent.stat().st_uid == pwd.getpwnam("alice").pw_uid
    listing = subprocess.run(["siftool", "list", str(sif)], capture_output=True, text=True,
                             check=True).stdout
    assert "FS (Squashfs/*System/amd64)" in listing
    part = tmp_path / "part.sqfs"
    with part.open("wb") as out:
        subprocess.run(["siftool", "dump", "1", str(sif)], stdout=out, check=True)
    files = subprocess.run(["unsquashfs", "-l", str(part)], capture_output=True, text=True,
                           check=True).stdout
    assert "squashfs-root/home/jovyan/in-sif.txt" in files
    assert sorted(registry_tags(repo)) == ["v1", "v1-sif"]
    oras = s.registry.manifest(repo, "v1-sif")
    assert oras is not None
    assert oras.config_media_type == "application/vnd.sylabs.sif.config.v1+json"
    (layer,) = oras.layers
    assert layer.media_type == "application/vnd.sylabs.sif.layer.v1.sif"
    pulled = s.registry.get_blob(repo, layer.digest)
    assert "sha256:" + hashlib.sha256(pulled).hexdigest() == status.result.sif_digest
    assert pulled == sif.read_bytes()


def _submit_with(config: Path, user: str, container: str, target: str) -> str:
    done = imgsave_as(user, "--config", str(config), "--json", "submit", container, target,
                      "--node", "n2")
    return str(json.loads(done.stdout)["job_id"])


def test_saves_in_flight_per_user_are_limited() -> None:
    """limits.max_saves_in_flight_per_user: a second queued save of alice's is refused
    while the first waits; bob is not affected."""
    config = _shared_config((TOP / "site_configs" / "local.toml").read_text().replace(
        "max_saves_in_flight_per_user = 8", "max_saves_in_flight_per_user = 1"))
    blocker = _block_node("n2")
    try:
        first = _submit_with(config, "alice", "jupyter-x", "l:v1")
        marker = unique("second")
        refused = imgsave_as("alice", "--config", str(config), "submit", "jupyter-x",
                             f"{marker}:v1", "--node", "n2", check=False)
        assert "allows 1 at a time" in refused.stderr and first in refused.stderr
        assert _jobs_mentioning(marker) == []
        other = _submit_with(config, "bob", "jupyter-y", "l:v1")
        for job, user in ((first, "alice"), (other, "bob")):
            imgsave_as(user, "cancel", job)
    finally:
        subprocess.run(["scancel", blocker], check=False)


def test_a_stale_job_index_entry_never_stands_for_a_new_save(tmp_path: Path) -> None:
    """A link left under the next job id (reused ids, or planted) is replaced at submit."""
    from api.service.spool import BY_JOB_DIR

    s = site()
    index = s.config.spool_for("alice") / BY_JOB_DIR
    as_user("alice", "sh", "-c", 'umask 077 && mkdir -p "$1"', "sh", str(index))
    probe = as_user("alice", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "--hold",
                    "-o", "/dev/null", "--wrap", "true").stdout.strip().split(";")[0]
    subprocess.run(["scancel", probe], check=False)
    planted = index / str(int(probe) + 1)
    planted.unlink(missing_ok=True)
    planted.symlink_to(tmp_path)  # a stale "spec"
    with session_container("n2", "alice") as name:
        job = submit_as("alice", name, unique("alice/idx") + ":v1", node="n2")
        assert job == planted.name
        (status,) = s.saves.status([job], "alice")
        assert os.readlink(planted) == f"../{status.request_id}"
        assert wait_final(s, job, "alice").state is JobState.COMPLETED


def test_an_index_entry_that_names_another_request_is_not_this_jobs_status(
        tmp_path: Path) -> None:
    """Accounting's metadata decides: a planted link to a forged spec claiming a real job
    of alice's is refused, not shown."""
    import shutil

    from api.service.spool import BY_JOB_DIR

    s = site()
    with session_container("n2", "alice") as name:
        real_job = submit_as("alice", name, unique("alice/real") + ":v1", node="n2")
        real = wait_final(s, real_job, "alice")
    spool = s.config.spool_for("alice")
    forged = spool / ("f" * 32)
    shutil.rmtree(forged, ignore_errors=True)
    shutil.copytree(spool / real.request_id, forged)
    spec = json.loads((forged / "spec.json").read_text())
    spec["request_id"], spec["target"] = "f" * 32, "127.0.0.1:5000/alice/forged:v1"
    (forged / "spec.json").write_text(json.dumps(spec))
    link = spool / BY_JOB_DIR / real.job_id
    link.unlink()
    link.symlink_to(f"../{'f' * 32}")
    try:
        with pytest.raises(NotFound):
            s.saves.status([real.job_id], "alice")
        assert real.job_id not in [q.job_id for q in s.saves.queue("alice")]
    finally:
        link.unlink()
        link.symlink_to(f"../{real.request_id}")
        shutil.rmtree(forged, ignore_errors=True)
    assert s.saves.status([real.job_id], "alice")[0].target.endswith(":v1")
