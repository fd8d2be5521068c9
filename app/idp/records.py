"""Authlib's model interfaces over AMI Auth's rows (client, code, token), and the narrow view of the provider that
the grants and endpoints (:mod:`app.idp.grants`, :mod:`app.idp.endpoints`) use — so they need not import
:mod:`app.idp.server`, which wires them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from authlib.oauth2.rfc6749 import list_to_scope, scope_to_list
from joserfc.jwk import KeySet
from limits.storage import Storage
from sqlalchemy.orm import Session

from app.audit import AuditContext
from app.idp import clients
from app.idp.claims import Subject
from app.idp.clients import CONFIDENTIAL_METHODS
from app.idp.keys import KeyRing
from app.models import OidcAuthorizationCode, OidcClient, OidcToken, utcnow

ALL_METHODS: Final = (*CONFIDENTIAL_METHODS, "none")
# Set on flask.g when a request found a reused code or refresh token: the revocation it made is committed even
# though the request itself fails.
KEEP_ON_ERROR: Final = "idp_keep_on_error"

# --- Authlib's model interfaces over our rows --------------------------------------------------------------------


class Client:
    """``ClientMixin`` over an :class:`OidcClient` row."""

    def __init__(self, row: OidcClient) -> None:
        self.row = row

    @property
    def client_id(self) -> str:
        return self.row.client_id

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.row.post_logout_redirect_uris or ())}

    @property
    def id_token_signed_response_alg(self) -> str:
        return self.row.id_token_alg

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> None:
        # OpenID Connect Core §3.1.2.1: redirect_uri is required; no default is guessed.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = set(self.row.scopes or ())
        return cast(str, list_to_scope([s for s in scope_to_list(scope) or [] if s in allowed]))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string match (OAuth 2.0 Security BCP, RFC 9700 §2.1): no prefix, no wildcard.
        return redirect_uri in (self.row.redirect_uris or ())

    def check_client_secret(self, client_secret: str) -> bool:
        return clients.check_secret(self.row, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return self.row.enabled and method == self.row.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in (self.row.grant_types or ())

    def check_grant_type(self, grant_type: str) -> bool:
        return self.row.enabled and grant_type in (self.row.grant_types or ())


def epoch(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


class CodeRecord:
    """OpenID Connect's ``AuthorizationCodeMixin`` over a claimed code."""

    def __init__(self, row: OidcAuthorizationCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int | None:
        return epoch(self.row.auth_time)

    def get_acr(self) -> str | None:
        return self.row.acr

    def get_amr(self) -> list[str] | None:
        return list(self.row.amr) or None


@dataclass
class TokenRecord:
    """``TokenMixin`` over a token row, seen as the access token or the refresh token it holds."""

    row: OidcToken
    client: Client
    kind: str  # "access_token" or "refresh_token"
    subject: Subject | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return self.row.scope

    def check_client(self, client: Client) -> bool:
        return client.row.id == self.row.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - utcnow()).total_seconds()))

    @property
    def expires_at(self) -> Any:
        if self.kind == "refresh_token":
            return self.row.refresh_expires_at or self.row.issued_at
        return self.row.access_expires_at

    def is_expired(self) -> bool:
        return bool(self.expires_at <= utcnow())

    def is_revoked(self) -> bool:
        if self.row.revoked_at is not None:
            return True
        # A rotated refresh token is spent; the access token issued with it stays valid until it expires.
        return self.kind == "refresh_token" and self.row.refresh_used_at is not None

    def get_user(self) -> Subject | None:
        return self.subject

    def get_client(self) -> Client:
        return self.client


class ProviderPort(Protocol):
    """What the grants and endpoints ask of :class:`app.idp.server.Provider`."""

    issuer: str
    keyring: KeyRing

    def db(self) -> Session: ...

    def ctx(self, client: Client | None = None) -> AuditContext: ...

    def limit_storage(self) -> Storage: ...

    def assertion_audiences(self) -> list[str]: ...

    def client_keys(self, client: OidcClient) -> KeySet: ...

    def verify_jwt(self, token: str, *, typ: str | None = None) -> dict[str, Any] | None: ...

    def record(self, row: OidcToken, kind: str, claims: dict[str, Any] | None = None) -> TokenRecord | None: ...
