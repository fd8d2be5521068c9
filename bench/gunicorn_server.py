"""Start the real app (or a bare Flask app) under gunicorn on 127.0.0.1 for a benchmark; stop it by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def gunicorn(
    target: str, env: dict[str, str], *, workers: int = 2, threads: int = 1, start_seconds: float = 30.0
) -> Iterator[str]:
    """Serve `target` (e.g. "wsgi:app") with the given environment; yield its base URL."""
    with gunicorn_process(target, env, workers=workers, threads=threads, start_seconds=start_seconds) as (base, _):
        yield base


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its children that are alive (Linux /proc), or None."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    total = 0.0
    for each in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def gunicorn_process(
    target: str, env: dict[str, str], *, workers: int = 2, threads: int = 1, start_seconds: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like :func:`gunicorn`, also yielding the master process (its PID for CPU accounting).

    ``start_seconds``: how long to wait for ``/healthz`` (a test on a loaded CI machine may want more).
    """
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            GUNICORN,
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            target,
        ],
        cwd=ROOT,
        env=full_env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {target} did not start") from None
                time.sleep(0.1)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
