"""AMI Auth as an OpenID Provider: registered clients, signing keys, consents, codes, tokens, the AMI sessions
each client took part in, and the back-channel logout outbox.

Secrets are never stored here in the clear: a client secret is kept as its SHA-256 (it is 32 random bytes, so a
fast hash is enough, as for service tokens); codes and refresh tokens likewise; private signing keys live in the
vault (owner ``oidc_signing_key``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, utcnow


class OidcClient(Base):
    """A relying party registered by an admin (the CMS, another platform app, a service)."""

    __tablename__ = "oidc_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The public identifier the app is configured with (random, URL-safe).
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # "public" (a browser or native app: no secret, PKCE required) or "confidential".
    client_type: Mapped[str] = mapped_column(String(20))
    # RFC 7591 token_endpoint_auth_method: none, client_secret_basic, client_secret_post, private_key_jwt.
    auth_method: Mapped[str] = mapped_column(String(40))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    # private_key_jwt (RFC 7523): where the client publishes its public keys (fetched through app.net).
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(default=list)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    grant_types: Mapped[list[str]] = mapped_column(default=list)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    # The "aud" of its access tokens (RFC 9068): the APIs that accept them. Empty: the client id.
    audiences: Mapped[list[str]] = mapped_column(default=list)
    require_pkce: Mapped[bool] = mapped_column(default=True)
    # First-party apps of the platform skip the consent page.
    first_party: Mapped[bool] = mapped_column(default=False)
    id_token_alg: Mapped[str] = mapped_column(String(10), default="ES256")
    access_token_ttl: Mapped[int] = mapped_column(default=600)
    refresh_token_ttl: Mapped[int] = mapped_column(default=30 * 86400)
    id_token_ttl: Mapped[int] = mapped_column(default=3600)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"OidcClient(id={self.id!r}, client_id={self.client_id!r}, name={self.name!r})"


class OidcSigningKey(Base):
    """A key the provider signs ID tokens, access tokens and logout tokens with (the private half is in the vault).

    Per algorithm one key is ``current`` (signs), one is ``next`` (published ahead, so relying parties have it
    cached before it signs), and ``previous`` keys stay published until every token they signed has expired.
    """

    __tablename__ = "oidc_signing_keys"
    __table_args__ = (
        # At most one current and one next key per algorithm, whatever two processes do at once.
        Index(
            "uq_oidc_signing_keys_alg_state",
            "alg",
            "state",
            unique=True,
            postgresql_where=text("state IN ('current', 'next')"),
            sqlite_where=text("state IN ('current', 'next')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]
    # When it stopped signing (rotated out): tokens it signed expire at most the longest token lifetime later.
    rotated_out_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]


class OidcConsent(Base):
    """What a user allowed a client (the scopes): listed and revocable; revoking it revokes the client's tokens."""

    __tablename__ = "oidc_consents"
    __table_args__ = (UniqueConstraint("user_id", "client_id", name="uq_oidc_consents_user_client"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_id: Mapped[int] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), index=True)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class OidcAuthorizationCode(Base):
    """An authorization code (stored as its SHA-256), single use: ``used_at`` is set when it is exchanged."""

    __tablename__ = "oidc_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(Text, default="")
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(10))
    # The AMI session the user signed in with (user_sessions.id) and its OIDC "sid".
    session_id: Mapped[str | None] = mapped_column(String(64))
    sid: Mapped[str | None] = mapped_column(String(64))
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]] = mapped_column(default=list)
    acr: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class OidcToken(Base):
    """One issuance at the token endpoint: a JWT access token (by its ``jti``) and maybe a refresh token.

    ``family`` ties together everything that descends from one authorization code (or one client credentials
    request): a refresh rotates within the family, and a reused code or refresh token revokes the family.
    """

    __tablename__ = "oidc_tokens"
    __table_args__ = (Index("ix_oidc_tokens_user_client", "user_id", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(32), index=True)
    code_id: Mapped[int | None] = mapped_column(ForeignKey("oidc_codes.id", ondelete="SET NULL"), index=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    refresh_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(Text, default="")
    audience: Mapped[list[str]] = mapped_column(default=list)
    session_id: Mapped[str | None] = mapped_column(String(64), index=True)
    sid: Mapped[str | None] = mapped_column(String(64))
    auth_time: Mapped[datetime | None]
    amr: Mapped[list[str]] = mapped_column(default=list)
    acr: Mapped[str | None] = mapped_column(String(100))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    access_expires_at: Mapped[datetime]
    refresh_expires_at: Mapped[datetime | None]
    # Set when the refresh token was exchanged for a new one (rotation); presenting it again is reuse.
    refresh_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(40))


class OidcSessionClient(Base):
    """A client that got tokens in an AMI session: who must hear (back-channel logout) when that session ends."""

    __tablename__ = "oidc_session_clients"
    __table_args__ = (UniqueConstraint("session_id", "client_id", name="uq_oidc_session_clients_session_client"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The "sid" this client knows the session by (in its ID tokens).
    sid: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OidcLogoutDelivery(Base):
    """The outbox of OIDC Back-Channel Logout: one row per (ended session, client), written in the transaction
    that ended the session, delivered after the commit and retried with backoff until the client answers 2xx."""

    __tablename__ = "oidc_logout_deliveries"
    __table_args__ = (Index("ix_oidc_logout_deliveries_due", "delivered_at", "failed_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(2000))
    sub: Mapped[str] = mapped_column(String(64))
    sid: Mapped[str | None] = mapped_column(String(64))
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A worker that took the row delivers it until then; past it another may (the first one died).
    claimed_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(300))
