"""What the provider says about a user: the subject, ``amr``/``acr`` from how the AMI session signed in, the
session id relying parties see (``sid``), and the claims each scope releases (OpenID Connect Core §5.4)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from authlib.oauth2.rfc6749 import scope_to_list

from app.errors import N_
from app.models import User

# acr values (OpenID Connect Core §2): a session signed in with one factor, or with two (or a passkey with user
# verification, which is both at once: NIST SP 800-63B §5.1.9).
ACR_SFA: Final = "urn:ami-auth:acr:sfa"
ACR_MFA: Final = "urn:ami-auth:acr:mfa"
ACR_VALUES: Final = (ACR_SFA, ACR_MFA)
# acr_values an app may send to ask for a second factor: ours, and the widely used PAPE multi-factor policy URI.
MFA_ACR_REQUESTS: Final = frozenset({ACR_MFA, "http://schemas.openid.net/pape/policies/2007/06/multi-factor"})

# RFC 8176 amr values for the AMI session's methods (app.auth.sessions: UserSession.auth_methods). A recovery
# code is a one-time code; an upstream OAuth/OIDC sign-in is federated ("fed", as Entra ID and others emit).
AMR_OF_METHOD: Final[dict[str, str]] = {
    "password": "pwd",
    "totp": "otp",
    "recovery_code": "otp",
    "webauthn": "hwk",
    "oauth": "fed",
}

STANDARD_SCOPES: Final = ("openid", "profile", "email")
# OpenID Connect Core §5.4: the claims each standard scope releases.
SCOPE_CLAIMS: Final[dict[str, tuple[str, ...]]] = {
    "openid": ("sub",),
    "profile": ("name", "preferred_username", "updated_at"),
    "email": ("email", "email_verified"),
}
# Shown on the consent page, translated there (templates/idp/consent.html).
SCOPE_DESCRIPTIONS: Final[dict[str, str]] = {
    "openid": N_("Sign you in with your AMI account (your account id)"),
    "profile": N_("Your name"),
    "email": N_("Your email address and whether it is verified"),
}


def amr(methods: Iterable[str], mfa_verified: bool) -> list[str]:
    values: list[str] = []
    for method in methods:
        value = AMR_OF_METHOD.get(method)
        if value is not None and value not in values:
            values.append(value)
    if mfa_verified:
        values.append("mfa")
    return values


def acr(mfa_verified: bool) -> str:
    return ACR_MFA if mfa_verified else ACR_SFA


def wants_mfa(acr_values: str | None) -> bool:
    """Whether ``acr_values`` (space-separated, OpenID Connect Core §3.1.2.1) asks for a second factor."""
    return bool(acr_values) and any(v in MFA_ACR_REQUESTS for v in (acr_values or "").split())


def sid_for(session_id: str) -> str:
    """The ``sid`` of an AMI session (OIDC Back-Channel Logout §2.1): derived from the session record's id, which
    is itself a hash of the cookie's value, so it leads back to neither."""
    digest = hashlib.sha256(b"ami-auth/oidc-sid/" + session_id.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def subject_of(user_id: int) -> str:
    """``sub``: the user's id, the same one the JSON API gives the CMS (``/api/auth/session``)."""
    return str(user_id)


def user_claims(user: User, scope: str | Sequence[str] | None) -> dict[str, Any]:
    """The claims ``scope`` releases about ``user`` (for the ID token and userinfo)."""
    scopes = set(scope_to_list(scope) or []) if isinstance(scope, str) or scope is None else set(scope)
    claims: dict[str, Any] = {"sub": subject_of(user.id)}
    if "profile" in scopes:
        claims["name"] = user.display_name or user.email
        claims["preferred_username"] = user.email
        claims["updated_at"] = int(user.updated_at.timestamp())
    if "email" in scopes:
        claims["email"] = user.email
        claims["email_verified"] = user.email_verified_at is not None
    return claims


@dataclass(frozen=True)
class Subject:
    """The user a code or token is for, with how and when they signed in (carried into every token of the family).

    Authlib calls it the "user": ``get_user_id`` is what its JWT access token generator reads for ``sub``.
    """

    user: User
    session_id: str | None = None
    sid: str | None = None
    auth_time: datetime | None = None
    amr: list[str] = field(default_factory=list)
    acr: str | None = None

    def get_user_id(self) -> str:
        return subject_of(self.user.id)
