"""``imgsave --api URL``: the CLI against a real ``imgsave serve`` (waitress) on the real
local cluster, with tokens from ``imgsave token create``."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from tests.support.cluster_helpers import registry_tags, require_cluster, session_container, unique
from tests.support.serve import IMGSAVE_BIN, shared_dir

pytestmark = pytest.mark.cluster
ALICE = ["runuser", "-u", "alice", "--", IMGSAVE_BIN]  # the CLI as alice runs it


@pytest.fixture
def remote(served: tuple[str, list[str], dict[str, str]],  # noqa: F811
           tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """alice's ``imgsave --api URL`` with a token in her own 0600 file."""
    require_cluster()
    url, argv, env = served
    home = shared_dir("alice", 0o700)
    token_file = home / "alice.token"
    made = subprocess.run([*argv, "--json", "token", "create", "alice"], env=env,
                          capture_output=True, text=True, check=True)
    token_file.write_text(json.loads(made.stdout)["token"] + "\n")
    token_file.chmod(0o600)
    alice = pwd.getpwnam("alice")
    os.chown(token_file, alice.pw_uid, alice.pw_gid)
    client_env = {k: v for k, v in env.items()
                  if k not in ("IMGSAVE_TOKEN", "IMGSAVE_API", "IMGSAVE_INSTANCE_DIR")}
    client_env["HOME"] = "/home/alice"
    try:
        yield [*ALICE, "--api", url, "--token-file", str(token_file)], client_env, token_file
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(argv: list[str], env: dict[str, str], *args: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*argv, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False, cwd="/")
    assert not check or done.returncode == 0, f"{args}: exit {done.returncode}: {done.stderr}"
    return done


def test_the_cli_saves_through_the_api(remote: tuple[list[str], dict[str, str], Path]) -> None:
    argv, env, _ = remote
    repo = unique("alice/remote")
    with session_container("n2", "alice") as name:
        out = run(argv, env, "submit", name, f"{repo}:v1", "--node", "n2").stdout
        match = re.fullmatch(r"Submitted image save job (\d+)\n", out)
        assert match, out
        job = match.group(1)
        waited = run(argv, env, "status", job, "--wait")
        assert "100%" in waited.stderr and "done" in waited.stdout
        # submit --wait through the API (issue 12): the job id, the bar, the final row
        both = run(argv, env, "submit", name, f"{repo}:v2", "--node", "n2", "--wait")
        assert both.stdout.startswith("Submitted image save job ")
        assert " COMPLETED " in both.stdout and "100%" in both.stderr
    queue = json.loads(run(argv, env, "--json", "queue").stdout)
    assert job in [row["job_id"] for row in queue]
    images = json.loads(run(argv, env, "--json", "images").stdout)
    assert {f"{repo}:v1", f"{repo}:v2"} <= {f"{i['repository']}:{i['tag']}" for i in images}
    assert run(argv, env, "delete", f"{repo}:v1").stdout.startswith(f"Deleted {repo}:v1")
    assert run(argv, env, "delete", f"{repo}:v2").stdout.startswith(f"Deleted {repo}:v2")
    assert registry_tags(repo) == []


def test_remote_errors_are_one_line_and_nothing_leaks(
        remote: tuple[list[str], dict[str, str], Path]) -> None:
    argv, env, token_file = remote
    bad = run(argv, env, "submit", "jupyter-alice", "bob/x:v1", "--node", "n1", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("imgsave: error: ") and bad.stderr.count("\n") == 1
    missing = run(argv, env, "status", "999999", check=False)
    assert missing.returncode == 1 and "999999" in missing.stderr
    token_file.chmod(0o644)
    loose = run(argv, env, "queue", check=False)
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
    token_file.chmod(0o600)
    wrong = {**env, "IMGSAVE_TOKEN": "isv_not_a_token"}
    denied = run(argv, wrong, "queue", check=False)
    assert denied.returncode == 1 and "imgsave: error:" in denied.stderr
    assert "isv_not_a_token" not in denied.stderr
    assert "--user" in run(argv, env, "--user", "bob", "queue", check=False).stderr
    assert os.environ.get("IMGSAVE_TOKEN") is None  # the suite never leaves one behind


def test_report_through_the_api_prints_what_direct_mode_prints(
        served: tuple[str, list[str], dict[str, str]],  # noqa: F811
        remote: tuple[list[str], dict[str, str], Path], tmp_path: Path) -> None:
    argv, env, _ = remote
    _, service_argv, service_env = served
    # direct mode as the service account for alice: the same spools readable as the API's
    # (alice's own CLI-mode results are hers alone, 0600: docs/security.md)
    direct_argv = [*service_argv, "--user", "alice"]
    direct_env = service_env
    window = ["--since", (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d"),
              "--until", (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")]
    for fmt in ("csv", "table"):
        through_api = run(argv, env, "report", *window, "--by", "user,category", "--format", fmt)
        direct = run(direct_argv, direct_env, "report", *window,
                     "--by", "user,category", "--format", fmt)
        assert through_api.stdout == direct.stdout
    doc = json.loads(run(argv, env, "--json", "report", *window).stdout)
    assert {row["user"] for row in doc["rows"]} <= {"alice"}  # a user's token: their own
    assert doc["by"] == ["user"] and doc["total"]["saves"] == sum(r["saves"] for r in doc["rows"])
    made = subprocess.run([*service_argv, "--json", "token", "create", "--admin", "bob"],
                          env=service_env, capture_output=True, text=True, check=True)
    admin = {**env, "IMGSAVE_TOKEN": json.loads(made.stdout)["token"]}
    admin_argv = argv[: argv.index("--token-file")]  # the token from IMGSAVE_TOKEN
    chart = shared_dir("alice", 0o755) / "usage.png"  # written by the client (alice)
    everyone = json.loads(run(admin_argv, admin, "--json", "report", *window,
                              "--plot", str(chart)).stdout)
    assert [row for row in everyone["rows"] if row["user"] == "alice"] == doc["rows"]
    with Image.open(chart) as png:
        assert png.format == "PNG" and png.size in ((1999, 1125), (2000, 1125))
    refused = run(argv, env, "report", "--check-registry", check=False)
    assert refused.returncode == 2 and "without --api" in refused.stderr
