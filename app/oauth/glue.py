"""From an admin's :class:`~app.models.ProviderConfig` to what the protocol core needs, and back.

The catalog entry of a provider type (``app/providers/catalog/<type>.yaml``) is the data: endpoint
templates, token-endpoint authentication, PKCE, claim names, revoke request. This module renders it
with the config's values and adds what data cannot say — per type, in one ``match``:

- **Google**: discovery at ``<issuer>/.well-known/openid-configuration``; a refresh token needs
  ``access_type=offline`` + ``prompt=consent`` rather than ``offline_access``; ``hd`` is checked against
  the ID token's claim (:class:`~app.oauth.IdTokenPolicy`), not only sent as a hint.
- **GitHub**: no discovery; endpoints from the (optionally Enterprise) base URLs; no ID token, the user
  comes from ``/user`` (+ ``/user/emails`` in the ``github`` hook).
- **Azure AD / Entra ID**: discovery under ``<authority>/<tenant>/v2.0``; for ``common`` and
  ``organizations`` the published issuer is the template ``…/{tenantid}/v2.0`` which the core fills in
  from the token's ``tid``; ``consumers`` is the fixed tenant of personal Microsoft accounts.
- **Generic OIDC**: a discovery URL (the issuer is what the URL names, OIDC Discovery §4 / RFC 8414 §3)
  or manual endpoints; configurable claim names.

Nothing here imports Flask request globals: views pass an :class:`OAuthRuntime` (``runtime(app)``).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal, assert_never
from urllib.parse import quote, urlencode, urlsplit

from joserfc.jwk import KeySet

from app.errors import AppError
from app.net import OutboundClient, Response, retry_after
from app.oauth.discovery import DiscoveryCache, ProviderMetadata, discover, fetch_jwks
from app.oauth.id_token import IdTokenPolicy, KeySource
from app.oauth.tokens import AuthMethod, ClientCredentials, TokenSet, fetch_userinfo
from app.providers.entries import ProviderEntry
from app.providers.hooks import HOOKS
from app.providers.registry import entry as catalog_entry
from app.providers.registry import render_template_string, template_scopes
from app.providers.templating import TemplateError, pick
from app.providers.types import AuthProviderType
from app.settings import Settings
from app.vault import Cipher, Secret

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.orm import Session

    from app.models import ProviderConfig

__all__ = [
    "MSA_TENANT_ID",
    "OAUTH_TYPES",
    "ClaimMap",
    "ConnectionReport",
    "OAuthProvider",
    "OAuthRuntime",
    "ProviderIdentity",
    "build_provider",
    "callback_path",
    "fetch_identity",
    "is_oauth_type",
    "provider_from_values",
    "redirect_uri",
    "revoke_tokens",
    "runtime",
    "test_connection",
]

OAUTH_TYPES: Final = frozenset(
    {AuthProviderType.GOOGLE, AuthProviderType.GITHUB, AuthProviderType.AZURE_AD, AuthProviderType.GENERIC_OIDC}
)
# The tenant of personal Microsoft accounts: what `consumers` resolves to, and the issuer's tenant for them.
MSA_TENANT_ID: Final = "9188040d-6c67-4c5b-b112-36a304b66dad"
AZURE_MULTI_TENANT: Final = frozenset({"common", "organizations"})
# With manual endpoints nothing says which algorithms sign the ID tokens; the asymmetric ones are safe to
# accept because the key comes from the configured JWKS (HMAC would need the client secret as key).
MANUAL_ID_TOKEN_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
WELL_KNOWN_SUFFIXES: Final = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
_EXTENSION_KEY: Final = "ami_oauth_discovery"
_create_lock = threading.Lock()


def is_oauth_type(provider_type: str) -> bool:
    return provider_type in {t.value for t in OAUTH_TYPES}


# --- the app's services --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthRuntime:
    """What the OAuth logic needs from the app: settings, the vault cipher, the one HTTP client, and the
    app's discovery/JWKS cache. Built by :func:`runtime`; jobs and views pass it down."""

    settings: Settings
    cipher: Cipher
    client: OutboundClient
    cache: DiscoveryCache


def runtime(app: Flask) -> OAuthRuntime:
    """The app's runtime; the discovery cache is created once per app and shared by every thread."""
    from app.extensions import get_cipher, get_settings
    from app.net import get_client

    client = get_client(app)
    cache = app.extensions.get(_EXTENSION_KEY)
    if cache is None:
        with _create_lock:
            cache = app.extensions.get(_EXTENSION_KEY)
            if cache is None:
                cache = DiscoveryCache(client)
                app.extensions[_EXTENSION_KEY] = cache
    assert isinstance(cache, DiscoveryCache)
    return OAuthRuntime(get_settings(app), get_cipher(app), client, cache)


def callback_path(config_id: int) -> str:
    return f"/oauth/{config_id}/callback"


def redirect_uri(settings: Settings, config_id: int) -> str:
    """The one redirect URI of a provider config (sign-in and connect share it): what the admin registers."""
    return settings.base_url.rstrip("/") + callback_path(config_id)


# --- the provider ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimMap:
    """Which claim (or ``a.b`` path) holds what; ``None`` when the provider has none."""

    user_id: str
    email: str | None = None
    email_verified: str | None = None
    name: str | None = None
    groups: str | None = None


@dataclass(frozen=True)
class OAuthProvider:
    """One provider config, ready for the protocol core. ``values`` are the effective non-secret settings."""

    config_id: int
    name: str
    type: AuthProviderType
    entry: ProviderEntry
    values: Mapping[str, Any]
    endpoints: Mapping[str, str]
    metadata: ProviderMetadata
    credentials: ClientCredentials
    scopes: tuple[str, ...]
    pkce: bool
    id_token: bool
    claims: ClaimMap
    policy: IdTokenPolicy
    default_expires_in: int | None = None
    client_secret: Secret | None = field(default=None, repr=False)
    # Checks ID-token signatures (the app's DiscoveryCache); None when the provider issues no ID tokens.
    keys: KeySource | None = field(default=None, repr=False, compare=False)

    @property
    def display_name(self) -> str:
        return self.name or self.entry.display_name

    @property
    def signin_enabled(self) -> bool:
        # `signin` defaults on: a config made before the field existed keeps offering sign-in.
        return self.values.get("signin", True) is not False

    @property
    def trust_email(self) -> bool:
        return self.values.get("trust_email") is True

    @property
    def jit(self) -> bool:
        return self.values.get("jit") is True

    @property
    def allowed_domains(self) -> tuple[str, ...]:
        value = self.values.get("allowed_domains") or ()
        return tuple(str(d).lower().lstrip("@") for d in value)

    @property
    def device_flow(self) -> bool:
        return self.values.get("device_flow") is True and self.metadata.device_authorization_endpoint is not None

    @property
    def refreshable(self) -> bool:
        """Whether a connect asks for a refresh token (the catalog's ``refresh_when``: Google only with
        access type "offline")."""
        spec = self.entry.oauth
        if spec is not None and spec.refresh_when is not None:
            return spec.refresh_when.matches({"config": self.values})
        return bool(self.entry.refresh.mode == "standard")

    @property
    def revoke_supported(self) -> bool:
        spec = self.entry.revoke
        if spec is None or not spec.supported:
            return False
        return bool(self._revoke_url())

    @property
    def revoke_hint(self) -> str:
        spec = self.entry.revoke
        return spec.hint if spec is not None else ""

    def authorize_params(self) -> dict[str, str]:
        """Extra authorization parameters from the catalog (Google ``hd``, an ``audience``), blanks dropped.

        Google's ``access_type`` is left out: it is sent only with a connect that wants a refresh token.
        """
        templates = self.entry.oauth.authorize_params if self.entry.oauth is not None else {}
        rendered = {k: v for k, v in _render_map(self.entry, templates, self.values).items() if v}
        rendered.pop("access_type", None)
        return rendered

    def refresh_request(self) -> tuple[str | None, dict[str, str] | None]:
        """``(offline_scope, refresh_params)`` for :func:`app.oauth.start_authorization` with want_refresh,
        from the catalog (Google: ``access_type=offline`` + ``prompt=consent``; OIDC: ``offline_access``
        + the core's ``prompt=consent``)."""
        spec = self.entry.oauth
        if self.type == AuthProviderType.GITHUB:
            # GitHub App user tokens come with a refresh token whenever expiry is on; there is no switch, and
            # GitHub's `prompt` knows only select_account.
            return None, {}
        if spec is None:
            return "offline_access", None
        params = dict(spec.refresh_params) if spec.refresh_params is not None else None
        return spec.offline_scope, params

    def _revoke_url(self) -> str:
        spec = self.entry.revoke
        if spec is None or not spec.supported:
            return ""
        url = ""
        if spec.url:
            url = _render(self.entry, spec.url, self.values)
        if not url and spec.discovery_key:
            value = self.metadata.document.get(spec.discovery_key)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                url = value
            elif spec.discovery_key == "revocation_endpoint" and self.metadata.revocation_endpoint:
                url = self.metadata.revocation_endpoint
        return url


def _scopes(entry: ProviderEntry, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return template_scopes(entry, config=values)


def _render(entry: ProviderEntry, template: str, values: Mapping[str, Any]) -> str:
    try:
        return render_template_string(template, **_scopes(entry, values)).strip()
    except TemplateError as exc:
        raise AppError("invalid_config", f"The catalog entry for {entry.id.value} is inconsistent: {exc}") from None


def _render_map(entry: ProviderEntry, templates: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, str]:
    return {name: _render(entry, template, values) for name, template in templates.items()}


def _issuer_from_discovery_url(url: str) -> str:
    """OIDC Discovery §4: ``<issuer>/.well-known/openid-configuration``; RFC 8414 §3 inserts the
    well-known segment before the issuer's path (``https://host/.well-known/oauth-authorization-server/p``)."""
    for suffix in WELL_KNOWN_SUFFIXES:
        if url.endswith(suffix):
            return url[: -len(suffix)]
        parts = urlsplit(url)
        if parts.path.startswith(suffix + "/"):
            return f"{parts.scheme}://{parts.netloc}{parts.path[len(suffix) :]}"
    raise AppError(
        "invalid_config",
        "The discovery URL does not end in /.well-known/openid-configuration",
        "Give the provider's OpenID Connect discovery URL",
        fields={"discovery_url": "Use the URL ending in /.well-known/openid-configuration."},
    )


def _azure_issuer(values: Mapping[str, Any]) -> str:
    """Entra's issuer for the configured tenant: ``…/{tenantid}/v2.0`` is what the v2.0 discovery document of
    ``common`` and ``organizations`` publishes (the core fills it from each token's ``tid``); ``consumers``
    is the fixed tenant of personal Microsoft accounts."""
    authority = str(values.get("authority") or "https://login.microsoftonline.com").rstrip("/")
    tenant = str(values.get("tenant") or "organizations").lower()
    if tenant in AZURE_MULTI_TENANT:
        # The v2.0 discovery document for these names the template issuer …/{tenantid}/v2.0.
        return f"{authority}/{{tenantid}}/v2.0"
    if tenant == "consumers":
        return f"{authority}/{MSA_TENANT_ID}/v2.0"
    return f"{authority}/{tenant}/v2.0"


Discover = Callable[[str, str | None], ProviderMetadata]


def _metadata(
    entry: ProviderEntry, values: Mapping[str, Any], endpoints: Mapping[str, str], discover_with: Discover
) -> ProviderMetadata:
    """The provider's metadata: discovered (and completed from the catalog), or built from its endpoints."""
    match entry.id:
        case AuthProviderType.GOOGLE:
            issuer = _catalog_issuer(entry, values) or "https://accounts.google.com"
            return discover_with(issuer, endpoints.get("discovery") or None)
        case AuthProviderType.AZURE_AD:
            metadata = discover_with(_azure_issuer(values), endpoints["discovery"])
            # Microsoft's discovery document does not list the device-code endpoint; the catalog knows it.
            if metadata.device_authorization_endpoint is None and endpoints.get("device_authorization"):
                metadata = replace(metadata, device_authorization_endpoint=endpoints["device_authorization"])
            return metadata
        case AuthProviderType.GENERIC_OIDC:
            issuer = _catalog_issuer(entry, values)
            if values.get("endpoint_source", "discovery") == "discovery":
                url = endpoints.get("discovery") or ""
                if not issuer and not url:
                    raise AppError(
                        "invalid_config", "The issuer is not set", fields={"issuer": "This field is required."}
                    )
                # OIDC Discovery §4: the document lives under the issuer unless an explicit URL is given.
                return discover_with(issuer or _issuer_from_discovery_url(url), url or None)
            return _manual_metadata(issuer, endpoints)
        case AuthProviderType.GITHUB:
            return ProviderMetadata(
                authorization_endpoint=endpoints["authorization"],
                token_endpoint=endpoints["token"],
                userinfo_endpoint=endpoints.get("userinfo") or None,
                device_authorization_endpoint=endpoints.get("device_authorization") or None,
                # GitHub has no ID tokens; PKCE S256 is supported (2025) for OAuth and GitHub Apps.
                code_challenge_methods_supported=("S256",),
            )
        case (
            AuthProviderType.AMI_CREDENTIALS
            | AuthProviderType.OPENAI
            | AuthProviderType.ANTHROPIC
            | AuthProviderType.HUGGINGFACE
            | AuthProviderType.GENERIC_API_KEY
            | AuthProviderType.SMTP
        ):
            raise AppError("invalid_config", f"{entry.display_name} is not an OAuth provider")
        case _:
            assert_never(entry.id)


def _catalog_issuer(entry: ProviderEntry, values: Mapping[str, Any]) -> str:
    """The entry's ``oauth.issuer`` rendered: byte for byte what the ID tokens' ``iss`` must be."""
    template = entry.oauth.issuer if entry.oauth is not None else None
    return _render(entry, template, values) if template else ""


def _manual_metadata(issuer: str, endpoints: Mapping[str, str]) -> ProviderMetadata:
    for name, label in (("authorization", "authorization_url"), ("token", "token_url")):
        if not endpoints.get(name):
            raise AppError("invalid_config", f"The {label} is not set", fields={label: "This field is required."})
    jwks = endpoints.get("jwks") or None
    return ProviderMetadata(
        authorization_endpoint=endpoints["authorization"],
        token_endpoint=endpoints["token"],
        issuer=issuer or None,
        jwks_uri=jwks,
        userinfo_endpoint=endpoints.get("userinfo") or None,
        revocation_endpoint=endpoints.get("revocation") or None,
        device_authorization_endpoint=endpoints.get("device_authorization") or None,
        id_token_signing_alg_values_supported=MANUAL_ID_TOKEN_ALGS,
    )


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _claim_map(entry: ProviderEntry, values: Mapping[str, Any]) -> ClaimMap:
    spec = entry.oauth
    rendered = _render_map(entry, spec.claims, values) if spec is not None else {}
    return ClaimMap(
        user_id=rendered.get("user_id") or "sub",
        email=rendered.get("email") or None,
        email_verified=rendered.get("email_verified") or None,
        name=rendered.get("name") or None,
        groups=rendered.get("groups") or None,
    )


def provider_from_values(
    entry: ProviderEntry,
    config_id: int,
    name: str,
    stored: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
    *,
    discover_with: Discover,
    keys: KeySource | None,
) -> OAuthProvider:
    """Build an :class:`OAuthProvider` from a config's stored values and decrypted secrets.

    ``discover_with(issuer, discovery_url)`` fetches the metadata (the app's cache, or an uncached
    :func:`~app.oauth.discover` for "Test connection"); ``keys`` checks ID-token signatures.
    """
    if entry.id not in OAUTH_TYPES or entry.oauth is None:
        raise AppError("invalid_config", f"{entry.display_name} is not an OAuth provider")
    from app.providers.validation import effective_values

    values = effective_values(entry, "config", stored)
    endpoints = {k: v for k, v in _render_map(entry, entry.endpoints, values).items() if v}
    metadata = _metadata(entry, values, endpoints, discover_with)
    method = _render(entry, entry.oauth.token_auth, values) or "client_secret_basic"
    if method not in ("client_secret_basic", "client_secret_post", "none"):
        raise AppError("invalid_config", f"Unsupported token endpoint authentication {method!r}")
    auth_method: AuthMethod = method  # type: ignore[assignment]
    secret = secrets.get("client_secret")
    if auth_method != "none" and secret is None:
        raise AppError(
            "invalid_config",
            "The client secret is not set",
            "Set the client secret in the provider configuration",
            fields={"client_secret": "This field is required."},
        )
    client_id = str(values.get("client_id") or "")
    if not client_id:
        raise AppError("invalid_config", "The client ID is not set", fields={"client_id": "This field is required."})
    credentials = ClientCredentials(
        client_id, secret.reveal() if secret is not None and auth_method != "none" else None, auth_method
    )
    scopes = tuple(str(s) for s in values.get("scopes") or ())
    pkce_raw: object = entry.oauth.pkce
    pkce = _flag(_render(entry, pkce_raw, values)) if isinstance(pkce_raw, str) else bool(pkce_raw)
    checks_id_token = entry.oauth.id_token and metadata.issuer is not None and metadata.jwks_uri is not None
    if "openid" in scopes and not checks_id_token:
        raise AppError(
            "invalid_config",
            "The scopes ask for an ID token (openid), but the provider's issuer or JWKS URI is not known",
            "Set the issuer and the JWKS URI, or remove openid from the scopes",
            fields={"jwks_uri": "Needed to check ID tokens."},
        )
    hosted_domain = values.get("hosted_domain") if entry.id == AuthProviderType.GOOGLE else None
    provider = OAuthProvider(
        config_id=config_id,
        name=name,
        type=entry.id,
        entry=entry,
        values=values,
        endpoints=endpoints,
        metadata=metadata,
        credentials=credentials,
        scopes=scopes,
        pkce=pkce,
        id_token=checks_id_token,
        claims=_claim_map(entry, values),
        policy=IdTokenPolicy(hosted_domain=str(hosted_domain) if hosted_domain else None),
        default_expires_in=entry.refresh.default_expires_in,
        client_secret=secret,
        keys=keys if checks_id_token else None,
    )
    return provider


def build_provider(db: Session, rt: OAuthRuntime, cfg: ProviderConfig) -> OAuthProvider:
    """The provider for a stored config: secrets from the vault, metadata from the app's cache."""
    from app.providers.configs import read_secrets

    entry = catalog_entry(cfg.provider_type)
    secrets = read_secrets(db, rt.cipher, entry, cfg)

    def cached(issuer: str, discovery_url: str | None) -> ProviderMetadata:
        return rt.cache.metadata(issuer, discovery_url=discovery_url)

    return provider_from_values(entry, cfg.id, cfg.name, cfg.config or {}, secrets, discover_with=cached, keys=rt.cache)


# --- who signed in ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderIdentity:
    """The provider account behind a token set, mapped with the config's claim names.

    ``email_verified`` is ``True`` only when the provider asserted it (``None``: it says nothing).
    ``provider_data`` is what is kept on a connected account: userinfo and what the hooks found.
    """

    subject: str
    email: str | None
    email_verified: bool | None
    name: str | None
    groups: tuple[str, ...]
    provider_data: dict[str, Any]


def _claim(claims: Mapping[str, Any], name: str | None) -> Any:
    if not name:
        return None
    if name in claims:
        return claims[name]
    # Nested claims (Keycloak's realm_access.roles) by dotted path; namespaced URL claims match exactly above.
    return pick(dict(claims), name) if "." in name and "://" not in name else None


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    # Some providers (AWS Cognito) send "true"/"false" strings.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _api_error(response: Response, what: str) -> AppError:
    status = response.status_code
    wait = retry_after(response)
    if status == 401:
        return AppError("token_expired", f"The provider did not accept the access token ({what})", "Reconnect")
    if status == 429 or (status == 403 and response.headers.get("x-ratelimit-remaining") == "0"):
        return AppError(
            "rate_limited", f"The provider rate-limited {what}", retry_after=round(wait) if wait is not None else None
        )
    if status >= 500:
        return AppError("provider_unreachable", f"The provider failed to answer {what} (HTTP {status})")
    if status in (403, 404):
        # GitHub hides endpoints a token has no scope for behind a 404.
        return AppError(
            "consent_required",
            f"The token may not read {what} (HTTP {status})",
            "Add the scope it needs to the provider configuration and reconnect",
        )
    return AppError("provider_unreachable", f"Unexpected answer from {what} (HTTP {status})")


def api_fetcher(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> Callable[[str], Any]:
    """``fetch(endpoint name)`` → JSON, with the catalog's headers (Bearer token, GitHub's Accept/version)."""
    entry = provider.entry
    scopes = template_scopes(entry, config=provider.values, token={"access_token": tokens.access_token}, secrets={})

    def fetch(name: str) -> Any:
        url = provider.endpoints.get(name)
        if not url:
            raise AppError("invalid_config", f"The {entry.display_name} catalog entry has no {name} endpoint")
        headers: dict[str, str] = {"Accept": "application/json"}
        for header in entry.headers:
            if header.value is None or header.when is not None:
                continue
            headers[render_template_string(header.name, **scopes)] = render_template_string(header.value, **scopes)
        response = client.get(url, headers=headers)
        what = urlsplit(url).path or url
        if response.status_code != 200:
            raise _api_error(response, what)
        try:
            return response.json()
        except ValueError:
            raise AppError("provider_unreachable", f"The answer from {what} is not JSON") from None

    return fetch


def fetch_identity(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> ProviderIdentity:
    """Who the tokens belong to: ID-token claims + userinfo (or GitHub's ``/user``) + the entry's hooks."""
    claims: dict[str, Any] = {}
    userinfo: dict[str, Any] = {}
    fetch = api_fetcher(client, provider, tokens)
    if provider.type == AuthProviderType.GITHUB:
        user = fetch("userinfo")
        userinfo = user if isinstance(user, dict) else {}
    elif provider.metadata.userinfo_endpoint is not None and (not provider.id_token or "openid" in tokens.scopes):
        subject = (tokens.id_claims or {}).get("sub")
        userinfo = fetch_userinfo(
            client,
            provider.metadata,
            tokens.access_token,
            expected_subject=subject if isinstance(subject, str) else None,
        )
    claims.update(userinfo)
    # The signed ID token wins over userinfo where both speak.
    claims.update(tokens.id_claims or {})
    data: dict[str, Any] = {}
    for hook_name in provider.entry.hooks:
        hook = HOOKS[hook_name].profile
        if hook is not None:
            data.update(hook(provider.entry, claims, fetch))
    raw_subject = _claim(claims, provider.claims.user_id)
    if raw_subject is None or isinstance(raw_subject, dict | list) or str(raw_subject) == "":
        raise AppError(
            "invalid_config",
            f"The provider's answer has no {provider.claims.user_id!r} claim to identify the user",
            "Check the user ID claim in the provider configuration",
        )
    email = data.get("email") if "email" in data else _claim(claims, provider.claims.email)
    verified = (
        data.get("email_verified") if "email_verified" in data else _claim(claims, provider.claims.email_verified)
    )
    name = data.get("name") if "name" in data else _claim(claims, provider.claims.name)
    groups = _claim(claims, provider.claims.groups)
    if isinstance(groups, str):
        groups = [groups]
    kept = {k: v for k, v in claims.items() if k not in _NOT_KEPT}
    return ProviderIdentity(
        subject=str(raw_subject)[:255],
        email=str(email).strip().lower() if isinstance(email, str) and "@" in email else None,
        email_verified=_as_bool(verified),
        name=str(name)[:200] if isinstance(name, str) and name else None,
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        provider_data={"userinfo": kept, **data},
    )


# Protocol claims that say nothing about the user and need not be kept on the account.
_NOT_KEPT: Final = frozenset(
    {
        "iss",
        "aud",
        "azp",
        "exp",
        "iat",
        "nbf",
        "nonce",
        "at_hash",
        "c_hash",
        "auth_time",
        "uti",
        "aio",
        "rh",
        "sid",
        "jti",
    }
)


# --- revoke ------------------------------------------------------------------------------------------------


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1 form-encodes both before Basic (identical to RFC 7617 for plain ids and secrets).
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


RevokeResult = Literal["revoked", "already_invalid"]


def revoke_tokens(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> RevokeResult:
    """Revoke a connected account's grant with the catalog's revoke request (RFC 7009, Google, GitHub).

    The refresh token is sent when there is one (revoking it ends the grant, RFC 7009 §2.1), else the
    access token. A token the provider no longer knows counts as revoked (``already_invalid``).
    Raises ``invalid_config`` when the provider has no revocation (Azure AD): the caller deletes locally.
    """
    spec = provider.entry.revoke
    url = provider._revoke_url()
    if spec is None or not spec.supported or not url:
        raise AppError(
            "invalid_config",
            f"{provider.entry.display_name} has no endpoint to revoke tokens",
            provider.revoke_hint or "Tokens expire on their own; the account is removed here only",
        )
    token, kind = (
        (tokens.refresh_token, "refresh_token") if tokens.refresh_token else (tokens.access_token, "access_token")
    )
    # GitHub's DELETE /applications/{client_id}/token takes the OAuth token, never a refresh token.
    token_values = {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "revoke_token": token,
        "revoke_token_type": kind,
    }
    scopes = template_scopes(
        provider.entry,
        config=provider.values,
        token=token_values,
        secrets={"client_secret": provider.client_secret},
    )
    body = {k: render_template_string(v, **scopes) for k, v in spec.body.items()}
    body = {k: v for k, v in body.items() if v}
    headers: dict[str, str] = {"Accept": "application/json"}
    content: bytes
    if spec.body_format == "json":
        headers["Content-Type"] = "application/json"
        content = json.dumps(body).encode()
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        content = urlencode(body).encode()
    if spec.auth == "basic":
        if spec.body_format == "form":
            # RFC 7009 §2.1: the client authenticates as it does at the token endpoint.
            headers, form = provider.credentials.authenticate(url, headers, content.decode())
            content = form.encode()
        else:
            headers["Authorization"] = _basic(provider.credentials.client_id, provider.credentials.client_secret or "")
    elif spec.auth == "bearer":
        headers["Authorization"] = f"Bearer {tokens.access_token}"
    response = client.request(spec.method, url, headers=headers, content=content)
    status = response.status_code
    if status in spec.expect_status:
        return "revoked"
    error: object = None
    try:
        parsed = response.json()
        error = parsed.get("error") if isinstance(parsed, dict) else None
    except ValueError:
        pass
    # Google answers 400 invalid_token for a token it already revoked; GitHub 404 for one it no longer knows.
    if (status == 400 and error in ("invalid_token", "invalid_grant")) or (status == 404 and spec.method == "DELETE"):
        return "already_invalid"
    wait = retry_after(response)
    if status == 429:
        raise AppError(
            "rate_limited", "The provider rate-limited the revocation", retry_after=round(wait) if wait else None
        )
    if status >= 500:
        raise AppError("provider_unreachable", f"The provider failed to revoke the token (HTTP {status})")
    if status == 401:
        raise AppError(
            "invalid_config",
            "The provider rejected the client credentials when revoking",
            "Check the client ID and secret in the provider configuration",
        )
    raise AppError("provider_unreachable", f"The provider refused the revocation (HTTP {status})")


# --- "Test connection" -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionReport:
    """What "Test connection" found: ``ok`` and ``(label, value)`` findings, or the failure."""

    ok: bool
    findings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    error: AppError | None = None


def test_connection(
    client: OutboundClient,
    entry: ProviderEntry,
    stored: Mapping[str, Any],
    secrets: Mapping[str, Secret | None],
    *,
    config_id: int = 0,
) -> ConnectionReport:
    """Fetch discovery (uncached) and the JWKS and report what was found; GitHub has neither."""
    fetched: dict[str, ProviderMetadata] = {}

    def uncached(issuer: str, discovery_url: str | None) -> ProviderMetadata:
        fetched["metadata"] = discover(client, issuer, discovery_url=discovery_url)
        return fetched["metadata"]

    try:
        provider = provider_from_values(entry, config_id, "", stored, secrets, discover_with=uncached, keys=None)
        keys: KeySet | None = None
        if provider.metadata.jwks_uri is not None:
            keys = fetch_jwks(client, provider.metadata.jwks_uri)
    except AppError as exc:
        return ConnectionReport(ok=False, error=exc)
    m = provider.metadata
    findings: list[tuple[str, str]] = []
    if "metadata" in fetched:
        findings.append(("Discovery", "found"))
    findings.append(("Issuer", m.issuer or "none (plain OAuth 2.0: no ID tokens)"))
    findings.append(("Authorization endpoint", m.authorization_endpoint))
    findings.append(("Token endpoint", m.token_endpoint))
    findings.append(("Userinfo endpoint", m.userinfo_endpoint or "none"))
    if m.jwks_uri is not None:
        kids = [str(k.kid) for k in keys] if keys is not None else []
        findings.append(("JWKS", f"{m.jwks_uri} — {len(kids)} signing key(s): {', '.join(kids) or '—'}"))
    if provider.id_token:
        findings.append(("ID-token algorithms", ", ".join(m.id_token_signing_alg_values_supported)))
    if provider.pkce:
        methods = m.code_challenge_methods_supported
        findings.append(("PKCE S256", "supported" if not methods or "S256" in methods else "NOT listed"))
    findings.append(("Revocation", provider._revoke_url() or "none — tokens expire on their own"))
    findings.append(("Device flow", m.device_authorization_endpoint or "not offered"))
    notes: list[str] = []
    if m.issuer_is_template:
        notes.append("Multi-tenant: each ID token's issuer is checked against its own tenant (tid).")
    if provider.type == AuthProviderType.GITHUB:
        notes.append("GitHub has no discovery document or signing keys; the endpoints above are used as shown.")
        notes.append("GitHub OAuth-app tokens do not expire and have no refresh token; they stay valid until revoked.")
    return ConnectionReport(ok=True, findings=tuple(findings), notes=tuple(notes))


def token_set_json(tokens: TokenSet) -> str:
    return json.dumps(tokens.to_dict(), separators=(",", ":"))


def token_set_from_json(raw: str) -> TokenSet:
    return TokenSet.from_dict(json.loads(raw))


def scopes_text(scopes: Sequence[str]) -> str:
    return " ".join(scopes)
