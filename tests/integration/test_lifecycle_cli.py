"""`ami-auth users invite` and `ami-auth mail test`, run through Flask's CLI runner (in process, real app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from app import create_app
from app.extensions import get_database
from tests.conftest import make_settings
from tests.support.mailbox import outbox
from tests.support.smtp import SmtpServer, body_text

AppFactory = Callable[..., Flask]


@pytest.fixture
def app_with(tmp_path: Path, database_url: str) -> Iterator[AppFactory]:
    made: list[Flask] = []

    def factory(**env: str) -> Flask:
        application = create_app(make_settings(tmp_path, database_url, **env))
        made.append(application)
        return application

    yield factory
    for application in made:
        get_database(application).remove()
        get_database(application).engine.dispose()


def _db(app: Flask) -> Session:
    return Session(get_database(app).engine)


def test_users_invite_mails_a_link(app_with: AppFactory) -> None:
    app = app_with()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "invite", "New@Example.com", "--role", "admin", "--name", "Nova"])
    assert result.exit_code == 0, result.output
    assert "invited admin new@example.com" in result.output
    with _db(app) as db:
        (mail,) = outbox(db)
    assert (mail.to, mail.subject) == ("new@example.com", "You are invited to AMI Auth")
    assert "/invite/" in mail.text and "Hello Nova" in mail.text
    again = runner.invoke(args=["users", "invite", "new@example.com"])
    assert again.exit_code == 1 and "already exists" in again.output


def test_users_invite_refused_when_closed(app_with: AppFactory) -> None:
    app = app_with(AMI_AUTH_SIGNUP="closed")
    result = app.test_cli_runner().invoke(args=["users", "invite", "x@example.com"])
    assert result.exit_code == 1 and "AMI_AUTH_SIGNUP=closed" in result.output
    with _db(app) as db:
        assert outbox(db) == []


def test_mail_test_over_smtp_and_failure(app_with: AppFactory, smtp_server: SmtpServer) -> None:
    ca = str(smtp_server.ca_file)
    good = app_with(AMI_AUTH_SMTP_URL=smtp_server.url(), AMI_AUTH_SMTP_CA_FILE=ca)
    result = good.test_cli_runner().invoke(args=["mail", "test", "ops@example.com"])
    assert result.exit_code == 0, result.output
    assert f"sent via 127.0.0.1:{smtp_server.port}" in result.output
    assert "The mailer works." in body_text(smtp_server.wait_for("ops@example.com"))

    bad = app_with(AMI_AUTH_SMTP_URL=smtp_server.url("wrong-pw-Zq9"), AMI_AUTH_SMTP_CA_FILE=ca)
    failed = bad.test_cli_runner().invoke(args=["mail", "test", "ops@example.com"])
    assert failed.exit_code == 1 and "invalid_credentials" in failed.output
    assert "wrong-pw-Zq9" not in failed.output


def test_mail_test_without_smtp_uses_the_outbox(app_with: AppFactory) -> None:
    app = app_with()
    result = app.test_cli_runner().invoke(args=["mail", "test", "dev@example.com"])
    assert result.exit_code == 0 and "the outbox" in result.output
    with _db(app) as db:
        assert [m.to for m in outbox(db)] == ["dev@example.com"]
