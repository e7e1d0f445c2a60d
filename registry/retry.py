"""Bounded retries of the registry requests that are safe to repeat.

Retried: HEAD and GET; PUT (a manifest, the closing PUT of an upload); POST (starting an
upload, a cross-repository mount). Never PATCH: a chunk of an upload is resumed by
:mod:`builder_jobs.streaming.layer_push` from the offset the registry reports. Never DELETE: a
second DELETE of a manifest that the first one removed answers 404.

On what: connection failures (refused, reset, timed out) and the transient answers 429,
500, 502, 503 and 504. A ``Retry-After`` is honoured when it fits in the wait left;
a registry asking for longer gets no retry and its answer is reported.

How long: ``attempts`` tries in all; the first retry at once (a pooled connection the
registry has closed fails on first use), then waits doubling, all the waits of one
request together never longer than ``wait_seconds`` (4 attempts in 10 s: 0, 3.3, 6.7 s).

urllib3's :class:`~urllib3.util.Retry` (through a ``requests`` adapter) runs the loop;
this module adds what it lacks: a bound on the total wait, no retry of PATCH/DELETE even
on connect errors (urllib3 retries those for any method), and a log line per retry.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

RETRIED_METHODS = frozenset({"HEAD", "GET", "PUT", "POST"})
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one registry request is tried (``[registry]`` retry keys)."""

    attempts: int = 4
    wait_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.wait_seconds < 0:
            raise ValueError(f"bad retry policy {self}: attempts >= 1, wait_seconds >= 0")

    @classmethod
    def once(cls) -> RetryPolicy:
        """No retries: one attempt, for checks that must answer at once."""
        return cls(attempts=1, wait_seconds=0.0)

    def delays(self) -> list[float]:
        """The waits before the 2nd, 3rd, ... attempt: 0, then doubling; they add up to
        ``wait_seconds`` (urllib3's schedule for ``backoff_factor``)."""
        return [_backoff(self, n) for n in range(1, self.attempts)]

    def adapter(self, registry: str) -> HTTPAdapter:
        """A ``requests`` adapter that retries by this policy; ``registry`` is for logs."""
        retries = self.attempts - 1
        retry = BoundedRetry(
            total=retries,
            connect=None,
            read=None,
            status=None,
            other=0,  # TLS and protocol errors: another try would fail the same way
            allowed_methods=RETRIED_METHODS,
            status_forcelist=RETRIED_STATUSES,
            backoff_factor=_factor(self),
            backoff_max=self.wait_seconds,
            raise_on_status=False,  # the last answer comes back; the caller reports it
            respect_retry_after_header=True,
            wait_seconds=self.wait_seconds,
            registry=registry,
        )
        return HTTPAdapter(max_retries=retry)


def _factor(policy: RetryPolicy) -> float:
    retries = policy.attempts - 1
    return policy.wait_seconds / (2**retries - 2) if retries >= 2 else 0.0


def _backoff(policy: RetryPolicy, failures: int) -> float:
    return 0.0 if failures <= 1 else _factor(policy) * 2 ** (failures - 1)


class BoundedRetry(Retry):
    """urllib3's Retry with a total-wait budget, PATCH/DELETE never retried, and a log
    line per retry. urllib3 makes a new object per failure (:meth:`new`), so the time
    waited so far travels with it."""

    def __init__(
        self, *, wait_seconds: float = 0.0, waited: float = 0.0, registry: str = "",
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.wait_seconds = wait_seconds
        self.waited = waited
        self.registry = registry

    def new(self, **kw: Any) -> Self:
        kw.setdefault("wait_seconds", self.wait_seconds)
        kw.setdefault("waited", self.waited)
        kw.setdefault("registry", self.registry)
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if error is not None and (method is None or not self._is_method_retryable(method)):
            raise MaxRetryError(_pool, url or "", error) from error  # type: ignore[arg-type]
        if response is not None and self._asked_wait(response) > self._left():
            reason = ResponseError(f"the registry asked to wait longer than {self._left():.1f} s")
            raise MaxRetryError(_pool, url or "", reason) from reason  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        asked = self._asked_wait(response) if response is not None else 0.0
        seconds = max(0.0, min(asked or self.get_backoff_time(), self._left()))
        self.waited += seconds
        self._log(seconds)
        if seconds:
            time.sleep(seconds)

    @property
    def attempts(self) -> int:
        """Tries so far (including the one about to be made after :meth:`sleep`)."""
        return len(self.history) + 1

    def _asked_wait(self, response: BaseHTTPResponse) -> float:
        if not self.respect_retry_after_header:
            return 0.0
        if response.status not in self.RETRY_AFTER_STATUS_CODES:
            return 0.0
        value = response.headers.get("Retry-After")
        if value is None:
            return 0.0
        try:
            return float(self.parse_retry_after(value))
        except Exception:  # noqa: BLE001 - a bad header: fall back to our own backoff
            return 0.0

    def _left(self) -> float:
        return max(0.0, self.wait_seconds - self.waited)

    def _log(self, seconds: float) -> None:
        last = self.history[-1] if self.history else None
        if last is None:
            return
        why = f"HTTP {last.status}" if last.status else short_reason(last.error)
        total = self.attempts + (self.total if isinstance(self.total, int) else 0)
        log.warning(
            "registry %s: %s %s failed (%s); attempt %d of %d in %.1f s",
            self.registry, last.method, urlsplit(last.url or "").path, why,
            self.attempts, total, seconds,
        )  # fmt: skip


# Short reasons for the usual network failures, instead of urllib3's nested repr.
_REASONS = (
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "Network is unreachable",
    "Connection reset by peer",
    "Connection aborted",
    "Read timed out",
    "timed out",
)


def short_reason(error: BaseException | None) -> str:
    """The usual network failure in a few words (``Connection refused``), else the text."""
    text = str(error) if error is not None else "no answer"
    for reason in _REASONS:
        if reason.lower() in text.lower():
            return reason
    match = re.search(r"certificate verify failed[^(')]*", text)
    if match:
        return match.group(0).strip()
    return text
