"""OAuth 2.0 / OpenID Connect.

The protocol core — no database, no Flask, no catalog, all HTTP through :mod:`app.net` (exported here):

- :mod:`~app.oauth.discovery`: provider metadata and JWKS, cached; re-fetch on an unknown ``kid``.
- :mod:`~app.oauth.flow`: authorization code + PKCE; ``state``/``nonce`` bound to the browser session.
- :mod:`~app.oauth.id_token`: ID-token signature and claim checks (OIDC Core §3.1.3.7).
- :mod:`~app.oauth.tokens`: token sets, the token endpoint, refresh, userinfo.
- :mod:`~app.oauth.revocation`: token revocation (RFC 7009 and the vendors' variants), the one implementation.
- :mod:`~app.oauth.device`: the device authorization grant (RFC 8628).

Beside it, the catalog glue (no database, no Flask): :mod:`~app.oauth.provider` (a config's values and
its catalog entry → an :class:`~app.oauth.provider.OAuthProvider`), :mod:`~app.oauth.identity` (who signed
in), :mod:`~app.oauth.setup_check` ("Test connection"). And the persistence: :mod:`~app.oauth.runtime`
(the app's services, a provider from a stored config), :mod:`~app.oauth.connections` (connect, disconnect),
:mod:`~app.oauth.identities` (sign-in and linking), :mod:`~app.oauth.leases` and :mod:`~app.oauth.renewal`
(refreshing an account's tokens). tests/unit/test_oauth_layers.py holds the core to its word.

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
from app.oauth.revocation import revoke
from app.oauth.tokens import ClientCredentials, TokenSet, exchange_code, fetch_userinfo, refresh

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
