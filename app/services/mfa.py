"""Second factors: every MFA rule that is more than a lookup, with its audit event, once.

The sign-in step after a password (:mod:`app.web.mfa`), the account's MFA page and the admin's policy and
reset (:mod:`app.web.mfa_account`) and ``ami-auth mfa reset`` (:mod:`app.mfa_cli`) call these; none of them
records an MFA event of its own. The factors themselves are :mod:`app.auth.totp`, :mod:`app.auth.webauthn`
and :mod:`app.auth.recovery_codes`; the shared rules (policy, removal, wrong-attempt limit) :mod:`app.auth.mfa`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limits.storage import Storage
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.auth import mfa, recovery_codes, sessions, throttle, totp
from app.auth import webauthn as passkeys
from app.errors import N_, AppError
from app.models import ROLES, Credential, User, UserSession
from app.settings import Settings

# --- The sign-in step (password or OAuth done, second factor to go) ---------------------------------------


def second_step_started(db: Session, ctx: AuditContext, user: User, methods: list[str]) -> None:
    audit.record(db, ctx, "signin.mfa_pending", target=f"user:{user.id}", details={"methods": list(methods)})


def use_totp(db: Session, settings: Settings, ctx: AuditContext, user: User, code: str) -> bool:
    """Whether ``code`` is the user's current authenticator code (a used one is refused); audits a use."""
    if not totp.verify(db, settings, user, code):
        return False
    audit.record(db, ctx, "mfa.totp.use", target=f"user:{user.id}")
    return True


def use_recovery_code(db: Session, settings: Settings, ctx: AuditContext, user: User, code: str) -> int | None:
    """Spend a recovery code: how many are left, or None when it is wrong, used, or the user has no factor
    (the codes stand in for a factor and count for nothing without one)."""
    if not (mfa.has_factor(db, user.id) and recovery_codes.use(db, settings, user, code)):
        return None
    left = recovery_codes.remaining(db, user.id)
    audit.record(db, ctx, "mfa.recovery_code.use", target=f"user:{user.id}", details={"remaining": left})
    return left


def use_passkey(
    db: Session, settings: Settings, ctx: AuditContext, handle: str | None, credential: Any, *, user: User | None
) -> User:
    """Check a passkey assertion against the challenge ``handle``: for ``user`` as their second factor, or —
    with ``user=None`` — as a passwordless sign-in, which needs an active account. Audits the use; a refused
    passwordless assertion is audited as a failed sign-in (a refused second factor: :func:`second_step_failed`).
    The challenge is spent either way: the caller commits after a refusal too (a disabled account's assertion
    is rolled back whole)."""
    try:
        assertion = passkeys.finish_authentication(db, settings, handle, credential, user=user)
    except AppError as exc:
        if user is None:
            failure = {"method": "webauthn", "reason": exc.code}
            audit.record(db, ctx, "signin.failure", target="passkey", outcome="failure", details=failure)
        raise
    owner = user if user is not None else db.get(User, assertion.credential.user_id)
    if owner is None or not owner.is_active:
        db.rollback()
        raise AppError("invalid_credentials", N_("That account is disabled."), N_("Ask an administrator."))
    details: dict[str, Any] = {"credential": assertion.credential.id, "name": assertion.credential.name}
    if user is None:
        details["passwordless"] = True
    audit.record(db, ctx, "mfa.passkey.use", target=f"user:{owner.id}", details=details)
    return owner


def second_step_failed(
    db: Session,
    storage: Storage,
    settings: Settings,
    ctx: AuditContext,
    user: User,
    method: str,
    *,
    ip: str,
    device: str | None,
) -> None:
    """A wrong second factor: audited, and counted per user and by the sign-in throttle (a lock it starts is
    audited there). Whether the allowance is used up is :func:`app.auth.mfa.failures_exhausted`."""
    audit.record(db, ctx, "mfa.failure", target=f"user:{user.id}", outcome="failure", details={"method": method})
    mfa.record_failure(storage, settings, user, ip, device=device, db=db, ctx=ctx)


def second_step_passed(
    db: Session,
    storage: Storage,
    settings: Settings,
    ctx: AuditContext,
    user: User,
    methods: list[str],
    *,
    ip: str,
    device: str | None,
    ui: str | None = None,
) -> None:
    """Both steps done: the wrong-attempt count is cleared and the sign-in audited (its session is the face's).

    ``ui`` names the page element that started it when that matters to a reviewer (``autofill``: a passkey
    picked from the email field's autofill list)."""
    mfa.clear_failures(storage, user.id)
    if "password" in methods or len(methods) > 1:
        # The whole sign-in succeeded: the throttle forgets the failures of the source it came through (a
        # password or second factor was checked under it). A passwordless passkey checked nothing the
        # throttle counts, so it leaves the counts alone: the owner's passkey must not wipe a stranger's.
        throttle.record_success(storage, settings, user.email, ip, device=device)
    details: dict[str, object] = {"methods": methods}
    if ui:
        details["ui"] = ui
    audit.record(db, ctx, "signin.success", target=f"user:{user.id}", details=details)


def end_unverified_session(db: Session, ctx: AuditContext, record: UserSession) -> None:
    """A session that skipped the second factor its account has is not a session: revoked and audited."""
    sessions.revoke_session(db, record)
    details = {"reason": "second factor not used"}
    audit.record(db, ctx, "session.revoke", target=f"user:{record.user_id}", outcome="denied", details=details)


# --- The account's factors -----------------------------------------------------------------------------------


def confirm_totp(db: Session, settings: Settings, ctx: AuditContext, user: User, code: str) -> Credential:
    """Finish adding an authenticator app with its first code. A wrong code is audited; a ``conflict`` (no
    enrolment pending) is not an attempt. What the failed attempt began is rolled back."""
    try:
        credential = totp.confirm_enrolment(db, settings, user, code)
    except AppError as exc:
        db.rollback()
        if exc.code != "conflict":
            audit.record(db, ctx, "mfa.totp.enrol", target=f"user:{user.id}", outcome="failure")
        raise
    audit.record(db, ctx, "mfa.totp.enrol", target=f"user:{user.id}", details={"credential": credential.id})
    return credential


def register_passkey(
    db: Session, settings: Settings, ctx: AuditContext, user: User, handle: str | None, response: Any, name: str | None
) -> Credential:
    """Finish a passkey registration; a refused one is audited (the challenge is spent either way)."""
    try:
        credential = passkeys.finish_registration(db, settings, user, handle, response, name)
    except AppError as exc:
        failure = {"reason": exc.code}
        audit.record(db, ctx, "mfa.passkey.enrol", target=f"user:{user.id}", outcome="failure", details=failure)
        raise
    details: dict[str, Any] = {"credential": credential.id, "name": credential.name, "aaguid": credential.aaguid}
    audit.record(db, ctx, "mfa.passkey.enrol", target=f"user:{user.id}", details=details)
    return credential


def rename_passkey(db: Session, ctx: AuditContext, user: User, credential_id: int, name: str) -> Credential:
    credential = passkeys.get_passkey(db, user, credential_id)
    old = credential.name
    passkeys.rename(db, user, credential_id, name)
    details = {"credential": credential_id, "from": old, "to": credential.name}
    audit.record(db, ctx, "mfa.passkey.rename", target=f"user:{user.id}", details=details)
    return credential


def remove_factor(db: Session, settings: Settings, ctx: AuditContext, user: User, credential: Credential) -> str:
    """Remove an authenticator app or a passkey (and the recovery codes with the last factor); the last factor
    of a role that requires one is refused, and the refusal audited. Returns the factor's name."""
    action = "mfa.totp.remove" if credential.kind == "totp" else "mfa.passkey.remove"
    try:
        mfa.check_removal(db, settings, user, credential)
    except AppError:
        denied = {"credential": credential.id, "reason": "last_factor"}
        audit.record(db, ctx, action, target=f"user:{user.id}", outcome="denied", details=denied)
        raise
    details: dict[str, Any] = {"credential": credential.id, "kind": credential.kind, "name": credential.name}
    details["recovery_codes_removed"] = mfa.delete_credential(db, credential)
    audit.record(db, ctx, action, target=f"user:{user.id}", details=details)
    return str(details["name"] or "")


def generate_recovery_codes(db: Session, settings: Settings, ctx: AuditContext, user: User) -> list[str]:
    """New recovery codes (the unused old ones stop working); they need a second factor to stand in for."""
    if not mfa.has_factor(db, user.id):
        raise AppError(
            "conflict",
            N_("Recovery codes need a second factor first."),
            N_("Add an authenticator app or a passkey, then generate recovery codes."),
        )
    had = recovery_codes.remaining(db, user.id)
    codes = recovery_codes.generate(db, settings, user)
    details = {"count": len(codes), "replaced_unused": had}
    audit.record(db, ctx, "mfa.recovery_codes.generate", target=f"user:{user.id}", details=details)
    return codes


# --- Admin: policy and reset ---------------------------------------------------------------------------------


def set_policy(
    db: Session, settings: Settings, ctx: AuditContext, wanted: Mapping[str, bool], *, actor_id: int
) -> dict[str, bool]:
    """Store an admin's choice for every role; audits (and returns) the roles whose requirement changed."""
    current = mfa.policy(db, settings)
    changed: dict[str, bool] = {}
    for role in ROLES:
        # Stored even when it equals the env default, so a later change of the env var does not flip it.
        mfa.set_policy(db, role, wanted[role], actor_id=actor_id)
        if wanted[role] != current[role]:
            changed[role] = wanted[role]
    if changed:
        audit.record(db, ctx, "mfa.policy.update", target="mfa_policy", details={"required": changed})
    return changed


def reset(db: Session, ctx: AuditContext, user: User, *, via: str | None = None) -> dict[str, int]:
    """Remove every second factor and recovery code of a user — the way back in for someone who lost them
    all; returns how many of each went. ``via`` names a channel other than the console (``"cli"``)."""
    counts = mfa.reset(db, user.id)
    details: dict[str, Any] = {"removed": counts}
    if via is not None:
        details["via"] = via
    audit.record(db, ctx, "mfa.reset", target=f"user:{user.id}", details=details)
    return counts
