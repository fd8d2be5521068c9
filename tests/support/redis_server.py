"""A Redis server of the test's own, on a free 127.0.0.1 port, that a test can stop and start again.

The shared Redis (``AMI_AUTH_TEST_REDIS_URL``) cannot be stopped without breaking every other test; an outage is
played on this one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.conftest import require_peer
from tests.support.live import free_port

# No persistence, no daemon: it holds nothing worth keeping, and the test owns (and stops) its PID.
OPTIONS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no")


class RedisServer:
    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), *OPTIONS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while True:
                assert self.process.poll() is None, f"redis-server exited with {self.process.returncode}"
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop it by its PID (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        require_peer("redis-server is not installed: the Redis outage tests need one of their own")
    assert binary is not None
    server = RedisServer(binary, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
