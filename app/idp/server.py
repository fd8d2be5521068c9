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
from dataclasses import dataclass
from typing import Any, Final, cast

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2 import ResourceProtector as FlaskResourceProtector
from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from limits.storage import Storage
from sqlalchemy import inspect
from sqlalchemy.orm import Session, make_transient_to_detached

from app import audit, metrics
from app.audit import AuditContext
from app.errors import AppError
from app.extensions import end_read
from app.idp import clients, tokens
from app.idp.claims import ACR_VALUES, SCOPE_CLAIMS, STANDARD_SCOPES, Subject
from app.idp.clients import CONFIDENTIAL_METHODS, GRANT_TYPES
from app.idp.endpoints import AccessTokenValidator, EndSession, Introspection, Revocation, UserInfo
from app.idp.grants import (
    CodeGrant,
    OpenIDCodeFlow,
    PkceS256,
    PrivateKeyJwt,
    RefreshGrant,
    ServiceGrant,
    TokenGenerator,
)
from app.idp.keys import ALGORITHMS, KeyRing
from app.idp.records import KEEP_ON_ERROR, Client, CodeRecord, TokenRecord
from app.models import OidcClient, OidcToken
from app.net import OutboundClient

__all__ = ["KEEP_ON_ERROR", "Client", "Provider", "Wiring"]

CLIENT_JWKS_TTL: Final = 60.0
# How long a worker answers from its copy of a client's row (see ClientCache): the longest another process's change
# to a client — disabled, secret rotated, scopes narrowed — takes to apply here. A change made in this process
# applies at once.
CLIENT_ROW_TTL: Final = 2.0
CLIENT_CACHE_SIZE: Final = 1000
ID_TOKEN_CLAIMS: Final = ("iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash")


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


def _detached_copy(row: OidcClient) -> OidcClient:
    """A copy in no session (the request's own row stays its own): never flushed, never expired by a commit."""
    copy = OidcClient(
        **{
            attr.key: list(value) if isinstance(value := getattr(row, attr.key), list) else value
            for attr in inspect(OidcClient).column_attrs
        }
    )
    make_transient_to_detached(copy)
    return copy


@dataclass(frozen=True)
class _Cached:
    row: OidcClient
    generation: int
    read_at: float


class ClientCache:
    """The client rows one process authenticates clients with, so a token request does not read its client again.

    A copy of the row is kept (detached: the OIDC models have no relationships to lazy-load, and nothing writes
    through these copies) for at most :attr:`ttl` seconds, and dropped as soon as this process flushes
    a change to any client (:func:`app.idp.clients.generation`). Unknown client ids are not cached. So a client
    disabled, deleted or given a new secret elsewhere (another worker, the CLI) is refused by every worker within
    ``ttl`` seconds, and at once in the process that changed it. Codes, refresh tokens and their revocation are
    never cached: rotation, reuse detection and sessions ending still act on the next request.
    """

    def __init__(self, ttl: float = CLIENT_ROW_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._rows: dict[str, _Cached] = {}

    def find(self, db: Session, client_id: str) -> OidcClient | None:
        now, generation = self.clock(), clients.generation()
        cached = self._rows.get(client_id)
        if cached is not None and cached.generation == generation and now - cached.read_at < self.ttl:
            return cached.row
        row = clients.find_client(db, client_id)
        if row is None:
            self._rows.pop(client_id, None)
            return None
        if not db.is_modified(row):
            if len(self._rows) >= CLIENT_CACHE_SIZE:
                self._rows.clear()
            # The generation read before the SELECT: a change committed meanwhile makes this entry stale, not wrong.
            self._rows[client_id] = _Cached(_detached_copy(row), generation, now)
        return row


class Provider(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, app: Flask, issuer: str, keyring: KeyRing, wiring: Wiring) -> None:
        super().__init__()
        self.issuer = issuer
        self.keyring = keyring
        self.wiring = wiring
        self._client_keys: dict[str, tuple[float, KeySet]] = {}
        self._client_keys_lock = threading.Lock()
        self.clients = ClientCache()
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
        row = self.clients.find(self.db(), client_id)
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
        tokens.insert_token(db, client.row, subject, token, issue)
        metrics.OIDC_GRANTS.labels(grant_type=metrics.label(request.payload.grant_type)).inc()
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
        # Nothing held while the client's server answers (up to 5 s, with retries): client authentication comes
        # before anything the endpoint writes.
        end_read(self.wiring.db())
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
