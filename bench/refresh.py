"""Token refresh benchmark: the refresh job against a bare httpx loop, both talking to the same real OP.

    PYTHONPATH=. python bench/refresh.py [--db sqlite|postgres] [--total 100000] [--due 1000,10000] [--workers 4]

100,000 connected accounts are stored (token sets encrypted in the vault, as the app stores them); for each
due count, that many are made due and then refreshed twice, interleaved, best of the rounds:

- **bare**: an httpx loop that only POSTs the same ``grant_type=refresh_token`` requests (same client
  authentication, same refresh tokens) to the same OP — the floor for this OP on this machine;
- **job**: ``app.jobs.refresh.run_refresh`` — claim, decrypt, refresh, check the new ID token, encrypt,
  write and release, one transaction per account.

Sequential (1 worker vs a plain loop) and parallel (N job workers vs N loop threads) are compared. The OP does
not rotate refresh tokens here, so both sides can send the very same requests. Prints ratios; asserts
nothing. Needs node + tests/peers/node_modules (``make peers``); PostgreSQL from AMI_AUTH_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/refresh.py` from anywhere

import httpx
from flask import Flask
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import create_app
from app.extensions import get_cipher, get_database
from app.jobs.refresh import BATCH, due_candidates, run_refresh
from app.migrate import upgrade
from app.models import ConnectedAccount, User, utcnow
from app.net import close_client
from app.oauth.connections import OWNER, TOKEN_FIELD
from app.oauth.runtime import runtime
from app.oauth.tokens import TokenSet
from app.vault import aad_for
from tests.conftest import make_settings
from tests.support.live import free_port
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient, OpenIDProvider, node_missing

CLIENT = OPClient("ami-auth", "bench-secret")


def seed(app: Flask, total: int, due_max: int, refresh_tokens: list[str], config_id: int) -> None:
    """``total`` accounts: the first ``due_max`` carry real refresh tokens, the rest live ones never used.

    Rows go in through the driver's executemany (what the app's types would produce: naive UTC times,
    JSON text), so seeding 100,000 accounts and their encrypted token sets takes seconds.
    """
    engine = get_database(app).engine
    cipher = get_cipher(app)
    now = utcnow().replace(tzinfo=None)
    later = now + timedelta(days=30)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else now
    expiry = later.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else later
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    with Session(engine) as db:
        user = User(email="bench@example.com")
        db.add(user)
        db.commit()
        user_id = user.id
    account_sql = (
        "INSERT INTO connected_accounts (id, provider_config_id, user_id, label, subject, identifiers, "
        "provider_data, status, scopes, expires_at, error_attempts, created_at, updated_at) VALUES ("
        + ", ".join([mark] * 13)
        + ")"
    )
    secret_sql = (
        "INSERT INTO secrets (owner_type, owner_id, field, key_id, version, wrapped_key, ciphertext, created_at, "
        "updated_at) VALUES (" + ", ".join([mark] * 9) + ")"
    )
    scopes = json.dumps(["openid", "offline_access"])
    chunk = 10_000
    for first in range(1, total + 1, chunk):
        accounts = []
        secrets = []
        for i in range(first, min(first + chunk, total + 1)):
            rt = refresh_tokens[i - 1] if i <= due_max else f"unused-{i}"
            tokens = TokenSet(
                "live-access",
                expires_at=later.replace(tzinfo=UTC),
                refresh_token=rt,
                scopes=("openid", "offline_access"),
            )
            env = cipher.encrypt(json.dumps(tokens.to_dict()).encode(), aad_for(OWNER, i, TOKEN_FIELD))
            accounts.append(
                (i, config_id, user_id, f"account-{i}", "alice", "{}", "{}", "active", scopes, expiry, 0, stamp, stamp)
            )
            secrets.append(
                (OWNER, i, TOKEN_FIELD, env.key_id, env.version, env.wrapped_key, env.ciphertext, stamp, stamp)
            )
        with engine.begin() as conn:
            conn.exec_driver_sql(account_sql, accounts)
            conn.exec_driver_sql(secret_sql, secrets)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('connected_accounts', 'id'), :n)"), {"n": total})
        conn.execute(text("ANALYZE"))


def make_due(app: Flask, count: int) -> None:
    """Exactly accounts 1..count are due (expired a minute ago); every other account is not."""
    engine = get_database(app).engine
    ca = ConnectedAccount
    past, later = utcnow() - timedelta(minutes=1), utcnow() + timedelta(days=30)
    with engine.begin() as conn:
        conn.execute(update(ca).where(ca.expires_at <= utcnow() + timedelta(hours=2)).values(expires_at=later))
        conn.execute(update(ca).where(ca.id <= count).values(expires_at=past, rotated_at=None, next_attempt_at=None))


def bare(token_endpoint: str, tokens: list[str], threads: int) -> float:
    """Wall time for the bare loop: POST each refresh, in ``threads`` threads over slices of the list."""
    failures: list[str] = []

    def loop(part: list[str]) -> None:
        with httpx.Client(trust_env=False, timeout=10) as http:
            for rt in part:
                r = http.post(
                    token_endpoint,
                    data={"grant_type": "refresh_token", "refresh_token": rt},
                    auth=(CLIENT.client_id, CLIENT.client_secret),
                    headers={"Accept": "application/json"},
                )
                if r.status_code != 200:
                    failures.append(r.text[:200])

    parts = [tokens[i::threads] for i in range(threads)]
    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"bare loop: {len(failures)} refreshes failed, e.g. {failures[0]}")
    return elapsed


def job(app: Flask, count: int, workers: int) -> float:
    make_due(app, count)
    start = time.perf_counter()
    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(0), workers=workers)
    elapsed = time.perf_counter() - start
    if report.refreshed != count:
        raise SystemExit(f"job: expected {count} refreshes, got {report.summary()}")
    return elapsed


def claim_cost(app: Flask, rounds: int = 20) -> float:
    """Median time of one claim query (one batch) — what a run pays per batch, whatever the table size."""
    engine = get_database(app).engine
    times = []
    with Session(engine) as db:
        for _ in range(rounds):
            now = utcnow()
            start = time.perf_counter()
            db.execute(due_candidates(now, now, limit=BATCH)).all()
            times.append(time.perf_counter() - start)
            db.rollback()
    return sorted(times)[len(times) // 2]


def interleaved(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], fn())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--due", default="1000,10000")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    due_counts = [int(x) for x in args.due.split(",")]
    reason = node_missing()
    if reason:
        raise SystemExit(reason)

    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    pg_admin = os.environ.get("AMI_AUTH_TEST_POSTGRES_URL", "")
    pg_name = f"ami_bench_{uuid.uuid4().hex[:8]}"
    if args.db == "postgres":
        if not pg_admin:
            raise SystemExit("--db postgres needs AMI_AUTH_TEST_POSTGRES_URL")
        admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
        url = make_url(pg_admin).set(database=pg_name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    op = OpenIDProvider([CLIENT], free_port(), {})
    app = None
    try:
        upgrade(url)
        app = create_app(make_settings(tmp, url))
        op.start()
        config_id = create_config(app, "generic_oidc", "Bench OP", generic_values(op.issuer, CLIENT))
        t = time.perf_counter()
        tokens = op.mint_refresh_tokens(max(due_counts), scope="openid offline_access")
        seed(app, args.total, max(due_counts), tokens, config_id)
        seeded = time.perf_counter() - t
        with Session(get_database(app).engine) as db:
            stored = db.scalar(select(text("count(*)")).select_from(ConnectedAccount))
        token_endpoint = op.issuer + "/token"
        bare(token_endpoint, tokens[:50], 1)  # warm up: connections, the OP's JIT
        job(app, 50, 1)

        print(
            f"refresh benchmark · {args.db} · {stored:,} accounts stored (seeded in {seeded:.1f}s) · "
            f"OP oidc-provider on 127.0.0.1 · python {platform.python_version()} · {os.cpu_count()} CPUs"
        )
        print(f"{'due':>7} {'mode':<22} {'bare /s':>9} {'job /s':>9} {'job/bare':>9}")
        for due in due_counts:
            cases: dict[str, Callable[[], float]] = {}
            pairs: list[tuple[str, str, str]] = []
            if due <= 1000:
                cases["bare-1"] = partial(bare, token_endpoint, tokens[:due], 1)
                cases["job-1"] = partial(job, app, due, 1)
                pairs.append(("sequential (1 vs 1)", "bare-1", "job-1"))
            w = args.workers
            cases[f"bare-{w}"] = partial(bare, token_endpoint, tokens[:due], w)
            cases[f"job-{w}"] = partial(job, app, due, w)
            pairs.append((f"parallel ({w} vs {w})", f"bare-{w}", f"job-{w}"))
            best = interleaved(args.rounds, cases)
            for label, b, j in pairs:
                rb, rj = due / best[b], due / best[j]
                print(f"{due:>7,} {label:<22} {rb:>9.0f} {rj:>9.0f} {rj / rb:>8.2f}x")
            make_due(app, due)
            print(f"{'':>7} claim query (one batch of {BATCH}) with {due:,} due: {claim_cost(app) * 1000:.2f} ms")
        print(f"total {time.perf_counter() - began:.0f}s")
    finally:
        if app is not None:
            close_client(app)
            get_database(app).remove()
            get_database(app).engine.dispose()
        op.close()
        if args.db == "postgres":
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
