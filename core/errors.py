"""The few exceptions imgsave raises, each with a message a user can act on.

Every package may import this module: it is the shared leaf of the dependency graph.
"""

from __future__ import annotations


class ImgsaveError(Exception):
    """Base of every error imgsave reports to a user.

    ``retryable`` says whether running the same request again later may succeed
    (a registry that is down, a scheduler that timed out), as opposed to bad input.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ImgsaveError):
    """The site configuration is missing, unreadable or invalid."""


class InvalidRequest(ImgsaveError):
    """The user's input is malformed (a name, a tag, a node, a format)."""


class NotFound(ImgsaveError):
    """The container, node, job or image named does not exist (or is not the user's)."""


class PermissionDenied(ImgsaveError):
    """The user may not touch this container, job or image."""


class CommandFailed(ImgsaveError):
    """An external command (scheduler, engine, squashfs tool) failed or timed out."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        *,
        timed_out: bool = False,
        retryable: bool | None = None,
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        if timed_out:
            what = "timed out"
        else:
            what = f"exited {returncode}"
        detail = (stderr.strip() or stdout.strip()).splitlines()
        last = detail[-1] if detail else "no output"
        super().__init__(
            f"{argv[0]} {what}: {last}",
            retryable=timed_out if retryable is None else retryable,
        )


class SchedulerError(ImgsaveError):
    """The batch scheduler refused or could not answer a request."""


class RegistryError(ImgsaveError):
    """The registry refused a request or could not be reached."""
