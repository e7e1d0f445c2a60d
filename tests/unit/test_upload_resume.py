"""A streamed layer upload when the registry goes away, against a real docker-registry
(distribution 2.8) behind a proxy that drops requests (tests/support/flaky_proxy.py).

A short outage: the failed chunk is resent from where the registry stands and the blob
arrives whole. An outage that never ends: a retryable error naming the registry after
the bounded attempts, in bounded time; a later push through a working path succeeds.
A chunk cut in the middle, or a registry restarted with a new ``http.secret``: the
registry has lost the upload, which is said so (retryable).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from builder_jobs.streaming.codecs import ZstdCodec
from builder_jobs.streaming.layer_push import PushedLayer, push_layer
from core.errors import RegistryError
from registry.oci import RegistryClient
from registry.retry import RetryPolicy
from registry.upload import UploadLost
from tests.support.flaky_proxy import FlakyProxy, flaky_proxy
from tests.support.registry_server import RunningRegistry, running_registry

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None, reason="needs docker-registry"
)

CHUNK = 1 << 20
LAYER = os.urandom(6 * CHUNK)  # incompressible: about six chunks on the wire


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with running_registry(tmp_path_factory.mktemp("resume-registry")) as running:
        yield running


def _pieces() -> Iterator[bytes]:
    for start in range(0, len(LAYER), 256 * 1024):
        yield LAYER[start : start + 256 * 1024]


def _push(
    proxy: FlakyProxy,
    repo: str,
    policy: RetryPolicy,
    progress: Callable[[int], None] | None = None,
) -> PushedLayer:
    with RegistryClient(proxy.url, retry=policy) as client:
        return push_layer(
            client, repo, _pieces(), ZstdCodec(), chunk_bytes=CHUNK, progress=progress
        )


def _nth_patch(n: int) -> Callable[[str], bool]:
    seen = [0]

    def trigger(line: str) -> bool:
        if line.startswith("PATCH "):
            seen[0] += 1
        return seen[0] == n

    return trigger


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    return sum(1 for r in warnings if "attempt" in r.getMessage())


def _check_blob(registry: RunningRegistry, repo: str, pushed: PushedLayer) -> None:
    with RegistryClient(registry.url) as client:
        blob = client.get_blob(repo, pushed.digest)  # checks the digest
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == LAYER


def test_a_short_outage_mid_upload_is_resumed_and_the_blob_arrives_whole(
    registry: RunningRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    repo = f"alice/resume-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.WARNING)
    with flaky_proxy(registry.host) as proxy:
        proxy.outage(_nth_patch(3), seconds=0.5)
        pushed = _push(proxy, repo, RetryPolicy(attempts=5, wait_seconds=2.0))
    assert proxy.dropped_matching("PATCH ") == 1  # the third chunk, lost whole
    assert proxy.dropped_matching("GET ") >= 1  # asked where the upload stands, in vain
    assert _retries(caplog) == len(proxy.dropped)  # one retry per dropped request
    assert any("asking where the upload stands" in r.getMessage() for r in caplog.records)
    _check_blob(registry, repo, pushed)


def test_an_outage_that_never_ends_fails_in_bounded_time_and_a_later_push_succeeds(
    registry: RunningRegistry,
) -> None:
    repo = f"alice/dead-{uuid.uuid4().hex[:8]}"
    policy = RetryPolicy(attempts=3, wait_seconds=0.5)
    with flaky_proxy(registry.host) as proxy:
        proxy.outage(_nth_patch(2))
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            _push(proxy, repo, policy)
        took = time.monotonic() - started
        # one PATCH, then the upload's state asked for: the policy's attempts; the
        # DELETE of the upload (never retried) once
        assert proxy.dropped_matching("PATCH ") == 1
        assert proxy.dropped_matching("GET ") == policy.attempts
        assert proxy.dropped_matching("DELETE ") == 1
        assert took < policy.wait_seconds + 3.0
        error = caught.value
        assert error.retryable and proxy.url in error.message and "unreachable" in error.message
        assert "gave up after 3 attempts" in error.message
        with RegistryClient(registry.url) as client:
            assert client.list_tags(repo) == []
        # the resubmit, once the registry answers again
        proxy.recover()
        pushed = _push(proxy, repo, policy)
    _check_blob(registry, repo, pushed)


def test_a_chunk_cut_in_the_middle_loses_the_upload_on_distribution(
    registry: RunningRegistry,
) -> None:
    repo = f"alice/cut-{uuid.uuid4().hex[:8]}"
    with flaky_proxy(registry.host) as proxy:
        proxy.cut_after(CHUNK + CHUNK // 2)  # inside the second chunk's body
        with pytest.raises(UploadLost, match="lost the upload") as caught:
            _push(proxy, repo, RetryPolicy(attempts=3, wait_seconds=0.5))
    assert proxy.cuts == 1 and caught.value.retryable
    assert "BLOB_UPLOAD_INVALID" in caught.value.message


def test_a_registry_restarted_with_a_new_secret_refuses_the_upload(tmp_path: Path) -> None:
    repo = f"alice/restart-{uuid.uuid4().hex[:8]}"
    storage = tmp_path / "registry"
    running = [running_registry(storage)]
    first = running[0].__enter__()
    try:
        with flaky_proxy(first.host) as proxy:

            def restart_once(sent: int) -> None:
                if len(running) > 1:
                    return
                running[0].__exit__(None, None, None)
                running.append(running_registry(storage))  # same storage, new secret
                proxy.backend = running[1].__enter__().host

            with pytest.raises(UploadLost, match="lost the upload") as caught:
                _push(proxy, repo, RetryPolicy(attempts=3, wait_seconds=0.5),
                      progress=restart_once)  # fmt: skip
    finally:
        running[-1].__exit__(None, None, None)
    assert len(running) == 2 and caught.value.retryable
    assert proxy.url in caught.value.message and "BLOB_UPLOAD_INVALID" in caught.value.message
