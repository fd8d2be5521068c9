"""User accounts: create, look up, authenticate with a password."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import passwords
from app.errors import AppError
from app.models import User, utcnow
from app.settings import Settings


def normalize_email(email: str) -> str:
    return email.strip().lower()


def get_by_email(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == normalize_email(email)))


def admin_count(db: Session) -> int:
    return int(db.scalar(select(func.count()).select_from(User).where(User.role == "admin")) or 0)


def validate_email(email: str) -> str:
    from email_validator import EmailNotValidError
    from email_validator import validate_email as _validate

    try:
        # Deliverability needs DNS; a self-hosted install may have none, so only the syntax is checked.
        return _validate(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise AppError("validation_failed", fields={"email": str(exc)}) from None


def create_user(
    db: Session,
    settings: Settings,
    *,
    email: str,
    password: str | None,
    role: str = "member",
    display_name: str = "",
    verified: bool = False,
) -> User:
    email = validate_email(email)
    if role not in ("admin", "member"):
        raise AppError("validation_failed", fields={"role": "Choose admin or member."})
    if get_by_email(db, email) is not None:
        raise AppError("conflict", "A user with that email already exists.", fields={"email": "Already in use."})
    user = User(email=email, role=role, display_name=display_name.strip())
    if password is not None:
        problem = passwords.policy_problem(settings, password, email)
        if problem:
            raise AppError("validation_failed", fields={"password": problem})
        user.password_hash = passwords.hash_password(settings, password)
        user.password_changed_at = utcnow()
    if verified:
        user.email_verified_at = utcnow()
    db.add(user)
    db.flush()
    return user


@dataclass(frozen=True)
class PasswordCheck:
    user: User | None
    ok: bool


def check_password(db: Session, settings: Settings, email: str, password: str) -> PasswordCheck:
    """Verify email + password with the same work whether or not the user exists; rehash stale hashes."""
    user = get_by_email(db, email)
    stored = user.password_hash if user is not None else None
    ok = passwords.verify_password(settings, stored, password)
    if ok and user is not None and stored is not None and passwords.needs_rehash(settings, stored):
        user.password_hash = passwords.hash_password(settings, password)
    if user is not None and not user.is_active:
        ok = False
    return PasswordCheck(user, ok)
