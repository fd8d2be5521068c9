"""OAuth 2.0 / OpenID Connect protocol core: no Flask, all HTTP through :mod:`app.net`.

- :mod:`~app.oauth.discovery`: provider metadata and JWKS, cached; re-fetch on an unknown ``kid``.
- :mod:`~app.oauth.flow`: authorization code + PKCE; ``state``/``nonce`` bound to the browser session.
- :mod:`~app.oauth.id_token`: ID-token signature and claim checks (OIDC Core §3.1.3.7).
- :mod:`~app.oauth.tokens`: token sets, refresh, revocation (RFC 7009), userinfo.
- :mod:`~app.oauth.device`: the device authorization grant (RFC 8628).

Every failure is an :class:`app.errors.AppError` with a taxonomy code.
"""

from app.oauth.device import (
    DeviceAuthorization,
    DeviceResult,
    poll_once,
    start_device_authorization,
    wait_for_device_token,
)
from app.oauth.discovery import DiscoveryCache, ProviderMetadata, discover, discovery_url_for, fetch_jwks
from app.oauth.flow import (
    AuthorizationRequest,
    PendingAuthorization,
    complete_authorization,
    remember_pending,
    start_authorization,
    take_pending,
)
from app.oauth.id_token import IdTokenPolicy, KeySource, validate_id_token
from app.oauth.tokens import ClientCredentials, TokenSet, exchange_code, fetch_userinfo, refresh, revoke

__all__ = [
    "AuthorizationRequest",
    "ClientCredentials",
    "DeviceAuthorization",
    "DeviceResult",
    "DiscoveryCache",
    "IdTokenPolicy",
    "KeySource",
    "PendingAuthorization",
    "ProviderMetadata",
    "TokenSet",
    "complete_authorization",
    "discover",
    "discovery_url_for",
    "exchange_code",
    "fetch_jwks",
    "fetch_userinfo",
    "poll_once",
    "refresh",
    "remember_pending",
    "revoke",
    "start_authorization",
    "start_device_authorization",
    "take_pending",
    "validate_id_token",
    "wait_for_device_token",
]
