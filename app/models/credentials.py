"""Second factors: TOTP authenticators, WebAuthn passkeys/security keys, recovery codes; and the MFA policy."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow

CredentialKind = Literal["totp", "webauthn", "recovery_code"]
# The kinds that make an account "have a second factor". Recovery codes are a fallback for those, not a
# factor of their own: they are only accepted while a real factor exists.
FACTOR_KINDS: tuple[CredentialKind, ...] = ("totp", "webauthn")

ChallengePurpose = Literal["register", "second_factor", "passwordless"]


class Credential(Base):
    """One second factor of a user. The columns used depend on ``kind``; the rest stay empty."""

    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_user_kind", "user_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # TOTP: set when the first code confirmed the enrolment; until then the row is a pending set-up.
    # WebAuthn and recovery codes are confirmed when created.
    confirmed_at: Mapped[datetime | None]
    # Passkeys: last sign-in. Recovery codes: when the code was spent (a spent code is never accepted again).
    last_used_at: Mapped[datetime | None]
    # TOTP: the RFC 6238 time step of the last accepted code; only later steps are accepted (no replay).
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)

    # WebAuthn (the TOTP secret lives in the vault, owner ("credential", id), field "totp_secret").
    credential_id: Mapped[bytes | None] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(default=list)
    aaguid: Mapped[str] = mapped_column(String(36), default="")
    # The WebAuthn user.id the authenticator stored (random, not the database id); a discoverable
    # credential returns it as userHandle, and it must name the credential's owner.
    user_handle: Mapped[bytes | None] = mapped_column(LargeBinary)
    backed_up: Mapped[bool] = mapped_column(default=False)

    # Recovery codes: argon2id of the normalised code.
    code_hash: Mapped[str | None] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"Credential(id={self.id!r}, user_id={self.user_id!r}, kind={self.kind!r}, name={self.name!r})"


class WebAuthnChallenge(Base):
    """A WebAuthn challenge handed to a browser; single use (deleted when a response is checked)."""

    __tablename__ = "webauthn_challenges"

    # Random handle, also kept in the browser's (signed) Flask session so a challenge is bound to it.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    challenge: Mapped[bytes] = mapped_column(LargeBinary)
    # Registration: the user.id sent to the authenticator, stored with the credential once verified.
    user_handle: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class MfaPolicy(Base):
    """An admin's choice whether a role must use a second factor; without a row, AMI_AUTH_MFA_REQUIRED_ROLES."""

    __tablename__ = "mfa_policies"

    role: Mapped[str] = mapped_column(String(20), primary_key=True)
    required: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
