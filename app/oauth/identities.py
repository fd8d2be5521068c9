"""Who an OAuth sign-in is: the linking rules and just-in-time accounts.

In order (:func:`resolve_signin`):

1. A linked identity (provider config + subject) signs in as its user.
2. An AMI user with the same email is linked automatically only when the provider asserted the address
   is verified *and* the config trusts the provider's emails (``trust_email``). Otherwise the person must
   prove they own the AMI account by signing in with its password first (:func:`link_identity`), since
   anyone can put any address on an account at many providers (account takeover by email).
3. No such user: with ``jit`` on, an account is created — only for a verified address, and only in an
   allowed domain when the config lists domains.

Anything else ends on the "link your account" page with the reason: a person who has an AMI account
(under any address) links it with the password; anyone else learns why they cannot get in.

Logic only: the views in ``app/web/oauth.py`` start sessions (and the second factor) from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit
from app.auth import users
from app.errors import N_, AppError
from app.models import OAuthIdentity, User, utcnow
from app.oauth.identity import ProviderIdentity
from app.oauth.provider import OAuthProvider
from app.settings import Settings

__all__ = ["SigninResult", "find_identity", "link_identity", "resolve_signin"]

Outcome = Literal["signed_in", "linked", "created", "link_required"]


@dataclass(frozen=True)
class SigninResult:
    """``user`` is set unless ``outcome`` is ``link_required``: then the person may link the identity to an
    AMI account by signing in with its password (the "link your account" page)."""

    outcome: Outcome
    user: User | None
    candidate_email: str | None = None
    # Why the sign-in was not automatic (shown on the "link your account" page).
    reason: str = ""


def find_identity(db: Session, config_id: int, subject: str) -> OAuthIdentity | None:
    return db.scalars(
        select(OAuthIdentity).where(OAuthIdentity.provider_config_id == config_id, OAuthIdentity.subject == subject)
    ).first()


def _usable(user: User | None) -> User:
    if user is None or not user.is_active:
        raise AppError("permission_denied", N_("This account is disabled."), N_("Ask an administrator to enable it."))
    return user


def _domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


def _new_identity(db: Session, user: User, provider: OAuthProvider, identity: ProviderIdentity) -> OAuthIdentity:
    row = OAuthIdentity(
        user_id=user.id,
        provider_config_id=provider.config_id,
        subject=identity.subject,
        email=identity.email or "",
        last_used_at=utcnow(),
    )
    db.add(row)
    try:
        db.flush()
    except IntegrityError:
        # Another sign-in linked this subject a moment ago (unique config + subject); the caller rolls back.
        raise AppError("conflict", N_("This provider account was just linked."), N_("Sign in again.")) from None
    return row


def resolve_signin(
    db: Session, settings: Settings, ctx: audit.AuditContext, provider: OAuthProvider, identity: ProviderIdentity
) -> SigninResult:
    """Apply the linking rules; records audit events, never commits."""
    linked = find_identity(db, provider.config_id, identity.subject)
    if linked is not None:
        user = _usable(db.get(User, linked.user_id))
        linked.last_used_at = utcnow()
        if identity.email:
            linked.email = identity.email
        return SigninResult("signed_in", user)

    existing = users.get_by_email(db, identity.email) if identity.email else None
    name = provider.display_name
    if existing is not None:
        if provider.trust_email and identity.email_verified is True:
            user = _usable(existing)
            _new_identity(db, user, provider, identity)
            audit.record(
                db,
                ctx,
                "oauth.identity_linked",
                target=f"user:{user.id}",
                details={"provider_config": provider.config_id, "how": "verified_email"},
            )
            return SigninResult("linked", user)
        why = (
            N_("%(name)s does not confirm that %(email)s is verified.", name=name, email=identity.email)
            if identity.email_verified is not True
            else N_("This provider is not trusted to link accounts by email.")
        )
        return _link_required(db, ctx, provider, identity, why)

    if not provider.jit:
        return _link_required(db, ctx, provider, identity, N_("No AMI Auth account uses this address."))
    if identity.email is None or identity.email_verified is not True:
        return _link_required(
            db,
            ctx,
            provider,
            identity,
            N_("%(name)s did not confirm a verified email address, so no account was created.", name=name),
        )
    allowed = provider.allowed_domains
    if allowed and _domain(identity.email) not in allowed:
        return _link_required(
            db,
            ctx,
            provider,
            identity,
            N_("Accounts for %(domain)s cannot be created here.", domain=_domain(identity.email)),
        )
    try:
        # Any syntactically valid address: a directory's `.local` or `.internal` names included.
        address = users.validate_asserted_email(identity.email)
    except AppError as exc:
        why = exc.fields.get("email", exc.text)
        return _link_required(
            db,
            ctx,
            provider,
            identity,
            N_(
                "%(name)s gave the address “%(email)s”, which is not a valid email address (%(why)s), so no account "
                "was created.",
                name=name,
                email=identity.email[:320],
                why=why,
            ),
        )
    user = users.create_user(
        db,
        settings,
        email=address,
        password=None,
        display_name=identity.name or "",
        verified=True,
        asserted_by_provider=True,
    )
    _new_identity(db, user, provider, identity)
    audit.record(
        db,
        ctx,
        "user.create",
        target=f"user:{user.id}",
        details={"email": user.email, "role": user.role, "via": "oauth_jit", "provider_config": provider.config_id},
    )
    return SigninResult("created", user)


def _link_required(
    db: Session, ctx: audit.AuditContext, provider: OAuthProvider, identity: ProviderIdentity, reason: str
) -> SigninResult:
    """Not an automatic sign-in: the person may still link to an AMI account they can sign in to."""
    audit.record(
        db,
        ctx,
        "oauth.link_required",
        target=f"provider_config:{provider.config_id}",
        outcome="denied",
        details={"reason": reason},
    )
    return SigninResult("link_required", None, candidate_email=identity.email, reason=reason)


def link_identity(
    db: Session, ctx: audit.AuditContext, user: User, config_id: int, subject: str, email: str | None
) -> OAuthIdentity:
    """Link after the person proved they own ``user`` (password sign-in on the link page); never commits."""
    existing = find_identity(db, config_id, subject)
    if existing is not None:
        if existing.user_id != user.id:
            raise AppError(
                "conflict",
                N_("This provider account is already linked to another AMI account."),
                N_(
                    "Sign in with that account, or ask an administrator to unlink it: in the admin console, Users, "
                    "that account, Linked sign-in identities, Unlink."
                ),
            )
        return existing
    row = OAuthIdentity(
        user_id=user.id, provider_config_id=config_id, subject=subject, email=email or "", last_used_at=utcnow()
    )
    db.add(row)
    try:
        db.flush()
    except IntegrityError:
        raise AppError("conflict", N_("This provider account was just linked."), N_("Sign in again.")) from None
    audit.record(
        db,
        ctx,
        "oauth.identity_linked",
        target=f"user:{user.id}",
        details={"provider_config": config_id, "how": "password_confirmed"},
    )
    return row
