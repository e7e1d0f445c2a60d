"""What one check of ``imgsave check`` found: a typed result with the fix to apply."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class CheckStatus(enum.Enum):
    """A check's outcome; only FAIL makes ``imgsave check`` exit non-zero."""

    OK = "ok"
    WARN = "warn"  # works, but a documented pitfall is there (the detail says which)
    FAIL = "fail"  # saves will fail or are unsafe until fixed
    SKIP = "skip"  # cannot be checked from here (the detail says where it can)


class Scope(enum.Enum):
    """Where a check belongs: the scheduler/registry, a compute node, the portal host."""

    SITE = "site"
    NODE = "node"
    PORTAL = "portal"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status.value, "detail": self.detail,
                "fix": self.fix}


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckStatus.OK, detail)


def fail(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, CheckStatus.FAIL, detail, fix)


def warn(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, CheckStatus.WARN, detail, fix)


def skip(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckStatus.SKIP, detail)


def any_failed(results: Sequence[CheckResult]) -> bool:
    return any(r.status is CheckStatus.FAIL for r in results)
