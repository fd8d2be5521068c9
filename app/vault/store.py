"""Encrypted values in the ``secrets`` table, one current row per (owner_type, owner_id, field).

Replacing a value retires the old row instead of overwriting it, so an admin can roll back a bad
credential during a grace period; :func:`purge_retired` deletes retired rows once it is over.

These functions take a ``Session`` and never commit: the caller owns the unit of work. The exception is
:func:`rewrap`, which commits one transaction per batch so it can run online and be interrupted.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Dialect,
    Table,
    bindparam,
    column,
    delete,
    exists,
    func,
    select,
    table,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.secrets import StoredSecret
from app.vault.cipher import ENVELOPE_VERSION, Cipher, Envelope, SecretUnreadable
from app.vault.secret import Secret

SessionFactory = Callable[[], Session]
_AAD_LABEL = b"ami-auth/secrets/v1"
_u32 = struct.Struct(">I").pack
_AAD_PREFIX = _u32(len(_AAD_LABEL)) + _AAD_LABEL
_TABLE: Table = StoredSecret.__table__  # type: ignore[assignment]
# Just the columns rewrap writes, without the model's onupdate hooks (see _rewrap_update).
_REWRAP_TARGET = table("secrets", column("id"), column("key_id"), column("version"), column("wrapped_key"))


@dataclass(frozen=True)
class SecretMeta:
    """What a page may show about a secret without decrypting it ("set · last changed <date>")."""

    key_id: str
    # Every new value is a new row, so the row's creation is when the value last changed.
    created_at: datetime
    # Also moves when the row is retired or restored; not on rewrap, which does not change the value.
    updated_at: datetime


def aad_for(owner_type: str, owner_id: int, field: str) -> bytes:
    """Associated data naming the row's slot, so a ciphertext copied to another slot will not decrypt."""
    # Length-prefixed parts: no choice of names can make two different slots encode the same bytes.
    # (Written out rather than joined in a loop: rewrap calls this once per row.)
    t, i, f = owner_type.encode(), b"%d" % owner_id, field.encode()
    return _AAD_PREFIX + _u32(len(t)) + t + _u32(len(i)) + i + _u32(len(f)) + f


def _slot(owner_type: str, owner_id: int, field: str) -> ColumnElement[bool]:
    return (StoredSecret.owner_type == owner_type) & (StoredSecret.owner_id == owner_id) & (StoredSecret.field == field)


def _current(owner_type: str, owner_id: int, field: str) -> ColumnElement[bool]:
    return _slot(owner_type, owner_id, field) & StoredSecret.retired_at.is_(None)


def put_secret(
    session: Session,
    cipher: Cipher,
    owner_type: str,
    owner_id: int,
    field: str,
    value: str | Secret,
    *,
    grace: timedelta | None,
    now: datetime | None = None,
) -> StoredSecret:
    """Store a new current value; the previous one is retired for ``grace`` (``None``: deleted now).

    ``grace`` has no default on purpose: whether the old credential stays recoverable is a decision.

    At most one value is current (the partial unique index ``uq_secrets_current``). On PostgreSQL two
    transactions replacing the same secret at once both retire the old row; the second one's insert then
    meets the first one's committed value, so it retries in a savepoint, retiring that value in turn: the
    last writer's value is current and the other stays recoverable. (SQLite runs one writer at a time.)
    """
    if grace is not None and grace < timedelta(0):
        raise ValueError("grace must not be negative")
    now = now or utcnow()
    plaintext = value.reveal() if isinstance(value, Secret) else value
    env = cipher.encrypt(plaintext.encode(), aad_for(owner_type, owner_id, field))
    if session.get_bind().dialect.name != "postgresql":
        return _replace(session, env, owner_type, owner_id, field, grace, now)
    for attempt in range(_REPLACE_ATTEMPTS):
        try:
            with session.begin_nested():
                return _replace(session, env, owner_type, owner_id, field, grace, now)
        except IntegrityError:
            if attempt == _REPLACE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


_REPLACE_ATTEMPTS = 3


def _replace(
    session: Session,
    env: Envelope,
    owner_type: str,
    owner_id: int,
    field: str,
    grace: timedelta | None,
    now: datetime,
) -> StoredSecret:
    current = _current(owner_type, owner_id, field)
    if grace is None:
        session.execute(delete(StoredSecret).where(current))
    else:
        session.execute(
            update(StoredSecret).where(current).values(retired_at=now, purge_after=now + grace, updated_at=now)
        )
    row = StoredSecret(
        owner_type=owner_type,
        owner_id=owner_id,
        field=field,
        key_id=env.key_id,
        version=env.version,
        wrapped_key=env.wrapped_key,
        ciphertext=env.ciphertext,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_secret(session: Session, cipher: Cipher, owner_type: str, owner_id: int, field: str) -> Secret | None:
    """The current value, or ``None`` if none is set; :class:`SecretUnreadable` if it cannot be decrypted."""
    row = session.execute(
        select(StoredSecret.key_id, StoredSecret.version, StoredSecret.wrapped_key, StoredSecret.ciphertext)
        .where(_current(owner_type, owner_id, field))
        .order_by(StoredSecret.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    env = Envelope(row.key_id, row.version, row.wrapped_key, row.ciphertext)
    return Secret(cipher.decrypt(env, aad_for(owner_type, owner_id, field)).decode())


def has_secret(session: Session, owner_type: str, owner_id: int, field: str) -> bool:
    return bool(session.execute(select(exists().where(_current(owner_type, owner_id, field)))).scalar())


def secret_meta(session: Session, owner_type: str, owner_id: int, field: str) -> SecretMeta | None:
    row = session.execute(
        select(StoredSecret.key_id, StoredSecret.created_at, StoredSecret.updated_at)
        .where(_current(owner_type, owner_id, field))
        .order_by(StoredSecret.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return SecretMeta(key_id=row.key_id, created_at=row.created_at, updated_at=row.updated_at)


def delete_secrets(session: Session, owner_type: str, owner_id: int) -> int:
    """Delete every field of an owner, retired values included; returns the number of rows deleted.

    On SQLite the freed pages keep their old bytes until VACUUM unless ``PRAGMA secure_delete`` is on.
    """
    result = session.execute(
        delete(StoredSecret).where((StoredSecret.owner_type == owner_type) & (StoredSecret.owner_id == owner_id))
    )
    return cast(CursorResult[Any], result).rowcount


def restore_previous(
    session: Session, owner_type: str, owner_id: int, field: str, *, now: datetime | None = None
) -> StoredSecret | None:
    """Make the most recently retired value current again and delete the value it replaced.

    The replaced value is deleted rather than retired: a rollback means it was wrong, and retiring it
    would make a second rollback swap it straight back. Returns ``None`` (and changes nothing) if there
    is no retired value.
    """
    previous = session.scalars(
        select(StoredSecret)
        .where(_slot(owner_type, owner_id, field) & StoredSecret.retired_at.is_not(None))
        .order_by(StoredSecret.retired_at.desc(), StoredSecret.id.desc())
        .limit(1)
    ).first()
    if previous is None:
        return None
    session.execute(delete(StoredSecret).where(_current(owner_type, owner_id, field)))
    previous.retired_at = None
    previous.purge_after = None
    previous.updated_at = now or utcnow()
    session.flush()
    return previous


def purge_retired(session: Session, now: datetime) -> int:
    """Delete retired values whose grace period is over; returns how many."""
    expired = StoredSecret.retired_at.is_not(None) & (
        StoredSecret.purge_after.is_(None) | (StoredSecret.purge_after <= now)
    )
    result = session.execute(delete(StoredSecret).where(expired))
    return cast(CursorResult[Any], result).rowcount


def key_status(session: Session) -> dict[str, int]:
    """Rows per key id, retired rows included (they still need their key until purged)."""
    rows = session.execute(
        select(StoredSecret.key_id, func.count()).group_by(StoredSecret.key_id).order_by(StoredSecret.key_id)
    ).all()
    return {key_id: int(count) for key_id, count in rows}


def unopened_keys(session: Session, cipher: Cipher) -> dict[str, str]:
    """Key ids the stored rows use that this key ring cannot open, each with why (empty: all is well).

    For each key id in the table, the newest row's data key is unwrapped (never its payload: no plaintext is
    produced). A key id that is not configured, or a configured key of that id that does not unwrap its row,
    means the ring is not the one the data was written with — after a restore without the escrowed keys, say.
    One row per key id is enough: AES-GCM unwraps with the right key or fails, it does not half-work.
    """
    newest = select(func.max(StoredSecret.id).label("id")).group_by(StoredSecret.key_id).subquery()
    rows = session.execute(
        select(
            StoredSecret.key_id,
            StoredSecret.version,
            StoredSecret.wrapped_key,
            StoredSecret.owner_type,
            StoredSecret.owner_id,
            StoredSecret.field,
        ).where(StoredSecret.id.in_(select(newest.c.id)))
    ).all()
    problems: dict[str, str] = {}
    for key_id, version, wrapped, owner_type, owner_id, field in rows:
        if key_id not in cipher.key_ids:
            problems[key_id] = "is not configured"
            continue
        try:
            cipher.rewrap_key(key_id, version, wrapped, aad_for(owner_type, owner_id, field))
        except SecretUnreadable:
            problems[key_id] = "is configured but is not the key the stored secrets were written with"
    return problems


def rewrap_pending(session: Session, cipher: Cipher) -> int:
    """How many rows :func:`rewrap` would move."""
    count = session.execute(
        select(func.count()).select_from(_TABLE).where(_TABLE.c.key_id != cipher.active_kid)
    ).scalar()
    return int(count or 0)


def _rewrap_update(dialect: Dialect) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    """The batch UPDATE as the dialect's SQL, and how to shape one row's parameters for its driver.

    Rewrap runs it through the driver's own executemany: SQLAlchemy's per-row parameter processing
    cost more than the UPDATE itself, and every value here (int, str, bytes) needs no conversion.
    """
    t = _REWRAP_TARGET
    # Matching the old key id too means a row moved by a concurrent run is left alone.
    stmt = (
        update(t)
        .where((t.c.id == bindparam("b_id")) & (t.c.key_id == bindparam("b_old_kid")))
        .values(key_id=bindparam("b_kid"), version=bindparam("b_version"), wrapped_key=bindparam("b_wrapped"))
    )
    compiled = stmt.compile(dialect=dialect)
    if dialect.positional:
        assert compiled.positiontup is not None
        return compiled.string, operator.itemgetter(*compiled.positiontup)
    return compiled.string, lambda params: params


def rewrap(
    session_factory: SessionFactory,
    cipher: Cipher,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Move every row not on the active key onto it; returns the number of rows moved.

    Each batch is its own committed transaction, so this runs beside live traffic and can be stopped at
    any point: an interrupted batch rolls back whole, and a new run resumes because rows already on the
    active key are not selected. ``progress`` is called with each committed batch's count.
    A row that cannot be unwrapped (missing key, altered bytes) raises :class:`SecretUnreadable`;
    batches before it stay committed. Only ``key_id``, ``version`` and ``wrapped_key`` change: the
    value is the same, so ``updated_at`` (shown as "last changed") is left alone.

    ``session_factory`` must give a session with no transaction open (e.g. ``Database.session``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    t = _TABLE
    active = cipher.active_kid
    rewrap_key = cipher.rewrap_key
    # Keyset paging (id > last) keeps each batch a primary-key range scan instead of re-reading the
    # rows already moved. The payload is not needed to rewrap, so it is never read.
    query = (
        select(t.c.id, t.c.owner_type, t.c.owner_id, t.c.field, t.c.key_id, t.c.version, t.c.wrapped_key)
        .where((t.c.key_id != active) & (t.c.id > bindparam("last_id")))
        .order_by(t.c.id)
        .limit(batch_size)
    )
    update_sql: tuple[str, Callable[[dict[str, Any]], Any]] | None = None
    moved = 0
    last_id = 0
    while True:
        with session_factory() as session, session.begin():
            conn = session.connection()
            rows = conn.execute(query, {"last_id": last_id}).all()
            if not rows:
                break
            if update_sql is None:
                update_sql = _rewrap_update(conn.dialect)
            sql, shape = update_sql
            params = []
            for row_id, owner_type, owner_id, field, key_id, version, wrapped in rows:
                try:
                    new_wrapped = rewrap_key(key_id, version, wrapped, aad_for(owner_type, owner_id, field))
                except SecretUnreadable as exc:
                    exc.add_note(f"secrets row id {row_id}")
                    raise
                params.append(
                    shape(
                        {
                            "b_id": row_id,
                            "b_old_kid": key_id,
                            "b_kid": active,
                            "b_version": ENVELOPE_VERSION,
                            "b_wrapped": new_wrapped,
                        }
                    )
                )
            result = conn.exec_driver_sql(sql, params)
            done = result.rowcount if conn.dialect.supports_sane_multi_rowcount else len(params)
            last_id = rows[-1][0]
        moved += done
        if progress is not None:
            progress(done)
    return moved
