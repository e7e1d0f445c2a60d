"""Bounded retries of registry requests (registry.retry), on a local HTTP server.

The server is a small scripted stand-in (a fake, said so): it answers each request
with the next status of its script and counts what it got, which a real registry
cannot be made to do (503, 429 with Retry-After). The retry loop under test is the
real one (requests + urllib3 through RegistryTransport).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from core.errors import RegistryError
from registry.oci import RegistryClient
from registry.retry import RetryPolicy
from site_configs.schema import RegistrySection


@dataclass
class Script:
    """Statuses to answer in turn (the last one repeats) and what was asked."""

    statuses: list[int]
    retry_after: str = ""
    seen: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@contextmanager
def scripted_registry(script: Script) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            script.seen.append(f"{self.command} {self.path.split('?', 1)[0]}")
            script.times.append(time.monotonic())
            index = min(len(script.seen), len(script.statuses)) - 1
            status = script.statuses[index]
            self.send_response(status)
            if status in (429, 503) and script.retry_after:
                self.send_header("Retry-After", script.retry_after)
            if status == 202:
                self.send_header("Location", "/v2/alice/x/blobs/uploads/u1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FAST = RetryPolicy(attempts=4, wait_seconds=0.6)


def test_the_waits_double_and_add_up_to_the_budget() -> None:
    assert RetryPolicy(4, 10.0).delays() == pytest.approx([0.0, 10 / 3, 20 / 3])
    assert sum(RetryPolicy(6, 8.0).delays()) == pytest.approx(8.0)
    assert RetryPolicy(2, 5.0).delays() == [0.0]
    assert RetryPolicy.once().delays() == []
    with pytest.raises(ValueError):
        RetryPolicy(0, 1.0)


def test_the_site_config_sets_the_policy() -> None:
    section = RegistrySection.model_validate(
        {"url": "http://127.0.0.1:1", "retry_attempts": 3, "retry_wait_seconds": 2}
    )
    client = RegistryClient.from_section(section)
    assert client.retry == RetryPolicy(3, 2.0) and client.twin().retry == client.retry
    default = RegistrySection.model_validate({"url": "http://127.0.0.1:1"})
    assert (default.retry_attempts, default.retry_wait_seconds) == (4, 10.0)


def test_a_503_twice_then_ok_is_retried_and_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    script = Script([503, 503, 200])
    with scripted_registry(script) as url, RegistryClient(url, retry=FAST) as client:
        client.ping()
    assert script.seen == ["GET /v2/"] * 3
    retries = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert [r.getMessage().split("attempt ")[1][:6] for r in retries] == ["2 of 4", "3 of 4"]


def test_a_registry_that_keeps_failing_gets_the_bounded_attempts_in_bounded_time() -> None:
    script = Script([500])
    with scripted_registry(script) as url, RegistryClient(url, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            client.ping()
        took = time.monotonic() - started
    assert script.seen == ["GET /v2/"] * 4
    assert took < FAST.wait_seconds + 1.0
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert gaps[0] < 0.1 and gaps[1] > 0.15 and gaps[2] > 0.3  # 0, 0.2, 0.4 s
    assert caught.value.retryable and url in caught.value.message
    assert "gave up after 4 attempts" in caught.value.message


def test_retry_after_is_honoured_within_the_budget() -> None:
    script = Script([429, 200], retry_after="1")
    with scripted_registry(script) as url:
        with RegistryClient(url, retry=RetryPolicy(3, 2.0)) as client:
            client.ping()
    assert len(script.seen) == 2 and script.times[1] - script.times[0] >= 0.95


def test_retry_after_beyond_the_budget_is_not_waited_for() -> None:
    script = Script([503], retry_after="60")
    with scripted_registry(script) as url, RegistryClient(url, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(RegistryError, match="HTTP 503") as caught:
            client.ping()
    assert len(script.seen) == 1 and time.monotonic() - started < 1.0
    assert caught.value.retryable


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_patch_and_delete_are_never_retried(method: str) -> None:
    script = Script([503])
    with scripted_registry(script) as url, RegistryClient(url, retry=FAST) as client:
        response = client.send(method, "/v2/alice/x/blobs/uploads/u1", scope="")
    assert response.status_code == 503 and len(script.seen) == 1


def test_a_client_error_is_not_retried() -> None:
    script = Script([400])
    with scripted_registry(script) as url, RegistryClient(url, retry=FAST) as client:
        with pytest.raises(RegistryError) as caught:
            client.ping()
    assert len(script.seen) == 1 and not caught.value.retryable


def test_without_a_policy_there_is_one_attempt() -> None:
    script = Script([503, 200])
    with scripted_registry(script) as url, RegistryClient(url) as client:
        with pytest.raises(RegistryError):
            client.ping()
    assert len(script.seen) == 1
