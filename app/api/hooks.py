"""Where the API and the compliance report read facts that other features own.

Each function here is a seam onto another feature (second factors, per-provider rotation policies).
Callers never reach past these functions, so changing one updates the session endpoint, the compliance
report, its console page and its CLI together.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.auth import mfa
from app.connectors.accounts import CONNECTABLE_MODES, entry_for, rotation_state
from app.models import ConnectedAccount, User
from app.settings import Settings


@dataclass(frozen=True)
class MfaSummary:
    enrolled: bool
    methods: tuple[str, ...] = ()


def mfa_summary(db: Session, user: User) -> MfaSummary:
    """Whether a user has a second factor (a confirmed authenticator app or a passkey) and the ways they
    can finish a sign-in (``totp``, ``webauthn``, ``recovery_code``). One query."""
    summary = mfa.summary(db, user.id)
    return MfaSummary(enrolled=summary.has_factor, methods=tuple(summary.methods))


def session_mfa_summary(state: mfa.MfaState) -> MfaSummary:
    """:func:`mfa_summary` from the factor state read with the session (the session endpoint: no extra query)."""
    return MfaSummary(enrolled=state.has_factor, methods=tuple(state.methods))


def enrolment_required(db: Session, settings: Settings, role: str, state: mfa.MfaState) -> bool:
    """Whether a signed-in user must still set up a second factor (their role requires one; they have none),
    from what the session's own SELECT read."""
    return mfa.requires_enrolment(db, settings, role, state)


def mfa_required_roles(db: Session, settings: Settings) -> tuple[str, ...]:
    """Roles that must have a second factor: the console's Security choices over AMI_AUTH_MFA_REQUIRED_ROLES."""
    return tuple(role for role, required in mfa.policy(db, settings).items() if required)


def rotation_days(db: Session, settings: Settings, account: ConnectedAccount) -> int | None:
    """How many days an account's secret may live before the report lists it; ``None``: no policy.

    ``AMI_AUTH_SECRET_ROTATION_DAYS`` = 0 turns the check off. Otherwise API-key and SMTP accounts follow
    their provider config's ``rotation_days`` (the catalog's default when unset) — the same policy as the
    console's badge and ``ami-auth jobs reminders`` — and other accounts use the setting.
    """
    if not settings.secret_rotation_days:
        return None
    if entry_for(account).auth_mode in CONNECTABLE_MODES:
        return rotation_state(account).days
    return settings.secret_rotation_days or None
