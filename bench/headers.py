"""Headers benchmark: every number is a ratio against a baseline measured in this run.

    PYTHONPATH=. python bench/headers.py [--seconds 3] [--postgres postgresql+psycopg://user@host/db]

1. In process: ``get_headers(db, cipher, account)`` calls per second on a loaded account (goal >= 20,000/s),
   hot (the per-process cache, what a busy caller gets) and cold (cache cleared before every call: a
   vault read + decrypt each time), against a loop that only builds the same dict (the floor).
2. Over HTTP: ``GET /api/account-manager/accounts/<id>/headers`` (a service token with ``accounts:headers``,
   the only credential it answers; one audit event per call) vs a bare Flask endpoint returning the same
   JSON, each served by gunicorn with the same config (2 sync workers), measured in turns by the same load
   generator (goal >= 0.5x).

The machine's cores are shared by gunicorn and the load generator, so absolute numbers are low on a small
box; the ratio is what compares. Prints a table, asserts nothing, stops every gunicorn it started by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/headers.py` from anywhere

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.auth import users
from app.connectors import accounts
from app.connectors.headers import clear_cache, get_headers
from app.extensions import get_cipher, get_database
from app.migrate import upgrade
from app.models import ConnectedAccount
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import validate_submission
from app.settings import load_settings, new_master_key
from app.vault import put_secret

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-proj-bench-" + "x" * 40
ADMIN, PASSWORD = "bench@example.com", "correct horse battery staple"
WORKERS = 2


def environment(database_url: str, instance: Path) -> dict[str, str]:
    key = new_master_key("bench")
    return {
        "AMI_AUTH_ENV": "test",
        "AMI_AUTH_INSTANCE_DIR": str(instance),
        "AMI_AUTH_DATABASE_URL": database_url,
        "AMI_AUTH_SECRET_KEY": "b" * 48,
        "AMI_AUTH_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "AMI_AUTH_MFA_REQUIRED_ROLES": "",
        "AMI_AUTH_ARGON2_MEMORY_KIB": "1024",
        "AMI_AUTH_ARGON2_TIME_COST": "1",
        "AMI_AUTH_LOG_LEVEL": "WARNING",
        "AMI_AUTH_SCHEDULER": "false",
        # The API's per-caller limit (600/min by default) would measure the limiter, not the endpoint.
        "AMI_AUTH_API_RATE_PER_MINUTE": "100000000",
    }


def seed(env: dict[str, str]) -> tuple[int, str]:
    """An admin, an active OpenAI account and a service token with ``accounts:headers``."""
    app = create_app(load_settings(env))
    settings = app.extensions["ami_settings"]
    ctx = AuditContext(actor="bench")
    with app.app_context():
        db = get_database(app).session()
        users.create_user(db, settings, email=ADMIN, password=PASSWORD, role="admin", verified=True)
        provider = entry("openai")
        clean, _ = validate_submission(provider, "config", {})
        cfg = configs.create_config(db, get_cipher(app), settings, ctx, provider, "OpenAI", clean, enabled=True)
        account_clean, _ = validate_submission(
            provider, "account", {"organization_id": "org-Bench1"}, secrets_set=["api_key"]
        )
        account = accounts.create_account(db, ctx, cfg, "bench", account_clean)
        put_secret(db, get_cipher(app), "connected_account", account.id, "api_key", KEY, grace=None)
        account.status = "active"
        token = tokens.create_token(db, ctx, name="bench CMS", scopes=["accounts:headers"], created_by=None).raw
        db.commit()
        account_id = account.id
    get_database(app).engine.dispose()
    return account_id, token


# ------------------------------------------------------------------------------------------ in process


def bench_in_process(env: dict[str, str], account_id: int, seconds: float) -> list[tuple[str, float, str]]:
    app = create_app(load_settings(env))
    cipher = get_cipher(app)
    session = Session(get_database(app).engine)
    account = session.get(ConnectedAccount, account_id)
    assert account is not None

    def rate(fn: Callable[[], object], budget: float) -> float:
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < budget:
            for _ in range(200):
                fn()
            calls += 200
        return calls / elapsed

    expected = {"Authorization": f"Bearer {KEY}", "OpenAI-Organization": "org-Bench1"}
    assert get_headers(session, cipher, account) == expected
    floor = rate(lambda: dict(expected), seconds / 4)
    hot = rate(lambda: get_headers(session, cipher, account), seconds)

    def cold_call() -> None:
        clear_cache(usage=False)
        get_headers(session, cipher, account)

    cold = rate(cold_call, seconds / 2)
    session.commit()
    session.close()
    get_database(app).engine.dispose()
    return [
        ("dict(headers) floor", floor, "1.00 (baseline)"),
        ("get_headers, cached (hot)", hot, f"{hot / floor:.3f} vs floor · goal >= 20,000/s"),
        ("get_headers, vault read each call (cold)", cold, f"{cold / floor:.4f} vs floor"),
    ]


# ----------------------------------------------------------------------------------------------- HTTP

# The app itself plus one route that does only what every admin-session endpoint does (session lookup,
# MFA and password-change checks, security headers) and returns the same JSON: the app's own floor.
APP_WITH_FLOOR = """
from flask import jsonify

from app.web.common import admin_required
from wsgi import app


@app.get("/bench/session-only")
@admin_required
def session_only():
    return jsonify({"headers": {"Authorization": "Bearer x", "OpenAI-Organization": "org-Bench1"}, "query": {}})
"""

BARE_APP = """
from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/bare")
def bare():
    return jsonify({"headers": {"Authorization": "Bearer x", "OpenAI-Organization": "org-Bench1"}, "query": {}})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Gunicorn:
    """One gunicorn master (2 sync workers) on 127.0.0.1, stopped by PID."""

    def __init__(self, target: str, env: dict[str, str], chdir: Path) -> None:
        self.port = free_port()
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [
                str(gunicorn),
                "--workers",
                str(WORKERS),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "--chdir",
                str(chdir),
                target,
            ],
            env={**os.environ, **env, "PYTHONPATH": f"{ROOT}:{chdir}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, path: str, cookie: str = "") -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                status, _ = request(self.port, "GET", path, cookie=cookie)
                if status < 500:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: str = "",
    cookie: str = "",
    content_type: str = "",
    authorization: str = "",
) -> tuple[int, dict[str, str] | str]:
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Cookie": cookie} if cookie else {}
    if authorization:
        headers["Authorization"] = authorization
    if content_type:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    data = response.read().decode()
    cookies = "; ".join(v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie")
    conn.close()
    return response.status, {"cookie": cookies, "body": data}


def sign_in(port: int) -> str:
    from urllib.parse import urlencode

    _status, page = request(port, "GET", "/signin")
    assert isinstance(page, dict)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page["body"])
    assert token is not None
    body = urlencode({"email": ADMIN, "password": PASSWORD, "csrf_token": token.group(1)})
    status, answer = request(
        port, "POST", "/signin", body=body, cookie=page["cookie"], content_type="application/x-www-form-urlencoded"
    )
    assert isinstance(answer, dict) and status == 302, f"sign-in failed: {status}"
    return answer["cookie"] or page["cookie"]


def _client(port: int, path: str, auth: str, seconds: float, threads: int, out: multiprocessing.Queue[int]) -> None:
    raw = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n").encode()
    deadline = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(raw)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            if b" 200 " in chunks[0][:16]:
                counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(sum(counts))


def load(port: int, path: str, auth: str, seconds: float, processes: int = 2, threads: int = 8) -> float:
    """Requests per second answered 200, from ``processes`` x ``threads`` concurrent clients; ``auth`` is a
    header line (``Cookie: …\\r\\n`` or ``Authorization: …\\r\\n``) or empty."""
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_client, args=(port, path, auth, seconds, threads, queue))
        for _ in range(processes)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total / (time.perf_counter() - start)


def bench_http(
    env: dict[str, str], account_id: int, token: str, seconds: float, tmp: Path
) -> list[tuple[str, float, str]]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    (tmp / "app_with_floor.py").write_text(APP_WITH_FLOOR)
    path = f"/api/account-manager/accounts/{account_id}/headers"
    real = Gunicorn("app_with_floor:app", env, tmp)
    bare = Gunicorn("bare_app:app", {}, tmp)
    try:
        bare.wait_ready("/bare")
        real.wait_ready("/signin")
        cookie = sign_in(real.port)
        status, answer = request(real.port, "GET", path, authorization=f"Bearer {token}")
        assert status == 200 and isinstance(answer, dict), f"headers endpoint answered {status}"
        assert json.loads(answer["body"])["headers"]["Authorization"] == f"Bearer {KEY}"
        session, bearer = f"Cookie: {cookie}\r\n", f"Authorization: Bearer {token}\r\n"
        best = {"bare": 0.0, "floor": 0.0, "token": 0.0}
        for _round in range(2):  # in turns, so a burst of load elsewhere hits every case alike
            best["bare"] = max(best["bare"], load(bare.port, "/bare", "", seconds))
            best["floor"] = max(best["floor"], load(real.port, "/bench/session-only", session, seconds))
            best["token"] = max(best["token"], load(real.port, path, bearer, seconds))
    finally:
        real.stop()
        bare.stop()
    bare_rps, floor_rps, token_rps = best["bare"], best["floor"], best["token"]
    return [
        ("bare Flask endpoint (gunicorn, 2 workers)", bare_rps, "1.00 (baseline)"),
        ("admin-session endpoint, same JSON (app floor)", floor_rps, f"{floor_rps / bare_rps:.2f} vs bare"),
        (
            "GET …/accounts/<id>/headers (service token, audit)",
            token_rps,
            f"{token_rps / bare_rps:.2f} vs bare · goal >= 0.5 · {token_rps / floor_rps:.2f} vs app floor",
        ),
    ]


@contextmanager
def temporary_database(postgres_url: str, tmp: Path) -> Iterator[str]:
    if not postgres_url:
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    name = f"ami_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (HTTP: per round)")
    parser.add_argument(
        "--postgres",
        default="",
        metavar="URL",
        help="a PostgreSQL server URL to run on (a temporary database is created and dropped); default SQLite",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, temporary_database(args.postgres, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        upgrade(url)
        env = environment(url, tmp)
        account_id, token = seed(env)
        rows = bench_in_process(env, account_id, args.seconds)
        rows += bench_http(env, account_id, token, args.seconds, tmp)
    print(f"headers benchmark · Python {platform.python_version()} · {os.cpu_count()} CPU · {url.split(':')[0]}")
    width = max(len(name) for name, _, _ in rows)
    for name, per_second, note in rows:
        print(f"  {name:<{width}}  {per_second:>12,.0f}/s  {note}")


if __name__ == "__main__":
    main()
