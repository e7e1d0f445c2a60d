"""A scripted fake Runner that replays captured command output.

FAKE, on purpose: PBS Pro cannot be installed here, so backend tests replay real
captures from a live OpenPBS 23.06 server (``tests/captures/pbs``) instead of running
qsub/qstat. Like batchspawner's tests, a test scripts the whole exchange as (expected
argv, stdout, stderr, exit code) steps; any other argv, or a step left over, fails the
test loudly, even when the code under test catches exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.errors import CommandFailed
from core.runner import DEFAULT_TIMEOUT_SECONDS, CommandResult
from scheduler_glue.base import Scheduler

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
_CAPTURE = re.compile(
    r"\A# command: (?P<command>[^\n]*)\n(?:#[^\n]*\n)*?# ---- stdout ----\n(?P<stdout>.*?)"
    r"# ---- stderr ----\n(?P<stderr>.*?)# ---- exit code: (?P<code>-?\d+) ----\n?\Z",
    re.S,
)


@dataclass(frozen=True)
class Capture:
    """One captured command: what was typed and what came back."""

    command: str  # as typed on the capture host, for the record only
    stdout: str
    stderr: str
    returncode: int


def load_capture(path: Path) -> Capture:
    """Read a ``NAME.txt`` capture (``# command:`` ... ``# ---- exit code: N ----``)."""
    text = path.read_text(encoding="utf-8")
    match = _CAPTURE.match(text)
    if match is None:
        raise ValueError(f"{path} is not a command capture")
    return Capture(
        match.group("command"),
        match.group("stdout"),
        match.group("stderr"),
        int(match.group("code")),
    )


def pbs_capture(name: str) -> Capture:
    """A capture from ``tests/captures/pbs`` by file stem, e.g. ``03_qstat_fx_F_json_finished``."""
    return load_capture(CAPTURES / "pbs" / f"{name}.txt")


@dataclass(frozen=True)
class Step:
    """One expected command and the output to give back."""

    argv: tuple[str, ...]
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    timed_out: bool = False  # the runner raises CommandFailed(timed_out=True) instead

    @classmethod
    def replay(cls, argv: Sequence[str], capture: Capture) -> Step:
        """Answer ``argv`` with a real capture's stdout, stderr and exit code."""
        return cls(tuple(argv), capture.stdout, capture.stderr, capture.returncode)


class UnexpectedCommand(AssertionError):
    """The code ran a command the test did not script."""


class ReplayRunner:
    """A fake :class:`~core.runner.Runner`: PBS Pro cannot be installed here;
    this replays real captures, in order, for exactly the scripted argv."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[str, ...]] = []
        self.errors: list[str] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        check: bool = True,
        input_text: str | None = None,
    ) -> CommandResult:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        index = len(self.calls) - 1
        if index >= len(self.steps):
            self._fail(f"unexpected command #{index + 1}: {list(args)} (script has ended)")
        expected = self.steps[index]
        if args != expected.argv:
            self._fail(
                f"command #{index + 1} differs from the script:\n"
                f"  expected {list(expected.argv)}\n  got      {list(args)}"
            )
        if expected.timed_out:
            raise CommandFailed(list(args), None, "", "", timed_out=True)
        if check and expected.returncode != 0:
            raise CommandFailed(list(args), expected.returncode, expected.stdout, expected.stderr)
        return CommandResult(args, expected.returncode, expected.stdout, expected.stderr)

    def _fail(self, message: str) -> None:
        self.errors.append(message)
        raise UnexpectedCommand(message)

    def assert_done(self) -> None:
        """Every scripted step ran and nothing unexpected did."""
        assert not self.errors, "\n".join(self.errors)
        left = self.steps[len(self.calls) :]
        assert not left, (
            f"{len(left)} scripted command(s) never ran: {[list(s.argv) for s in left]}"
        )


_S = TypeVar("_S", bound=Scheduler)

# The uid a replayed submit runs as: the captures were made by an ordinary user (root is
# refused before any command runs; tests/unit/test_*_scheduler.py check that).
REPLAY_USER_UID = 1000


def as_ordinary_user(scheduler: _S) -> _S:
    """``scheduler`` submitting as the ordinary user the captures came from."""
    scheduler.submitter_uid = lambda: REPLAY_USER_UID  # type: ignore[method-assign]
    return scheduler
