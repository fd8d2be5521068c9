"""The browser tests' live server (tests/support/live.py) itself: a client that resets its connection while a
static file is being answered, as Chromium does with a favicon it no longer needs, leaves nothing open behind."""

from __future__ import annotations

import gc
import socket
import struct
import time

from tests.support.live import LiveServer


def test_a_reset_connection_does_not_leave_the_answered_file_open(live: LiveServer) -> None:
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(b"GET /static/favicon.svg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(1) == b"H"  # the answer has started
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    time.sleep(0.5)  # the server's threads finish those answers
    gc.collect()  # an unclosed file warns here (ResourceWarning; an error under filterwarnings = error)
