"""The one way imgsave runs an external command: an argv list, a timeout, a clear error.

Never a shell string. Every scheduler, engine and squashfs command goes through
:func:`run_command` (or a :class:`Runner` that tests replace with a scripted one).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from site_configs.errors import CommandFailed

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


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
