"""GET /api/auth/session with a valid session vs a bare Flask JSON endpoint, both under gunicorn (2 workers).

Run: python bench/session.py   — prints rps, p50/p99 latency at 32 concurrent clients, and the ratio
(goal ≥ 0.7x, p99 < 25 ms). Asserts nothing; every process it starts is stopped by PID.
"""

from __future__ import annotations

import base64
import http.client
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gunicorn_server import gunicorn

CONCURRENCY = 32
DURATION = 8.0
PASSWORD = "load test passphrase 1234"


def load(base: str, path: str, cookie: str, seconds: float) -> tuple[float, list[float], int]:
    """32 client threads, one keep-alive-less request at a time each (gunicorn sync workers close anyway)."""
    parts = urlsplit(base)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
            try:
                conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    bad += 1
            except OSError:
                bad += 1
            finally:
                conn.close()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    return len(latencies) / elapsed, latencies, errors


def signed_in_cookie(base: str) -> str:
    """Sign in through the real form and return the session cookie."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.request("GET", "/signin")
    page = conn.getresponse()
    html = page.read().decode()
    first = page.getheader("Set-Cookie", "").split(";", 1)[0]
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert token
    body = f"email=bench%40example.com&password={PASSWORD.replace(' ', '+')}&csrf_token={token.group(1)}"
    conn.close()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.request(
        "POST", "/signin", body=body, headers={"Cookie": first, "Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    response.read()
    cookie = response.getheader("Set-Cookie", "").split(";", 1)[0]
    conn.close()
    if response.status != 302 or not cookie:
        raise RuntimeError(f"sign-in failed: {response.status}")
    return cookie


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        env = {
            "AMI_AUTH_ENV": "development",
            "AMI_AUTH_INSTANCE_DIR": tmp,
            "AMI_AUTH_DATABASE_URL": f"sqlite:///{db}",
            "AMI_AUTH_SECRET_KEY": "b" * 48,
            "AMI_AUTH_MASTER_KEYS": "bench:" + base64.b64encode(b"k" * 32).decode(),
            "AMI_AUTH_SCHEDULER": "false",
            "AMI_AUTH_MFA_REQUIRED_ROLES": "",
            "AMI_AUTH_API_RATE_PER_MINUTE": "10000000",
            "AMI_AUTH_BOOTSTRAP_ADMIN_EMAIL": "bench@example.com",
            "AMI_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
        }
        import os
        import subprocess

        cli = [sys.executable, "-c", "from app.cli import main; main()"]
        root = Path(__file__).resolve().parent.parent
        for args in (["db", "upgrade"], ["bootstrap"]):
            subprocess.run(
                [*cli, *args],
                env={**os.environ, **env, "PYTHONPATH": str(root)},
                cwd=root,
                check=True,
                capture_output=True,
            )

        with gunicorn("bench.bare_app:app", env) as bare_base:
            load(bare_base, "/api/bare", "", 1.0)  # warm-up
            bare_rps, bare_lat, bare_err = load(bare_base, "/api/bare", "", DURATION)
        with gunicorn("wsgi:app", env) as app_base:
            cookie = signed_in_cookie(app_base)
            load(app_base, "/api/auth/session", cookie, 1.0)
            app_rps, app_lat, app_err = load(app_base, "/api/auth/session", cookie, DURATION)

    print(f"{CONCURRENCY} concurrent clients, {DURATION:.0f} s each, gunicorn 2 sync workers")
    print(f"{'endpoint':34} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    print(
        f"{'bare Flask JSON (baseline)':34} {bare_rps:8.0f} {statistics.median(bare_lat) * 1000:8.1f} "
        f"{pct(bare_lat, 0.99):8.1f} {bare_err:7d}"
    )
    print(
        f"{'GET /api/auth/session':34} {app_rps:8.0f} {statistics.median(app_lat) * 1000:8.1f} "
        f"{pct(app_lat, 0.99):8.1f} {app_err:7d}"
    )
    print(f"ratio: {app_rps / bare_rps:.2f}x (goal >= 0.7x); p99 {pct(app_lat, 0.99):.1f} ms (goal < 25 ms)")


if __name__ == "__main__":
    main()
