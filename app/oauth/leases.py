"""Leases on connected accounts: an account is claimed (``lease_owner``, ``lease_until``) in one short
transaction before it is refreshed, and released when its result is written.

Holding a row lock across the HTTP call to the provider would pin a database connection and transaction for
as long as the provider takes, so the lock only guards the claim. A lease outlives any single request (the
HTTP client's timeout is seconds), so it only matters when a worker dies mid-refresh: the account is picked
up again when its lease ends. The refresh job claims in batches (app/jobs/refresh.py); "Refresh now" and
SMTP XOAUTH2 claim one account (:func:`claim_one`).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.models import ConnectedAccount

__all__ = ["LEASE", "claim_one", "lock_row", "new_owner", "release"]

# Far above one refresh (the HTTP client gives up after its timeout times its attempts), so a live worker never
# loses its lease; short enough that a crashed worker's accounts are retried within minutes.
LEASE: Final = timedelta(minutes=5)


def new_owner() -> str:
    """A lease owner that names the host, process and thread (what an operator sees in the row)."""
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{threading.get_ident() % 100000}:{uuid.uuid4().hex[:8]}"


def claim_one(db: Session, account_id: int, owner: str, now: datetime) -> bool:
    """Lease one account for ``owner`` unless someone holds it; commits."""
    ca = ConnectedAccount
    claimed = db.scalars(
        update(ca)
        .where(ca.id == account_id, or_(ca.lease_until.is_(None), ca.lease_until < now))
        .values(lease_owner=owner, lease_until=now + LEASE)
        .returning(ca.id)
        .execution_options(synchronize_session=False)
    ).first()
    db.commit()
    return claimed is not None


def release(db: Session, account_id: int, owner: str) -> None:
    ca = ConnectedAccount
    db.execute(
        update(ca)
        .where(ca.id == account_id, ca.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )


def lock_row(db: Session, account_id: int) -> None:
    """Take the row's write lock for the rest of the transaction (re-read under it)."""
    ca = ConnectedAccount
    if db.get_bind().dialect.name == "postgresql":
        db.execute(select(ca.id).where(ca.id == account_id).with_for_update())
    else:
        # DML, so pysqlite begins a transaction and SQLite takes its (single) write lock before the re-read.
        db.execute(
            update(ca)
            .where(ca.id == account_id)
            .values(lease_until=ca.lease_until)
            .execution_options(synchronize_session=False)
        )
