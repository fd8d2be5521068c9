"""Production refuses to start with one clear line; the CLI works; models and migrations agree."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from app.migrate import upgrade
from app.models import Base
from tests.conftest import PostgresDatabase, postgres_admin_url

ROOT = Path(__file__).resolve().parents[2]
KEY = base64.b64encode(b"z" * 32).decode()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}
    env.update(
        {
            "AMI_AUTH_INSTANCE_DIR": str(tmp_path),
            "AMI_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def _prod(tmp_path: Path, **extra: str) -> dict[str, str]:
    return _env(
        tmp_path,
        AMI_AUTH_ENV="production",
        AMI_AUTH_SECRET_KEY="p" * 40,
        AMI_AUTH_MASTER_KEYS=f"k1:{KEY}",
        AMI_AUTH_BASE_URL="https://auth.example.com",
        **extra,
    )


def _load_wsgi(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


@pytest.mark.parametrize(
    ("drop", "override", "variable"),
    [
        ("AMI_AUTH_MASTER_KEYS", None, "AMI_AUTH_MASTER_KEYS"),
        ("AMI_AUTH_SECRET_KEY", None, "AMI_AUTH_SECRET_KEY"),
        (None, ("AMI_AUTH_MASTER_KEYS", "k1:nope"), "AMI_AUTH_MASTER_KEYS"),
        (None, ("AMI_AUTH_BASE_URL", "http://auth.example.com"), "AMI_AUTH_BASE_URL"),
    ],
)
def test_production_refuses_bad_config(
    tmp_path: Path, drop: str | None, override: tuple[str, str] | None, variable: str
) -> None:
    env = _prod(tmp_path)
    if drop:
        env.pop(drop)
    if override:
        env[override[0]] = override[1]
    result = _load_wsgi(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ami-auth: refusing to start: {variable}: ")


def test_production_refuses_unmigrated_database(tmp_path: Path) -> None:
    result = _load_wsgi(_prod(tmp_path))
    assert result.returncode == 2
    assert "not migrated to head" in result.stderr and "ami-auth db upgrade" in result.stderr
    assert _cli(_prod(tmp_path), "db", "upgrade").returncode == 0
    assert _load_wsgi(_prod(tmp_path)).returncode == 0


def test_cli_bootstrap_users_and_check_config(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli(env, "db", "upgrade").returncode == 0
    link = _cli(env, "bootstrap")
    assert link.returncode == 0 and "/setup/" in link.stdout
    created = _cli(
        env,
        "users",
        "create",
        "ops@example.com",
        "--role",
        "admin",
        stdin="a long enough password\na long enough password\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created admin ops@example.com" in created.stdout
    assert "an admin exists" in _cli(env, "bootstrap").stdout
    dup = _cli(env, "users", "create", "ops@example.com", stdin="a long enough password\na long enough password\n")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    ok = _cli(env, "check-config")
    assert ok.returncode == 0 and "configuration ok" in ok.stdout


def test_bootstrap_admin_from_environment(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        AMI_AUTH_BOOTSTRAP_ADMIN_EMAIL="boot@example.com",
        AMI_AUTH_BOOTSTRAP_ADMIN_PASSWORD="scripted install password 123",
    )
    _cli(env, "db", "upgrade")
    result = _cli(env, "bootstrap")
    assert result.returncode == 0 and "created admin boot@example.com" in result.stdout
    bad = _env(
        tmp_path / "b", AMI_AUTH_BOOTSTRAP_ADMIN_EMAIL="x@example.com", AMI_AUTH_BOOTSTRAP_ADMIN_PASSWORD="short"
    )
    _cli(bad, "db", "upgrade")
    failed = _cli(bad, "bootstrap")
    assert failed.returncode == 1 and "at least 12 characters" in failed.stderr


def test_cli_reports_bad_setting_in_one_line(tmp_path: Path) -> None:
    result = _cli(_env(tmp_path, AMI_AUTH_SIGNUP="sometimes"), "check-config")
    assert result.returncode == 2
    assert result.stderr.strip() == "ami-auth: AMI_AUTH_SIGNUP: must be open, invite or closed, got 'sometimes'"


# Opens the database like a running app (migrated, one connection held so the -wal and -shm files exist)
# and prints the mode of everything development creates under the instance directory.
_FILE_MODES = """
import json, os, stat, sys
from app import create_app
from app.extensions import get_database
from app.migrate import upgrade
app = create_app()
settings = app.extensions["ami_settings"]
upgrade(settings.database_url)
with get_database(app).engine.connect() as conn:
    conn.exec_driver_sql("SELECT count(*) FROM users").scalar()
    found = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in settings.instance_dir.iterdir()}
found["."] = oct(stat.S_IMODE(settings.instance_dir.stat().st_mode))
print(json.dumps(found))
"""


def test_development_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    instance = tmp_path / "instance"  # does not exist yet: the app creates it
    env = _env(tmp_path, AMI_AUTH_INSTANCE_DIR=str(instance))
    env.pop("AMI_AUTH_DATABASE_URL")  # the default: instance/ami-auth.db
    result = subprocess.run(
        [sys.executable, "-c", _FILE_MODES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, umask=0
    )
    assert result.returncode == 0, result.stderr
    modes = json.loads(result.stdout.strip().splitlines()[-1])
    assert modes == {
        ".": "0o700",
        "ami-auth.db": "0o600",
        "ami-auth.db-wal": "0o600",
        "ami-auth.db-shm": "0o600",
        "master_keys": "0o600",
        "secret_key": "0o600",
    }


def test_help_and_command_lookup_write_nothing(tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}  # the defaults: ./instance
    ami_auth = str(Path(sys.executable).parent / "ami-auth")
    listing = subprocess.run([ami_auth, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for command in ("bootstrap", "check-config", "db", "keys", "users", "tokens", "providers"):
        assert f"  {command} " in listing.stdout
    one = subprocess.run(
        [ami_auth, "users", "create", "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert one.returncode == 0 and "Create a user with a password." in one.stdout
    # Nothing written: the app (and development's generated keys) is made only when a command runs
    # (test_cli_bootstrap_users_and_check_config runs them).
    assert list(cwd.iterdir()) == []


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


OLD_HEADS = ("0003_lifecycle", "0004_mfa", "0005_api", "0006_connectors", "0007_oauth", "0009_dialogs")
_SECRET_ROW = text(
    "INSERT INTO secrets (owner_type, owner_id, field, key_id, version, wrapped_key, ciphertext, created_at, "
    "updated_at) VALUES ('connected_account', 1, 'api_key', 'k1', 1, :b, :b, :at, :at)"
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrading_retires_duplicate_current_secrets_then_refuses_new_ones(tmp_path: Path, backend: str) -> None:
    """A database at the feature heads that holds two current values for one secret (the race the unique
    index now prevents) upgrades: the newest stays current, the older is kept for rollback."""
    pg: PostgresDatabase | None = None
    if backend == "postgres":
        pg = PostgresDatabase(postgres_admin_url())
        pg.create(migrate=False)
        url = pg.url
    else:
        url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    try:
        for head in OLD_HEADS:
            upgrade(url, head)
        at = datetime(2026, 1, 1)
        with engine.begin() as conn:
            conn.execute(_SECRET_ROW, {"b": b"\x00", "at": at})
            conn.execute(_SECRET_ROW, {"b": b"\x01", "at": at})
        upgrade(url)
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT id, retired_at, purge_after FROM secrets ORDER BY id")).all()
        assert [(r.retired_at is None, r.purge_after is None) for r in rows] == [(False, False), (True, True)]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(_SECRET_ROW, {"b": b"\x02", "at": at})
    finally:
        engine.dispose()
        if pg is not None:
            pg.drop()
