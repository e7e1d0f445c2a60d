"""The quota pre-check against the contract fake of Harbor's API v2.0.

``check_quota`` runs before a save job is submitted: it must refuse a save that cannot
fit, let one that fits through, and treat -1 (or no quota record) as unlimited, whichever
robot kind reads the quota (system robot: ``/quotas``; project robot: project summary).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.errors import ImgsaveError, InvalidRequest, PermissionDenied
from registry.auth import Credentials
from registry.harbor import HarborClient, QuotaExceeded
from site_configs.schema import RegistrySection
from tests.support.harbor_server import (
    FakeArtifact,
    HarborState,
    RunningHarbor,
    project_robot,
    running_harbor,
    system_robot,
)

ALICE_ROBOT = "robot$u-alice+imgsave"
SYSTEM_ROBOT = "robot$imgsave-svc"
SECRET = "Robot-Secret-1"
GIB = 1024**3
DIGEST = "sha256:" + "1" * 64


@pytest.fixture
def state() -> HarborState:
    state = HarborState()
    state.add_robot(project_robot("u-alice", SECRET))
    state.add_robot(system_robot("imgsave-svc", SECRET))
    alice = state.add_project("u-alice", hard_bytes=10 * GIB)
    alice.add_image("torch-env", FakeArtifact(DIGEST, 8 * GIB, ["v1"]))
    return state


@pytest.fixture
def harbor(state: HarborState) -> Iterator[RunningHarbor]:
    with running_harbor(state) as running:
        yield running


def client(harbor: RunningHarbor, user: str) -> HarborClient:
    section = RegistrySection.model_validate(
        {"kind": "harbor", "url": harbor.url, "auth": "basic", "namespace": "u-{user}"}
    )
    return HarborClient.from_section(section, Credentials(user, SECRET))


@pytest.mark.parametrize("robot", [SYSTEM_ROBOT, ALICE_ROBOT])
def test_quota_refuses_a_save_that_does_not_fit(harbor: RunningHarbor, robot: str) -> None:
    with client(harbor, robot) as harbor_client:
        with pytest.raises(QuotaExceeded) as caught:
            harbor_client.check_quota("alice", 3 * GIB)
    error = caught.value
    assert isinstance(error, ImgsaveError) and not error.retryable
    assert "u-alice" in error.message
    assert "3.0 GiB" in error.message and "8.0 GiB" in error.message
    assert "10.0 GiB" in error.message and "2.0 GiB free" in error.message


@pytest.mark.parametrize("robot", [SYSTEM_ROBOT, ALICE_ROBOT])
def test_quota_allows_a_save_that_fits_exactly(harbor: RunningHarbor, robot: str) -> None:
    with client(harbor, robot) as harbor_client:
        harbor_client.check_quota("alice", 2 * GIB)  # used + expected == hard: allowed
        harbor_client.check_quota("alice", 0)


def test_where_the_quota_was_read(harbor: RunningHarbor) -> None:
    with client(harbor, SYSTEM_ROBOT) as system:
        assert system.project_quota("u-alice").source == "quotas"
    with client(harbor, ALICE_ROBOT) as project_robot:
        quota = project_robot.project_quota("u-alice")
    assert quota.source == "summary"  # /quotas is system-only: 403, then the summary
    assert (quota.hard_bytes, quota.used_bytes) == (10 * GIB, 8 * GIB)
    paths = [raw.split("?")[0] for _, raw, who in harbor.state.requests if who == ALICE_ROBOT]
    assert paths[-2:] == ["/api/v2.0/quotas", "/api/v2.0/projects/u-alice/summary"]


@pytest.mark.parametrize("robot", [SYSTEM_ROBOT, ALICE_ROBOT])
def test_unlimited_quota(harbor: RunningHarbor, state: HarborState, robot: str) -> None:
    state.projects["u-alice"].hard_bytes = -1
    with client(harbor, robot) as harbor_client:
        harbor_client.check_quota("alice", 10**15)
        quota = harbor_client.project_quota("u-alice")
    assert quota.unlimited and quota.free_bytes is None


def test_no_quota_record_is_unlimited(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].hard_bytes = None  # per-project quotas switched off
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        harbor_client.check_quota("alice", 10**15)
        assert harbor_client.project_quota("u-alice").source == "none"


def test_quota_already_exceeded(harbor: RunningHarbor, state: HarborState) -> None:
    state.projects["u-alice"].hard_bytes = 4 * GIB  # lowered below what is used
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        with pytest.raises(QuotaExceeded, match=r"used 8.0 GiB of its 4.0 GiB quota \(0 B free\)"):
            harbor_client.check_quota("alice", 1)


def test_quota_unreadable_for_the_robot(harbor: RunningHarbor, state: HarborState) -> None:
    state.robots[ALICE_ROBOT].permissions["u-alice"].discard("quota:read")
    with client(harbor, ALICE_ROBOT) as harbor_client:
        with pytest.raises(PermissionDenied, match="quota: read"):
            harbor_client.check_quota("alice", 1)


def test_negative_size_is_invalid(harbor: RunningHarbor) -> None:
    with client(harbor, SYSTEM_ROBOT) as harbor_client:
        with pytest.raises(InvalidRequest):
            harbor_client.check_quota("alice", -1)
    assert harbor.state.requests == []


def test_deleting_frees_quota(harbor: RunningHarbor) -> None:
    with client(harbor, ALICE_ROBOT) as harbor_client:
        with pytest.raises(QuotaExceeded):
            harbor_client.check_quota("alice", 5 * GIB)
        harbor_client.delete_image("alice", "torch-env", "v1")
        harbor_client.check_quota("alice", 5 * GIB)
