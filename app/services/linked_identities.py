"""The Google, GitHub, Entra ID and OpenID identities linked to an AMI user: list them, unlink one.

One set of rules for the user's account page, the admin console, the JSON API and ``ami-auth users unlink``:

* an identity is unlinked only from the user it belongs to (another user's id is ``not_found``);
* never the last way to sign in: without a password, a passkey (passwordless sign-in) or another linked
  identity whose provider config can sign people in, the user would be locked out — ``conflict``, with the way
  out in the hint (a password reset link, or linking another provider first);
* every unlink is audited (``oauth.identity_unlinked``: which config, by whom — never the subject).

Logic only: takes a Session and does not commit an unlink (the caller does); a refusal's audit record is
committed before it is raised, as ``app.auth.user_admin`` does, so the caller's rollback keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.errors import N_, AppError
from app.models import Credential, OAuthIdentity, ProviderConfig, User
from app.providers.registry import entry as catalog_entry
from app.providers.validation import effective_values

Via = Literal["self", "admin", "api", "cli"]


@dataclass(frozen=True)
class LinkedIdentity:
    id: int
    user_id: int
    provider_config_id: int
    provider_config: str
    provider_type: str
    provider_name: str
    subject: str
    email: str
    created_at: datetime
    last_used_at: datetime | None
    # Whether its provider config can sign this user in now (enabled, with sign-in offered).
    usable: bool


def _can_sign_in(cfg: ProviderConfig) -> bool:
    if not cfg.enabled:
        return False
    values = effective_values(catalog_entry(cfg.provider_type), "config", cfg.config or {})
    return values.get("signin", True) is not False


def list_identities(db: Session, user_id: int) -> list[LinkedIdentity]:
    rows = db.execute(
        select(OAuthIdentity, ProviderConfig)
        .join(ProviderConfig, ProviderConfig.id == OAuthIdentity.provider_config_id)
        .where(OAuthIdentity.user_id == user_id)
        .order_by(OAuthIdentity.id)
    ).all()
    return [
        LinkedIdentity(
            id=identity.id,
            user_id=identity.user_id,
            provider_config_id=cfg.id,
            provider_config=cfg.name,
            provider_type=cfg.provider_type,
            provider_name=catalog_entry(cfg.provider_type).display_name,
            subject=identity.subject,
            email=identity.email,
            created_at=identity.created_at,
            last_used_at=identity.last_used_at,
            usable=_can_sign_in(cfg),
        )
        for identity, cfg in rows
    ]


def _has_passkey(db: Session, user_id: int) -> bool:
    count = db.scalar(
        select(func.count())
        .select_from(Credential)
        .where(Credential.user_id == user_id, Credential.kind == "webauthn", Credential.confirmed_at.is_not(None))
    )
    return bool(count)


def other_ways_to_sign_in(db: Session, user: User, identity_id: int) -> list[str]:
    """How the user could still sign in without this identity (empty: it is the last way)."""
    ways: list[str] = []
    if user.password_hash is not None:
        ways.append("password")
    if _has_passkey(db, user.id):
        ways.append("passkey")
    ways += [
        f"identity:{other.id}" for other in list_identities(db, user.id) if other.id != identity_id and other.usable
    ]
    return ways


def unlink(db: Session, ctx: audit.AuditContext, user: User, identity_id: int, *, via: Via) -> LinkedIdentity:
    """Unlink one of ``user``'s identities (audited); ``conflict`` when it is their last way to sign in."""
    found = next((i for i in list_identities(db, user.id) if i.id == identity_id), None)
    if found is None:
        raise AppError("not_found", N_("There is no such linked identity for this user."), N_("Reload the list."))
    if not other_ways_to_sign_in(db, user, identity_id):
        audit.record(
            db,
            ctx,
            "oauth.identity_unlinked",
            target=f"user:{user.id}",
            outcome="denied",
            details={"provider_config": found.provider_config_id, "via": via, "reason": "last_way_to_sign_in"},
        )
        db.commit()
        raise AppError(
            "conflict",
            N_(
                "This %(provider_name)s identity is the only way %(email)s can sign in.",
                provider_name=found.provider_name,
                email=user.email,
            ),
            N_("Set a password first (a password reset link does it) or link another provider, then unlink this one."),
            fields={"identity_id": N_("The last way to sign in cannot be unlinked.")},
        )
    row = db.get(OAuthIdentity, identity_id)
    assert row is not None
    db.delete(row)
    db.flush()
    audit.record(
        db,
        ctx,
        "oauth.identity_unlinked",
        target=f"user:{user.id}",
        details={"provider_config": found.provider_config_id, "type": found.provider_type, "via": via},
    )
    return found
