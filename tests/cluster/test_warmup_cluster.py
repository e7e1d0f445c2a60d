"""Warm-ups on the real local cluster: Slurm with accounting, podman on n1 and n2, the
registry; every command as the users themselves (``runuser -u alice``). Nothing faked.

Alice saves a session three times (three images sharing the base layer), then warms
them onto nodes: both nodes pull, a second run finds them already present, a missing
image fails only its node, shared layers are fetched once per node (the registry's own
access log), and bob can neither ask for alice's image nor forge a job that pulls it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from tests.support.cluster_helpers import (
    REGISTRY,
    REGISTRY_LOG,
    as_user,
    imgsave_as,
    job_state,
    node_exec,
    sacct_owner,
    session_container,
    site,
    submit_as,
    unique,
    wait_final,
)

pytestmark = pytest.mark.cluster
ENTRY = "/usr/local/sbin/imgsave-node-save"


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """Three images alice saved from one session on n1: a, b and private."""
    saved: dict[str, str] = {}
    s = site()
    with session_container("n1", "alice") as name:
        for key in ("a", "b", "private"):
            node_exec("n1", "podman", "exec", name, "sh", "-c",
                      f"echo {key}-{secrets.token_hex(8)} > /tmp/{key}.txt")
            repo = unique(f"alice/warm-{key}")
            status = wait_final(s, submit_as("alice", name, f"{repo}:v1", node="n1"), "alice")
            assert status.stage.value == "done", status.reason
            saved[key] = f"{repo}:v1"
    yield saved
    for node in ("n1", "n2"):
        node_exec(node, "podman", "rmi", "-f", *(f"{REGISTRY}/{i}" for i in saved.values()),
                  check=False)


def _forget(node: str, *images: str) -> None:
    node_exec(node, "podman", "rmi", "-f", *(f"{REGISTRY}/{i}" for i in images), check=False)


def _warmup(user: str, *args: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    done = imgsave_as(user, "--json", "warmup", *args, "--wait", "--timeout", "240",
                      check=False, timeout=300)  # fmt: skip
    data = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, data, done.stderr


def _digest(image: str) -> str:
    repo, tag = image.rsplit(":", 1)
    r = requests.head(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def _outcomes(data: dict) -> dict[str, list[str]]:  # type: ignore[type-arg]
    return {n["node"]: [i["outcome"] for i in n["images"]] for n in data["nodes"]}


def test_warm_up_on_two_nodes_then_already_present(images: dict[str, str]) -> None:
    a = images["a"]
    for node in ("n1", "n2"):
        _forget(node, a)
    code, data, err = _warmup("alice", a, "--nodes", "n[1-2]")
    assert code == 0, err
    assert data["ok"] and _outcomes(data) == {"n1": ["pulled"], "n2": ["pulled"]}
    digest = _digest(a)
    for row in data["nodes"]:
        assert sacct_owner(row["job_id"]) == "alice"  # the job is hers in accounting
        (image,) = row["images"]
        assert image["digest"] == digest and image["bytes"] > 0 and image["error"] == ""
        held = node_exec(row["node"], "podman", "image", "inspect", "--format",
                         "{{.Digest}}", f"{REGISTRY}/{a}").stdout.strip()  # fmt: skip
        assert held == digest  # really on that node's own storage
    again_code, again, err = _warmup("alice", a, "--nodes", "n[1-2]")
    assert again_code == 0, err
    assert _outcomes(again) == {"n1": ["already present"], "n2": ["already present"]}
    table = imgsave_as("alice", "warmup-status", again["warmup_id"]).stdout
    assert "already present" in table and "n2" in table


def _blob_gets(since_offset: int, repos: list[str]) -> Counter[str]:
    with open(REGISTRY_LOG, "rb") as log:
        log.seek(since_offset)
        text = log.read().decode(errors="replace")
    names = "|".join(re.escape(r) for r in repos)
    pattern = re.compile('"GET /v2/(' + names + r')/blobs/(sha256:[0-9a-f]{64}) [^"]*" 200')
    return Counter(m.group(2) for m in pattern.finditer(text))


def test_layers_shared_between_images_are_fetched_once(images: dict[str, str]) -> None:
    a, b = images["a"], images["b"]
    _forget("n2", a, b)
    offset = os.path.getsize(REGISTRY_LOG)
    code, data, err = _warmup("alice", a, b, "--nodes", "n2")
    assert code == 0, err
    assert _outcomes(data) == {"n2": ["pulled", "pulled"]}
    time.sleep(1)  # the registry's log line follows its answer
    repos = [i.rsplit(":", 1)[0] for i in (a, b)]
    fetched = _blob_gets(offset, repos)
    top_a = _layers(a)[-1]
    assert fetched[top_a] == 1, fetched  # a's own layer: fetched, and once
    assert all(count == 1 for count in fetched.values()), fetched  # nothing twice
    assert set(_layers(a)) & set(_layers(b))  # they do share layers (at least the base)


def _layers(image: str) -> list[str]:
    repo, tag = image.rsplit(":", 1)
    r = requests.get(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return [layer["digest"] for layer in r.json()["layers"]]


def test_a_bad_image_fails_only_its_node(images: dict[str, str]) -> None:
    missing = unique("alice/warm-missing") + ":v1"
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir="/tmp", delete=False) as plan:
        plan.write(f'[[warmup]]\nnodes = "n1"\nimages = ["{images["a"]}"]\n'
                   f'[[warmup]]\nnodes = "n2"\nimages = ["{missing}"]\n')
    os.chmod(plan.name, 0o644)
    try:
        code, data, err = _warmup("alice", "--plan", plan.name)
    finally:
        os.unlink(plan.name)
    assert code == 1
    nodes = {n["node"]: n for n in data["nodes"]}
    assert [i["outcome"] for i in nodes["n1"]["images"]] in (["pulled"], ["already present"])
    assert nodes["n1"]["state"] == "completed"
    (bad,) = nodes["n2"]["images"]
    assert bad["outcome"] == "failed" and "not in the registry" in bad["error"]
    assert "node n2" in err and "node n1" not in err


def test_bob_cannot_warm_up_alices_image(images: dict[str, str]) -> None:
    done = imgsave_as("bob", "warmup", images["private"], "--nodes", "n1", check=False)
    assert done.returncode == 1
    assert "outside your namespace" in done.stderr
    queued = subprocess.run(["squeue", "-h", "-u", "bob", "-n", "imgwarm-bob"],
                            capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert queued.stdout.strip() == ""  # nothing was submitted


def test_a_forged_warmup_job_pulls_nothing_of_alices(images: dict[str, str]) -> None:
    """bob submits his own job whose comment claims a warm-up of alice's image and asks
    the privileged entry for it: the entry checks the image against bob, refuses it."""
    private = images["private"]
    _forget("n2", private)
    request_id = secrets.token_hex(16)
    out = f"/home/bob/forged-{request_id}.out"
    script = f"/home/bob/forged-{request_id}.sh"
    as_user("bob", "sh", "-c", f'printf "%s\\n" "#!/bin/sh" '
            f'"exec sudo -n {ENTRY} \\$SLURM_JOB_ID {request_id}" > {script}; chmod 700 {script}')
    comment = (f"imgsave/1 images={REGISTRY}/{private};kind=warmup;"
               f"request_id={request_id};user=bob")
    job = as_user("bob", "sbatch", "--parsable", "-p", "imgsave", "-w", "n2", "-o", out,
                  "--comment", comment, script).stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"forged job {job} did not end"
        time.sleep(1)
    text = as_user("bob", "cat", out).stdout
    as_user("bob", "rm", "-f", out, script)
    assert job_state(job) == "FAILED"
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    (image,) = [line["warmup_image"] for line in lines if "warmup_image" in line]
    assert image["outcome"] == "failed" and "outside your namespace" in image["error"]
    held = node_exec("n2", "podman", "image", "exists", f"{REGISTRY}/{private}", check=False)
    assert held.returncode == 1  # not on the node


def _sbatch_as(user: str, *options: str) -> str:
    out = as_user(user, "sbatch", "--parsable", "-o", "/dev/null", *options,
                  "--wrap", "sleep 300").stdout  # fmt: skip
    return out.strip().split(";")[0]


def _wait_running(job: str) -> None:
    deadline = time.monotonic() + 60
    while job_state(job) != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} is {job_state(job)}"
        time.sleep(0.5)


def test_warm_up_the_nodes_of_my_job(images: dict[str, str]) -> None:
    """alice's two-node job in the users' partition (one CPU per node there): --job J
    warms both of its nodes; bob cannot use her job; a pending job with no nodes yet
    says so."""
    a = images["a"]
    job = _sbatch_as("alice", "-p", "batch", "-N", "2", "-n", "2")
    later = _sbatch_as("alice", "-p", "batch", "--begin", "now+1hour")
    try:
        _wait_running(job)
        code, data, err = _warmup("alice", a, "--job", job)
        assert code == 0, err
        assert sorted(n["node"] for n in data["nodes"]) == ["n1", "n2"]
        assert all(n["state"] == "completed" for n in data["nodes"])
        taken = imgsave_as("bob", "warmup", "bob/x:v1", "--job", job, check=False)
        assert taken.returncode == 1 and "is not yours" in taken.stderr
        waiting = imgsave_as("alice", "warmup", a, "--job", later, check=False)
        assert waiting.returncode == 1 and "has no nodes yet" in waiting.stderr
    finally:
        subprocess.run(["scancel", job, later], check=False, timeout=30)
