"""Token sets and the token and userinfo endpoints (RFC 6749, OIDC Core §5.3); revocation is in revocation.py.

Requests are built with Authlib's framework-free helpers (``prepare_token_request``, ``ClientAuth``) and
sent through :class:`app.net.OutboundClient`. Authlib's own httpx client is not used: importing it warns
that httpx is deprecated in favour of httpx2 (not installed), and it would bypass the client's retries and
``Retry-After`` handling.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote

from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request

from app.errors import N_, AppError
from app.net import OutboundClient, Response, retry_after
from app.oauth.discovery import ProviderMetadata
from app.oauth.id_token import IdTokenPolicy, KeySource, validate_id_token

__all__ = [
    "AuthMethod",
    "ClientCredentials",
    "TokenSet",
    "endpoint_error",
    "exchange_code",
    "fetch_userinfo",
    "id_token_claims",
    "parse_scopes",
    "refresh",
    "token_request",
    "token_set_from_json",
    "token_set_json",
]

AuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
GrantContext = Literal["authorization_code", "refresh_token", "device_code"]
FORM: Final = "application/x-www-form-urlencoded"
_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


def _client_secret_basic(
    client: ClientAuth, method: str, uri: str, headers: dict[str, str], body: str
) -> tuple[str, dict[str, str], str]:
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding. Authlib's own encoder
    # skips that, which breaks secrets holding ':', '%' or '+'.
    credentials = f"{quote(client.client_id, safe='')}:{quote(client.client_secret or '', safe='')}"
    headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return uri, headers, body


@dataclass(frozen=True)
class ClientCredentials:
    """The app's registration at a provider; ``client_secret`` never shows in a repr."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    auth_method: AuthMethod = "client_secret_basic"

    def authenticate(self, url: str, headers: dict[str, str], body: str) -> tuple[dict[str, str], str]:
        """Add client authentication (RFC 6749 §2.3.1) to a form POST."""
        encoder: Any = _client_secret_basic if self.auth_method == "client_secret_basic" else self.auth_method
        auth = ClientAuth(self.client_id, self.client_secret, encoder)
        _, headers, body = auth.prepare("POST", url, headers, body)
        return headers, body


def parse_scopes(value: Any) -> tuple[str, ...]:
    """RFC 6749 §3.3 scopes are space-delimited; GitHub answers with commas, so both separate."""
    if isinstance(value, str):
        return tuple(s for s in re.split(r"[\s,]+", value) if s)
    if isinstance(value, list | tuple):
        return tuple(s for s in value if isinstance(s, str) and s)
    return ()


def _as_seconds(value: Any) -> int | None:
    # Some providers (older Azure endpoints) send expires_in as a string of digits.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint granted. Times are aware UTC; secrets stay out of the repr.

    ``id_claims`` are the validated ID-token claims (``None`` without an ID token).
    """

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    expires_at: datetime | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    id_token: str | None = field(default=None, repr=False)
    id_claims: dict[str, Any] | None = None

    @classmethod
    def from_response(
        cls,
        body: Mapping[str, Any],
        *,
        now: datetime | None = None,
        default_expires_in: int | None = None,
        requested_scopes: Sequence[str] = (),
        previous: TokenSet | None = None,
    ) -> TokenSet:
        """Build from a successful token response (RFC 6749 §5.1).

        Without ``expires_in`` the token gets ``default_expires_in`` (or no expiry: GitHub OAuth-app
        tokens never expire). Without ``scope`` the granted scopes are the requested ones (§5.1), or on a
        refresh the previous ones. A refresh response without ``refresh_token`` keeps ``previous``'s
        (RFC 6749 §6: the server *may* issue a new one); one that rotates it replaces it.
        """
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise AppError("provider_unreachable", N_("The token response has no access_token"))
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or not token_type:
            token_type = "Bearer"
        issued = now or datetime.now(UTC)
        expires_in = _as_seconds(body.get("expires_in"))
        if expires_in is None:
            expires_in = default_expires_in
        refresh_token = body.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            refresh_token = previous.refresh_token if previous is not None else None
        scopes = parse_scopes(body.get("scope"))
        if not scopes:
            scopes = previous.scopes if previous is not None else tuple(requested_scopes)
        id_token = body.get("id_token")
        return cls(
            access_token=access_token,
            token_type=token_type,
            expires_at=issued + timedelta(seconds=expires_in) if expires_in is not None else None,
            refresh_token=refresh_token,
            scopes=scopes,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
        )

    def expires_within(self, margin: timedelta = timedelta(0), *, now: datetime | None = None) -> bool:
        """True if the access token is expired, or will be within ``margin``; never for non-expiring tokens."""
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or datetime.now(UTC)) + margin

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form for encrypted storage (it holds the tokens: never log or render it)."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "refresh_token": self.refresh_token,
            "scopes": list(self.scopes),
            "id_token": self.id_token,
            "id_claims": self.id_claims,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSet:
        expires_at = data.get("expires_at")
        return cls(
            access_token=str(data["access_token"]),
            token_type=str(data.get("token_type") or "Bearer"),
            expires_at=datetime.fromisoformat(expires_at) if isinstance(expires_at, str) else None,
            refresh_token=data.get("refresh_token"),
            scopes=tuple(data.get("scopes") or ()),
            id_token=data.get("id_token"),
            id_claims=data.get("id_claims"),
        )


# --- the token endpoint -------------------------------------------------------------------------------


def _describe(body: Mapping[str, Any]) -> str:
    description = body.get("error_description")
    if not isinstance(description, str) or not description:
        return ""
    return ": " + _PRINTABLE.sub("", description)[:200]


def _parse_body(response: Response) -> dict[str, Any] | None:
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        if content_type == FORM:
            # GitHub answers form-encoded unless asked for JSON; tolerate either.
            return dict(parse_qsl(response.text, keep_blank_values=True))
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _retry_after(response: Response) -> int | None:
    wait = retry_after(response)
    return round(wait) if wait is not None else None


def endpoint_error(response: Response, body: Mapping[str, Any] | None, *, grant: GrantContext | None) -> AppError:
    """Map an OAuth error response (RFC 6749 §5.2, RFC 8628 §3.5) to the taxonomy."""
    status = response.status_code
    error = body.get("error") if body else None
    detail = _describe(body) if body else ""
    if status == 429 or error == "slow_down":
        return AppError(
            "rate_limited", N_("The provider is rate-limiting requests"), retry_after=_retry_after(response)
        )
    if status >= 500 or error in ("server_error", "temporarily_unavailable"):
        return AppError(
            "provider_unreachable",
            N_(
                "The provider failed to answer (HTTP %(status)s%(else_)s)",
                status=status,
                else_=", " + str(error) if error else "",
            ),
            retry_after=_retry_after(response),
        )
    if error in ("invalid_grant", "bad_verification_code", "bad_refresh_token"):
        if grant == "refresh_token":
            return AppError(
                "consent_required",
                N_("The provider no longer accepts the refresh token%(detail)s", detail=detail),
                N_("Reconnect the account to grant access again"),
            )
        what = "device code" if grant == "device_code" else "authorization code"
        return AppError(
            "token_expired",
            N_("The %(what)s is invalid, expired or already used%(detail)s", what=what, detail=detail),
            N_("Start again"),
        )
    if error == "expired_token":
        return AppError("token_expired", N_("The device code expired before it was approved"), N_("Start again"))
    if error == "access_denied":
        return AppError(
            "consent_required",
            N_("Access was denied%(detail)s", detail=detail),
            N_("Start again and approve the request"),
        )
    if error in ("invalid_client", "unauthorized_client", "incorrect_client_credentials") or status == 401:
        return AppError(
            "invalid_config",
            N_("The provider rejected the client credentials%(detail)s", detail=detail),
            N_("Check the client ID, client secret and authentication method in the provider configuration"),
        )
    if error == "invalid_scope":
        return AppError(
            "invalid_config",
            N_("The provider rejected the requested scopes%(detail)s", detail=detail),
            N_("Check the configured scopes"),
        )
    if error is None and body is None:
        return AppError(
            "provider_unreachable", N_("The provider sent an unexpected response (HTTP %(status)s)", status=status)
        )
    return AppError(
        "invalid_config",
        N_(
            "The provider refused the request (%(status)s)%(detail)s",
            status=str(error)[:60] if error else "HTTP " + str(status),
            detail=detail,
        ),
        N_("Check the provider configuration"),
    )


def token_request(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    grant_type: str,
    *,
    grant: GrantContext | None = None,
    pass_errors: frozenset[str] = frozenset(),
    **params: str | None,
) -> dict[str, Any]:
    """POST to the token endpoint with client authentication; the parsed JSON body on success.

    An error whose code is in ``pass_errors`` is returned as its body (the device flow's
    ``authorization_pending``) instead of raised.
    """
    url = metadata.token_endpoint
    body = prepare_token_request(grant_type, **params)
    headers = {"Content-Type": FORM, "Accept": "application/json"}
    headers, body = credentials.authenticate(url, headers, body)
    response = client.post(url, headers=headers, content=body.encode())
    parsed = _parse_body(response)
    # GitHub reports errors with HTTP 200 and an `error` member.
    if response.status_code == 200 and parsed is not None and "error" not in parsed:
        return parsed
    if parsed is not None and parsed.get("error") in pass_errors:
        return parsed
    raise endpoint_error(response, parsed, grant=grant)


def exchange_code(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str | None = None,
    requested_scopes: Sequence[str] = (),
    default_expires_in: int | None = None,
    now: datetime | None = None,
) -> TokenSet:
    """Exchange an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.5); the ID token is not checked here."""
    body = token_request(
        client,
        metadata,
        credentials,
        "authorization_code",
        grant="authorization_code",
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=code_verifier,
    )
    return TokenSet.from_response(
        body, now=now, default_expires_in=default_expires_in, requested_scopes=requested_scopes
    )


def id_token_claims(
    tokens: TokenSet,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    *,
    keys: KeySource,
    policy: IdTokenPolicy,
    nonce: str | None,
    now: datetime | None,
) -> dict[str, Any]:
    """The claims of the token set's ID token once it passed every check of OIDC Core §3.1.3.7 (with
    ``at_hash`` against its access token); its ``nonce`` must be ``nonce`` (None: it must have none)."""
    assert tokens.id_token is not None
    return validate_id_token(
        tokens.id_token,
        metadata=metadata,
        client_id=credentials.client_id,
        keys=keys,
        nonce=nonce,
        policy=policy,
        client_secret=credentials.client_secret,
        access_token=tokens.access_token,
        now=now,
    )


def refresh(
    client: OutboundClient,
    metadata: ProviderMetadata,
    credentials: ClientCredentials,
    tokens: TokenSet,
    *,
    scopes: Sequence[str] | None = None,
    default_expires_in: int | None = None,
    keys: KeySource | None = None,
    policy: IdTokenPolicy = IdTokenPolicy(),
    now: datetime | None = None,
) -> TokenSet:
    """Use the refresh token (RFC 6749 §6) and return the new token set.

    ``invalid_grant`` (revoked, expired, already rotated) raises ``consent_required``; network
    failures, 5xx and 429 raise ``provider_unreachable``/``rate_limited`` (with ``retry_after``) and the
    caller keeps the old tokens. A new ID token is checked when ``keys`` is given (OIDC Core §12.2: same
    ``iss``, ``sub``, ``aud``); otherwise the previous ID token and claims are kept.
    """
    if not tokens.refresh_token:
        raise AppError(
            "consent_required", N_("There is no refresh token"), N_("Reconnect the account to grant access again")
        )
    body = token_request(
        client,
        metadata,
        credentials,
        "refresh_token",
        grant="refresh_token",
        refresh_token=tokens.refresh_token,
        scope=" ".join(scopes) if scopes else None,
    )
    fresh = TokenSet.from_response(body, now=now, default_expires_in=default_expires_in, previous=tokens)
    if fresh.id_token is not None and keys is not None:
        claims = id_token_claims(fresh, metadata, credentials, keys=keys, policy=policy, nonce=None, now=now)
        if tokens.id_claims is not None and claims.get("sub") != tokens.id_claims.get("sub"):
            # OIDC Core §12.2: a refreshed ID token's sub must be the original one.
            raise AppError(
                "validation_failed",
                N_("The provider answered the refresh with an ID token for a different user than this account's"),
                N_(
                    "The tokens were not changed. Reconnect the account; if it keeps happening, the provider "
                    "configuration may point at another provider"
                ),
            )
        return replace(fresh, id_claims=claims)
    return replace(fresh, id_token=tokens.id_token, id_claims=tokens.id_claims)


def fetch_userinfo(
    client: OutboundClient,
    metadata: ProviderMetadata,
    access_token: str,
    *,
    expected_subject: str | None = None,
) -> dict[str, Any]:
    """GET the userinfo endpoint with the access token (OIDC Core §5.3).

    With ``expected_subject`` (the ID token's ``sub``) a response about anyone else is refused (§5.3.4).
    """
    url = metadata.userinfo_endpoint
    if url is None:
        raise AppError("invalid_config", N_("The provider has no userinfo endpoint"), N_("Configure the userinfo URL"))
    response = client.get(url, headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"})
    status = response.status_code
    if status == 401:
        raise AppError("token_expired", N_("The provider did not accept the access token"), N_("Refresh or reconnect"))
    if status == 403:
        raise AppError(
            "consent_required", N_("The access token lacks the scope for user information"), N_("Reconnect the account")
        )
    if status != 200:
        raise endpoint_error(response, _parse_body(response), grant=None)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == "application/jwt":
        raise AppError(
            "invalid_config",
            N_("The provider signs userinfo responses, which is not supported"),
            N_("Configure the provider to answer userinfo as JSON"),
        )
    data = _parse_body(response)
    if data is None:
        raise AppError("provider_unreachable", N_("The userinfo response is not a JSON object"))
    if expected_subject is not None and data.get("sub") != expected_subject:
        # OIDC Core §5.3.4: the userinfo sub must equal the ID token's, or the answer must not be used.
        raise AppError(
            "validation_failed",
            N_("The provider's user information is about a different user than the one who signed in"),
            N_(
                "Nothing was changed. Sign in again; if it keeps happening, the provider configuration's userinfo "
                "URL may point at another provider"
            ),
        )
    return data


def token_set_json(tokens: TokenSet) -> str:
    """How a token set is stored (encrypted, in the vault)."""
    return json.dumps(tokens.to_dict(), separators=(",", ":"))


def token_set_from_json(raw: str) -> TokenSet:
    return TokenSet.from_dict(json.loads(raw))
