"""What the benchmarks share since imgsave never submits as root (docs/security.md).

Saves are submitted by alice herself (``runuser``, the runtime in /opt that
``scripts/cluster.sh`` installs), so the measured path is the one users take, the
CLI's start-up included. What the node does comes from the root-owned
``/etc/imgsave/site.toml`` the privileged entry reads, not from the submitter's config:
a benchmark that changes node-side settings (the commit method, SIF compression) puts
its config there for the run and restores the original after.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMGSAVE = "/opt/imgsave/venv/bin/imgsave"
NODE_CONFIG = Path("/etc/imgsave/site.toml")


def submit_as(user: str, config: Path, container: str, target: str, node: str,
              formats: str = "oci") -> tuple[str, str]:
    """``imgsave --json submit`` run by ``user``; (job id, request id)."""
    done = subprocess.run(
        ["runuser", "-u", user, "--", IMGSAVE, "--config", str(config), "--json", "submit",
         container, target, "--node", node, "--format", formats],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
    )
    if done.returncode != 0:
        raise RuntimeError(f"submit as {user} failed: {done.stderr.strip()}")
    answer = json.loads(done.stdout)
    return str(answer["job_id"]), str(answer["request_id"])


@contextmanager
def site_config(text: str) -> Iterator[Path]:
    """``text`` as the site config of the submitters (readable by all) and of the nodes'
    privileged entry, for the duration; the node's original is put back after."""
    directory = Path(tempfile.mkdtemp(prefix="imgsave-bench-", dir="/tmp"))
    directory.chmod(0o755)
    path = directory / "site.toml"
    path.write_text(text)
    path.chmod(0o644)
    saved = NODE_CONFIG.read_bytes()
    NODE_CONFIG.write_text(text)
    try:
        yield path
    finally:
        NODE_CONFIG.write_bytes(saved)
        shutil.rmtree(directory, ignore_errors=True)
