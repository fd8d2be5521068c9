"""The authorization-code flow: build the request, then check and complete the callback.

The glue keeps a :class:`PendingAuthorization` in the browser's session between the two halves
(:func:`remember_pending` / :func:`take_pending` work on any mutable mapping, e.g. Flask's
``session``), which binds ``state``, ``nonce`` and the PKCE verifier to that browser and makes each
of them single use: taking a pending authorization removes it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from app.errors import N_, AppError
from app.net import OutboundClient
from app.oauth.discovery import TENANT_PLACEHOLDER, ProviderMetadata
from app.oauth.id_token import IdTokenPolicy, KeySource
from app.oauth.tokens import ClientCredentials, TokenSet, exchange_code, id_token_claims

__all__ = [
    "PENDING_MAX_AGE",
    "PENDING_SESSION_KEY",
    "AuthorizationRequest",
    "PendingAuthorization",
    "complete_authorization",
    "peek_pending",
    "remember_pending",
    "start_authorization",
    "take_pending",
]

PENDING_SESSION_KEY: Final = "ami_oauth_pending"
# Long enough to sign in at the provider (and set up MFA there), short enough that a leaked state is stale.
PENDING_MAX_AGE: Final = 600.0
# A browser may have a few sign-ins in flight (two tabs); more only bloats the session cookie.
MAX_PENDING: Final = 4
# RFC 7636 §4.1: 43-128 characters; 64 gives 380 bits from Authlib's unreserved alphabet.
VERIFIER_LENGTH: Final = 64
RESERVED_PARAMS: Final = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge", "code_challenge_method"}
)
HINT: Final = "Start the sign-in again from this browser"

# RFC 6749 §4.1.2.1 and OIDC Core §3.1.2.6 error codes from the authorization endpoint.
_CONSENT_ERRORS: Final = frozenset(
    {"access_denied", "consent_required", "login_required", "interaction_required", "account_selection_required"}
)
_PROVIDER_ERRORS: Final = frozenset({"server_error", "temporarily_unavailable"})


@dataclass(frozen=True)
class PendingAuthorization:
    """One authorization request in flight; store it in the browser session (``to_dict``) until the callback.

    ``provider_key`` is the glue's own reference (e.g. the provider config id); ``issuer`` binds the
    callback to the provider the request went to.
    """

    state: str
    redirect_uri: str
    scopes: tuple[str, ...]
    nonce: str | None = None
    code_verifier: str | None = field(default=None, repr=False)
    issuer: str | None = None
    provider_key: str = ""
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "redirect_uri": self.redirect_uri,
            "scopes": list(self.scopes),
            "nonce": self.nonce,
            "code_verifier": self.code_verifier,
            "issuer": self.issuer,
            "provider_key": self.provider_key,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingAuthorization:
        return cls(
            state=str(data["state"]),
            redirect_uri=str(data["redirect_uri"]),
            scopes=tuple(data.get("scopes") or ()),
            nonce=data.get("nonce"),
            code_verifier=data.get("code_verifier"),
            issuer=data.get("issuer"),
            provider_key=str(data.get("provider_key") or ""),
            created_at=float(data.get("created_at") or 0.0),
        )


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the browser, and what to remember until it comes back."""

    url: str
    pending: PendingAuthorization


def start_authorization(
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    *,
    redirect_uri: str,
    scopes: Sequence[str],
    pkce: bool = True,
    want_refresh: bool = False,
    offline_scope: str | None = "offline_access",
    refresh_params: Mapping[str, str] | None = None,
    extra_params: Mapping[str, str] | None = None,
    provider_key: str = "",
    now: float | None = None,
) -> AuthorizationRequest:
    """Build the authorization URL (RFC 6749 §4.1.1) with fresh ``state``, ``nonce`` and PKCE S256.

    A ``nonce`` is sent when ``openid`` is among the scopes. ``want_refresh`` asks for a refresh token:
    by default the OIDC way (``offline_access`` scope + ``prompt=consent``, OIDC Core §11); providers with
    their own way pass ``offline_scope=None`` and ``refresh_params`` (Google:
    ``{"access_type": "offline", "prompt": "consent"}``). ``extra_params`` carries provider options
    such as Google's ``hd`` or an ``audience``; it cannot override the parameters this function owns.
    """
    clash = RESERVED_PARAMS.intersection(extra_params or {}).union(RESERVED_PARAMS.intersection(refresh_params or {}))
    if clash:
        raise AppError(
            "invalid_config",
            N_("Extra authorization parameters may not set %(clash)s", clash=", ".join(sorted(clash))),
            N_("Remove them from the provider configuration"),
        )
    requested = list(dict.fromkeys(scopes))
    params: dict[str, str] = {}
    if want_refresh:
        if offline_scope and offline_scope not in requested:
            requested.append(offline_scope)
        params.update(refresh_params if refresh_params is not None else {"prompt": "consent"})
    params.update(extra_params or {})

    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32) if "openid" in requested else None
    verifier: str | None = None
    if pkce:
        methods = metadata.code_challenge_methods_supported
        if methods and "S256" not in methods:
            # RFC 9700 §2.1.1: never fall back to `plain`; the admin can switch PKCE off instead.
            raise AppError(
                "invalid_config",
                N_("The provider does not support PKCE with S256"),
                N_("Turn PKCE off for this provider if it cannot do S256"),
            )
        verifier = generate_token(VERIFIER_LENGTH)
        params["code_challenge"] = create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    if nonce is not None:
        params["nonce"] = nonce
    url = prepare_grant_uri(
        metadata.authorization_endpoint,
        client_id=credentials.client_id,
        response_type="code",
        redirect_uri=redirect_uri,
        scope=requested,
        state=state,
        **params,
    )
    pending = PendingAuthorization(
        state=state,
        redirect_uri=redirect_uri,
        scopes=tuple(requested),
        nonce=nonce,
        code_verifier=verifier,
        issuer=metadata.issuer,
        provider_key=provider_key,
        created_at=time.time() if now is None else now,
    )
    return AuthorizationRequest(url=url, pending=pending)


def remember_pending(store: MutableMapping[str, Any], pending: PendingAuthorization) -> None:
    """Keep ``pending`` in ``store`` (the browser session), dropping the oldest beyond a few."""
    current = store.get(PENDING_SESSION_KEY)
    entries = dict(current) if isinstance(current, dict) else {}
    entries[pending.state] = pending.to_dict()
    while len(entries) > MAX_PENDING:
        oldest = min(entries, key=lambda s: float(entries[s].get("created_at") or 0.0))
        del entries[oldest]
    # A new dict object, so session backends that track assignment see the change.
    store[PENDING_SESSION_KEY] = entries


def peek_pending(store: Mapping[str, Any], state: str | None) -> PendingAuthorization | None:
    """The pending authorization for ``state`` without taking it (``None``: none), so the glue can tell which
    flow a callback belongs to before the flow itself takes and checks it with :func:`take_pending`."""
    current = store.get(PENDING_SESSION_KEY)
    data = current.get(state) if isinstance(current, dict) and state else None
    return PendingAuthorization.from_dict(data) if isinstance(data, dict) else None


def take_pending(
    store: MutableMapping[str, Any],
    state: str | None,
    *,
    max_age: float = PENDING_MAX_AGE,
    now: float | None = None,
) -> PendingAuthorization:
    """Remove and return the pending authorization for the callback's ``state``.

    Unknown, missing or stale ``state`` raises ``validation_failed``: the callback was not started by
    this browser (CSRF, RFC 6749 §10.12), was already used, or took too long.
    """
    current = store.get(PENDING_SESSION_KEY)
    entries = dict(current) if isinstance(current, dict) else {}
    data = entries.pop(state, None) if state else None
    store[PENDING_SESSION_KEY] = entries
    if not isinstance(data, dict):
        raise AppError("validation_failed", N_("The sign-in response does not belong to this browser session"), HINT)
    pending = PendingAuthorization.from_dict(data)
    if (time.time() if now is None else now) - pending.created_at > max_age:
        raise AppError("validation_failed", N_("The sign-in took too long"), HINT)
    return pending


def _check_callback_issuer(metadata: ProviderMetadata, params: Mapping[str, str]) -> None:
    """RFC 9207 §2.4: reject a response whose ``iss`` is not our provider's (mix-up attack)."""
    iss = params.get("iss")
    if iss is None:
        if metadata.authorization_response_iss_parameter_supported:
            raise AppError("validation_failed", N_("The provider's response lacks its issuer (iss)"), HINT)
        return
    expected = metadata.issuer
    if expected is None:
        raise AppError("validation_failed", N_("The response names an issuer, but this provider has none"), HINT)
    if metadata.issuer_is_template:
        prefix, _, suffix = expected.partition(TENANT_PLACEHOLDER)
        tenant = iss[len(prefix) : len(iss) - len(suffix)] if len(iss) > len(prefix) + len(suffix) else ""
        ok = iss.startswith(prefix) and iss.endswith(suffix) and bool(tenant) and "/" not in tenant
    else:
        ok = hmac.compare_digest(iss.encode(), expected.encode())
    if not ok:
        raise AppError(
            "validation_failed", N_("The response comes from a different issuer than the request went to"), HINT
        )


def _authorization_error(params: Mapping[str, str]) -> AppError:
    error = params.get("error", "")
    description = "".join(ch for ch in params.get("error_description", "") if " " <= ch <= "~")[:200]
    detail = f": {description}" if description else ""
    if error in _CONSENT_ERRORS:
        return AppError(
            "consent_required",
            N_("The provider did not grant access (%(error)s)%(detail)s", error=error, detail=detail),
            HINT,
        )
    if error in _PROVIDER_ERRORS:
        return AppError(
            "provider_unreachable",
            N_("The provider could not complete the sign-in (%(error)s)%(detail)s", error=error, detail=detail),
        )
    return AppError(
        "invalid_config",
        N_("The provider refused the request (%(error)s)%(detail)s", error=error[:60], detail=detail),
        N_("Check the provider configuration (client ID, redirect URI, scopes)"),
    )


def complete_authorization(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    pending: PendingAuthorization,
    params: Mapping[str, str],
    *,
    keys: KeySource | None,
    policy: IdTokenPolicy = IdTokenPolicy(),
    default_expires_in: int | None = None,
    now: datetime | None = None,
) -> TokenSet:
    """Check the callback's query parameters, exchange the code and validate the ID token.

    In order: ``state`` equals the pending one; the response is from the provider the request went to
    (RFC 9207 ``iss``); an error response is mapped (``access_denied`` → ``consent_required``); the code
    is exchanged with the PKCE verifier; with ``openid`` requested, an ID token must come back and pass
    :func:`validate_id_token` with the pending nonce. ``keys`` may be ``None`` only for plain OAuth 2.0.
    """
    state = params.get("state")
    if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise AppError("validation_failed", N_("The sign-in response does not match the request (state)"), HINT)
    if pending.issuer != metadata.issuer:
        raise AppError("validation_failed", N_("The sign-in was started with a different provider"), HINT)
    _check_callback_issuer(metadata, params)
    if "error" in params:
        raise _authorization_error(params)
    code = params.get("code")
    if not code:
        raise AppError("validation_failed", N_("The provider's response has no authorization code"), HINT)

    tokens = exchange_code(
        client,
        metadata,
        credentials,
        code=code,
        redirect_uri=pending.redirect_uri,
        code_verifier=pending.code_verifier,
        requested_scopes=pending.scopes,
        default_expires_in=default_expires_in,
        now=now,
    )
    if "openid" not in pending.scopes:
        return tokens
    if tokens.id_token is None:
        raise AppError("validation_failed", N_("The provider returned no ID token"), HINT)
    if keys is None:
        raise AppError("invalid_config", N_("No key source to check the ID token with"), N_("Configure the JWKS URI"))
    claims = id_token_claims(tokens, metadata, credentials, keys=keys, policy=policy, nonce=pending.nonce, now=now)
    return replace(tokens, id_claims=claims)
