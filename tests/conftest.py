"""Shared fixtures: settings, a migrated database (SQLite file or PostgreSQL), the app, users.

`AMI_AUTH_TEST_POSTGRES_URL` enables the PostgreSQL runs, `AMI_AUTH_TEST_REDIS_URL` the Redis runs.
With `AMI_AUTH_TEST_REQUIRE_PEERS=1` (set by .ci/run) a missing peer fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import create_app
from app.auth import users
from app.extensions import get_database
from app.migrate import upgrade
from app.models import Base, User
from app.settings import Settings, load_settings

# Real test peers shared by every suite (the SMTP server is also used by the SMTP connector tests), and the
# sign-in throttle's app fixtures (the throttle and lockout suites).
pytest_plugins = ["tests.support.smtp", "tests.support.throttle_app"]


def pytest_configure(config: pytest.Config) -> None:
    from tests.support import loopback

    loopback.install()  # tests touch only 127.0.0.1: anything else fails like a closed port


# Suites whose files share one expensive session fixture: under `--dist loadfile` all their files go to one worker,
# so the fixture starts once per run, not once per worker (tests/e2e/production: the production stack).
SHARED_SESSION_SUITES = ("tests/e2e/production/",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class SharedSuiteScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            suite = next((s for s in SHARED_SESSION_SUITES if nodeid.startswith(s)), None)
            return suite or super()._split_scope(nodeid)

    return SharedSuiteScheduling(config, log)


TEST_KEY = "test1:" + base64.b64encode(b"k" * 32).decode()
PASSWORD = "correct horse battery staple"


def require_peer(reason: str) -> None:
    """Skip when a peer (PostgreSQL, Redis, Chromium, node) is missing — or fail, when CI requires them all."""
    if os.environ.get("AMI_AUTH_TEST_REQUIRE_PEERS") == "1":
        pytest.fail(f"required test peer missing: {reason}")
    pytest.skip(reason)


def postgres_admin_url() -> str:
    url = os.environ.get("AMI_AUTH_TEST_POSTGRES_URL", "")
    if not url:
        require_peer("AMI_AUTH_TEST_POSTGRES_URL not set: PostgreSQL runs skipped")
    return url


def redis_url() -> str:
    url = os.environ.get("AMI_AUTH_TEST_REDIS_URL", "")
    if not url:
        require_peer("AMI_AUTH_TEST_REDIS_URL not set: Redis runs skipped")
    return url


def make_settings(tmp: Path, database_url: str, **env: str) -> Settings:
    base = {
        "AMI_AUTH_ENV": "test",
        "AMI_AUTH_INSTANCE_DIR": str(tmp),
        "AMI_AUTH_DATABASE_URL": database_url,
        "AMI_AUTH_SECRET_KEY": "s" * 48,
        "AMI_AUTH_MASTER_KEYS": TEST_KEY,
        "AMI_AUTH_OUTBOUND_ALLOW": "127.0.0.1",
        "AMI_AUTH_SCHEDULER": "false",
        # Cheap hashing in tests; the parameter rules have their own tests.
        "AMI_AUTH_ARGON2_MEMORY_KIB": "1024",
        "AMI_AUTH_ARGON2_TIME_COST": "1",
        # Admins must enrol a second factor by default; tests of other features sign admins in with a
        # password alone. The MFA tests turn enforcement on explicitly.
        "AMI_AUTH_MFA_REQUIRED_ROLES": "",
    }
    base.update(env)
    return load_settings(base)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per session; each test copies it (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("tmpl") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


class PostgresDatabase:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"ami_test_{uuid.uuid4().hex[:10]}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)

    def create(self, *, migrate: bool = True) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        engine.dispose()
        if migrate:
            upgrade(self.url)

    def truncate(self) -> None:
        engine = create_engine(self.url)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        engine.dispose()

    def drop(self) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDatabase]:
    database = PostgresDatabase(postgres_admin_url())
    database.create()
    yield database
    database.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database: a SQLite file, and (second run) PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "ami.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    pg: PostgresDatabase = request.getfixturevalue("postgres_db")
    pg.truncate()
    return pg.url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "ami.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    dispose_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Session]:
    """A session of the test's own, outside any app context (so requests keep their own `g`)."""
    session = Session(get_database(app).engine, expire_on_commit=False)
    yield session
    session.close()


UserFactory = Callable[..., User]


@pytest.fixture
def make_user(app: Flask, settings: Settings) -> UserFactory:
    def factory(email: str = "member@example.com", password: str = PASSWORD, role: str = "member", **kw: Any) -> User:
        with app.app_context():
            session = get_database(app).session()
            user = users.create_user(session, settings, email=email, password=password, role=role, verified=True, **kw)
            session.commit()
            return user

    return factory


def dispose_app(application: Flask) -> None:
    """Release what an app holds (pooled DB and HTTP connections) so no ResourceWarning escapes a test."""
    from app.net import close_client

    close_client(application)
    get_database(application).remove()
    get_database(application).engine.dispose()


def csrf_token(client: FlaskClient, path: str) -> str:
    """GET a page and return the CSRF token of its form."""
    import re

    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(r'"X-CSRFToken": "([^"]+)"', html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient, email: str, password: str = PASSWORD) -> Any:
    token = csrf_token(client, "/signin")
    return client.post("/signin", data={"email": email, "password": password, "csrf_token": token})
