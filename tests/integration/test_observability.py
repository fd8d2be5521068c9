"""/metrics' guard, the request id rules and what is counted when, in one app process (the production-shaped suite
runs the same across gunicorn workers and hosts: tests/e2e/production/test_operations.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from app import audit, create_app, metrics
from app.auth import users
from app.extensions import get_database
from app.settings import SettingsError
from tests.conftest import csrf_token, dispose_app, make_settings

TOKEN = "m" * 40


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path, sqlite_url: str) -> Iterator[AppFactory]:
    made: list[Flask] = []

    def build(**env: str) -> Flask:
        app = create_app(make_settings(tmp_path, sqlite_url, **env))
        made.append(app)
        return app

    yield build
    for app in made:
        dispose_app(app)


def _value(name: str, **labels: str) -> float:
    text = metrics.exposition().decode()
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{"):
            got = "{" + ",".join(sorted(series[len(name) + 1 : -1].split(","))) + "}"
            if got == wanted:
                return float(value)
    return 0.0


@pytest.mark.parametrize(
    ("env", "headers", "status"),
    [
        ({}, {"Authorization": f"Bearer {TOKEN}"}, 404),  # neither setting: off for everyone
        ({"AMI_AUTH_METRICS_TOKEN": TOKEN}, {}, 404),
        ({"AMI_AUTH_METRICS_TOKEN": TOKEN}, {"Authorization": "Bearer " + "x" * 40}, 404),
        ({"AMI_AUTH_METRICS_TOKEN": TOKEN}, {"Authorization": f"Basic {TOKEN}"}, 404),
        ({"AMI_AUTH_METRICS_TOKEN": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}, 200),
        ({"AMI_AUTH_METRICS_ALLOW": "10.0.0.0/8"}, {}, 404),  # the test client is 127.0.0.1
        ({"AMI_AUTH_METRICS_ALLOW": "10.0.0.0/8,127.0.0.0/8"}, {}, 200),
        ({"AMI_AUTH_METRICS_TOKEN": TOKEN, "AMI_AUTH_METRICS_ALLOW": "127.0.0.1"}, {"Authorization": "Bearer no"}, 200),
    ],
)
def test_metrics_open_to_the_token_or_an_allowed_address_else_404(
    make_app: AppFactory, env: dict[str, str], headers: dict[str, str], status: int
) -> None:
    app = make_app(**env)
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.content_type == metrics.CONTENT_TYPE
        assert "# TYPE ami_auth_http_requests_total counter" in response.get_data(as_text=True)
    else:
        assert "ami_auth_" not in response.get_data(as_text=True)  # the ordinary not-found page


def test_metrics_settings_are_checked_at_start(tmp_path: Path, sqlite_url: str) -> None:
    with pytest.raises(SettingsError, match="AMI_AUTH_METRICS_TOKEN: must be at least 32 characters"):
        make_settings(tmp_path, sqlite_url, AMI_AUTH_METRICS_TOKEN="short")
    with pytest.raises(SettingsError, match="AMI_AUTH_METRICS_ALLOW: 'intranet' is not an IP address or CIDR range"):
        make_settings(tmp_path, sqlite_url, AMI_AUTH_METRICS_ALLOW="10.0.0.0/8,intranet")


@pytest.mark.parametrize(
    ("proxies", "offered", "kept"),
    [
        ("0", "abc-123", False),  # no trusted proxy: a client's header is not ours to log
        ("1", "abc-123", True),
        ("1", "has spaces;and=other", False),
        ("1", "x" * 129, False),
    ],
)
def test_the_request_id_comes_from_a_trusted_proxy_only(
    make_app: AppFactory, proxies: str, offered: str, kept: bool
) -> None:
    app = make_app(AMI_AUTH_TRUSTED_PROXIES=proxies)
    response = app.test_client().get("/signin", headers={"X-Request-ID": offered})
    request_id = response.headers["X-Request-ID"]
    if kept:
        assert request_id == offered
    else:
        assert request_id != offered and re.fullmatch(r"[0-9a-f]{32}", request_id)


def test_an_audit_event_is_counted_when_its_transaction_commits(make_app: AppFactory) -> None:
    app = make_app()
    ctx = audit.AuditContext(actor="test")
    before = _value("ami_auth_audit_events_total", action="test.counted", outcome="success")
    with Session(get_database(app).engine) as db:
        audit.record(db, ctx, "test.counted")
        db.rollback()  # did not happen
        audit.record(db, ctx, "test.counted")
    # closed without a commit: did not happen either
    assert _value("ami_auth_audit_events_total", action="test.counted", outcome="success") == before
    with Session(get_database(app).engine) as db:
        audit.record(db, ctx, "test.counted")
        audit.record(db, ctx, "test.counted")
        db.commit()
    assert _value("ami_auth_audit_events_total", action="test.counted", outcome="success") == before + 2


def test_proxy_calls_are_counted_by_upstream_status_class_and_outcome(make_app: AppFactory) -> None:
    app = make_app()
    ctx = audit.AuditContext(actor="service_token:1")
    labels: list[tuple[str, audit.Outcome]] = [("2xx", "success"), ("5xx", "failure"), ("none", "failure")]
    before = [_value("ami_auth_proxy_calls_total", status=s, outcome=o) for s, o in labels]
    with Session(get_database(app).engine) as db:
        for status, (_, outcome) in zip((200, 502, None), labels, strict=True):
            audit.record(db, ctx, "account.proxy", outcome=outcome, details={"status": status, "method": "GET"})
        db.commit()
    after = [_value("ami_auth_proxy_calls_total", status=s, outcome=o) for s, o in labels]
    assert after == [b + 1 for b in before]


def test_sign_ins_are_counted_by_method_and_outcome(make_app: AppFactory) -> None:
    app = make_app()
    settings = app.extensions["ami_settings"]
    with app.app_context():
        db = get_database(app).session()
        users.create_user(
            db, settings, email="counted@example.com", password="quiet harbour lantern 2026", verified=True
        )
        db.commit()
    labels = {"method": "password"}
    failed, succeeded = (_value("ami_auth_signins_total", outcome=o, **labels) for o in ("failure", "success"))
    client = app.test_client()
    for password in ("wrong wrong wrong", "quiet harbour lantern 2026"):
        token = csrf_token(client, "/signin")
        client.post("/signin", data={"email": "counted@example.com", "password": password, "csrf_token": token})
    assert _value("ami_auth_signins_total", outcome="failure", **labels) == failed + 1
    assert _value("ami_auth_signins_total", outcome="success", **labels) == succeeded + 1
    route = _value("ami_auth_http_requests_total", route="/signin", method="POST", status="401")
    assert route >= 1
