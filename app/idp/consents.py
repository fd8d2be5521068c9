"""What users allowed which apps: recorded when a code is issued, listed and revoked by the user (account page)
or an admin (per user) — the rules both pages share.

A consent covers a set of scopes; a request for more asks again. Revoking a consent revokes every token the app
holds for that user (its refresh tokens stop working at once; its JWT access tokens expire within minutes and are
reported inactive by introspection from now on). First-party apps get a consent recorded without asking, so they
are listed (and revocable) like the others.

Functions take a Session and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.errors import N_, AppError
from app.idp import tokens
from app.models import OidcClient, OidcConsent, utcnow


@dataclass(frozen=True)
class AuthorizedApp:
    """One line of "apps you authorized"."""

    consent_id: int
    client_id: str
    name: str
    scopes: tuple[str, ...]
    first_party: bool
    granted_at: datetime
    last_used_at: datetime | None


def find(db: Session, user_id: int, client: OidcClient) -> OidcConsent | None:
    return db.scalars(
        select(OidcConsent).where(OidcConsent.user_id == user_id, OidcConsent.client_id == client.id)
    ).first()


def covers(db: Session, user_id: int, client: OidcClient, scopes: Iterable[str]) -> bool:
    consent = find(db, user_id, client)
    return consent is not None and consent.revoked_at is None and set(scopes) <= set(consent.scopes or ())


def grant(db: Session, ctx: AuditContext, user_id: int, client: OidcClient, scopes: Iterable[str]) -> OidcConsent:
    """Record (or widen) a consent; audited when it is new or covers more than before."""
    wanted = list(dict.fromkeys(scopes))
    now = utcnow()
    consent = find(db, user_id, client)
    if consent is None:
        consent = OidcConsent(user_id=user_id, client_id=client.id, scopes=wanted, created_at=now, updated_at=now)
        db.add(consent)
        changed = True
    else:
        before = set(consent.scopes or ()) if consent.revoked_at is None else set()
        changed = not set(wanted) <= before
        if changed:
            consent.scopes = sorted(before | set(wanted)) if consent.revoked_at is None else wanted
            consent.revoked_at = None
            consent.updated_at = now
    consent.last_used_at = now
    db.flush()
    if changed:
        audit.record(
            db,
            ctx,
            "oidc.grant.issue",
            target=f"user:{user_id}",
            details={"client": client.client_id, "name": client.name, "scopes": list(consent.scopes)},
        )
    return consent


def authorized_apps(db: Session, user_id: int) -> list[AuthorizedApp]:
    rows = db.execute(
        select(OidcConsent, OidcClient)
        .join(OidcClient, OidcClient.id == OidcConsent.client_id)
        .where(OidcConsent.user_id == user_id, OidcConsent.revoked_at.is_(None))
        .order_by(OidcClient.name)
    ).all()
    return [
        AuthorizedApp(
            consent.id,
            client.client_id,
            client.name,
            tuple(consent.scopes or ()),
            client.first_party,
            consent.updated_at,
            consent.last_used_at,
        )
        for consent, client in rows
    ]


def revoke(db: Session, ctx: AuditContext, user_id: int, client_id: str) -> int:
    """Withdraw a user's consent to an app and revoke the app's tokens for them; returns how many tokens."""
    client = db.scalars(select(OidcClient).where(OidcClient.client_id == client_id)).first()
    consent = find(db, user_id, client) if client is not None else None
    if client is None or consent is None or consent.revoked_at is not None:
        raise AppError("not_found", N_("That app has no access to this account."), N_("Reload the page."))
    now = utcnow()
    consent.revoked_at = now
    revoked = tokens.revoke_for_user_client(db, user_id, client.id, "consent_revoked", now)
    audit.record(
        db,
        ctx,
        "oidc.grant.revoke",
        target=f"user:{user_id}",
        details={"client": client.client_id, "name": client.name, "revoked": revoked},
    )
    return revoked
