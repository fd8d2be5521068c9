"""Backup and restore as docs/operations.md tells an operator, on SQLite (`ami-auth backup` / `restore`) and on
PostgreSQL (the real `pg_dump -Fc` / `pg_restore`).

A populated instance — a user with an authenticator app, a provider config's client secret, an API key account,
an OAuth account's tokens, the audit chain, a signed-in browser session — is backed up and restored on a fresh
instance. With the escrowed keys everything is there: the secrets decrypt, `audit verify` passes with the same
head hash, the browser's session cookie from before still opens the account page. Without them (a new master key
ring): a clear refusal naming the key — `restore` writes nothing, `check-config` fails, a production server
refuses to start — and a damaged PostgreSQL dump leaves the new database empty, not half-restored.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import audit, create_app
from app.auth import users
from app.connectors import accounts
from app.extensions import get_cipher, get_database
from app.migrate import upgrade
from app.models import AuditEvent, ConnectedAccount
from app.oauth.connections import load_tokens, save_tokens
from app.oauth.tokens import TokenSet
from app.providers import configs
from app.settings import Settings
from app.vault import get_secret, put_secret
from tests.conftest import (
    PASSWORD,
    TEST_KEY,
    PostgresDatabase,
    csrf_token,
    dispose_app,
    make_settings,
    postgres_admin_url,
    require_peer,
    sign_in,
)
from tests.integration.test_catalog_contract import CONTRACT
from tests.support.accounts import make_account, make_config
from tests.support.mfa import enrol_totp

ROOT = Path(__file__).resolve().parents[2]
OTHER_KEYS = "test1:" + base64.b64encode(b"w" * 32).decode()  # same key id, not the escrowed key
NEW_RING = "fresh:" + base64.b64encode(b"f" * 32).decode()  # a key ring that never saw this data
API_KEY = "sk-proj-backup-restore-6d1f0a"
ACCESS_TOKEN = "backup-access-token-41c2"
REFRESH_TOKEN = "backup-refresh-token-93aa"


@dataclass
class Populated:
    """What the instance held when it was backed up."""

    settings: Settings
    cookie: str
    email: str
    totp_secret: str
    config_id: int
    client_secret: str
    api_account_id: int
    oauth_account_id: int
    audit_head: str
    audit_count: int


def _populate(app: Flask, settings: Settings) -> Populated:
    with app.app_context():
        db = get_database(app).session()
        user = users.create_user(db, settings, email="kept@example.com", password=PASSWORD, verified=True)
        db.commit()
        cipher = get_cipher(app)
        oidc = make_config(db, cipher, settings, "generic_oidc", dict(CONTRACT["generic_oidc"].config), "Corp SSO")
        openai = make_config(db, cipher, settings, "openai", dict(CONTRACT["openai"].config), "OpenAI")
        api_account = make_account(db, openai, {"organization_id": "org-Backup1"}, "Backup key")
        put_secret(db, cipher, accounts.OWNER, api_account.id, "api_key", API_KEY, grace=None)
        oauth_account = ConnectedAccount(provider_config_id=oidc.id, user_id=user.id, label="Corp", subject="kept")
        db.add(oauth_account)
        db.flush()
        save_tokens(db, cipher, oauth_account.id, TokenSet(ACCESS_TOKEN, refresh_token=REFRESH_TOKEN))
        db.commit()
        ids = (oidc.id, api_account.id, oauth_account.id)
    secret = enrol_totp(app, settings, user)
    # A browser signed in with password + authenticator app: its cookie must survive the restore.
    client = app.test_client()
    assert sign_in(client, user.email).headers["Location"] == "/signin/mfa"
    token = csrf_token(client, "/signin/mfa")
    done = client.post("/signin/mfa/totp", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert done.status_code == 302, done.get_data(as_text=True)
    cookie = client.get_cookie("ami_session")
    assert cookie is not None
    with Session(get_database(app).engine) as db:
        chain = audit.verify(db)
    assert chain.ok and chain.checked > 5
    return Populated(
        settings, cookie.value, user.email, secret, ids[0], CONTRACT["generic_oidc"].config["client_secret"],
        ids[1], ids[2], chain.head_hash, chain.checked,
    )  # fmt: skip


def _check_restored(app: Flask, before: Populated) -> None:
    """Everything a user and an operator had is there, readable with the escrowed keys."""
    cipher = get_cipher(app)
    with app.app_context():
        db = get_database(app).session()
        cfg = configs.get_config(db, before.config_id)
        secrets = configs.read_secrets(db, cipher, configs.entry_for(cfg), cfg)
        client_secret = secrets["client_secret"]
        assert client_secret is not None and client_secret.reveal() == before.client_secret
        api_key = get_secret(db, cipher, accounts.OWNER, before.api_account_id, "api_key")
        assert api_key is not None and api_key.reveal() == API_KEY
        tokens = load_tokens(db, cipher, before.oauth_account_id)
        assert tokens is not None and (tokens.access_token, tokens.refresh_token) == (ACCESS_TOKEN, REFRESH_TOKEN)
        db.rollback()
    runner = app.test_cli_runner()
    verified = runner.invoke(args=["audit", "verify"])
    assert verified.exit_code == 0 and verified.output.startswith("OK: checked"), verified.output
    with Session(get_database(app).engine) as db:
        # The chain that verifies runs through the newest event of before the backup (a restore may add its own).
        kept = db.scalars(select(AuditEvent.id).where(AuditEvent.hash == before.audit_head)).all()
    assert len(kept) == 1
    assert runner.invoke(args=["check-config"]).exit_code == 0
    # The session cookie from before the backup: still signed in, second factor and all.
    client: FlaskClient = app.test_client()
    client.set_cookie("ami_session", before.cookie)
    page = client.get("/account/")
    assert page.status_code == 200 and before.email in page.get_data(as_text=True)


def _refused_at_start(database_url: str, instance: Path, keys: str, secret_key: str) -> str:
    """A production server's start (what gunicorn imports) with this key ring: its exit status must be 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}
    env.update(
        AMI_AUTH_ENV="production",
        AMI_AUTH_BASE_URL="https://auth.example.com",
        AMI_AUTH_DATABASE_URL=database_url,
        AMI_AUTH_INSTANCE_DIR=str(instance),
        AMI_AUTH_MASTER_KEYS=keys,
        AMI_AUTH_SECRET_KEY=secret_key,
        AMI_AUTH_SCHEDULER="false",
    )
    started = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 2, started.stderr
    return started.stderr


@pytest.fixture
def source(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Flask, Settings]]:
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'source' / 'ami.db'}"
        (tmp_path / "source").mkdir()
        database = None
    else:
        database = PostgresDatabase(postgres_admin_url())
        database.create(migrate=False)
        url = database.url
    upgrade(url)
    settings = make_settings(tmp_path / "source", url)
    app = create_app(settings)
    try:
        yield app, settings
    finally:
        dispose_app(app)
        if database is not None:
            database.drop()


def _instance(tmp_path: Path, name: str, url: str, keys: str = TEST_KEY) -> Flask:
    (tmp_path / name).mkdir(exist_ok=True)
    return create_app(make_settings(tmp_path / name, url, AMI_AUTH_MASTER_KEYS=keys))


@pytest.mark.parametrize("source", ["sqlite"], indirect=True)
def test_sqlite_backup_and_restore_with_and_without_the_keys(source: tuple[Flask, Settings], tmp_path: Path) -> None:
    app, settings = source
    before = _populate(app, settings)
    backup = tmp_path / "backups" / "ami-auth.db"
    backup.parent.mkdir()
    made = app.test_cli_runner().invoke(args=["backup", str(backup)])
    assert made.exit_code == 0, made.output
    assert (backup.stat().st_mode & 0o777) == 0o600
    assert "master key(s) test1" in made.output and before.audit_head in made.output
    assert not list(backup.parent.glob("*.partial")) and not list(backup.parent.glob("*-wal"))
    again = app.test_cli_runner().invoke(args=["backup", str(backup)])
    assert again.exit_code == 1 and "never overwrites" in again.output

    # Without the escrowed keys: refused, and the fresh instance's database is left as it was.
    for keys, why in ((OTHER_KEYS, "is configured but is not the key"), (NEW_RING, "'test1' is not configured")):
        target = tmp_path / f"refused-{keys[:5]}.db"
        fresh = _instance(tmp_path, f"refused-{keys[:5]}", f"sqlite:///{target}", keys)
        try:
            refused = fresh.test_cli_runner().invoke(args=["restore", str(backup)])
        finally:
            dispose_app(fresh)
        assert refused.exit_code == 1 and "not restored, nothing was written" in refused.output, refused.output
        assert why in refused.output and "escrowed key ring" in refused.output
        assert not target.exists() or target.stat().st_size == 0 or "users" not in _tables(f"sqlite:///{target}")
    # An operator who copies the file by hand instead gets a server that will not start with the wrong keys.
    copied = tmp_path / "copied.db"
    shutil.copy(backup, copied)
    stderr = _refused_at_start(f"sqlite:///{copied}", tmp_path / "copied", OTHER_KEYS, settings.secret_key)
    assert "refusing to start: AMI_AUTH_MASTER_KEYS: key 'test1' is configured but is not the key" in stderr

    # With them: restored on a fresh instance, everything readable, the old cookie still signed in.
    target = tmp_path / "restored" / "ami.db"
    fresh = _instance(tmp_path, "restored", f"sqlite:///{target}")
    try:
        restored = fresh.test_cli_runner().invoke(args=["restore", str(backup)])
        assert restored.exit_code == 0, restored.output
        _check_restored(fresh, before)
        # A second restore over a database with users needs --replace.
        twice = fresh.test_cli_runner().invoke(args=["restore", str(backup)])
        assert twice.exit_code == 1 and "--replace" in twice.output
    finally:
        dispose_app(fresh)


def _libpq(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (what pg_dump and pg_restore take)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        require_peer(f"{name} not found (apt-get install postgresql-client): PostgreSQL backup test skipped")
    assert path is not None
    return path


@pytest.mark.postgres
@pytest.mark.parametrize("source", ["postgres"], indirect=True)
def test_postgres_pg_dump_and_pg_restore_with_and_without_the_keys(
    source: tuple[Flask, Settings], tmp_path: Path
) -> None:
    pg_dump, pg_restore = _pg_tool("pg_dump"), _pg_tool("pg_restore")
    app, settings = source
    before = _populate(app, settings)
    dump = tmp_path / "ami-auth.dump"
    # docs/operations.md: pg_dump -Fc (custom format, compressed, restorable table by table), taken online.
    subprocess.run([pg_dump, "-Fc", "--no-owner", "-f", str(dump), _libpq(settings.database_url)], check=True)
    os.chmod(dump, 0o600)

    databases: list[PostgresDatabase] = []

    def restore(path: Path) -> tuple[PostgresDatabase, subprocess.CompletedProcess[str]]:
        database = PostgresDatabase(postgres_admin_url())
        database.create(migrate=False)
        databases.append(database)
        done = subprocess.run(
            [
                pg_restore,
                "--single-transaction",
                "--exit-on-error",
                "--no-owner",
                "-d",
                _libpq(database.url),
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        return database, done

    try:
        # A damaged dump: pg_restore fails and, in one transaction, leaves nothing behind.
        damaged = tmp_path / "damaged.dump"
        damaged.write_bytes(dump.read_bytes()[: dump.stat().st_size * 2 // 3])
        empty, failed = restore(damaged)
        assert failed.returncode != 0
        assert _tables(empty.url) == []

        # Restored, then started without the escrowed keys: check-config and the server refuse, naming the key.
        wrong, done = restore(dump)
        assert done.returncode == 0, done.stderr
        fresh = _instance(tmp_path, "wrong-keys", wrong.url, NEW_RING)
        try:
            checked = fresh.test_cli_runner().invoke(args=["check-config"])
        finally:
            dispose_app(fresh)
        assert checked.exit_code == 1
        assert re.search(
            r"AMI_AUTH_MASTER_KEYS: key 'test1' is not configured; \d+ stored secret\(s\) use it", checked.output
        )
        stderr = _refused_at_start(wrong.url, tmp_path / "wrong-start", OTHER_KEYS, settings.secret_key)
        assert "refusing to start: AMI_AUTH_MASTER_KEYS: key 'test1' is configured but is not the key" in stderr

        # With them: everything is there.
        good, done = restore(dump)
        assert done.returncode == 0, done.stderr
        fresh = _instance(tmp_path, "restored", good.url)
        try:
            _check_restored(fresh, before)
        finally:
            dispose_app(fresh)
    finally:
        for database in databases:
            database.drop()
