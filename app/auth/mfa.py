"""Multi-factor authentication shared by every factor: what a user has, the per-role policy, removal rules,
the admin reset, and the limit on wrong second-factor attempts.

Factors themselves live in ``totp.py``, ``webauthn.py`` and ``recovery_codes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import ColumnElement, ScalarSelect, delete, func, literal, select
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.auth import throttle, trusted_browsers
from app.errors import N_, AppError
from app.models import ROLES, Credential, MfaPolicy, User, utcnow
from app.models.credentials import FACTOR_KINDS
from app.settings import Settings
from app.vault import delete_secrets

# Wrong second-factor attempts allowed per user before the pending sign-in is dropped. Every failure also
# counts toward the account throttle, so guessing codes cannot outlast the password lock-out either.
# (NIST SP 800-63B §5.2.2: limit consecutive failed attempts on a single account.)
MAX_FAILURES = 5
FAILURE_WINDOW: RateLimitItem = parse(f"{MAX_FAILURES} per 5 minutes")
_FAILURE_NAMESPACE = "mfa-failure"


@dataclass(frozen=True)
class FactorSummary:
    """What a user has enrolled, for pages and for deciding the sign-in step."""

    totp: Credential | None
    passkeys: list[Credential]
    recovery_total: int
    recovery_remaining: int

    @property
    def has_factor(self) -> bool:
        return self.totp is not None or bool(self.passkeys)

    @property
    def methods(self) -> list[str]:
        """The ways this user can finish a sign-in, in the order the page offers them."""
        found: list[str] = []
        if self.totp is not None:
            found.append("totp")
        if self.passkeys:
            found.append("webauthn")
        if self.has_factor and self.recovery_remaining:
            found.append("recovery_code")
        return found


def summary(db: Session, user_id: int) -> FactorSummary:
    rows = db.scalars(select(Credential).where(Credential.user_id == user_id).order_by(Credential.created_at)).all()
    totp = next((c for c in rows if c.kind == "totp" and c.confirmed_at is not None), None)
    passkeys = [c for c in rows if c.kind == "webauthn"]
    codes = [c for c in rows if c.kind == "recovery_code"]
    return FactorSummary(
        totp=totp,
        passkeys=passkeys,
        recovery_total=len(codes),
        recovery_remaining=sum(1 for c in codes if c.last_used_at is None),
    )


@dataclass(frozen=True, slots=True)
class MfaState:
    """What every signed-in request needs to know about a user's factors: enforcement (``has_factor``) and the
    session endpoint's summary (``methods``). Read in the same statement as the session itself
    (:func:`state_columns`), so it is the database's state at that request, never a copy kept by a worker."""

    totp: int  # confirmed authenticator apps
    passkeys: int  # confirmed passkeys (a passkey is confirmed when it is registered)
    recovery_remaining: int  # unspent recovery codes
    # The admins' stored MFA choice for the user's role (None: none stored, the setting decides), when it was
    # read with the session; ``policy_loaded`` False means it was not read here.
    role_policy: bool | None = None
    policy_loaded: bool = False

    @property
    def has_factor(self) -> bool:
        """Same rule as :func:`has_factor`: a confirmed TOTP or a confirmed passkey."""
        return bool(self.totp or self.passkeys)

    @property
    def methods(self) -> list[str]:
        """The ways to finish a sign-in, in the order of :attr:`FactorSummary.methods`."""
        found: list[str] = []
        if self.totp:
            found.append("totp")
        if self.passkeys:
            found.append("webauthn")
        if self.has_factor and self.recovery_remaining:
            found.append("recovery_code")
        return found


def state_columns(user_id: ColumnElement[int]) -> tuple[ScalarSelect[int], ScalarSelect[int], ScalarSelect[int]]:
    """The three counts of :class:`MfaState` as correlated scalar subqueries on ``user_id`` (each a range scan
    of the credentials(user_id, kind) index), to add to another SELECT."""

    def count(kind: str, *where: ColumnElement[bool]) -> ScalarSelect[int]:
        return (
            select(func.count())
            .select_from(Credential)
            .where(Credential.user_id == user_id, Credential.kind == kind, *where)
            .scalar_subquery()
        )

    return (
        count("totp", Credential.confirmed_at.is_not(None)),
        count("webauthn", Credential.confirmed_at.is_not(None)),
        count("recovery_code", Credential.last_used_at.is_(None)),
    )


def state(db: Session, user_id: int) -> MfaState:
    """:class:`MfaState` on its own (one statement), for a session that was not loaded with it."""
    totp, passkeys, remaining = db.execute(select(*state_columns(literal(user_id)))).one()
    return MfaState(totp=totp, passkeys=passkeys, recovery_remaining=remaining)


def has_factor(db: Session, user_id: int) -> bool:
    """A confirmed TOTP or a passkey (one indexed count, cheap enough for every request)."""
    count = db.scalar(
        select(func.count())
        .select_from(Credential)
        .where(
            Credential.user_id == user_id,
            Credential.kind.in_(FACTOR_KINDS),
            Credential.confirmed_at.is_not(None),
        )
    )
    return bool(count)


# --- Policy ---------------------------------------------------------------------------------------------


def policy(db: Session, settings: Settings) -> dict[str, bool]:
    """Role -> MFA required. A stored admin choice wins; otherwise AMI_AUTH_MFA_REQUIRED_ROLES decides."""
    stored = {p.role: p.required for p in db.scalars(select(MfaPolicy))}
    return {role: stored.get(role, role in settings.mfa_required_roles) for role in ROLES}


def policy_column(role: ColumnElement[str]) -> ScalarSelect[bool]:
    """The stored choice for ``role`` as a correlated scalar subquery (NULL when none), to add to another SELECT."""
    return select(MfaPolicy.required).where(MfaPolicy.role == role).scalar_subquery()


def requires_enrolment(db: Session, settings: Settings, role: str, state: MfaState) -> bool:
    """Whether the user must still set up a second factor: their role requires one and they have none. Uses
    the policy read with the session when there is one (no second query)."""
    if state.has_factor:
        return False
    if state.policy_loaded:
        return state.role_policy if state.role_policy is not None else role in settings.mfa_required_roles
    return role_requires_mfa(db, settings, role)


def role_requires_mfa(db: Session, settings: Settings, role: str) -> bool:
    stored = db.get(MfaPolicy, role)
    if stored is not None:
        return stored.required
    return role in settings.mfa_required_roles


def set_policy(db: Session, role: str, required: bool, *, actor_id: int | None) -> bool:
    """Store an admin's choice for a role; returns whether it changed anything."""
    if role not in ROLES:
        raise AppError("validation_failed", fields={"role": N_("Unknown role %(role)s.", role=repr(role))})
    row = db.get(MfaPolicy, role)
    if row is None:
        db.add(MfaPolicy(role=role, required=required, updated_at=utcnow(), updated_by=actor_id))
        return True
    if row.required == required:
        return False
    row.required = required
    row.updated_by = actor_id
    return True


# --- Removal ----------------------------------------------------------------------------------------------


def check_removal(db: Session, settings: Settings, user: User, credential: Credential) -> None:
    """Refuse to remove the last factor of a user whose role requires one (they would be locked out of
    everything but the enrolment page, with nothing to show for it)."""
    if credential.kind not in FACTOR_KINDS or credential.confirmed_at is None:
        return
    remaining = [c for c in _factors(db, user.id) if c.id != credential.id]
    if not remaining and role_requires_mfa(db, settings, user.role):
        raise AppError(
            "conflict",
            N_("This is your last second factor, and your role requires one."),
            N_("Add another authenticator app or passkey first, then remove this one."),
        )


def _factors(db: Session, user_id: int) -> list[Credential]:
    return list(
        db.scalars(
            select(Credential).where(
                Credential.user_id == user_id,
                Credential.kind.in_(FACTOR_KINDS),
                Credential.confirmed_at.is_not(None),
            )
        )
    )


def delete_credential(db: Session, credential: Credential) -> bool:
    """Delete a credential (and a TOTP secret with it). When no factor is left, the recovery codes go too —
    they stand in for a factor and must not outlive the last one. Returns whether codes were dropped."""
    user_id = credential.user_id
    if credential.kind == "totp":
        delete_secrets(db, "credential", credential.id)
    db.delete(credential)
    db.flush()
    if _factors(db, user_id):
        return False
    result = db.execute(delete(Credential).where(Credential.user_id == user_id, Credential.kind == "recovery_code"))
    return bool(getattr(result, "rowcount", 0))


def reset(db: Session, user_id: int) -> dict[str, int]:
    """Admin reset: remove every factor and recovery code of a user; returns how many of each were removed
    (keys chosen to survive the audit log's redaction of secret-looking names such as "totp")."""
    rows = list(db.scalars(select(Credential).where(Credential.user_id == user_id)))
    labels = {"totp": "authenticator_apps", "webauthn": "passkeys", "recovery_code": "codes"}
    counts = dict.fromkeys(labels.values(), 0)
    for row in rows:
        counts[labels[row.kind]] += 1
        if row.kind == "totp":
            delete_secrets(db, "credential", row.id)
        db.delete(row)
    db.flush()
    trusted_browsers.clear(db, user_id)  # they skipped factors that are gone
    return counts


# --- Wrong attempts ---------------------------------------------------------------------------------------


def failures_exhausted(storage: Storage, user_id: int) -> int | None:
    """Seconds until another attempt is allowed, or None while attempts remain."""
    limiter = MovingWindowRateLimiter(storage)
    if limiter.test(FAILURE_WINDOW, _FAILURE_NAMESPACE, str(user_id)):
        return None
    stats = limiter.get_window_stats(FAILURE_WINDOW, _FAILURE_NAMESPACE, str(user_id))
    return max(1, int(stats.reset_time - utcnow().timestamp()) + 1)


def record_failure(
    storage: Storage,
    settings: Settings,
    user: User,
    ip: str,
    *,
    device: str | None = None,
    db: Session | None = None,
    ctx: AuditContext | None = None,
) -> bool:
    """Count a wrong second factor; returns False once the per-user allowance is used up. ``device`` is the
    browser's device cookie (the throttle counts known browsers apart). With ``db`` and ``ctx`` an account
    lock the failure starts is audited by the throttle (the caller commits)."""
    allowed = MovingWindowRateLimiter(storage).hit(FAILURE_WINDOW, _FAILURE_NAMESPACE, str(user.id))
    throttle.record_failure(storage, settings, user.email, ip, device=device, db=db, ctx=ctx)
    return bool(allowed)


def clear_failures(storage: Storage, user_id: int) -> None:
    MovingWindowRateLimiter(storage).clear(FAILURE_WINDOW, _FAILURE_NAMESPACE, str(user_id))
