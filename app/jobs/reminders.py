"""Rotation reminders: a digest mail to the admins listing accounts past their rotation policy
(``ami-auth jobs reminders``). The policy is the provider config's ``rotation_days`` (catalog default
otherwise), counted from when the account's secret was last set."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.connectors import accounts
from app.connectors.accounts import RotationState
from app.errors import AppError
from app.mailer import Mailer
from app.models import ConnectedAccount, User
from app.models.base import utcnow
from app.settings import Settings

JOB = audit.AuditContext(actor="job:reminders")


@dataclass
class Digest:
    accounts: list[tuple[ConnectedAccount, RotationState]]
    subject: str
    text: str
    sent_to: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def overdue_accounts(db: Session, now: datetime | None = None) -> list[tuple[ConnectedAccount, RotationState]]:
    at = now or utcnow()
    rows = [(a, accounts.rotation_state(a, at)) for a in accounts.list_accounts(db)]
    overdue = [(a, state) for a, state in rows if state.overdue]
    return sorted(overdue, key=lambda row: row[1].due_at or at)


def build_digest(db: Session, settings: Settings, now: datetime | None = None) -> Digest:
    at = now or utcnow()
    rows = overdue_accounts(db, at)
    lines = [
        f"{len(rows)} connected account(s) are past their rotation policy.",
        "Replace each secret (the old one stays recoverable for the grace period), then revoke it at the provider.",
        "",
    ]
    for account, state in rows:
        provider = accounts.entry_for(account)
        since = state.since.strftime("%Y-%m-%d") if state.since else "unknown"
        days = (at - state.since).days if state.since else 0
        lines.append(
            f"- {account.label} ({provider.display_name}, {account.provider_config.name}): "
            f"set {since}, {days} days old, policy {state.days} days"
        )
        lines.append(f"  {settings.base_url}/admin/accounts/{account.id}")
    lines += ["", f"All accounts: {settings.base_url}/admin/accounts/?overdue=1"]
    subject = f"AMI Auth: {len(rows)} account secret(s) due for rotation"
    return Digest(rows, subject, "\n".join(lines) + "\n")


def send_reminders(db: Session, settings: Settings, now: datetime | None = None) -> Digest:
    """Mail the digest to every active admin when an account is overdue; commits the audit event."""
    digest = build_digest(db, settings, now)
    if not digest.accounts:
        return digest
    admins = db.scalars(select(User).where(User.role == "admin", User.is_active.is_(True)).order_by(User.id)).all()
    db.commit()  # the mailer may write (outbox) and the send cap counts in its own transaction
    mailer = Mailer(db, settings)
    for admin in admins:
        try:
            mailer.send(admin.email, digest.subject, digest.text)
            digest.sent_to.append(admin.email)
        except AppError as exc:
            digest.errors.append(f"{admin.email}: {exc.code}: {exc.text}")
    audit.record(
        db,
        JOB,
        "jobs.rotation_reminders",
        target="connected_accounts",
        outcome="failure" if digest.errors and not digest.sent_to else "success",
        details={
            "overdue": [a.id for a, _ in digest.accounts],
            "sent_to": len(digest.sent_to),
            "errors": len(digest.errors),
        },
    )
    db.commit()
    return digest
