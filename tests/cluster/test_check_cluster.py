"""``imgsave check`` on the live local cluster: passes as set up, then finds each
misconfiguration, broken in a temporary site config, temporary directories or a
temporary copy of the sudoers rule. One test changes the shared cluster itself (slurm.conf
without job_comment for a few seconds, under the cluster-test lock, restored in finally).

Runs the installed ``imgsave`` (scripts/cluster.sh install) as root and as alice.
Not broken here: Slurm preemption (PreemptType needs slurmctld restarted;
tests/unit/test_check.py covers it on the real captured ``scontrol show config``), and
valid-looking but wrong registry credentials (the local registry is anonymous).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_helpers import IMGSAVE, as_user, require_cluster

pytestmark = pytest.mark.cluster

LOCAL = Path(__file__).resolve().parents[2] / "site_configs" / "local.toml"
SUDOERS = Path("/etc/sudoers.d/imgsave")
SITE_AND_NODE = ("--scope", "site", "--scope", "node")
Results = dict[str, list[dict[str, str]]]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory every user can read (users' runs read the config from it)."""
    require_cluster()
    top = Path(tempfile.mkdtemp(prefix="imgsave-check-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def config(scratch: Path, *edits: tuple[str, str]) -> Path:
    text = LOCAL.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = scratch / "site.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def check(site: Path, *args: str, user: str = "root") -> tuple[int, Results]:
    """Run ``imgsave --json check``; the results by check name."""
    argv = [IMGSAVE, "--config", str(site), "--json", "check", *args]
    if user == "root":
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd="/")
    else:
        done = as_user(user, *argv, check=False)
    by_name: Results = {}
    for result in json.loads(done.stdout):
        by_name.setdefault(result["check"], []).append(result)
    return done.returncode, by_name


def statuses(results: Results, name: str) -> list[str]:
    return [r["status"] for r in results.get(name, [])]


def failures(results: Results) -> dict[str, str]:
    return {r["check"]: r["detail"] for rs in results.values() for r in rs
            if r["status"] == "fail"}


def test_the_local_cluster_passes(scratch: Path) -> None:
    code, results = check(config(scratch), *SITE_AND_NODE, "--for-user", "alice")
    assert failures(results) == {} and code == 0
    for name in ("slurm partition", "slurm association", "registry", "node state dir",
                 "privileged entry", "entry probe", "engine"):
        assert set(statuses(results, name)) == {"ok"}, (name, results.get(name))
    assert statuses(results, "sudoers rule") == ["ok", "ok"]  # the file, sudo's answer


def test_a_missing_partition_and_a_user_without_association_fail(scratch: Path) -> None:
    site = config(scratch, ('partition = "imgsave"', 'partition = "nosuch"'))
    code, results = check(site, "--scope", "site", "--for-user", "nobody")
    assert code == 1
    assert failures(results)["slurm partition"] == "partition nosuch does not exist"
    assert "user nobody has no Slurm association" in failures(results)["slurm association"]


def test_an_unreachable_registry_fails(scratch: Path) -> None:
    site = config(scratch, ('url = "http://127.0.0.1:5000"', 'url = "http://127.0.0.1:5999"'))
    code, results = check(site, "--scope", "site")
    assert code == 1 and "127.0.0.1:5999" in failures(results)["registry"]


def test_world_readable_registry_credentials_fail(scratch: Path) -> None:
    creds = scratch / "auth.json"
    creds.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": "dTpw"}}}))
    creds.chmod(0o644)
    site = config(scratch, ('auth = "anonymous"',
                            f'auth = "basic"\ncredentials_file = "{creds}"'))
    code, results = check(site, *SITE_AND_NODE)
    assert code == 1
    assert "mode 0644" in failures(results)["registry"]  # the loader refuses to use it
    assert "other users can read it" in failures(results)["registry credentials"]


@pytest.mark.parametrize("break_it", ["world-writable", "symlink", "not root's"])
def test_a_bad_node_state_dir_fails(scratch: Path, break_it: str) -> None:
    state = scratch / "state"
    real = scratch / "real-state"
    real.mkdir(mode=0o700)
    if break_it == "symlink":
        state.symlink_to(real)
    else:
        state.mkdir()
        os.chmod(state, 0o777 if break_it == "world-writable" else 0o700)
        if break_it == "not root's":
            os.chown(state, pwd.getpwnam("alice").pw_uid, -1)
    site = config(scratch, ('state_dir = "/var/lib/imgsave-node"', f'state_dir = "{state}"'))
    code, results = check(site, "--scope", "node")
    words = {"world-writable": "other users can write to it", "symlink": "is a symlink",
             "not root's": "not root"}[break_it]
    assert code == 1 and words in failures(results)["node state dir"]


@pytest.mark.parametrize("break_it", ["engine for users", "no entry", "group-writable"])
def test_a_bad_sudoers_copy_fails(scratch: Path, break_it: str) -> None:
    text = SUDOERS.read_text()
    if break_it == "engine for users":
        text += "ALL ALL=(root) NOPASSWD: /usr/bin/podman\n"
    if break_it == "no entry":
        text = text.replace("/usr/local/sbin/imgsave-node-save", "/usr/local/sbin/other-entry")
    copy = scratch / "sudoers-copy"
    copy.write_text(text)
    copy.chmod(0o460 if break_it == "group-writable" else 0o440)
    code, results = check(config(scratch), "--scope", "node", "--sudoers", str(copy))
    words = {"engine for users": "/usr/bin/podman as root", "no entry": "does not allow",
             "group-writable": "mode 0460"}[break_it]
    assert code == 1 and words in failures(results)["sudoers rule"]


def test_the_probe_as_a_user(scratch: Path) -> None:
    """alice's own check: the entry answers through sudo; the engine is not hers to ask;
    an entry the rule does not allow (the engine) is refused by sudo, and reported."""
    code, results = check(config(scratch), "--scope", "node", user="alice")
    assert statuses(results, "entry probe") == ["ok"] and code == 0
    assert statuses(results, "engine") == ["skip"]
    assert statuses(results, "sudoers rule") == ["skip"]  # 0440 root: alice cannot read it
    podman = config(scratch, ('"/usr/local/sbin/imgsave-node-save"]', '"/usr/bin/podman"]'))
    code, results = check(podman, "--scope", "node", user="alice")
    assert code == 1 and "a password is required" in failures(results)["entry probe"]


def test_bad_portal_files_fail(scratch: Path) -> None:
    imgsave = pwd.getpwnam("imgsave").pw_uid
    spool = scratch / "spool" / "imgsave"
    spool.mkdir(parents=True)
    spool.chmod(0o777)
    instance = scratch / "instance"
    instance.mkdir(mode=0o700)
    (instance / "secret_key").write_text("not a real key\n")
    (instance / "secret_key").chmod(0o644)
    for path in (spool, instance, instance / "secret_key"):
        os.chown(path, imgsave, -1)
    site = config(scratch, ('spool_dir = "{home}/.imgsave/spool"',
                            f'spool_dir = "{scratch}/spool/{{user}}"'),
                  ('database_url = "sqlite:////var/lib/imgsave/imgsave.db"', ""))
    code, results = check(site, "--scope", "portal", "--instance-dir", str(instance))
    found = failures(results)
    assert code == 1
    assert "other users can write to it" in found["service spool"]
    assert "other users can read it" in found["secret key"]
    assert statuses(results, "instance dir") == ["ok"]
    assert statuses(results, "database") == ["warn"]  # not made yet: serve makes it 0600


SLURM_CONF = Path("/etc/slurm/slurm.conf")
FLAGS = "AccountingStoreFlags=job_comment\n"


def reconfigure(text: str, flags: str) -> None:
    """Write slurm.conf, ``scontrol reconfigure``, and wait until slurmctld reports
    ``flags`` as its AccountingStoreFlags."""
    SLURM_CONF.write_text(text)
    subprocess.run(["scontrol", "reconfigure"], check=True, timeout=60, capture_output=True)
    for _ in range(40):
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
        if any(line.split("=", 1)[-1].strip() == flags for line in shown.splitlines()
               if line.startswith("AccountingStoreFlags")):
            return
        time.sleep(0.5)
    raise AssertionError(f"slurmctld did not take AccountingStoreFlags={flags}")


def test_accounting_without_the_job_comment_fails(scratch: Path) -> None:
    """The one test that changes the shared cluster: slurm.conf loses job_comment (and
    gains job_script) for a few seconds, under the cluster-test lock; restored in finally.
    No job is submitted meanwhile."""
    original = SLURM_CONF.read_text()
    assert FLAGS in original
    try:
        reconfigure(original.replace(FLAGS, "AccountingStoreFlags=job_script\n"), "job_script")
        code, results = check(config(scratch), "--scope", "site")
        assert code == 1
        assert "lacks job_comment" in failures(results)["slurm accounting"]
        assert any("job_script" in r["detail"] and r["status"] == "warn"
                   for r in results["slurm accounting"])
    finally:
        reconfigure(original, "job_comment")
    code, results = check(config(scratch), "--scope", "site")
    assert code == 0 and "slurm accounting" not in failures(results)
