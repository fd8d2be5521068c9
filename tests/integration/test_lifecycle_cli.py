"""`ami-auth users invite` and `ami-auth mail test` as an operator runs them (a subprocess, real settings)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.smtp import SmtpServer, body_text

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}
    env.update(
        {
            "AMI_AUTH_INSTANCE_DIR": str(tmp_path),
            "AMI_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "AMI_AUTH_ARGON2_MEMORY_KIB": "1024",
            "AMI_AUTH_ARGON2_TIME_COST": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _outbox(tmp_path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        return list(conn.execute('SELECT "to", subject, text FROM mail_outbox ORDER BY id'))


def test_users_invite_mails_a_link(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli(env, "db", "upgrade").returncode == 0
    result = _cli(env, "users", "invite", "New@Example.com", "--role", "admin", "--name", "Nova")
    assert result.returncode == 0, result.stderr
    assert "invited admin new@example.com" in result.stdout
    ((to, subject, text),) = _outbox(tmp_path)
    assert (to, subject) == ("new@example.com", "You are invited to AMI Auth")
    assert "/invite/" in text and "Hello Nova" in text
    again = _cli(env, "users", "invite", "new@example.com")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_users_invite_refused_when_closed(tmp_path: Path) -> None:
    env = _env(tmp_path, AMI_AUTH_SIGNUP="closed")
    _cli(env, "db", "upgrade")
    result = _cli(env, "users", "invite", "x@example.com")
    assert result.returncode == 1 and "AMI_AUTH_SIGNUP=closed" in result.stderr
    assert _outbox(tmp_path) == []


def test_mail_test_over_smtp_and_failure(tmp_path: Path, smtp_server: SmtpServer) -> None:
    env = _env(tmp_path, AMI_AUTH_SMTP_URL=smtp_server.url(), AMI_AUTH_SMTP_CA_FILE=str(smtp_server.ca_file))
    _cli(env, "db", "upgrade")
    result = _cli(env, "mail", "test", "ops@example.com")
    assert result.returncode == 0, result.stderr
    assert f"sent via 127.0.0.1:{smtp_server.port}" in result.stdout
    assert "The mailer works." in body_text(smtp_server.wait_for("ops@example.com"))
    bad = _cli({**env, "AMI_AUTH_SMTP_URL": smtp_server.url("wrong-pw-Zq9")}, "mail", "test", "ops@example.com")
    assert bad.returncode == 1 and "invalid_credentials" in bad.stderr
    assert "wrong-pw-Zq9" not in bad.stderr


def test_mail_test_in_development_uses_the_outbox(tmp_path: Path) -> None:
    env = _env(tmp_path)
    _cli(env, "db", "upgrade")
    result = _cli(env, "mail", "test", "dev@example.com")
    assert result.returncode == 0 and "the outbox" in result.stdout
    assert _outbox(tmp_path)[0][0] == "dev@example.com"
