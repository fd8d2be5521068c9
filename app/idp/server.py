"""Authlib's authorization server, wired to AMI Auth's clients, keys, codes and tokens.

Authlib does the protocol: the authorization request checks (RFC 6749 §4.1, OpenID Connect Core §3.1.2), PKCE
(RFC 7636), the token endpoint's grants (authorization_code, refresh_token, client_credentials), client
authentication (client_secret_basic/post, private_key_jwt per RFC 7523), RFC 9068 JWT access tokens, ID tokens,
userinfo, revocation (RFC 7009), introspection (RFC 7662), the ``iss`` response parameter (RFC 9207) and the
RP-initiated logout request checks. This module supplies what Authlib asks its integrator for — storage, keys,
claims — and the rules AMI adds: PKCE S256 only (required for public clients, on by default for all), single-use
codes whose reuse revokes what they issued, refresh token rotation with reuse detection.

The pages (consent, sign-in hand-off) and HTTP endpoints are :mod:`app.web.idp`; it owns the transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2 import ResourceProtector as FlaskResourceProtector
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Request,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Flask, g
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from limits.storage import Storage
from sqlalchemy.orm import Session

from app import audit
from app.audit import AuditContext
from app.errors import AppError
from app.idp import clients, tokens
from app.idp.claims import ACR_VALUES, SCOPE_CLAIMS, STANDARD_SCOPES, Subject, user_claims
from app.idp.clients import CONFIDENTIAL_METHODS, GRANT_TYPES
from app.idp.keys import ALGORITHMS, KeyRing
from app.models import OidcAuthorizationCode, OidcClient, OidcToken, UserSession, utcnow
from app.net import OutboundClient

ALL_METHODS: Final = (*CONFIDENTIAL_METHODS, "none")
# Set on flask.g when a request found a reused code or refresh token: the revocation it made is committed even
# though the request itself fails.
KEEP_ON_ERROR: Final = "idp_keep_on_error"
CLIENT_JWKS_TTL: Final = 60.0
ASSERTION_JTI_SECONDS: Final = 600
ID_TOKEN_CLAIMS: Final = ("iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash")


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


def _epoch(value: Any) -> int | None:
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
        return _epoch(self.row.auth_time)

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
    def provider(self) -> Provider:
        return cast(Provider, self.server)

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
    def __init__(self, provider: Provider) -> None:
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
    def provider(self) -> Provider:
        return cast(Provider, self.server)

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        client: Client = self.request.client
        db = self.provider.db()
        claim = tokens.claim_refresh(db, self.provider.ctx(client), client.row, refresh_token)
        return TokenRecord(claim.token, client, "refresh_token") if _usable(claim.status) and claim.token else None

    def authenticate_user(self, refresh_token: TokenRecord) -> Subject | None:
        return tokens.subject_of_token(self.provider.db(), refresh_token.row)

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        """Marked used when it was claimed: presenting it again is reuse (and revokes the family)."""


class ServiceGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_METHODS)


class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): the client signs an assertion with a key it
    publishes at its ``jwks_uri``, fetched through the outbound guard."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, provider: Provider) -> None:
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

    def __init__(self, provider: Provider, alg: str) -> None:
        super().__init__(
            provider.issuer,
            alg=alg,
            refresh_token_generator=lambda **_kw: generate_token(48),
            expires_generator=lambda client, _grant_type: client.row.access_token_ttl,
        )
        self.provider = provider

    def get_jwks(self) -> KeySet:
        # One key: joserfc signs with it and puts its kid in the header.
        return KeySet([self.provider.keyring.signing_key(self.alg)])

    def get_audiences(self, client: Client, user: Subject | None, scope: str) -> str | list[str]:
        audiences = list(client.row.audiences or ())
        return audiences if audiences else client.client_id

    def get_auth_time(self, user: Subject | None) -> int | None:
        return _epoch(user.auth_time) if user is not None else None

    def get_acr(self, user: Subject | None) -> str | None:
        return user.acr if user is not None else None

    def get_amr(self, user: Subject | None) -> list[str] | None:
        return list(user.amr) if user is not None and user.amr else None


class TokenGenerator:
    """Authlib's "default" generator: the access token signed with the algorithm the client's ID tokens use."""

    def __init__(self, provider: Provider) -> None:
        self.by_alg = {alg: AccessTokens(provider, alg) for alg in ALGORITHMS}

    def __call__(self, *, client: Client, **kwargs: Any) -> dict[str, Any]:
        generator = self.by_alg.get(client.row.id_token_alg) or self.by_alg[ALGORITHMS[0]]
        return cast(dict[str, Any], generator(client=client, **kwargs))


# --- looking tokens up (userinfo, introspection, revocation) --------------------------------------------------------


def _token_lookup(provider: Provider, token_string: str, hint: str | None) -> TokenRecord | None:
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
        return _token_lookup(cast(Provider, self.server), token_string, token_type_hint)

    def revoke_token(self, token: TokenRecord, request: OAuth2Request) -> None:
        provider = cast(Provider, self.server)
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
        return _token_lookup(cast(Provider, self.server), token_string, token_type_hint)

    def check_permission(self, token: TokenRecord, client: Client, request: OAuth2Request) -> bool:
        # The client the token was issued to, or an API it was issued for (registered as a client).
        return token.check_client(client) or client.client_id in (token.row.audience or ())

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        provider = cast(Provider, self.server)
        row = token.row
        payload: dict[str, Any] = {
            "active": True,
            "client_id": token.client.client_id,
            "scope": row.scope,
            "iss": provider.issuer,
            "exp": _epoch(token.expires_at),
            "iat": _epoch(row.issued_at),
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
                payload["auth_time"] = _epoch(row.auth_time)
            if row.acr:
                payload["acr"] = row.acr
        elif row.user_id is not None:
            return {"active": False}  # the user was disabled or deleted since
        else:
            payload["sub"] = token.client.client_id
        return payload


class AccessTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    """Bearer tokens for our own resources (userinfo): a JWT we signed, of a token not revoked."""

    def __init__(self, provider: Provider) -> None:
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
        return cast(Provider, self.server).issuer

    def generate_user_info(self, user: Subject | None, scope: str) -> dict[str, Any]:
        if user is None:
            raise InvalidTokenError()  # a client credentials token is no user's
        return user_claims(user.user, scope)


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: validates the request (id_token_hint signed by us, post_logout_redirect_uri an exact
    registered match); :mod:`app.web.idp` ends the session and answers."""

    def get_server_jwks(self) -> KeySet:
        return cast(Provider, self.server).keyring.verification_keys()

    def get_algorithms(self) -> list[str]:
        return list(ALGORITHMS)

    def is_post_logout_redirect_uri_legitimate(
        self, request: OAuth2Request, post_logout_redirect_uri: str, client: Client, logout_hint: str | None
    ) -> bool:
        # Without an id_token_hint the user confirms on our page first; the address is still an exact match.
        return True

    def end_session(self, end_session_request: Any) -> None:
        """The page ends the AMI session itself (app.web.idp), after the user's confirmation when needed."""


# --- the server ----------------------------------------------------------------------------------------------------


class ParamsRequest(OAuth2Request):  # type: ignore[misc]
    """An authorization request rebuilt from parameters kept across the sign-in pages (already checked once)."""

    def __init__(self, uri: str, params: Mapping[str, str]) -> None:
        super().__init__("GET", uri, headers={})
        self.payload = BasicOAuth2Payload(dict(params))

    @property
    def args(self) -> Mapping[str, str]:
        return cast(Mapping[str, str], self.payload.data)

    @property
    def form(self) -> Mapping[str, str]:
        return {}


class Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


@dataclass(frozen=True)
class Wiring:
    """What the provider needs from the app, given by :mod:`app.web.idp` (no request globals here)."""

    db: Callable[[], Session]
    ctx: Callable[[], AuditContext]
    limit_storage: Callable[[], Storage]
    http: Callable[[], OutboundClient]


class Provider(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, app: Flask, issuer: str, keyring: KeyRing, wiring: Wiring) -> None:
        super().__init__()
        self.issuer = issuer
        self.keyring = keyring
        self.wiring = wiring
        self._client_keys: dict[str, tuple[float, KeySet]] = {}
        self._client_keys_lock = threading.Lock()
        self.init_app(app, query_client=self._find_client, save_token=self._store_token)
        self.register_token_generator("default", TokenGenerator(self))
        self.register_client_auth_method("private_key_jwt", PrivateKeyJwt(self))
        self.register_grant(CodeGrant, [PkceS256(required=True), OpenIDCodeFlow(self)])
        self.register_grant(RefreshGrant)
        self.register_grant(ServiceGrant)
        self.register_extension(Issuer(issuer))
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        protector = FlaskResourceProtector()
        protector.register_token_validator(AccessTokenValidator(self))
        self.register_endpoint(UserInfo(resource_protector=protector))
        self.register_endpoint(EndSession)

    # Wiring to the app ------------------------------------------------------------------------------------------

    def db(self) -> Session:
        return self.wiring.db()

    def ctx(self, client: Client | None = None) -> AuditContext:
        ctx = self.wiring.ctx()
        if client is not None and ctx.actor == "anonymous":
            return AuditContext(actor=f"client:{client.client_id}", ip=ctx.ip, user_agent=ctx.user_agent)
        return ctx

    def limit_storage(self) -> Storage:
        return self.wiring.limit_storage()

    def endpoint(self, path: str) -> str:
        return self.issuer + path

    def assertion_audiences(self) -> list[str]:
        return [
            self.issuer,
            self.endpoint("/oauth2/token"),
            self.endpoint("/oauth2/introspect"),
            self.endpoint("/oauth2/revoke"),
        ]

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        if isinstance(request, Mapping):
            return ParamsRequest(self.endpoint("/oauth2/authorize"), request)
        return super().create_oauth2_request(request)

    def _find_client(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str) or len(client_id) > 64:
            return None
        row = clients.find_client(self.db(), client_id)
        return Client(row) if row is not None and row.enabled else None

    def _store_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        client: Client = request.client
        subject: Subject | None = request.user
        db = self.db()
        if request.authorization_code is not None:
            code: CodeRecord = request.authorization_code
            issue = tokens.Issue(tokens.new_family(), code.row.id)
        elif request.refresh_token is not None:
            issue = tokens.Issue(cast(TokenRecord, request.refresh_token).row.family)
        else:
            issue = tokens.Issue(tokens.new_family())
        tokens.save_token(db, client.row, subject, token, issue)
        if request.refresh_token is None:
            # A sign-in's code exchange or a service's token: audited (refreshes are too many to be events).
            audit.record(
                db,
                self.ctx(client),
                "oidc.token.issue",
                target=f"oidc_client:{client.client_id}",
                details={
                    "grant_type": request.payload.grant_type,
                    "user": subject.user.id if subject is not None else None,
                    "scope": token.get("scope", ""),
                    "refresh_token": "refresh_token" in token,
                },
            )

    def record(self, row: OidcToken, kind: str, claims: dict[str, Any] | None = None) -> TokenRecord | None:
        client = self.db().get(OidcClient, row.client_id)
        if client is None:
            return None
        return TokenRecord(row, Client(client), kind, claims=claims or {})

    # Keys ---------------------------------------------------------------------------------------------------------

    def verify_jwt(self, token: str, *, typ: str | None = None) -> dict[str, Any] | None:
        """The claims of a JWT this provider signed (signature and issuer checked, expiry not), or None."""
        try:
            decoded = jwt.decode(token, self.keyring.verification_keys(), algorithms=list(ALGORITHMS))
        except (JoseError, ValueError):
            return None
        if typ is not None and decoded.header.get("typ") != typ:
            return None
        if decoded.claims.get("iss") != self.issuer:
            return None
        return dict(decoded.claims)

    def client_keys(self, client: OidcClient) -> KeySet:
        """A private_key_jwt client's public keys, fetched from its jwks_uri through the outbound guard."""
        uri = client.jwks_uri
        if not uri:
            raise InvalidClientError(description="The client has no jwks_uri.")
        now = time.monotonic()
        with self._client_keys_lock:
            cached = self._client_keys.get(uri)
        if cached is not None and now - cached[0] < CLIENT_JWKS_TTL:
            return cached[1]
        try:
            response = self.wiring.http().get(uri, timeout=5.0, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise InvalidClientError(description=f"The client's jwks_uri answered HTTP {response.status_code}.")
            keys = KeySet.import_key_set(response.json())
        except AppError as exc:
            raise InvalidClientError(description=f"The client's jwks_uri could not be fetched: {exc.text}") from None
        except (JoseError, ValueError, TypeError, KeyError):
            raise InvalidClientError(description="The client's jwks_uri did not hold a JWK set.") from None
        with self._client_keys_lock:
            self._client_keys[uri] = (now, keys)
        return keys

    # Metadata -----------------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """OpenID Provider Metadata (OpenID Connect Discovery 1.0 §3, RFC 8414)."""
        e = self.endpoint
        auth_methods = [*CONFIDENTIAL_METHODS, "none"]
        claims = {c for names in SCOPE_CLAIMS.values() for c in names} | set(ID_TOKEN_CLAIMS)
        return {
            "issuer": self.issuer,
            "authorization_endpoint": e("/oauth2/authorize"),
            "token_endpoint": e("/oauth2/token"),
            "userinfo_endpoint": e("/oauth2/userinfo"),
            "jwks_uri": e("/oauth2/jwks"),
            "revocation_endpoint": e("/oauth2/revoke"),
            "introspection_endpoint": e("/oauth2/introspect"),
            "end_session_endpoint": e("/oauth2/logout"),
            "scopes_supported": list(STANDARD_SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "userinfo_signing_alg_values_supported": list(ALGORITHMS),
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": sorted(claims),
            "acr_values_supported": list(ACR_VALUES),
            "prompt_values_supported": ["none", "login", "consent"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
        }
