"""AMI roles from an identity provider's groups claim, per provider config (its ``role_mapping`` field).

A config lists ``group=role`` pairs (``ami-admins=admin``, ``staff=member``). At every sign-in through it (a JIT
account's first included) the groups the provider asserted decide the user's role: the first role of
:data:`app.models.ROLES` (admin before member) that a group maps to; a user in no mapped group gets the last
(member) — the provider, not a stale row here, says who is an admin. A config without a mapping changes nothing.

The console's guard holds: the last active admin is never demoted this way (the change is refused and audited).
Every change is audited as ``user.role_mapped`` with the config and the groups that decided it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy.orm import Session

from app import audit
from app.auth import user_admin
from app.models import ROLES, User


def parse(entries: Iterable[str] | None) -> dict[str, str]:
    """``["ami-admins=admin", …]`` → ``{"ami-admins": "admin", …}`` (the catalog's pattern checked the form)."""
    mapping: dict[str, str] = {}
    for entry in entries or ():
        group, _, role = entry.partition("=")
        if group and role in ROLES:
            mapping[group] = role
    return mapping


def mapped_role(mapping: dict[str, str], groups: Sequence[str]) -> str | None:
    """The role the groups give (``None`` without a mapping)."""
    if not mapping:
        return None
    granted = {mapping[group] for group in groups if group in mapping}
    return next((role for role in ROLES if role in granted), ROLES[-1])


def apply(
    db: Session,
    ctx: audit.AuditContext,
    user: User,
    entries: Iterable[str] | None,
    groups: Sequence[str],
    *,
    provider_config_id: int,
) -> str | None:
    """Set ``user``'s role from ``groups``; returns the new role when it changed. Never commits."""
    mapping = parse(entries)
    role = mapped_role(mapping, groups)
    if role is None or role == user.role:
        return None
    matched = sorted(group for group in groups if group in mapping)[:20]
    details: dict[str, object] = {
        "from": user.role,
        "to": role,
        "provider_config": provider_config_id,
        "groups": matched,
    }
    if user.is_admin and user.is_active and role != "admin" and user_admin.active_admin_count(db) <= 1:
        audit.record(
            db,
            ctx,
            "user.role_mapped",
            target=f"user:{user.id}",
            outcome="denied",
            details={**details, "reason": "last_admin"},
        )
        return None
    user.role = role
    audit.record(db, ctx, "user.role_mapped", target=f"user:{user.id}", details=details)
    return role
