"""The token endpoint's grants on Authlib — authorization_code with PKCE S256 and OpenID Connect, refresh_token with
rotation and reuse detection, client_credentials — private_key_jwt client authentication, and RFC 9068 access
tokens. The rules AMI adds: single-use codes whose reuse revokes what they issued, rotated refresh tokens whose
reuse revokes the grant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, cast

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import OpenIDCode
from flask import g
from joserfc.jwk import KeySet

from app.idp import tokens
from app.idp.claims import Subject, user_claims
from app.idp.clients import CONFIDENTIAL_METHODS
from app.idp.keys import ALGORITHMS
from app.idp.records import ALL_METHODS, KEEP_ON_ERROR, Client, CodeRecord, ProviderPort, TokenRecord, epoch
from app.models import UserSession

ASSERTION_JTI_SECONDS = 600


# --- the grants ----------------------------------------------------------------------------------------------------


def _usable(status: str) -> bool:
    """Whether a claimed code or refresh token may be used. A reused one fails the request, but the revocation its
    reuse caused is kept (the token endpoint commits it anyway)."""
    if status == "reused":
        g.setdefault(KEEP_ON_ERROR, True)
    return status == "ok"


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(ALL_METHODS)

    @property
    def provider(self) -> ProviderPort:
        return cast(ProviderPort, self.server)

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        subject: Subject = request.user
        client: Client = request.client
        data = request.payload.data
        db = self.provider.db()
        tokens.save_code(
            db,
            client.row,
            subject,
            code,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope or "",
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
        )
        if subject.session_id and subject.sid:
            tokens.link_session(db, subject.session_id, client.row, subject.user.id, subject.sid)

    def query_authorization_code(self, code: str, client: Client) -> CodeRecord | None:
        db = self.provider.db()
        claim = tokens.claim_code(db, self.provider.ctx(client), client.row, code)
        return CodeRecord(claim.code) if _usable(claim.status) and claim.code is not None else None

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        """Already marked used when it was claimed (kept, so a second use is recognised as reuse)."""

    def authenticate_user(self, authorization_code: CodeRecord) -> Subject | None:
        db = self.provider.db()
        row = authorization_code.row
        if row.session_id is not None:
            # The sign-in the code came from ended before the app exchanged it: nothing to issue.
            session = db.get(UserSession, row.session_id)
            if session is None or session.revoked_at is not None:
                return None
        return tokens.subject_of_token(db, row)


class PkceS256(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 with S256 only ("plain" shows the verifier to whoever sees the request), required for public
    clients (RFC 9700 §2.1.1) and for every client that has not turned it off."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: CodeGrant, redirect_uri: str) -> None:
        request: OAuth2Request = grant.request
        client: Client = request.client
        challenge = request.payload.data.get("code_challenge")
        method = request.payload.data.get("code_challenge_method")
        if not challenge and (client.row.require_pkce or client.row.client_type == "public"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256.")
        if challenge and method != "S256":
            raise InvalidRequestError("Unsupported 'code_challenge_method': use S256.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDCodeFlow(OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: ProviderPort) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return tokens.nonce_used(self.provider.db(), request.client.row, nonce)

    def get_client_algorithm(self, client: Client) -> str:
        return client.row.id_token_alg

    def resolve_client_private_key(self, client: Client) -> Any:
        return self.provider.keyring.signing_key(client.row.id_token_alg)

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self.provider.keyring.signing_key(client.row.id_token_alg)
        return {"alg": client.row.id_token_alg, "kid": key.kid or "", "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.provider.issuer,
            "aud": [client.client_id],
            "iat": now,
            "exp": now + client.row.id_token_ttl,
        }

    def generate_user_info(self, user: Subject, scope: str) -> dict[str, Any]:
        claims = user_claims(user.user, scope)
        if user.sid:
            claims["sid"] = user.sid
        return claims


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(ALL_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def provider(self) -> ProviderPort:
        return cast(ProviderPort, self.server)

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        client: Client = self.request.client
        db = self.provider.db()
        claim = tokens.claim_refresh(db, self.provider.ctx(client), client.row, refresh_token)
        if not _usable(claim.status) or claim.token is None:
            return None
        record = TokenRecord(claim.token, client, "refresh_token")
        if claim.user is not None:
            record.subject = tokens.subject_of_token(db, claim.token, claim.user)
        return record

    def authenticate_user(self, refresh_token: TokenRecord) -> Subject | None:
        # Read with the claim when the database could (PostgreSQL), else now.
        return refresh_token.subject or tokens.subject_of_token(self.provider.db(), refresh_token.row)

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        """Marked used when it was claimed: presenting it again is reuse (and revokes the family)."""


class ServiceGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_METHODS)


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): the client signs an assertion with a key it
    publishes at its ``jwks_uri``, fetched through the outbound guard."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, provider: ProviderPort) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.provider = provider

    def get_audiences(self) -> list[str]:
        return self.provider.assertion_audiences()

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        # First use only (RFC 7523 §3 item 7), across workers when the limits storage is Redis.
        key = f"oidc-assertion:{claims['sub']}:{jti}"
        return self.provider.limit_storage().incr(key, ASSERTION_JTI_SECONDS) == 1

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return self.provider.client_keys(client.row)


# --- tokens --------------------------------------------------------------------------------------------------------


class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens: ``aud`` is the client's registered APIs (its id when it has none), so resource
    servers verify them offline against the JWKS."""

    def __init__(self, provider: ProviderPort, alg: str) -> None:
        super().__init__(
            provider.issuer,
            alg=alg,
            # secrets.token_urlsafe: Authlib's generate_token draws one character per os.urandom call, a hot spot here.
            refresh_token_generator=lambda **_kw: secrets.token_urlsafe(36),
            expires_generator=lambda client, _grant_type: client.row.access_token_ttl,
        )
        self.provider = provider

    def get_jti(self, client: Client, grant_type: str, user: Subject | None, scope: str) -> str:
        return secrets.token_urlsafe(16)

    def get_jwks(self) -> KeySet:
        # One key: joserfc signs with it and puts its kid in the header.
        return KeySet([self.provider.keyring.signing_key(self.alg)])

    def get_audiences(self, client: Client, user: Subject | None, scope: str) -> str | list[str]:
        audiences = list(client.row.audiences or ())
        return audiences if audiences else client.client_id

    def get_auth_time(self, user: Subject | None) -> int | None:
        return epoch(user.auth_time) if user is not None else None

    def get_acr(self, user: Subject | None) -> str | None:
        return user.acr if user is not None else None

    def get_amr(self, user: Subject | None) -> list[str] | None:
        return list(user.amr) if user is not None and user.amr else None


class TokenGenerator:
    """Authlib's "default" generator: the access token signed with the algorithm the client's ID tokens use."""

    def __init__(self, provider: ProviderPort) -> None:
        self.by_alg = {alg: AccessTokens(provider, alg) for alg in ALGORITHMS}

    def __call__(self, *, client: Client, **kwargs: Any) -> dict[str, Any]:
        generator = self.by_alg.get(client.row.id_token_alg) or self.by_alg[ALGORITHMS[0]]
        return cast(dict[str, Any], generator(client=client, **kwargs))
