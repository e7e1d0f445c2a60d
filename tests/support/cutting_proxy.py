"""A TCP proxy in front of a real registry that dies after a number of bytes.

Clients talk to the proxy as to the registry. Once ``cut_after`` bytes have gone from
clients to the registry (over all connections), every connection is reset and new ones
are refused, as when a registry host goes down in the middle of an upload.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.registry_server import RunningRegistry

BUFFER = 64 * 1024


@dataclass
class CuttingProxy:
    """The proxy's address and what it saw."""

    host: str  # "127.0.0.1:PORT", as a registry host
    sent: int = 0  # bytes from clients to the registry
    cut: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@contextlib.contextmanager
def cutting_proxy(registry: RunningRegistry, cut_after: int) -> Iterator[CuttingProxy]:
    """Run the proxy for the duration of the block."""
    backend = registry.host.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = CuttingProxy(f"127.0.0.1:{listener.getsockname()[1]}")
    sockets: list[socket.socket] = []
    lock = threading.Lock()

    def reset_all() -> None:
        proxy.cut.set()
        with lock:
            doomed = [*sockets, listener]
        for s in doomed:
            # shutdown() first: close() alone does not wake a thread blocked in recv()
            # or accept() on the socket, and the peer would wait for its timeout.
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def pipe(source: socket.socket, sink: socket.socket, upload: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(BUFFER):
                if upload:
                    with lock:
                        proxy.sent += len(data)
                        over = proxy.sent > cut_after
                    if over:
                        reset_all()
                        return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not proxy.cut.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((backend[0], int(backend[1])))
            with lock:
                sockets.extend((client, server))
            if proxy.cut.is_set():  # accepted as it died
                reset_all()
                return
            for args in ((client, server, True), (server, client, False)):
                threading.Thread(target=pipe, args=args, daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield proxy
    finally:
        reset_all()
        acceptor.join(timeout=5)
