"""Four `ami-auth tokens refresh` processes at once over 500 due accounts, on SQLite and on PostgreSQL:
every account is refreshed exactly once (counted at the real OP) and no refresh token is lost.

The OP rotates refresh tokens on every use and, like any OP that detects reuse, rejects a used one (and
revokes its grant): a double refresh would show up as a 400 at the OP, a lost token as a failing second pass.
Also: the due-account query runs on the (status, expires_at) index, so its cost follows the due count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from app.extensions import get_cipher, get_database
from app.jobs.refresh import due_candidates, run_refresh
from app.models import ConnectedAccount, utcnow
from app.oauth.connections import load_tokens, save_tokens
from app.oauth.runtime import runtime
from app.oauth.tokens import TokenSet
from app.settings import Settings
from tests.conftest import TEST_KEY, UserFactory
from tests.support.oauth_app import add_due_accounts, create_config, generic_values
from tests.support.op import OPClient, OpenIDProvider, running_op

ROOT = Path(__file__).resolve().parents[2]
DUE = 500
NOT_DUE = 100
RUNS = 4


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with running_op(clients=[OPClient("ami-auth", "op-secret")], rotateRefreshToken=True) as provider:
        yield provider


def _seed(app: Flask, db: Session, op: OpenIDProvider, user_id: int) -> tuple[int, list[int], dict[int, str]]:
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    minted = op.mint_refresh_tokens(DUE, scope="openid offline_access")
    now = utcnow()
    cipher = get_cipher(app)
    due = add_due_accounts(db, cipher, config_id, user_id, minted)
    later = [
        ConnectedAccount(
            provider_config_id=config_id,
            user_id=user_id,
            label=f"later-{i}",
            subject="alice",
            expires_at=now + timedelta(days=1),
        )
        for i in range(NOT_DUE)
    ]
    db.add_all(later)
    db.flush()
    for account in later:
        save_tokens(db, cipher, account.id, TokenSet("fresh", expires_at=account.expires_at, refresh_token="unused"))
    db.commit()
    return config_id, [a.id for a in due], {a.id: t for a, t in zip(due, minted, strict=True)}


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}
    env.update(
        {
            "AMI_AUTH_ENV": "test",
            "AMI_AUTH_INSTANCE_DIR": str(settings.instance_dir),
            "AMI_AUTH_DATABASE_URL": settings.database_url,
            "AMI_AUTH_SECRET_KEY": settings.secret_key,
            "AMI_AUTH_MASTER_KEYS": TEST_KEY,
            "AMI_AUTH_OUTBOUND_ALLOW": "127.0.0.1",
            "AMI_AUTH_SCHEDULER": "false",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def test_four_runs_at_once_refresh_each_due_account_exactly_once(
    app: Flask, settings: Settings, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    user = make_user()
    _, due_ids, minted = _seed(app, db, op, user.id)
    op.reset_counts()

    runs = [
        subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "tokens", "refresh", "--workers", "4"],
            cwd=ROOT,
            env=_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RUNS)
    ]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        outputs.append(out)
    refreshed = [int(m.group(1)) for out in outputs for m in re.finditer(r"refreshed (\d+)", out)]
    assert sum(refreshed) == DUE, outputs

    # At the OP: 500 successful refreshes, not one refused (a second use of a rotated token is refused).
    assert op.grant_count("refresh_token", 200) == DUE
    assert op.grant_count("refresh_token", 400) == 0

    db.expire_all()
    cipher = get_cipher(app)
    stored: dict[int, str] = {}
    for account_id in due_ids:
        account = db.get(ConnectedAccount, account_id)
        assert account is not None
        assert (account.status, account.lease_owner, account.error_attempts) == ("active", None, 0)
        assert account.expires_at is not None and account.expires_at > utcnow()
        tokens = load_tokens(db, cipher, account_id)
        assert tokens is not None and tokens.refresh_token is not None
        assert tokens.refresh_token != minted[account_id]  # rotated, and the new one was kept
        stored[account_id] = tokens.refresh_token
    assert len(set(stored.values())) == DUE

    # No token lost: every stored refresh token works once more (a second pass, in this process).
    db.execute(update(ConnectedAccount).where(ConnectedAccount.id.in_(due_ids)).values(expires_at=utcnow()))
    db.commit()
    op.reset_counts()
    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(0), workers=4)
    assert report.refreshed == DUE and report.total == DUE
    assert op.grant_count("refresh_token", 200) == DUE and op.grant_count("refresh_token", 400) == 0


def _plan(db: Session, dialect_name: str) -> str:
    now = utcnow()
    query = due_candidates(now, now + timedelta(minutes=10), started_at=now)
    sql = str(query.compile(dialect=db.get_bind().dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN " if dialect_name == "postgresql" else "EXPLAIN QUERY PLAN "
    return "\n".join(" ".join(str(c) for c in row) for row in db.execute(text(prefix + sql)))


def test_the_due_query_uses_the_refresh_index(
    app: Flask, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    user = make_user()
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    dialect = db.get_bind().dialect.name
    # 20,000 live accounts that are not due, 5,000 that wait for a reconnect with long-past expiry times, and
    # a few due ones: the planner has statistics to choose with, and a plain expires_at range would also
    # walk the 5,000 dead ones.
    if dialect == "postgresql":
        series = "SELECT g AS n FROM generate_series(1, {count}) g"
        minutes = "now() + (({sign}n) || ' minutes')::interval"
        now_sql = "now()"
    else:
        series = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) SELECT n FROM s"
        minutes = "datetime('now', '{sign}' || n || ' minutes')"
        now_sql = "datetime('now')"
    for count, status, sign in ((20000, "active", "+"), (5000, "consent_required", "-"), (5, "active", "-")):
        db.execute(
            text(
                "INSERT INTO connected_accounts (provider_config_id, user_id, label, identifiers, provider_data, "
                "status, scopes, expires_at, error_attempts, created_at, updated_at) "
                f"SELECT :cfg, :user, 'a' || n, '{{}}', '{{}}', :status, '[]', {minutes.format(sign=sign)}, 0, "
                f"{now_sql}, {now_sql} FROM ({series.format(count=count)}) AS seq"
            ),
            {"cfg": config_id, "user": user.id, "status": status},
        )
    db.commit()
    db.execute(text("ANALYZE"))
    plan = _plan(db, dialect)
    assert "ix_connected_accounts_refresh_due" in plan, plan
    assert "SCAN connected_accounts" not in plan and "Seq Scan on connected_accounts" not in plan, plan
