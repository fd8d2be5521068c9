"""What an administrator does to users: create (invite or password), edit, disable/enable, delete, end sessions.

Guards: an admin cannot disable, demote or delete themselves, and nobody can remove the last active
admin (Keycloak and GitLab refuse the same), so the console can never lock everyone out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from limits.storage import Storage
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import lifecycle, mail_tokens, mfa, sessions, throttle, users
from app.errors import N_, AppError
from app.models import ROLES, User
from app.models.tokens import TokenPurpose
from app.settings import Settings

MAX_METADATA_CHARS = 16_000
PAGE_SIZE = 25
_ASK_ANOTHER = N_("Ask another admin to do it.")
_PROMOTE_FIRST = N_("Make another user an admin first.")
# Links that would let a disabled user act on the account; voided when it is disabled.
_LINK_PURPOSES: tuple[TokenPurpose, ...] = ("reset", "invite", "verify", "unlock")


def parse_metadata(raw: str) -> dict[str, Any]:
    """Metadata typed as JSON text: an object, or nothing. Errors name the line and column."""
    text = raw.strip()
    if not text:
        return {}
    if len(text) > MAX_METADATA_CHARS:
        raise AppError(
            "validation_failed",
            fields={
                "metadata": N_(
                    "Keep it under %(max_metadata_chars)s characters.", max_metadata_chars=MAX_METADATA_CHARS
                )
            },
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AppError(
            "validation_failed",
            fields={
                "metadata": N_(
                    "Not valid JSON: %(msg)s at line %(lineno)s, column %(colno)s.",
                    msg=exc.msg,
                    lineno=exc.lineno,
                    colno=exc.colno,
                )
            },
        ) from None
    if not isinstance(value, dict):
        raise AppError("validation_failed", fields={"metadata": N_('Use a JSON object, like {"team": "sales"}.')})
    return value


def format_metadata(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) if value else ""


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AppError("validation_failed", fields={"role": N_("Choose admin or member.")})


def active_admin_count(db: Session) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == "admin", User.is_active.is_(True))
    return int(db.scalar(stmt) or 0)


def _is_last_admin(db: Session, user: User) -> bool:
    return user.is_admin and user.is_active and active_admin_count(db) <= 1


def _denied(db: Session, ctx: AuditContext, action: str, user: User, message: str, hint: str) -> AppError:
    audit.record(db, ctx, action, target=f"user:{user.id}", outcome="denied", details={"reason": message})
    db.commit()
    return AppError("conflict", message, hint)


def _search(stmt: Select[Any], query: str) -> Select[Any]:
    """Only users whose email or display name contains ``query`` (case-insensitive, taken literally)."""
    needle = query.strip()[:200]
    if not needle:
        return stmt
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return stmt.where(or_(User.email.ilike(pattern, escape="\\"), User.display_name.ilike(pattern, escape="\\")))


@dataclass(frozen=True)
class UserPage:
    users: list[User]
    total: int
    page: int
    pages: int


def list_users(db: Session, *, query: str = "", page: int = 1, page_size: int = PAGE_SIZE) -> UserPage:
    """Users by email, filtered by a substring of email or display name (case-insensitive)."""
    stmt = _search(select(User), query)
    total = int(db.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    rows = db.scalars(stmt.order_by(User.email).limit(page_size).offset((page - 1) * page_size)).all()
    return UserPage(list(rows), total, page, pages)


@dataclass(frozen=True)
class UserSlice:
    """One keyset page: users in id order after a cursor, and the cursor of the next page (``None``: last)."""

    users: list[User]
    next_cursor: int | None


def list_users_after(db: Session, *, query: str = "", after: int | None = None, limit: int = PAGE_SIZE) -> UserSlice:
    """Users in id order, filtered like :func:`list_users`; keyset paging (the cursor is the last id seen, so
    users added or deleted meanwhile never make a page skip or repeat one)."""
    stmt = _search(select(User), query)
    if after is not None:
        stmt = stmt.where(User.id > after)
    rows = list(db.scalars(stmt.order_by(User.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return UserSlice(rows, rows[-1].id if more and rows else None)


def get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise AppError("not_found", N_("No such user."), N_("It may have been deleted."))
    return user


CreateMode = Literal["invite", "password"]


@dataclass(frozen=True)
class CreatedUser:
    user: User
    # Set when the user was created but the invite mail could not be sent (resend it from their page).
    mail_error: AppError | None = None


def create_problems(
    db: Session,
    settings: Settings,
    *,
    email: str,
    role: str,
    metadata: str,
    mode: CreateMode,
    password: str | None,
    full: bool = False,
) -> dict[str, Any]:
    """Check a new user's values and raise one AppError naming every problem (so the form shows them all after
    one submit); returns the parsed metadata. The address and password are checked when another value has a
    problem, or with ``full`` (else creating the user checks them, once)."""
    problems: dict[str, str] = {}
    meta: dict[str, Any] = {}
    try:
        _check_role(role)
    except AppError as exc:
        problems.update(exc.fields)
    try:
        meta = parse_metadata(metadata)
    except AppError as exc:
        problems.update(exc.fields)
    if mode != "invite" and not password:
        problems["password"] = N_("Type a password, or send an invitation.")
    if problems or full:
        users.check_new_user(
            db,
            settings,
            email=email,
            password=(password or None) if mode != "invite" else None,
            role=role,
            problems=problems,
        )  # raises, naming them all
    return meta


def create_user(
    db: Session,
    settings: Settings,
    ctx: AuditContext,
    *,
    email: str,
    display_name: str,
    role: str,
    metadata: str,
    mode: CreateMode,
    password: str | None = None,
    temporary: bool = True,
) -> CreatedUser:
    """Create a user with an invite mail, or with a password the admin typed (optionally to be changed).

    With an invite the user is committed before the mail goes out; when sending fails the user stays
    and the failure is returned, so the admin can fix the mailer and resend from the user's page.
    """
    meta = create_problems(db, settings, email=email, role=role, metadata=metadata, mode=mode, password=password)
    if mode == "invite":
        lifecycle._require_invites(settings)
        user = users.create_user(db, settings, email=email, password=None, role=role, display_name=display_name)
    else:
        assert password
        # Admin-created addresses count as verified (Keycloak's "email verified" switch; the admin vouches).
        user = users.create_user(
            db, settings, email=email, password=password, role=role, display_name=display_name, verified=True
        )
        user.must_change_password = temporary
    user.user_metadata = meta
    audit.record(
        db,
        ctx,
        "user.create",
        target=f"user:{user.id}",
        details={"email": user.email, "role": role, "via": "invite" if mode == "invite" else "password"},
    )
    db.commit()
    if mode == "invite":
        try:
            lifecycle.send_invite(db, settings, ctx, user, inviter=ctx.actor)
        except AppError as exc:
            db.rollback()
            return CreatedUser(user, exc)
    return CreatedUser(user)


def update_user(
    db: Session, ctx: AuditContext, actor: User | None, user: User, *, display_name: str, role: str, metadata: str
) -> list[str]:
    """Edit name, role and metadata; return the names of the fields that changed. ``actor`` is the admin
    (``None`` for a service token, which has no role of its own to lose)."""
    _check_role(role)
    meta = parse_metadata(metadata)
    name = display_name.strip()
    if len(name) > 200:
        raise AppError("validation_failed", fields={"display_name": N_("Use at most 200 characters.")})
    if role != user.role and user.is_admin:
        if actor is not None and user.id == actor.id:
            raise _denied(db, ctx, "user.update", user, N_("You cannot remove your own admin role."), _ASK_ANOTHER)
        if _is_last_admin(db, user):
            raise _denied(db, ctx, "user.update", user, N_("This is the last active admin."), _PROMOTE_FIRST)
    changes: dict[str, Any] = {}
    if name != user.display_name:
        user.display_name = name
        changes["display_name"] = True
    if role != user.role:
        changes["role"] = {"from": user.role, "to": role}
        user.role = role
    if meta != user.user_metadata:
        user.user_metadata = meta
        changes["metadata"] = True
    if changes:
        audit.record(
            db,
            ctx,
            "user.update",
            target=f"user:{user.id}",
            details={"fields": sorted(changes), **({"role": changes["role"]} if "role" in changes else {})},
        )
        db.commit()
    return sorted(changes)


def set_active(db: Session, ctx: AuditContext, actor: User | None, user: User, active: bool) -> int:
    """Enable or disable a user; disabling ends all their sessions at once and voids their mail links."""
    action = "user.enable" if active else "user.disable"
    if user.is_active == active:
        return 0
    ended = 0
    if not active:
        if actor is not None and user.id == actor.id:
            raise _denied(db, ctx, action, user, N_("You cannot disable your own account."), _ASK_ANOTHER)
        if _is_last_admin(db, user):
            raise _denied(db, ctx, action, user, N_("This is the last active admin."), _PROMOTE_FIRST)
        ended = sessions.revoke_user_sessions(db, user.id)
        for purpose in _LINK_PURPOSES:
            mail_tokens.invalidate_tokens(db, purpose, user_id=user.id)
    user.is_active = active
    audit.record(db, ctx, action, target=f"user:{user.id}", details={"sessions_ended": ended} if not active else {})
    db.commit()
    return ended


def delete_user(db: Session, ctx: AuditContext, actor: User, user: User) -> None:
    """Delete a user; their sessions, links and connected accounts go with them (ON DELETE CASCADE)."""
    if user.id == actor.id:
        raise _denied(db, ctx, "user.delete", user, N_("You cannot delete your own account."), _ASK_ANOTHER)
    if _is_last_admin(db, user):
        raise _denied(db, ctx, "user.delete", user, N_("This is the last active admin."), _PROMOTE_FIRST)
    user_id, email = user.id, user.email
    sessions.revoke_user_sessions(db, user_id)
    db.delete(user)
    audit.record(db, ctx, "user.delete", target=f"user:{user_id}", details={"email": email})
    db.commit()


def send_reset_link(db: Session, settings: Settings, ctx: AuditContext, user: User) -> None:
    """An admin sends a user the same reset mail the user could ask for themselves."""
    if not user.is_active:
        raise AppError("conflict", N_("This user is disabled."), N_("Enable the user first."))
    lifecycle.request_password_reset(db, settings, ctx, user.email)


def revoke_session(db: Session, ctx: AuditContext, user: User, public_id: str) -> None:
    record = sessions.find_live_session(db, user.id, public_id)
    if record is None:
        raise AppError(
            "not_found", N_("That session has already ended."), N_("Reload the page to see the live sessions.")
        )
    sessions.revoke_session(db, record)
    audit.record(db, ctx, "session.revoked", target=f"user:{user.id}", details={"session": public_id, "by": "admin"})
    db.commit()


def revoke_all_sessions(db: Session, ctx: AuditContext, user: User) -> int:
    ended = sessions.revoke_user_sessions(db, user.id)
    audit.record(
        db, ctx, "session.revoked_all", target=f"user:{user.id}", details={"sessions_ended": ended, "by": "admin"}
    )
    db.commit()
    return ended


def reset_mfa(db: Session, ctx: AuditContext, user: User, *, via: str) -> dict[str, int]:
    """Remove every second factor and recovery code of a user (they enrol again if their role requires it)."""
    counts = mfa.reset(db, user.id)
    audit.record(db, ctx, "mfa.reset", target=f"user:{user.id}", details={"removed": counts, "via": via})
    db.commit()
    return counts


def unlock(db: Session, storage: Storage, ctx: AuditContext, user: User) -> bool:
    """Lift the sign-in throttle's lock and failure count of an account; whether it was locked (audited)."""
    was_locked = throttle.unlock_account(storage, user.email, db=db, ctx=ctx)
    db.commit()
    return was_locked
