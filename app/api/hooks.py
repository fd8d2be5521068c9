"""Where the API and the compliance report read facts that other features own.

Each function here is a seam: it answers from what the schema has today and is the one place to
change when the owning feature lands (second factors, per-provider rotation policies). Callers never
reach past these functions, so filling one in updates the session endpoint, the compliance report,
its console page and its CLI together.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.models import ConnectedAccount, User
from app.settings import Settings


@dataclass(frozen=True)
class MfaSummary:
    enrolled: bool
    methods: tuple[str, ...] = ()


def mfa_summary(db: Session, user: User) -> MfaSummary:
    """The second factors a user has enrolled (e.g. ``("totp", "webauthn")``).

    No factor models exist yet, so nobody is enrolled. The MFA feature replaces this body with a
    query of its factor tables; keep it one cheap query, since ``GET /api/auth/session`` calls it.
    """
    return MfaSummary(enrolled=False, methods=())


def rotation_days(db: Session, settings: Settings, account: ConnectedAccount) -> int | None:
    """How many days an account's secret may live before the report lists it; ``None``: no policy.

    Today one policy for every account (``AMI_AUTH_SECRET_ROTATION_DAYS``, 0 = off). When the provider
    catalog declares ``rotation_days`` per provider type (and which types hold a long-lived secret at
    all, as opposed to OAuth tokens that refresh themselves), look it up here from
    ``account.provider_config.provider_type`` and fall back to the setting.
    """
    return settings.secret_rotation_days or None
