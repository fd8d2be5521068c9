"""The OpenID Provider's hot endpoints on PostgreSQL under gunicorn (2 gthread workers of one thread), against a
bare Flask JSON endpoint served the same way, in the same run:

- POST /oauth2/token, grant_type=refresh_token (client_secret_basic; each client thread rotates its own refresh
  token, as an app does): refresh grants per second, and per vCPU — requests per second of server CPU (user +
  system of the gunicorn master and workers), the figure Keycloak's sizing guide gives (120 refresh requests/s per
  vCPU; issue 12's goal: at least 240);
- GET /oauth2/userinfo (Bearer) and POST /oauth2/introspect (client_secret_basic): ratio against bare Flask;
- the caching headers of discovery and JWKS (Cache-Control, ETag, 304 on If-None-Match).

Run: python bench/oidc.py  (PostgreSQL at AMI_AUTH_BENCH_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres; a database of its own is created and dropped). Asserts nothing;
every process it starts is stopped by PID. The load comes from CLIENT_PROCESSES processes of threads, the servers run
side by side and are loaded in alternating rounds (see bench/session.py for why).

`python bench/oidc.py --profile [N]` instead runs N refresh grants in one process (Flask's test client, the same
database setup): the CPU time and SQL statements per grant, then where the CPU time goes (cProfile) — a figure a
loaded, shared machine disturbs less than requests per second.
"""

from __future__ import annotations

import base64
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gunicorn_server import gunicorn_process, process_cpu_seconds

CONCURRENCY = 16
CLIENT_PROCESSES = 2
ROUNDS = 4
ROUND_SECONDS = 3.0
ROOT = Path(__file__).resolve().parent.parent
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Target:
    """One endpoint to load: how to build each request, and (for refresh) the per-thread state it rotates."""

    name: str
    base: str
    pid: int
    method: str
    path: str
    headers: dict[str, str]
    body: str | None = None
    rotate: bool = False  # refresh: each thread sends its own refresh token and keeps the new one


@dataclass
class Totals:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    cpu: float | None = 0.0
    latencies: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float | None:
        return self.requests / self.cpu if self.cpu else None


def _load(args: tuple[Target, float, list[str]]) -> tuple[float, list[float], int, list[str]]:
    """One thread per refresh token given (or ``len(chains)`` threads for the other endpoints); returns
    (elapsed, latencies, errors, the refresh tokens each thread holds at the end)."""
    target, seconds, chains = args
    parts = urlsplit(target.base)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    held = list(chains)

    def worker(slot: int) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        while time.monotonic() < stop:
            body = target.body
            if target.rotate:
                body = urlencode({"grant_type": "refresh_token", "refresh_token": held[slot]})
            started = time.perf_counter()
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
            try:
                conn.request(target.method, target.path, body=body, headers=target.headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    bad += 1
                elif target.rotate:
                    held[slot] = json.loads(data)["refresh_token"]
            except OSError:
                bad += 1
            finally:
                conn.close()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(held))]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began, latencies, errors, held


def run_round(clients: Pool, target: Target, chains: list[list[str]], seconds: float, totals: Totals) -> None:
    cpu_before = process_cpu_seconds(target.pid)
    results = clients.map(_load, [(target, seconds, chain) for chain in chains])
    cpu_after = process_cpu_seconds(target.pid)
    elapsed = max(r[0] for r in results)
    count = sum(len(r[1]) for r in results)
    totals.requests += count
    totals.seconds += elapsed
    totals.errors += sum(r[2] for r in results)
    for r in results:
        totals.latencies.extend(r[1])
    totals.rounds.append(count / elapsed)
    if target.rotate:
        for i, r in enumerate(results):
            chains[i] = r[3]
    if cpu_before is None or cpu_after is None or totals.cpu is None:
        totals.cpu = None
    else:
        totals.cpu += cpu_after - cpu_before


@contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run; dropped at the end."""
    # Imported here: only this benchmark needs the driver itself (CREATE/DROP DATABASE).
    import psycopg

    admin_url = os.environ.get("AMI_AUTH_BENCH_POSTGRES_URL", PG_DEFAULT)
    name = f"bench_oidc_{uuid.uuid4().hex[:10]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(tmp: str, url: str) -> dict[str, str]:
    env = {
        "AMI_AUTH_ENV": "development",
        "AMI_AUTH_INSTANCE_DIR": tmp,
        "AMI_AUTH_DATABASE_URL": url,
        "AMI_AUTH_BASE_URL": "http://127.0.0.1:8000",
        "AMI_AUTH_SECRET_KEY": "b" * 48,
        "AMI_AUTH_MASTER_KEYS": "bench:" + base64.b64encode(b"k" * 32).decode(),
        "AMI_AUTH_SCHEDULER": "false",
        "AMI_AUTH_MFA_REQUIRED_ROLES": "",
        "AMI_AUTH_API_RATE_PER_MINUTE": "10000000",
    }
    subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "db", "upgrade"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return env


SEED = """
import json, sys
from app import create_app
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_cipher, get_database, get_settings
from app.idp import clients, keys, tokens
from app.idp.claims import Subject
from app.idp.records import Client
from app.web.idp import provider

app = create_app()
chains = int(sys.argv[1])
with app.test_request_context():
    db = get_database().session()
    ctx = AuditContext(actor="bench")
    keys.ensure_keys(db, get_cipher(), ctx)
    db.commit()  # the key ring reads the keys through its own connection
    user = users.create_user(db, get_settings(), email="bench@example.com", password="load test passphrase 1234",
                             verified=True)
    saved = clients.create_client(db, ctx, {"name": "CMS", "redirect_uris": ["https://cms.example.com/cb"],
                                            "scopes": ["openid", "profile", "email", "offline_access"],
                                            "access_token_ttl": 3600})
    db.commit()  # the key ring audits its key reads on its own connection (the audit chain is locked per commit)
    server = provider()
    refresh = []
    for _ in range(chains):
        token = server.generate_token("authorization_code", Client(saved.client), user=Subject(user=user),
                                      scope="openid profile email offline_access", include_refresh_token=True)
        tokens.save_token(db, saved.client, Subject(user=user), token, tokens.Issue(tokens.new_family()))
        refresh.append(token["refresh_token"])
    db.commit()
    print(json.dumps({"client_id": saved.client.client_id, "secret": saved.secret, "refresh": refresh,
                      "access": token["access_token"]}))
"""


PROFILE = """
import base64, cProfile, io, pstats, sys, time
from sqlalchemy import event
from app import create_app
from app.extensions import get_database

grants, client_id, secret, refresh = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
app = create_app()
basic = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
headers = {"Authorization": basic}
web = app.test_client()
statements = 0

def count(*_args):
    global statements
    statements += 1

def grant():
    global refresh
    answer = web.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    refresh = answer.get_json()["refresh_token"]

for _ in range(50):  # warm-up: keys loaded, caches filled, code paths imported
    grant()
event.listen(get_database(app).engine, "before_cursor_execute", count)
batches = []
for _ in range(5):  # the least CPU of five batches: other processes on a shared machine only ever add to it
    began = time.process_time()
    for _ in range(grants // 5):
        grant()
    batches.append((time.process_time() - began) / (grants // 5))
per_grant = statements / (grants // 5 * 5)
profiler = cProfile.Profile(time.process_time)  # CPU time: waiting on PostgreSQL is not this process's cost
profiler.enable()
for _ in range(grants):
    grant()
profiler.disable()
out = io.StringIO()
stats = pstats.Stats(profiler, stream=out)
stats.sort_stats("cumulative").print_stats(40)
stats.sort_stats("tottime").print_stats(25)
print(out.getvalue())
print(f"{grants} refresh grants in one process: {min(batches) * 1000:.2f} ms CPU per grant (least of 5 batches, "
      f"median {sorted(batches)[2] * 1000:.2f}; without the profiler), {per_grant:.1f} SQL statements per grant")
"""


def profile(grants: int) -> None:
    """In-process: CPU time and SQL statements per refresh grant, and where the time goes."""
    with tempfile.TemporaryDirectory() as tmp, database() as url:
        env = prepare(tmp, url)
        seeded = seed(env, 1)
        subprocess.run(
            [sys.executable, "-c", PROFILE, str(grants), seeded["client_id"], seeded["secret"], seeded["refresh"][0]],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            check=True,
        )


def seed(env: dict[str, str], chains: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SEED, str(chains)],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def caching_headers(base: str) -> list[str]:
    """Discovery and JWKS: cacheable, with an ETag a client can revalidate (304)."""
    lines = []
    parts = urlsplit(base)
    for path in ("/.well-known/openid-configuration", "/oauth2/jwks"):
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        conn.request("GET", path)
        first = conn.getresponse()
        first.read()
        etag = first.getheader("ETag") or ""
        conn.close()
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        conn.request("GET", path, headers={"If-None-Match": etag})
        again = conn.getresponse()
        again.read()
        conn.close()
        lines.append(
            f"{path:36} {first.status} Cache-Control: {first.getheader('Cache-Control')}; ETag: {etag[:14]}…; "
            f"revalidated: {again.status}"
        )
    return lines


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    per_process = CONCURRENCY // CLIENT_PROCESSES
    with tempfile.TemporaryDirectory() as tmp, database() as url:
        env = prepare(tmp, url)
        seeded = seed(env, CONCURRENCY)
        basic = "Basic " + base64.b64encode(f"{seeded['client_id']}:{seeded['secret']}".encode()).decode()
        form = {"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"}
        chains = [seeded["refresh"][i * per_process : (i + 1) * per_process] for i in range(CLIENT_PROCESSES)]
        plain = [["-"] * per_process for _ in range(CLIENT_PROCESSES)]
        with (
            multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES) as clients,
            gunicorn_process("bench.bare_app:app", env) as (bare_base, bare_proc),
            gunicorn_process("wsgi:app", env) as (app_base, app_proc),
        ):
            targets: list[tuple[Target, list[list[str]]]] = [
                (Target("bare Flask JSON (baseline)", bare_base, bare_proc.pid, "GET", "/api/bare", {}), plain),
                (
                    Target(
                        "POST /oauth2/token refresh", app_base, app_proc.pid, "POST", "/oauth2/token", form, rotate=True
                    ),
                    chains,
                ),
                (
                    Target(
                        "GET /oauth2/userinfo",
                        app_base,
                        app_proc.pid,
                        "GET",
                        "/oauth2/userinfo",
                        {"Authorization": f"Bearer {seeded['access']}"},
                    ),
                    plain,
                ),
                (
                    Target(
                        "POST /oauth2/introspect",
                        app_base,
                        app_proc.pid,
                        "POST",
                        "/oauth2/introspect",
                        form,
                        urlencode({"token": seeded["access"]}),
                    ),
                    plain,
                ),
            ]
            totals = {t.name: Totals() for t, _ in targets}
            for target, chain in targets:  # warm-up
                run_round(clients, target, chain, 1.0, Totals())
            for n in range(ROUNDS):
                order: Callable[[list[Any]], list[Any]] = (lambda x: x) if n % 2 == 0 else (lambda x: x[::-1])
                for target, chain in order(targets):
                    run_round(clients, target, chain, ROUND_SECONDS, totals[target.name])
            headers = caching_headers(app_base)

    print(
        f"{CONCURRENCY} concurrent clients ({CLIENT_PROCESSES} processes), {ROUNDS} alternating rounds of "
        f"{ROUND_SECONDS:.0f} s each, gunicorn 2 gthread workers of one thread, PostgreSQL; "
        f"machine: {os.cpu_count()} vCPU shared with the load generator"
    )
    print(f"{'endpoint':30} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} {'req per server CPU-s':>21}")
    for name, t in totals.items():
        per_cpu = f"{t.per_cpu_second:21.0f}" if t.per_cpu_second is not None else f"{'n/a':>21}"
        print(
            f"{name:30} {t.rps:7.0f} {statistics.median(t.latencies) * 1000:7.1f} {pct(t.latencies, 0.99):7.1f} "
            f"{t.errors:7d} {per_cpu}"
        )
    bare = totals["bare Flask JSON (baseline)"]
    refresh = totals["POST /oauth2/token refresh"]
    for name in ("POST /oauth2/token refresh", "GET /oauth2/userinfo", "POST /oauth2/introspect"):
        print(f"ratio {name} / bare Flask: {totals[name].rps / bare.rps:.2f}x (rps, same run)")
    if refresh.per_cpu_second is not None and bare.per_cpu_second is not None:
        # Server CPU per request against bare Flask's: steadier than requests per second on a loaded, shared machine.
        print(
            f"ratio of server CPU per request, POST /oauth2/token refresh / bare Flask: "
            f"{bare.per_cpu_second / refresh.per_cpu_second:.1f}x (same run)"
        )
    if refresh.per_cpu_second is not None:
        print(
            f"refresh grants per vCPU-second of server CPU: {refresh.per_cpu_second:.0f} "
            "(goal >= 240: twice Keycloak's 120 per vCPU)"
        )
    for line in headers:
        print(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--profile"]:
        profile(int(sys.argv[2]) if len(sys.argv) > 2 else 500)
    else:
        main()
