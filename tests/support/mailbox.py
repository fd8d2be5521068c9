"""Reading the app's mail in tests: the outbox table (test env without SMTP) and links inside a mail."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import MailOutbox


def outbox(db: Session, to: str | None = None) -> list[MailOutbox]:
    """Outbox mails, oldest first (optionally only those to one address). Reads committed rows afresh."""
    db.expire_all()
    stmt = select(MailOutbox).order_by(MailOutbox.id)
    if to is not None:
        stmt = stmt.where(MailOutbox.to == to)
    return list(db.scalars(stmt))


def last_mail(db: Session, to: str) -> MailOutbox:
    mails = outbox(db, to)
    assert mails, f"no mail to {to} in the outbox"
    return mails[-1]


def link_path(text: str, prefix: str) -> str:
    """The path of the first absolute link in ``text`` whose path starts with ``prefix`` (e.g. "/reset/")."""
    for url in re.findall(r"https?://[^\s<>\"]+", text):
        path: str = urlsplit(str(url)).path
        if path.startswith(prefix):
            return path
    raise AssertionError(f"no {prefix} link in the mail:\n{text}")
