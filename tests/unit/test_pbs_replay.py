"""The replay runner (tests/support/replay.py): a fake that must fail loudly when the code
under test runs anything the test did not script."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import CommandFailed
from tests.support.replay import ReplayRunner, Step, UnexpectedCommand, load_capture, pbs_capture


def test_replay_runner_fails_loudly_on_unexpected_argv() -> None:
    runner = ReplayRunner([Step(("qstat", "-fx", "-F", "json", "1.vm"))])
    with pytest.raises(UnexpectedCommand, match="differs from the script"):
        runner(["qstat", "-f", "-F", "json", "1.vm"])
    with pytest.raises(AssertionError):
        runner.assert_done()


def test_replay_runner_errors_survive_a_swallowing_caller() -> None:
    runner = ReplayRunner([])
    try:
        runner(["qdel", "1.vm"])
    except AssertionError:
        pass  # code under test that swallowed it would still fail assert_done
    with pytest.raises(AssertionError, match="script has ended"):
        runner.assert_done()


def test_replay_runner_check_and_leftovers() -> None:
    runner = ReplayRunner([Step(("false",), returncode=1), Step(("true",))])
    with pytest.raises(CommandFailed, match="exited 1"):
        runner(["false"])
    with pytest.raises(AssertionError, match="never ran"):
        runner.assert_done()


def test_replay_runner_timeout() -> None:
    runner = ReplayRunner([Step(("qstat",), timed_out=True)])
    with pytest.raises(CommandFailed) as err:
        runner(["qstat"], check=False)
    assert err.value.timed_out and err.value.retryable


def test_capture_loader_reads_every_section() -> None:
    cap = pbs_capture("12c_qstat_fx_F_json_unknown_job")
    assert cap.command == "qstat -fx -F json 9999.vm"
    assert cap.stdout.startswith("{") and cap.stdout.endswith("}\n")
    assert cap.stderr == "qstat: Unknown Job Id 9999.vm\n"
    assert cap.returncode == 153
    empty = pbs_capture("06_qdel_running")
    assert (empty.stdout, empty.stderr, empty.returncode) == ("", "", 0)


def test_capture_loader_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("not a capture\n")
    with pytest.raises(ValueError, match="not a command capture"):
        load_capture(path)
