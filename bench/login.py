"""Password sign-ins per second through the real app, against raw argon2 verification on the same cores.

1. Baseline: ``argon2.PasswordHasher.verify`` with the default parameters (m=19 MiB, t=2, p=1) in 2
   processes -> verifications per second.
2. The app: gunicorn with 2 sync workers on a free 127.0.0.1 port, a temp SQLite database migrated to
   head with N users (default argon2 parameters), driven by a bounded pool of client threads. Each
   sign-in is a fresh client: GET /signin (session cookie + CSRF token), then POST /signin, which must
   answer 302 to the app (not back to /signin). -> successful sign-ins per second.

The two alternate in short rounds (the server idles during a raw phase) so that load from neighbours on
a shared machine affects both alike. Prints the median of each and of the per-round ratio (the goal is
>= 0.9: argon2 should be nearly all of a sign-in's cost).
The throttle stays on (in memory, per worker) with a per-IP limit high enough for one benchmarking client.
Asserts nothing; takes about 35 s (gunicorn via bench/gunicorn_server.py, stopped by PID).
Usage: ``python bench/login.py [--users 16] [--rounds 4] [--seconds 3] [--clients 4]``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.pool import Pool
from pathlib import Path
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gunicorn_server import gunicorn

PASSWORD = "benchmark pass phrase for sign-in"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
WORKERS = 2


def _verify_loop(seconds: float) -> tuple[int, float]:
    from argon2 import PasswordHasher

    hasher = PasswordHasher(memory_cost=19456, time_cost=2, parallelism=1)
    stored = hasher.hash(PASSWORD)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        hasher.verify(stored, PASSWORD)
        count += 1
    return count, time.perf_counter() - start


def raw_verifies_per_second(pool: Pool, seconds: float) -> float:
    results = pool.map(_verify_loop, [seconds] * WORKERS)
    return sum(count / elapsed for count, elapsed in results)


def app_env(tmp: Path) -> dict[str, str]:
    return {
        "AMI_AUTH_ENV": "production",
        "AMI_AUTH_INSTANCE_DIR": str(tmp),
        "AMI_AUTH_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "AMI_AUTH_SECRET_KEY": secrets.token_urlsafe(48),
        "AMI_AUTH_MASTER_KEYS": "bench1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "AMI_AUTH_BASE_URL": "https://127.0.0.1",
        "AMI_AUTH_SCHEDULER": "false",
        "AMI_AUTH_LOG_LEVEL": "WARNING",
        # One client address does all the sign-ins here; every other throttle rule stays as shipped.
        "AMI_AUTH_THROTTLE_IP_PER_MINUTE": "1000000",
    }


def prepare_database(env: dict[str, str], users: int) -> list[str]:
    from app import create_app
    from app.auth import users as accounts
    from app.extensions import get_database
    from app.migrate import upgrade
    from app.settings import load_settings

    settings = load_settings(env)
    upgrade(settings.database_url)
    app = create_app(settings)
    emails = [f"bench{n}@example.com" for n in range(users)]
    with app.app_context():
        db = get_database(app).session()
        for email in emails:
            accounts.create_user(db, settings, email=email, password=PASSWORD, verified=True)
        db.commit()
    get_database(app).engine.dispose()
    return emails


def sign_in(port: int, email: str) -> tuple[bool, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/signin")
        page = conn.getresponse()
        html = page.read().decode()
        cookies = [c.split(";", 1)[0] for c in page.msg.get_all("Set-Cookie") or []]
        match = CSRF.search(html)
        if page.status != 200 or match is None or not cookies:
            return False, time.perf_counter() - started
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = urlencode({"email": email, "password": PASSWORD, "csrf_token": match.group(1)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": "; ".join(cookies)}
        conn.request("POST", "/signin", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        location = answer.getheader("Location") or ""
        return answer.status == 302 and "/signin" not in location, time.perf_counter() - started
    finally:
        conn.close()


def drive(port: int, emails: list[str], clients: int, seconds: float) -> tuple[int, int, float, list[float]]:
    ok = failed = 0
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        nonlocal ok, failed
        n = offset
        while time.perf_counter() < stop_at:
            success, latency = sign_in(port, emails[n % len(emails)])
            n += clients
            with lock:
                if success:
                    ok += 1
                    latencies.append(latency)
                else:
                    failed += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, failed, time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating raw/app measurement rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase of a round")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (bounded load)")
    args = parser.parse_args()
    total_start = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="ami-bench-"))
    env = app_env(tmp)
    raw_rates: list[float] = []
    app_rates: list[float] = []
    ok = failed = 0
    latencies: list[float] = []
    try:
        emails = prepare_database(env, args.users)
        # The shared launcher serves wsgi:app under gunicorn and stops it by PID when the block ends.
        with gunicorn("wsgi:app", env, workers=WORKERS) as base:
            port = urlsplit(base).port
            assert port is not None
            with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
                raw_verifies_per_second(pool, 0.5)  # start-up of the pool's processes
                drive(port, emails, args.clients, 1.0)  # warm-up: imports, dummy hash, connection pools
                # Short alternating phases: load from neighbours on a shared machine hits both sides alike.
                for _ in range(args.rounds):
                    raw_rates.append(raw_verifies_per_second(pool, args.seconds))
                    done, bad, elapsed, times = drive(port, emails, args.clients, args.seconds)
                    app_rates.append(done / elapsed)
                    ok, failed = ok + done, failed + bad
                    latencies.extend(times)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ratios = [a / r for a, r in zip(app_rates, raw_rates, strict=True)]
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    print(
        f"raw argon2id verify (m=19456 KiB, t=2, p=1), {WORKERS} processes: {statistics.median(raw_rates):7.1f} /s"
        f"  (rounds: {', '.join(f'{r:.1f}' for r in raw_rates)})"
    )
    print(
        f"app sign-ins (gunicorn {WORKERS} workers, {args.clients} clients, {args.users} users): "
        f"{statistics.median(app_rates):7.1f} /s  (rounds: {', '.join(f'{r:.1f}' for r in app_rates)}; "
        f"{ok} ok, {failed} failed, median {p50:.0f} ms for GET+POST)"
    )
    print(
        f"ratio app / raw: {statistics.median(ratios):.2f} median  (rounds: {', '.join(f'{r:.2f}' for r in ratios)};"
        " goal >= 0.90)"
    )
    print(f"total runtime: {time.perf_counter() - total_start:.1f} s")


if __name__ == "__main__":
    main()
