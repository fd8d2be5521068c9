"""The endpoints that look a token up — revocation (RFC 7009), introspection (RFC 7662), userinfo with its bearer
token validator — and RP-initiated logout's request checks, on Authlib.
"""

from __future__ import annotations

from typing import Any, cast

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc.jwk import KeySet

from app import audit
from app.idp import tokens
from app.idp.claims import Subject, user_claims
from app.idp.clients import CONFIDENTIAL_METHODS
from app.idp.keys import ALGORITHMS
from app.idp.records import ALL_METHODS, Client, ProviderPort, TokenRecord, epoch

# --- looking tokens up (userinfo, introspection, revocation) --------------------------------------------------------


def _token_lookup(provider: ProviderPort, token_string: str, hint: str | None) -> TokenRecord | None:
    db = provider.db()
    if hint != "refresh_token" and token_string.count(".") == 2:
        claims = provider.verify_jwt(token_string, typ="at+jwt")
        if claims is not None:
            row = tokens.find_by_jti(db, str(claims.get("jti", "")))
            if row is not None:
                return provider.record(row, "access_token", claims)
        if hint == "access_token":
            return None
    if hint != "access_token" or "." not in token_string:
        row = tokens.find_by_refresh(db, token_string)
        if row is not None:
            return provider.record(row, "refresh_token")
    return None


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = list(ALL_METHODS)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return _token_lookup(cast(ProviderPort, self.server), token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        provider = cast(ProviderPort, self.server)
        db = provider.db()
        # RFC 7009 §2.1: revoking a refresh token revokes the grant's other tokens too.
        if token.kind == "refresh_token":
            count = tokens.revoke_family(db, token.row.family, "revoked_by_client")
        else:
            tokens.revoke_token(db, token.row, "revoked_by_client")
            count = 1
        audit.record(
            db,
            provider.ctx(token.client),
            "oidc.token.revoke",
            target=f"oidc_client:{token.client.client_id}",
            details={"kind": token.kind, "user": token.row.user_id, "revoked": count},
        )


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = list(CONFIDENTIAL_METHODS)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return _token_lookup(cast(ProviderPort, self.server), token_string, token_type_hint)

    def check_permission(self, token: TokenRecord, client: Client, request: OAuth2Request) -> bool:
        # The client the token was issued to, or an API it was issued for (registered as a client).
        return token.check_client(client) or client.client_id in (token.row.audience or ())

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        provider = cast(ProviderPort, self.server)
        row = token.row
        payload: dict[str, Any] = {
            "active": True,
            "client_id": token.client.client_id,
            "scope": row.scope,
            "iss": provider.issuer,
            "exp": epoch(token.expires_at),
            "iat": epoch(row.issued_at),
        }
        if token.kind == "access_token":
            payload["token_type"] = "Bearer"
            payload["aud"] = row.audience[0] if len(row.audience) == 1 else list(row.audience)
            payload["jti"] = row.jti
        subject = tokens.subject_of_token(provider.db(), row)
        if subject is not None:
            payload["sub"] = subject.get_user_id()
            payload["username"] = subject.user.email
            if row.auth_time is not None:
                payload["auth_time"] = epoch(row.auth_time)
            if row.acr:
                payload["acr"] = row.acr
        elif row.user_id is not None:
            return {"active": False}  # the user was disabled or deleted since
        else:
            payload["sub"] = token.client.client_id
        return payload


class AccessTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    """Bearer tokens for our own resources (userinfo): a JWT we signed, of a token not revoked."""

    def __init__(self, provider: ProviderPort) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> TokenRecord | None:
        record = _token_lookup(self.provider, token_string, "access_token")
        if record is None:
            return None
        record.subject = tokens.subject_of_token(self.provider.db(), record.row)
        if record.row.user_id is not None and record.subject is None:
            return None
        return record


class UserInfo(UserInfoEndpoint):  # type: ignore[misc]
    def get_issuer(self) -> str:
        return cast(ProviderPort, self.server).issuer

    def generate_user_info(self, user: Subject | None, scope: str) -> dict[str, Any]:
        if user is None:
            raise InvalidTokenError()  # a client credentials token is no user's
        return user_claims(user.user, scope)


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: validates the request (id_token_hint signed by us, post_logout_redirect_uri an exact
    registered match); :mod:`app.web.idp` ends the session and answers."""

    def get_server_jwks(self) -> KeySet:
        return cast(ProviderPort, self.server).keyring.verification_keys()

    def get_algorithms(self) -> list[str]:
        return list(ALGORITHMS)

    def is_post_logout_redirect_uri_legitimate(
        self, request: OAuth2Request, post_logout_redirect_uri: str, client: Client, logout_hint: str | None
    ) -> bool:
        # Without an id_token_hint the user confirms on our page first; the address is still an exact match.
        return True

    def end_session(self, end_session_request: Any) -> None:
        """The page ends the AMI session itself (app.web.idp), after the user's confirmation when needed."""
