"""GET /api/auth/session with a valid session vs a bare Flask JSON endpoint, both under gunicorn (2 workers).

Run: python bench/session.py   — prints rps, p50/p99 latency at 32 concurrent clients, server CPU per request,
and the ratio (goal ≥ 0.7x, p99 < 25 ms). Asserts nothing; every process it starts is stopped by PID.

Both endpoints are measured the same way:
- the load comes from CLIENT_PROCESSES processes of threads (one Python process is held to one core by its GIL,
  which would cap the faster baseline first and flatter the ratio);
- the two servers run side by side and are loaded in alternating rounds, so a burst of other work on the
  machine lands on both rather than on whichever happened to run then;
- the session cookie is the one a browser would hold: the first call after sign-in stores the CSRF secret in
  the signed cookie (Set-Cookie), and the client keeps that cookie as a browser does.
"""

from __future__ import annotations

import base64
import http.client
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gunicorn_server import gunicorn_process, process_cpu_seconds

CONCURRENCY = 32
CLIENT_PROCESSES = 2
ROUNDS = 4
ROUND_SECONDS = 2.0
PASSWORD = "load test passphrase 1234"


def load(base: str, path: str, cookie: str, seconds: float, threads: int) -> tuple[float, list[float], int]:
    """``threads`` client threads, one keep-alive-less request at a time each (gunicorn sync workers close
    anyway). Returns (elapsed seconds, latencies, errors)."""
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

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    began = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - began, latencies, errors


def _load_task(args: tuple[str, str, str, float, int]) -> tuple[float, list[float], int]:
    return load(*args)


@dataclass
class Totals:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    cpu: float | None = 0.0
    latencies: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # rps per round

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_ms(self) -> str:
        return f"{self.cpu * 1000 / self.requests:8.2f}" if self.cpu is not None else "     n/a"


def run_round(clients: Pool, base: str, path: str, cookie: str, pid: int, seconds: float, totals: Totals) -> None:
    """CONCURRENCY threads spread over the client processes, all for ``seconds``; add the results to ``totals``."""
    per_process = CONCURRENCY // CLIENT_PROCESSES
    cpu_before = process_cpu_seconds(pid)
    results = clients.map(_load_task, [(base, path, cookie, seconds, per_process)] * CLIENT_PROCESSES)
    cpu_after = process_cpu_seconds(pid)
    elapsed = max(r[0] for r in results)
    count = sum(len(r[1]) for r in results)
    totals.requests += count
    totals.seconds += elapsed
    totals.errors += sum(r[2] for r in results)
    for _, latencies, _ in results:
        totals.latencies.extend(latencies)
    totals.rounds.append(count / elapsed)
    if cpu_before is None or cpu_after is None or totals.cpu is None:
        totals.cpu = None
    else:
        totals.cpu += cpu_after - cpu_before


def _request(
    base: str, method: str, path: str, headers: dict[str, str], body: str | None = None
) -> tuple[int, str, str]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        return response.status, response.getheader("Set-Cookie", "").split(";", 1)[0], text
    finally:
        conn.close()


def signed_in_cookie(base: str) -> str:
    """Sign in through the real form; return the session cookie a browser holds afterwards."""
    _, first, html = _request(base, "GET", "/signin", {})
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert token
    body = f"email=bench%40example.com&password={PASSWORD.replace(' ', '+')}&csrf_token={token.group(1)}"
    status, cookie, _ = _request(
        base, "POST", "/signin", {"Cookie": first, "Content-Type": "application/x-www-form-urlencoded"}, body
    )
    if status != 302 or not cookie:
        raise RuntimeError(f"sign-in failed: {status}")
    # The first session call adds the CSRF secret to the (signed, client-side) Flask session and sends the
    # cookie back; a browser stores it, so every later call carries it and gets no Set-Cookie.
    status, refreshed, _ = _request(base, "GET", "/api/auth/session", {"Cookie": cookie})
    if status != 200:
        raise RuntimeError(f"/api/auth/session answered {status}")
    cookie = refreshed or cookie
    status, again, _ = _request(base, "GET", "/api/auth/session", {"Cookie": cookie})
    if status != 200 or again:
        raise RuntimeError(f"the stored cookie is not stable ({status}, Set-Cookie: {again!r})")
    return cookie


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def prepare(tmp: str) -> dict[str, str]:
    env = {
        "AMI_AUTH_ENV": "development",
        "AMI_AUTH_INSTANCE_DIR": tmp,
        "AMI_AUTH_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
        "AMI_AUTH_SECRET_KEY": "b" * 48,
        "AMI_AUTH_MASTER_KEYS": "bench:" + base64.b64encode(b"k" * 32).decode(),
        "AMI_AUTH_SCHEDULER": "false",
        "AMI_AUTH_MFA_REQUIRED_ROLES": "",
        "AMI_AUTH_API_RATE_PER_MINUTE": "10000000",
        "AMI_AUTH_BOOTSTRAP_ADMIN_EMAIL": "bench@example.com",
        "AMI_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
    }
    cli = [sys.executable, "-c", "from app.cli import main; main()"]
    root = Path(__file__).resolve().parent.parent
    for args in (["db", "upgrade"], ["bootstrap"]):
        subprocess.run(
            [*cli, *args], env={**os.environ, **env, "PYTHONPATH": str(root)}, cwd=root, check=True, capture_output=True
        )
    return env


def main() -> None:
    bare, app = Totals(), Totals()
    with tempfile.TemporaryDirectory() as tmp:
        env = prepare(tmp)
        with (
            multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES) as clients,
            gunicorn_process("bench.bare_app:app", env) as (bare_base, bare_proc),
            gunicorn_process("wsgi:app", env) as (app_base, app_proc),
        ):
            cookie = signed_in_cookie(app_base)
            targets = [
                (bare_base, "/api/bare", "", bare_proc.pid, bare),
                (app_base, "/api/auth/session", cookie, app_proc.pid, app),
            ]
            for base, path, cookie_, pid, _ in targets:  # warm-up
                run_round(clients, base, path, cookie_, pid, 1.0, Totals())
            for n in range(ROUNDS):
                # Alternate which goes first, so neither always follows the other.
                for base, path, cookie_, pid, totals in targets if n % 2 == 0 else targets[::-1]:
                    run_round(clients, base, path, cookie_, pid, ROUND_SECONDS, totals)

    print(
        f"{CONCURRENCY} concurrent clients ({CLIENT_PROCESSES} processes), {ROUNDS} alternating rounds of "
        f"{ROUND_SECONDS:.0f} s each, gunicorn 2 sync workers"
    )
    print(f"{'endpoint':28} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'server CPU ms/req':>18}")
    for name, totals in (("bare Flask JSON (baseline)", bare), ("GET /api/auth/session", app)):
        print(
            f"{name:28} {totals.rps:8.0f} {statistics.median(totals.latencies) * 1000:8.1f} "
            f"{pct(totals.latencies, 0.99):8.1f} {totals.errors:7d} {totals.cpu_ms():>18}"
        )
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(app.rounds, bare.rounds, strict=True))
    print(f"ratio per round: {per_round}")
    print(f"ratio: {app.rps / bare.rps:.2f}x (goal >= 0.7x); p99 {pct(app.latencies, 0.99):.1f} ms (goal < 25 ms)")


if __name__ == "__main__":
    main()
