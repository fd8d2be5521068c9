"""Faults answer 503 ``service_unavailable`` with ``Retry-After`` and a human message; ``/readyz`` tells the truth.

Real faults, no mocks: a Redis server of the test's own is stopped and started again, a PostgreSQL database of the
test's own is switched read-only and back, a SQLite file is locked by another connection. Each test checks what a
browser and an API client get during the fault, that nothing was half-written, what ``/readyz`` says, and that
everything works again once the fault is gone — without restarting the app.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits.storage import RedisStorage
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session

from app import create_app
from app.api import tokens
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_database, get_limit_storage
from app.models import AuditEvent, UserSession
from bench.gunicorn_server import gunicorn
from tests.conftest import (
    PASSWORD,
    TEST_KEY,
    PostgresDatabase,
    csrf_token,
    dispose_app,
    make_settings,
    postgres_admin_url,
)
from tests.integration.test_startup import _cli as run_cli
from tests.integration.test_startup import _env as cli_env
from tests.support.live import free_port
from tests.support.oauth_app import create_config, generic_values
from tests.support.op import OPClient
from tests.support.redis_server import RedisServer, redis_server

EMAIL = "ada@example.com"

# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresDatabase]:
    """A database of this module's own: ALTER DATABASE must not touch the one other tests share."""
    database = PostgresDatabase(postgres_admin_url())
    database.create()
    yield database
    database.drop()


def make_app(tmp_path: Path, database_url: str, **env: str) -> Flask:
    application = create_app(make_settings(tmp_path, database_url, **env))
    application.config["TESTING"] = True
    return application


def close_app(application: Flask) -> None:
    storage = get_limit_storage(application)
    if isinstance(storage, RedisStorage):
        storage.storage.close()
    dispose_app(application)


def add_user(application: Flask, email: str = EMAIL) -> int:
    with application.app_context():
        db = get_database(application).session()
        user = users.create_user(
            db, application.extensions["ami_settings"], email=email, password=PASSWORD, verified=True
        )
        db.commit()
        return user.id


def issue_token(application: Flask) -> str:
    with Session(get_database(application).engine) as db:
        issued = tokens.create_token(
            db, AuditContext(actor="test"), name="CMS", scopes=["sessions:read"], created_by=None
        )
        db.commit()
        return issued.raw


def post_signin(client: FlaskClient, email: str = EMAIL) -> Any:
    token = csrf_token(client, "/signin")  # the form itself reads nothing that is down
    return client.post("/signin", data={"email": email, "password": PASSWORD, "csrf_token": token})


def list_sessions(client: FlaskClient, raw_token: str, user_id: int) -> Any:
    return client.get(f"/api/auth/sessions?user_id={user_id}", headers={"Authorization": f"Bearer {raw_token}"})


def readiness(client: FlaskClient, *, ready: bool, within: float = 10.0) -> dict[str, Any]:
    """Poll /readyz until it says ``ready`` (or not); results are cached for a second, so it may take one."""
    deadline = time.monotonic() + within
    while True:
        response = client.get("/readyz")
        body: dict[str, Any] = response.get_json()
        if (response.status_code == 200) == ready:
            assert body["status"] == ("ready" if ready else "not_ready")
            return body
        assert time.monotonic() < deadline, f"/readyz still answers {response.status_code}: {body}"
        time.sleep(0.2)


def assert_unavailable_page(response: Any, retry_after: int, *texts: str) -> str:
    """What a browser gets: the 503 page with the message and hint, Retry-After, and no trace of internals."""
    html: str = response.get_data(as_text=True)
    assert response.status_code == 503, html
    assert response.headers["Retry-After"] == str(retry_after)
    assert response.mimetype == "text/html"
    assert 'data-error-code="service_unavailable"' in html
    assert f"Try again in {retry_after} seconds." in html
    for expected in texts:
        assert expected in html
    assert "Traceback" not in html and "reference" not in html
    return html


def assert_unavailable_json(response: Any, retry_after: int, message: str) -> dict[str, Any]:
    """What an API client gets: the taxonomy shape, code service_unavailable, Retry-After in header and body."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == str(retry_after)
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] == "service_unavailable" and error["retry_after"] == retry_after
    assert error["message"] == message and error["hint"] and error["fields"] == {}
    assert "reference" not in error
    return error


def counts(application: Flask) -> tuple[int, int]:
    """(sessions, signin.success events) as the database holds them."""
    with Session(get_database(application).engine) as db:
        sessions = db.scalar(select(func.count()).select_from(UserSession))
        successes = db.scalar(select(func.count()).where(AuditEvent.action == "signin.success"))
        return int(sessions or 0), int(successes or 0)


def signed_in_to(response: Any, client: FlaskClient) -> bool:
    return response.status_code == 302 and client.get("/account/").status_code == 200


# --- Redis down: throttling fails closed ----------------------------------------------------------------------

REDIS_HINT = "refuses requests instead of letting them through unchecked"


@pytest.mark.redis
def test_redis_down_refuses_signin_and_api_with_503_and_recovers(
    tmp_path: Path, sqlite_url: str, own_redis: RedisServer
) -> None:
    application = make_app(tmp_path, sqlite_url, AMI_AUTH_REDIS_URL=own_redis.url)
    try:
        _redis_outage(application, own_redis)
    finally:
        if own_redis.process is None:
            own_redis.start()
        close_app(application)


def _redis_outage(application: Flask, own_redis: RedisServer) -> None:
    user_id = add_user(application)
    raw = issue_token(application)
    client = application.test_client()
    assert readiness(client, ready=True)["checks"]["redis"] == "ok"
    assert list_sessions(client, raw, user_id).status_code == 200

    own_redis.stop()
    # The right password, refused: without its counters the throttle cannot tell an attacker from the owner.
    html = assert_unavailable_page(post_signin(client), 30, "The service is temporarily unavailable.", REDIS_HINT)
    assert client.get_cookie("ami_session") is not None  # the anonymous cookie (CSRF), but no sign-in:
    assert client.get("/account/").status_code == 302
    assert counts(application) == (0, 0)
    assert "6379" not in html and str(own_redis.port) not in html
    assert_unavailable_json(list_sessions(client, raw, user_id), 30, "The service is temporarily unavailable.")
    body = readiness(client, ready=False)
    assert body["checks"] == {"database": "ok", "migrations": "ok", "keys": "ok", "redis": "unreachable"}
    assert "redis://" not in str(body) and str(own_redis.port) not in str(body)

    own_redis.start()  # empty, as after a restart without persistence
    readiness(client, ready=True)
    assert signed_in_to(post_signin(client), client)
    assert counts(application) == (1, 1)
    assert list_sessions(client, raw, user_id).status_code == 200


# --- PostgreSQL read-only ---------------------------------------------------------------------------------------


def _set_read_only(database: PostgresDatabase, on: bool, *, drop_connections: bool) -> None:
    admin = create_engine(database.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f'ALTER DATABASE "{database.name}" SET default_transaction_read_only = {"on" if on else "off"}')
        )
        if drop_connections:
            # What a failover does to the app's pooled connections: they die, and new ones are read-only.
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": database.name},
            )
    admin.dispose()


@pytest.mark.postgres
def test_postgres_read_only_answers_503_and_recovers(tmp_path: Path, own_postgres: PostgresDatabase) -> None:
    own_postgres.truncate()
    application = make_app(tmp_path, own_postgres.url)
    try:
        _read_only_outage(application, own_postgres, tmp_path)
    finally:
        _set_read_only(own_postgres, False, drop_connections=False)
        close_app(application)


def _read_only_outage(application: Flask, database: PostgresDatabase, tmp_path: Path) -> None:
    user_id = add_user(application)
    raw = issue_token(application)
    client = application.test_client()
    readiness(client, ready=True)

    _set_read_only(database, True, drop_connections=True)
    html = assert_unavailable_page(
        post_signin(client), 30, "The service is temporarily unavailable.", "Nothing was changed."
    )
    assert "read-only" not in html and "25006" not in html  # the log has the detail, the page the advice
    assert_unavailable_json(list_sessions(client, raw, user_id), 30, "The service is temporarily unavailable.")
    body = readiness(client, ready=False)
    assert body["checks"] == {"database": "read-only", "migrations": "ok", "keys": "ok"}
    # The CLI: one line, an exit status to retry on, no traceback.
    cli = _cli(tmp_path, database.url, "users", "create", "cli@example.com", "--password", PASSWORD)
    assert cli.returncode == 75, cli.stderr
    assert cli.stderr.strip() == "Error: the database is read-only. Try again in 30 seconds."

    # A page that only reads works during the outage; it leaves a connection opened read-only in the pool.
    assert client.get("/signin").status_code == 200

    # Back to writable, connections left as they are. PostgreSQL keeps the read-only default of a connection
    # for its lifetime: its first write is refused once more, which makes the app drop its read-only
    # connections, and the next attempt (as Retry-After invites) signs in.
    _set_read_only(database, False, drop_connections=False)
    assert_unavailable_page(post_signin(client), 30, "The service is temporarily unavailable.")
    assert signed_in_to(post_signin(client), client)
    readiness(client, ready=True)
    # The sign-in refused during the fault left nothing: one session, one success, both from the last one.
    assert counts(application) == (1, 1)
    assert list_sessions(client, raw, user_id).status_code == 200


def _cli(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        cli_env(
            tmp_path,
            AMI_AUTH_DATABASE_URL=database_url,
            AMI_AUTH_ARGON2_MEMORY_KIB="1024",
            AMI_AUTH_ARGON2_TIME_COST="1",
        ),
        *args,
    )


# --- SQLite locked past its busy timeout --------------------------------------------------------------------------


def test_sqlite_locked_answers_503_busy_and_recovers(tmp_path: Path, sqlite_url: str) -> None:
    application = make_app(tmp_path, sqlite_url)
    engine = get_database(application).engine

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        # Runs after the app's own PRAGMAs: the lock is real, only the wait for it shrinks from 10 s to 0.2 s.
        dbapi_connection.execute("PRAGMA busy_timeout = 200")

    engine.dispose()
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        user_id = add_user(application)
        raw = issue_token(application)
        client = application.test_client()
        readiness(client, ready=True)

        holder.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than anyone waits
        assert_unavailable_page(post_signin(client), 5, "The service is busy.", "Try again in a few seconds.")
        assert_unavailable_json(list_sessions(client, raw, user_id), 5, "The service is busy.")
        assert readiness(client, ready=False)["checks"]["database"] == "locked"

        holder.execute("ROLLBACK")
        readiness(client, ready=True)
        assert signed_in_to(post_signin(client), client)
        assert counts(application) == (1, 1)
    finally:
        holder.close()
        close_app(application)


# --- production: the same through gunicorn ----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_production_gunicorn_answers_503_while_redis_is_down(
    tmp_path: Path, own_redis: RedisServer, own_postgres: PostgresDatabase
) -> None:
    """Two gunicorn workers in production mode: the same answers, from whichever worker serves the request."""
    own_postgres.truncate()
    setup = make_app(tmp_path, own_postgres.url)
    try:
        add_user(setup)
        raw = issue_token(setup)
    finally:
        close_app(setup)
    env = cli_env(
        tmp_path,
        AMI_AUTH_ENV="production",
        AMI_AUTH_BASE_URL="https://auth.example.com",
        AMI_AUTH_DATABASE_URL=own_postgres.url,
        AMI_AUTH_REDIS_URL=own_redis.url,
        AMI_AUTH_SECRET_KEY="p" * 48,
        AMI_AUTH_MASTER_KEYS=TEST_KEY,
        AMI_AUTH_OUTBOUND_ALLOW="127.0.0.1",
        AMI_AUTH_SCHEDULER="false",
    )
    # Two workers booting on a CI machine busy with other test files may take a while.
    server = gunicorn("wsgi:app", env, workers=2, start_seconds=90)
    with server as base, httpx.Client(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {raw}"}
        assert http.get("/readyz").status_code == 200
        assert http.get("/api/auth/sessions?user_id=1", headers=auth).status_code == 200

        own_redis.stop()
        try:
            for _ in range(4):  # enough requests to reach both workers
                refused = http.get("/api/auth/sessions?user_id=1", headers=auth)
                assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
                assert refused.json()["error"]["code"] == "service_unavailable"
                page = _signin_over_http(http)
                assert page.status_code == 503 and page.headers["Retry-After"] == "30"
                assert REDIS_HINT in page.text and "Traceback" not in page.text
            _poll(http, 503)
        finally:
            own_redis.start()
        _poll(http, 200)
        assert _signin_over_http(http).status_code == 302


def _signin_over_http(http: httpx.Client) -> httpx.Response:
    """The sign-in form posted the way a browser would, over plain HTTP to gunicorn.

    Production cookies are Secure, so httpx keeps them to itself over http://; the cookie is carried by hand.
    """
    form = http.get("/signin")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form.text)
    assert token is not None
    cookie = form.cookies.get("ami_session")
    assert cookie is not None
    return http.post(
        "/signin",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)},
        headers={"Cookie": f"ami_session={cookie}"},
    )


def _poll(http: httpx.Client, status: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (answer := http.get("/readyz")).status_code != status:
        assert time.monotonic() < deadline, f"/readyz still answers {answer.status_code}: {answer.text}"
        time.sleep(0.2)


# --- mail and upstream providers -----------------------------------------------------------------------------------


def test_reset_request_with_the_mail_server_down_says_no_link_went_out(tmp_path: Path, sqlite_url: str) -> None:
    application = make_app(
        tmp_path, sqlite_url, AMI_AUTH_SMTP_URL=f"smtp://127.0.0.1:{free_port()}", AMI_AUTH_OUTBOUND_TIMEOUT="1"
    )
    try:
        add_user(application)
        client = application.test_client()
        token = csrf_token(client, "/reset")
        response = client.post("/reset", data={"email": EMAIL, "csrf_token": token})
        html = assert_unavailable_page(
            response, 60, "We could not send the mail right now, so no reset link went out.", "mail server"
        )
        assert "127.0.0.1" not in html
    finally:
        close_app(application)


def test_oauth_signin_with_the_provider_down_answers_503(tmp_path: Path, sqlite_url: str) -> None:
    application = make_app(tmp_path, sqlite_url)
    try:
        down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the identity provider is down
        config_id = create_config(
            application, "generic_oidc", "Corp ID", generic_values(down, OPClient("ami-auth", "op-secret"))
        )
        html = assert_unavailable_page(
            application.test_client().get(f"/oauth/{config_id}/login"),
            30,
            "The provider cannot be reached right now, so nothing was done.",
            "sign in another way",
        )
        assert down not in html
    finally:
        close_app(application)
