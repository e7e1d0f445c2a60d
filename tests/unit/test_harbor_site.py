"""A Harbor site end to end through the service layer, against the contract fake of
Harbor's API v2.0 (tests/support/harbor_server.py: Harbor cannot run here). The scheduler is the
real local Slurm cluster only where a test says so; these tests stop before submitting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.service.save_request import SaveRequest
from api.service.saves import SaveService
from api.service.site import Site
from registry.harbor import QuotaExceeded
from site_configs.schema import load_site_config
from tests.support.harbor_server import (
    FakeArtifact,
    HarborState,
    RunningHarbor,
    project_robot,
    running_harbor,
)
from tests.support.replay import as_ordinary_user

SECRET = "Robot-Secret-1"
GIB = 1024**3
DIGEST = "sha256:" + "2" * 64


@pytest.fixture
def harbor() -> Iterator[RunningHarbor]:
    state = HarborState()
    state.add_robot(project_robot("u-alice", SECRET))
    alice = state.add_project("u-alice", hard_bytes=10 * GIB)
    alice.add_image("torch-env", FakeArtifact(DIGEST, 10 * GIB, ["v1", "latest"]))
    with running_harbor(state) as running:
        yield running


def harbor_site(tmp_path: Path, harbor: RunningHarbor) -> Site:
    creds = tmp_path / "robot.json"
    creds.write_text(json.dumps({"auths": {harbor.url.split("://", 1)[1]: {
        "username": "robot$u-alice+imgsave", "password": SECRET}}}))
    creds.chmod(0o600)
    config = tmp_path / "site.toml"
    config.write_text(f"""
name = "harbor-test"
spool_dir = "{tmp_path / 'spool'}"
[scheduler]
kind = "slurm"
partition = "imgsave"
[engine]
kind = "nerdctl"
command = ["nerdctl"]
namespace = "k8s.io"
[registry]
kind = "harbor"
url = "{harbor.url}"
auth = "basic"
credentials_file = "{creds}"
tls_verify = false
namespace = "u-{{user}}"
""")
    (tmp_path / "spool").mkdir()
    return Site(load_site_config(config))


def test_images_of_a_harbor_site_come_from_the_project(tmp_path: Path,
                                                      harbor: RunningHarbor) -> None:
    site = harbor_site(tmp_path, harbor)
    images = site.images.list("alice")
    assert sorted(i.tag for i in images) == ["latest", "v1"]
    assert {i.repository for i in images} == {"u-alice/torch-env"}
    assert all(i.size_bytes == 10 * GIB and i.digest == DIGEST for i in images)


def test_a_full_project_refuses_the_save_before_any_job(tmp_path: Path,
                                                        harbor: RunningHarbor) -> None:
    site = harbor_site(tmp_path, harbor)
    (tmp_path / "spool").chmod(0o700)  # the service account's own spool
    # the portal's service account submits (never root); the scheduler is never reached
    saves = SaveService(site.config, as_ordinary_user(site.scheduler),
                        registry_check=site.check_registry, account=site.config.service_account)
    with pytest.raises(QuotaExceeded) as raised:
        saves.submit(SaveRequest("alice", "jupyter-alice", "torch-env:v2", node="n1"))
    assert "quota" in str(raised.value).lower()
    # nothing written, nothing submitted (but the requester's reusable submit lock)
    assert [p.name for p in (tmp_path / "spool").iterdir()] in ([], ["submit-locks"])
