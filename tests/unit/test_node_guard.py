"""The save's record for the epilog (builder_jobs/node_guard.py), without a cluster:
what the guarded runner writes down before a pause or a helper-tag push, and which
helper tags the epilog agrees to remove. The kills themselves are in test_faults.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from builder_jobs.node_guard import (
    GuardedRunner,
    JobGuard,
    drop_helper_tags,
    is_helper_reference,
    record_path,
)
from core.runner import CommandResult

TOP = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc"]
BOUND = ["setpriv", "--pdeathsig", "KILL", "--"]


class Recorder:
    """A runner that notes each argv and what the record held when it ran."""

    def __init__(self, guard: JobGuard) -> None:
        self.guard = guard
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, argv: Sequence[str], **kwargs: object) -> CommandResult:
        on_disk = JobGuard.load(self.guard.path)
        self.calls.append((list(argv), on_disk.drop_tags if on_disk else []))
        return CommandResult(tuple(argv), 0, "", "")


def test_the_helper_tag_is_on_record_before_its_push_runs(tmp_path: Path) -> None:
    guard = JobGuard(record_path(tmp_path, "4242"), "a" * 32)
    guard.write()
    recorder = Recorder(guard)
    runner = GuardedRunner(recorder, guard, PODMAN, bound=BOUND)
    helper = "127.0.0.1:5000/alice/env:imgsave-base-0123456789abcdef"
    push = [*PODMAN, "push", "--authfile", "/etc/a.json", "f" * 64, f"docker://{helper}"]
    runner(push)
    runner([*PODMAN, "push", "f" * 64, "127.0.0.1:5000/alice/env:v1"])  # the user's own tag
    (first, seen_first), (second, seen_second) = recorder.calls
    assert first == [*BOUND, *push]  # dies with the entry
    assert seen_first == [helper]  # written down before the push began
    assert seen_second == [helper]  # the user's tag is never the epilog's to remove
    assert JobGuard.load(guard.path) == guard


def test_the_epilog_removes_only_this_sites_helper_tags(tmp_path: Path) -> None:
    guard = JobGuard(tmp_path / "j.json", "b" * 32, drop_tags=[
        "registry.other.org/alice/env:imgsave-base-0123",  # another registry
        "127.0.0.1:5000/alice/env:v1",  # not a helper tag
    ])
    done = drop_helper_tags(guard, TOP / "site_configs" / "local.toml")
    assert done == [f"{t}: not this site's helper tag, left" for t in guard.drop_tags]
    assert not is_helper_reference("imgsave-base-0123")
    assert is_helper_reference("h:5000/a/b:imgsave-base-0123")


def test_a_partial_record_left_by_a_kill_mid_write_is_removed(tmp_path: Path) -> None:
    """SIGKILL between writing ``JOB.partial`` and renaming it leaves the partial file:
    the epilog (no record to replay) and clear() both remove it."""
    from builder_jobs.node_guard import epilog

    guard = JobGuard(record_path(tmp_path, "5151"), "c" * 32)
    partial = guard.path.with_suffix(".partial")
    partial.parent.mkdir(parents=True)
    partial.write_text("{")
    assert epilog(tmp_path, "5151") == 0 and not partial.exists()
    guard.write()
    partial.write_text("{")
    guard.clear()
    assert not partial.exists() and not guard.path.exists()
