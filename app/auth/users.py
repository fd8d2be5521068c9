"""User accounts: create, look up, authenticate with a password."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import passwords
from app.errors import N_, AppError
from app.models import User, utcnow
from app.settings import Settings


def normalize_email(email: str) -> str:
    return email.strip().lower()


def get_by_email(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == normalize_email(email)))


def admin_count(db: Session) -> int:
    return int(db.scalar(select(func.count()).select_from(User).where(User.role == "admin")) or 0)


def validate_email(email: str) -> str:
    """An address a person typed: valid syntax on a domain that can receive mail from the internet."""
    from email_validator import EmailNotValidError
    from email_validator import validate_email as _validate

    try:
        # Deliverability needs DNS; a self-hosted install may have none, so only the syntax is checked.
        return _validate(email.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise AppError("validation_failed", fields={"email": str(exc)}) from None


# A syntactically neutral last label, standing in for a special-use one while the rest is checked.
_STAND_IN = "example"


def validate_asserted_email(email: str) -> str:
    """An address an identity provider asserted for its user: any syntactically valid one.

    A directory's addresses are often on names that never reach the internet: ``.local`` (Active
    Directory's classic default), ``.internal`` (reserved for private use), ``.test``, a bare host name.
    email-validator refuses special-use names (RFC 6761) whatever its options, since it judges whether mail
    can be delivered; here the address identifies a person the admin's provider vouches for. So a
    special-use suffix is swapped for a neutral label while the rest of the address is checked, then put
    back. ``validation_failed`` on ``email`` says what is wrong with the syntax.
    """
    from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError
    from email_validator import validate_email as _validate

    def check(address: str) -> tuple[str, str]:
        result = _validate(address, check_deliverability=False, globally_deliverable=False, test_environment=True)
        return result.local_part, result.domain

    address = email.strip()
    try:
        local, domain = check(address)
        return f"{local}@{domain}".lower()
    except EmailNotValidError as exc:
        problem = str(exc)
    head, _, tail = address.rpartition("@")
    labels = tail.lower().split(".")
    special = next((i for i in range(len(labels)) if ".".join(labels[i:]) in SPECIAL_USE_DOMAIN_NAMES), None)
    if head and special is not None:
        try:
            local, domain = check(f"{head}@{'.'.join([*labels[:special], _STAND_IN])}")
        except EmailNotValidError as exc:
            problem = str(exc)
        else:
            suffix = ".".join(labels[special:])
            return f"{local}@{domain.removesuffix(_STAND_IN)}{suffix}".lower()
    raise AppError("validation_failed", fields={"email": problem})


def check_new_user(
    db: Session,
    settings: Settings,
    *,
    email: str,
    password: str | None,
    role: str = "member",
    asserted_by_provider: bool = False,
    problems: Mapping[str, str] | None = None,
) -> str:
    """Every problem with a new user's values at once — one AppError naming each field, so a form shows them
    all after one submit — plus the caller's own ``problems``; returns the normalized address."""
    fields: dict[str, str] = dict(problems or {})
    normalized: str | None = None
    try:
        normalized = validate_asserted_email(email) if asserted_by_provider else validate_email(email)
    except AppError as exc:
        fields.update(exc.fields or {"email": exc.text})
    if role not in ("admin", "member"):
        fields["role"] = N_("Choose admin or member.")
    taken = normalized is not None and get_by_email(db, normalized) is not None
    if taken:
        fields["email"] = N_("Already in use.")
    if password is not None:
        problem = passwords.policy_problem(settings, password, normalized or email)
        if problem:
            fields["password"] = problem
    if taken and len(fields) == 1:
        raise AppError("conflict", N_("A user with that email already exists."), fields=fields)
    if fields:
        raise AppError("validation_failed", fields=fields)
    assert normalized is not None
    return normalized


def create_user(
    db: Session,
    settings: Settings,
    *,
    email: str,
    password: str | None,
    role: str = "member",
    display_name: str = "",
    verified: bool = False,
    asserted_by_provider: bool = False,
) -> User:
    """``asserted_by_provider``: the address comes from a trusted identity provider (just-in-time accounts),
    so any syntactically valid one is taken (:func:`validate_asserted_email`)."""
    email = check_new_user(
        db, settings, email=email, password=password, role=role, asserted_by_provider=asserted_by_provider
    )
    user = User(email=email, role=role, display_name=display_name.strip())
    if password is not None:
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
