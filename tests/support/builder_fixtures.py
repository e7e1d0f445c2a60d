"""Real podman and a real docker-registry for the builder tests (no tests in here).
tests/conftest.py loads these fixtures for every test.

Everything runs for real on 127.0.0.1: Debian's ``docker-registry`` (distribution 2.8)
started by ``tests/support/registry_server.py`` on a free port with its own storage, and
podman with the host's default storage (not the local cluster's per-node storage).
The base image is busybox-static imported as ``localhost/imgsave-base:latest``; no
internet is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder_jobs.spec import SPEC_FILE, SaveSpec
from registry.oci import RegistryClient
from site_configs.schema import ImageFormat
from tests.support.registry_server import RunningRegistry, TokenIssuer, free_port, running_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
BASE_IMAGE = "localhost/imgsave-base:latest"
BUSYBOX_APPLETS = ["sh", "ls", "cat", "sleep", "echo", "mkdir", "rm", "true", "test"]

__all__ = ["free_port"]  # re-exported for the test modules

needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None or shutil.which("docker-registry") is None,
    reason="needs podman and docker-registry",
)


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run podman with this VM's runtime flags."""
    return subprocess.run(  # noqa: S603 - argv list
        [*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def registry_tags(registry: RunningRegistry, repository: str) -> list[str]:
    """The repository's tags; [] when it does not exist."""
    with RegistryClient(registry.url) as client:
        return client.list_tags(repository)


@pytest.fixture(scope="session")
def builder_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A writable registry (deletes enabled) for the whole session."""
    with running_registry(tmp_path_factory.mktemp("builder-registry")) as running:
        yield running


def _anonymous_pull_only(user: str | None, kind: str, name: str, actions: list[str]) -> list[str]:
    return [a for a in actions if a == "pull"]


@pytest.fixture
def builder_pull_only_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A registry with token auth that lets anyone pull and nobody push."""
    issuer = TokenIssuer(tmp_path / "issuer", users={}, policy=_anonymous_pull_only)
    with issuer.serve(), running_registry(tmp_path / "registry", token_issuer=issuer) as running:
        yield running


@pytest.fixture(scope="session")
def builder_base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``localhost/imgsave-base:latest``: busybox-static imported into podman's storage."""
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    root = tmp_path_factory.mktemp("rootfs")
    for d in ("bin", "root", "tmp", "etc"):
        (root / d).mkdir()
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    tar = subprocess.run(  # noqa: S603, S607
        ["tar", "-C", str(root), "-c", "."], capture_output=True, check=True
    )
    subprocess.run(  # noqa: S603
        [*PODMAN, "import", "-", BASE_IMAGE], input=tar.stdout, capture_output=True, check=True
    )
    return BASE_IMAGE


@pytest.fixture
def make_session_container(builder_base_image: str) -> Iterator[Callable[[str], str]]:
    """Start a session-like container labelled with an owner; removed after the test."""
    names: list[str] = []

    def make(owner: str) -> str:
        name = f"imgsave-test-{uuid.uuid4().hex[:12]}"  # no owner in the name
        podman(
            "run", "-d", *ULIMITS, "--name", name, "--label", f"imgsave.owner={owner}",
            builder_base_image, "sleep", "infinity",
        )  # fmt: skip
        names.append(name)
        return name

    yield make
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def shared_sif_root(directory: Path) -> Path:
    """Where the SIFs of a test whose files live in ``directory`` go: outside pytest's
    tmp_path (root's, 0700), since each user's SIF is written with their own uid; one
    directory per user, owned by them, as their home would be. Removed when the test
    session ends (:func:`_remove_sif_roots`)."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return Path("/tmp") / f"imgsave-test-sifs-{digest}"


_SIF_ROOTS: set[Path] = set()


@pytest.fixture(scope="session", autouse=True)
def _remove_sif_roots() -> Iterator[None]:
    yield
    for root in _SIF_ROOTS:
        shutil.rmtree(root, ignore_errors=True)


def _make_sif_root(directory: Path) -> Path:
    root = shared_sif_root(directory)
    _SIF_ROOTS.add(root)
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    for user in ("alice", "bob"):
        entry = pwd.getpwnam(user)
        mine = root / user
        mine.mkdir(mode=0o700, exist_ok=True)
        os.chown(mine, entry.pw_uid, entry.pw_gid)
    return root


def write_site_config(
    directory: Path,
    registry_url: str,
    max_image_bytes: int = 0,
    *,
    commit_method: str = "engine",
    podman_argv: list[str] | None = None,
) -> Path:
    """A site config for the node: podman with this VM's flags, a plain-HTTP registry.
    The engine's own commit unless a test asks for ``auto`` or ``streaming``."""
    path = directory / "site.toml"
    command = ", ".join(json.dumps(a) for a in (podman_argv or PODMAN))
    path.write_text(
        f"""name = "builder-tests"
spool_dir = {json.dumps(str(directory))}
formats = ["oci", "sif"]

[scheduler]
kind = "slurm"
partition = "imgsave"

[engine]
kind = "podman"
command = [{command}]
owner_label = "imgsave.owner"
tls_verify = false
commit_method = "{commit_method}"

[registry]
url = {json.dumps(registry_url)}
tls_verify = false
namespace = "{{user}}"

[sif]
compression = "gzip"
processors = 1
output_dir = {json.dumps(str(_make_sif_root(directory) / "{user}"))}
push_oras = true

[node]
state_dir = {json.dumps(str(directory / "node-state"))}
"""
        + (f"\n[limits]\nmax_image_bytes = {max_image_bytes}\n" if max_image_bytes else "")
    )
    return path


def write_spec(
    spool: Path,
    *,
    user: str,
    container: str,
    target: str,
    site_config: Path,
    formats: tuple[ImageFormat, ...] = (ImageFormat.OCI,),
    node: str = "n1",
) -> Path:
    """A spec in its own spool directory, as the service layer writes it."""
    request_id = uuid.uuid4().hex
    directory = spool / request_id
    directory.mkdir(parents=True)
    spec = SaveSpec(
        request_id=request_id,
        user=user,
        container=container,
        target=target,
        formats=formats,
        category="cpu",
        node=node,
        site_config=str(site_config),
        created="2026-01-01T00:00:00Z",
    )
    path = directory / SPEC_FILE
    path.write_text(spec.to_json())
    return path


def run_node_save(
    spec_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m builder_jobs.node_save SPEC`` as the job script runs it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBS"))
                and k not in ("IMGSAVE_JOB_ID", "IMGSAVE_NODE")}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "builder_jobs.node_save", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=full_env,
        cwd=str(spec_path.parent),
    )
