"""A TCP proxy in front of a real registry that goes down for a while and comes back.

It knows where each HTTP request starts (the client's first bytes on a connection, or
its first bytes after the registry has answered), so during an outage a request is
dropped before any of it reaches the registry (the connection is reset), as when the
registry host cannot be reached: a chunk is lost whole, never half-written. A cut in
the middle of a request body (:meth:`FlakyProxy.cut_after`) is there for that case.

``outage(trigger, seconds)`` starts at the first request whose line (``"PATCH /v2/..."``,
without the query) matches ``trigger`` and lasts ``seconds`` (None: until
:meth:`recover`). ``backend`` can be switched to another registry, e.g. one restarted
with a new ``http.secret``. Every request line forwarded or dropped is recorded.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

BUFFER = 64 * 1024


@dataclass
class FlakyProxy:
    """The proxy's address, its outage plan, and the requests it saw."""

    host: str  # "127.0.0.1:PORT", as a registry host
    backend: str  # the registry behind it, "127.0.0.1:PORT"
    forwarded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    cuts: int = 0  # requests cut in the middle of their body
    _trigger: Callable[[str], bool] | None = None
    _seconds: float | None = None
    _down_until: float | None = None
    _cut_after: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def outage(self, trigger: Callable[[str], bool], seconds: float | None = None) -> None:
        """Go down at the first request ``trigger`` accepts, for ``seconds`` (or for ever)."""
        with self._lock:
            self._trigger, self._seconds, self._down_until = trigger, seconds, None

    def recover(self) -> None:
        with self._lock:
            self._trigger, self._down_until = None, None

    def cut_after(self, upload_bytes: int) -> None:
        """Reset the connection once ``upload_bytes`` more bytes went to the registry (once)."""
        with self._lock:
            self._cut_after = upload_bytes

    def dropped_matching(self, prefix: str) -> int:
        return sum(1 for line in self.dropped if line.startswith(prefix))

    def _admit(self, line: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._down_until is None and self._trigger is not None and self._trigger(line):
                self._down_until = now + self._seconds if self._seconds is not None else math.inf
                self._trigger = None
            if self._down_until is not None and now < self._down_until:
                self.dropped.append(line)
                return False
            self._down_until = None
            self.forwarded.append(line)
            return True

    def _count(self, sent: int) -> bool:
        """Bytes going to the registry; True when a planned cut is due."""
        with self._lock:
            if self._cut_after is None:
                return False
            self._cut_after -= sent
            if self._cut_after > 0:
                return False
            self._cut_after = None
            self.cuts += 1
            return True


def _request_line(data: bytes) -> str:
    first = data.split(b"\r\n", 1)[0].decode("latin-1")
    method, _, rest = first.partition(" ")
    return f"{method} {rest.split(' ', 1)[0].split('?', 1)[0]}"


def _reset(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()


class _Connection:
    def __init__(self, proxy: FlakyProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        host, port = proxy.backend.rsplit(":", 1)
        self.server = socket.create_connection((host, int(port)))
        self.new_request = True  # the next client bytes start a request

    def run(self) -> None:
        threading.Thread(target=self._answers, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := self.client.recv(BUFFER):
                if self.new_request:
                    self.new_request = False
                    if not self.proxy._admit(_request_line(data)):
                        break
                if self.proxy._count(len(data)):
                    self.server.sendall(data[: len(data) // 2])
                    break
                self.server.sendall(data)
            else:
                with contextlib.suppress(OSError):
                    self.server.shutdown(socket.SHUT_WR)
                return
        _reset(self.client, self.server)

    def _answers(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.server.recv(BUFFER):
                self.new_request = True
                self.client.sendall(data)
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def flaky_proxy(backend: str) -> Iterator[FlakyProxy]:
    """Run the proxy in front of ``backend`` ("127.0.0.1:PORT") for the block."""
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = FlakyProxy(f"127.0.0.1:{listener.getsockname()[1]}", backend)
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                connection = _Connection(proxy, client)
            except OSError:
                _reset(client)  # the backend is down (being restarted)
                continue
            threading.Thread(target=connection.run, daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield proxy
    finally:
        stopping.set()
        _reset(listener)
        acceptor.join(timeout=5)
