"""``ami-auth backup FILE`` / ``ami-auth restore FILE``: the embedded SQLite database, online and checked.

Why a helper rather than "copy the file" or the ``sqlite3`` shell (docs/operations.md has both procedures):

* **Consistent while serving.** A copy of a WAL database taken with ``cp`` can miss what is still in the
  ``-wal`` file or catch a half-written page. SQLite's online backup API (what ``.backup`` uses; Python's
  ``sqlite3.Connection.backup``) copies a consistent snapshot while the app keeps writing, and needs no
  ``sqlite3`` binary on the host.
* **Private from the first byte.** The backup holds password hashes and the encrypted secrets: it is created
  0600 (``O_EXCL``, whatever the umask), written under a temporary name, checked (``PRAGMA integrity_check``),
  made self-contained (journal mode DELETE: no ``-wal`` file needed beside it) and only then renamed to FILE.
* **A restore that checks before it writes.** ``restore`` opens the backup read-only and refuses — with nothing
  written — unless it is an intact AMI Auth database of a schema this release knows, the configured key ring
  opens every stored secret (:func:`app.vault.unopened_keys`) and the audit chain verifies. Only then does it
  copy the backup into the configured database in one step of the same backup API, which takes SQLite's write
  lock: another process sees the old database or the new one, never a mix. (Renaming a file over a live WAL
  database can corrupt it: the old ``-wal`` file would be applied to the new one.)

PostgreSQL has ``pg_dump -Fc`` / ``pg_restore --single-transaction``; these commands refuse a PostgreSQL URL
and point there. The master keys and ``AMI_AUTH_SECRET_KEY`` are never in a backup: escrow them apart from it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from flask.cli import with_appcontext
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app import audit
from app.extensions import get_cipher, get_database, get_settings
from app.migrate import alembic_config, current_revisions, head_revisions
from app.models import User
from app.vault import Cipher, key_status, unopened_keys

__all__ = ["BackupRefused", "Inspection", "backup_command", "inspect_backup", "restore_command", "sqlite_path"]


class BackupRefused(click.ClickException):
    """Nothing was written; the message says why and what to do."""


@dataclass(frozen=True)
class Inspection:
    """What a database file holds, as far as a backup or a restore needs to know."""

    revision: str
    at_head: bool
    users: int
    secrets_per_key: dict[str, int]
    audit: audit.VerifyResult


def sqlite_path(database_url: str) -> Path:
    """The file of a ``sqlite:///`` URL; refuses any other database."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise BackupRefused(
            "AMI_AUTH_DATABASE_URL is not a SQLite file. For PostgreSQL use pg_dump -Fc and pg_restore "
            "(docs/operations.md, 'Backup and restore')."
        )
    return Path(url.database).resolve()


@contextmanager
def _read_only(path: Path) -> Iterator[Session]:
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def inspect_backup(path: Path, cipher: Cipher | None = None) -> tuple[Inspection, list[str]]:
    """Open ``path`` read-only and list every reason not to restore it (none: it may be restored)."""
    problems: list[str] = []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as raw:
        try:
            integrity = raw.execute("PRAGMA integrity_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise BackupRefused(f"{path} is not a SQLite database ({exc}).") from None
        if integrity is None or integrity[0] != "ok":
            raise BackupRefused(f"{path} is damaged: PRAGMA integrity_check says {integrity!r}.")
    with _read_only(path) as session:
        try:
            revisions = current_revisions(session.get_bind())  # type: ignore[arg-type]
        except SQLAlchemyError:
            revisions = set()
        if len(revisions) != 1:
            raise BackupRefused(f"{path} is not an AMI Auth database (no schema revision).")
        revision = next(iter(revisions))
        script = ScriptDirectory.from_config(alembic_config(f"sqlite:///{path}"))
        try:
            script.get_revision(revision)
        except CommandError:
            raise BackupRefused(
                f"{path} has schema revision {revision}, which this release does not know (a newer release made "
                "it): restore it with that release."
            ) from None
        at_head = revision in head_revisions(f"sqlite:///{path}")
        try:
            users = session.scalar(select(func.count()).select_from(User)) or 0
            per_key = key_status(session)
            chain = audit.verify(session)
            unopened = unopened_keys(session, cipher) if cipher is not None else {}
        except SQLAlchemyError as exc:
            raise BackupRefused(
                f"{path} could not be read with this release's schema ({type(exc).__name__}); "
                "restore it with the release that made it, then upgrade."
            ) from None
    for kid, why in sorted(unopened.items()):
        problems.append(
            f"master key {kid!r} {why} ({per_key.get(kid, 0)} stored secret(s) use it): set AMI_AUTH_MASTER_KEYS "
            "to the escrowed key ring that goes with this backup"
        )
    if not chain.ok:
        problems.append(f"the audit chain does not verify: {chain.problem}")
    return Inspection(revision, at_head, users, per_key, chain), problems


def _describe(inspection: Inspection) -> str:
    keys = ", ".join(f"{kid} ({n})" for kid, n in sorted(inspection.secrets_per_key.items())) or "none"
    return (
        f"schema {inspection.revision}, {inspection.users} user(s), {inspection.audit.checked} audit event(s), "
        f"audit head {inspection.audit.head_hash}, secrets per master key: {keys}"
    )


def _private_file(path: Path) -> None:
    """Create ``path`` empty and 0600, failing if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


@click.command("backup")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@with_appcontext
def backup_command(file: Path) -> None:
    """Write a consistent copy of the SQLite database to FILE (0600), online; print what it needs to restore."""
    source = sqlite_path(get_settings().database_url)
    target = file.resolve()
    if target.exists():
        raise BackupRefused(f"{target} exists; choose a new file name (a backup never overwrites one).")
    if target == source:
        raise BackupRefused("FILE is the database itself.")
    partial = target.with_name(target.name + ".partial")
    _private_file(partial)
    try:
        with (
            closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            closing(sqlite3.connect(partial)) as dst,
        ):
            src.backup(dst)  # one step: a snapshot of one moment, while the app goes on writing
            dst.execute("PRAGMA journal_mode=DELETE")  # self-contained: no -wal file beside it
        inspection, problems = inspect_backup(partial, get_cipher())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if problems:  # the live database has them too: say so, but the copy is still a faithful one
        for problem in problems:
            click.echo(f"warning: {problem}", err=True)
    os.replace(partial, target)
    session = get_database().session()
    audit.record(session, audit.AuditContext(actor="cli"), "backup.created", details={"file": str(target)})
    session.commit()
    kids = ", ".join(sorted(inspection.secrets_per_key)) or "(no secrets stored yet)"
    click.echo(f"backup written: {target} ({target.stat().st_size} bytes, mode 0600)")
    click.echo(f"  {_describe(inspection)}")
    click.echo(
        f"To restore it you need the master key(s) {kids} (AMI_AUTH_MASTER_KEYS) and, for sessions to stay "
        "valid, AMI_AUTH_SECRET_KEY. They are not in the backup: keep them in your secret store, apart from it."
    )


@click.command("restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--replace", is_flag=True, help="Overwrite a database that already has users.")
@with_appcontext
def restore_command(file: Path, replace: bool) -> None:
    """Check FILE (keys, audit chain, schema), then copy it into the configured SQLite database in one step."""
    settings = get_settings()
    target = sqlite_path(settings.database_url)
    backup = file.resolve()
    if backup == target:
        raise BackupRefused("FILE is the configured database itself.")
    inspection, problems = inspect_backup(backup, get_cipher())
    if problems:
        raise BackupRefused(
            "not restored, nothing was written:\n  " + "\n  ".join(problems) + f"\n  (backup: {_describe(inspection)})"
        )
    database = get_database()
    database.remove()
    database.engine.dispose()  # no pooled connection of ours holds the old file while it is replaced
    if target.exists() and not replace:
        with closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as current:
            try:
                present = current.execute("SELECT count(*) FROM users").fetchone()[0]
            except sqlite3.DatabaseError:
                present = 0
        if present:
            raise BackupRefused(
                f"{target} already holds {present} user(s); pass --replace to overwrite it with the backup."
            )
    created = not target.exists()
    if created:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_file(target)
    with (
        closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as src,
        closing(sqlite3.connect(target, timeout=30)) as dst,
    ):
        src.backup(dst)  # under the target's write lock, in one step: others see old or new, never a mix
    session = database.session()
    audit.record(
        session,
        audit.AuditContext(actor="cli"),
        "backup.restored",
        details={"file": str(backup), "revision": inspection.revision, "audit_head": inspection.audit.head_hash},
    )
    session.commit()
    click.echo(f"restored {backup} into {target}")
    click.echo(f"  {_describe(inspection)}")
    if not inspection.at_head:
        click.echo("The backup's schema is older than this release: run `ami-auth db upgrade` before serving.")
