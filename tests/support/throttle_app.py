"""Sign-in throttle test helpers, loaded for the whole suite through ``pytest_plugins`` in tests/conftest.py.

* ``make_app`` — apps on the test's database, each with its own AMI_AUTH_* variables (several apps on one
  Redis play several workers or hosts); their throttle keys are deleted, and checked gone, afterwards.
* ``verify_calls`` — the parameters of every hash argon2 is asked to verify (the real check still runs), to
  count the password checks a throttle let through.
* ``add_user``, ``post_signin`` (from a given client address), ``db_for``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits.storage import RedisStorage
from sqlalchemy.orm import Session

from app import create_app
from app.auth import users
from app.extensions import get_database, get_limit_storage
from tests.conftest import PASSWORD, csrf_token, make_settings
from tests.support.limits_storage import close_storage, redis_keys

AppFactory = Callable[..., Flask]
WRONG = "not the right password"


@pytest.fixture
def make_app(tmp_path: Path, database_url: str) -> Iterator[AppFactory]:
    """Apps on the test's database; each call may set its own AMI_AUTH_* variables."""
    apps: list[Flask] = []

    def factory(**env: str) -> Flask:
        application = create_app(make_settings(tmp_path, database_url, **env))
        application.config["TESTING"] = True
        apps.append(application)
        return application

    yield factory
    for application in apps:
        storage = get_limit_storage(application)
        close_storage(storage)
        if isinstance(storage, RedisStorage):
            assert redis_keys(application.extensions["ami_settings"].redis_url, storage.key_prefix) == []
        get_database(application).remove()
        get_database(application).engine.dispose()


def add_user(application: Flask, email: str, password: str = PASSWORD, role: str = "member") -> int:
    with application.app_context():
        session = get_database(application).session()
        user = users.create_user(
            session, application.extensions["ami_settings"], email=email, password=password, role=role, verified=True
        )
        session.commit()
        return user.id


def post_signin(client: FlaskClient, email: str, password: str, ip: str = "127.0.0.1") -> Any:
    token = csrf_token(client, "/signin")
    return client.post(
        "/signin",
        data={"email": email, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": ip},
    )


def db_for(application: Flask) -> Session:
    return Session(get_database(application).engine, expire_on_commit=False)


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[argon2.Parameters]:
    """The parameters of every hash argon2 is asked to verify (real verification still runs)."""
    calls: list[argon2.Parameters] = []
    original = argon2.PasswordHasher.verify

    def counting(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        calls.append(argon2.extract_parameters(hash if isinstance(hash, str) else hash.decode()))
        return original(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    return calls
