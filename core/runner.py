"""The one way imgsave runs an external command: an argv list, a timeout, a clear error.

Never a shell string. Every scheduler, engine and squashfs command goes through
:func:`run_command` (or a :class:`Runner` that tests replace with a scripted one).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.errors import CommandFailed

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Something that runs an argv list and returns its result."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        check: bool = True,
        input_text: str | None = None,
    ) -> CommandResult: ...


def run_command(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell) and return its output.

    Raises :class:`CommandFailed` when the command cannot start, times out, or (with
    ``check``) exits non-zero; the error carries argv, exit code, stdout and stderr.
    """
    args = [str(a) for a in argv]
    log.debug("run %s", args)
    try:
        proc = subprocess.run(  # noqa: S603 - argv list, never a shell
            args,
            capture_output=True,
            text=True,
            errors="replace",  # a stray non-UTF-8 byte must not hide the output
            timeout=timeout,
            input=input_text,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(
            args, None, _text(e.stdout), _text(e.stderr), timed_out=True
        ) from e
    except OSError as e:
        raise CommandFailed(args, None, "", str(e), retryable=False) from e
    result = CommandResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stdout, proc.stderr)
    return result


def run_streaming(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
) -> int:
    """Run ``argv`` (no shell), handing each line of its stdout to ``on_line`` as it
    comes; its stderr goes to ours. Returns the exit status (a negative signal number
    if it was killed); kills it after ``timeout`` seconds (raising CommandFailed).
    ``on_start`` receives the process, e.g. to forward signals to it."""
    args = [str(a) for a in argv]
    log.debug("run (streaming) %s", args)
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            errors="replace", bufsize=1,
        )
    except OSError as e:
        raise CommandFailed(args, None, "", str(e), retryable=False) from e
    if on_start is not None:
        on_start(proc)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        returncode = proc.wait()
    finally:
        expired = not timer.is_alive() and proc.returncode is not None and proc.returncode < 0
        timer.cancel()
    if expired:
        raise CommandFailed(args, returncode, "", "", timed_out=True)
    return returncode


def spawn_detached(argv: Sequence[str], log_path: str, *,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell) in a session of its own and return at once: its stdin
    is /dev/null and its stdout and stderr go to ``log_path`` (created 0600, appended),
    so it outlives the caller (``srun`` keeping a job step alive after the CLI exits).
    Raises CommandFailed if it cannot start."""
    args = [str(a) for a in argv]
    log.debug("spawn %s", args)
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise CommandFailed(args, None, "", f"{log_path}: {e.strerror}", retryable=False) from e
    try:
        return subprocess.Popen(  # noqa: S603 - argv list, never a shell
            args, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    except OSError as e:
        raise CommandFailed(args, None, "", str(e), retryable=False) from e
    finally:
        os.close(fd)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
