"""Plain TCP listeners for the outbound-guard tests: count who connects, and answer like something that is not
an SMTP server (nothing at all, or a banner from another protocol)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

# What an SSH server says first: a TCP service that greets, but not with SMTP's 220.
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


@dataclass
class Listener:
    host: str
    port: int
    accepted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self) -> None:
        with self._lock:
            self.accepted += 1


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(16)
    return sock


@contextlib.contextmanager
def listening(host: str = "127.0.0.1", port: int = 0, *, banner: bytes | None = None) -> Iterator[Listener]:
    """Accept connections on ``host:port`` until the block ends; each is counted, then either held open in
    silence (``banner=None``) or sent ``banner`` and closed."""
    server = _bind(host, port)
    server.settimeout(0.05)
    listener = Listener(host, int(server.getsockname()[1]))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            listener.count()
            if banner is None:
                held.append(conn)
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(banner)

    thread = threading.Thread(target=serve, name=f"listener-{host}-{listener.port}")
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def loopback_listeners(*, banner: bytes | None = None) -> Iterator[tuple[Listener, Listener]]:
    """The same port on 127.0.0.1 and on ::1, so a connection to loopback in any spelling lands on one."""
    for _attempt in range(20):
        with contextlib.ExitStack() as stack:
            v4 = stack.enter_context(listening("127.0.0.1", banner=banner))
            try:
                v6 = stack.enter_context(listening("::1", v4.port, banner=banner))
            except OSError:
                continue  # the port is taken on ::1; try another
            yield v4, v6
            return
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")
