"""From a provider config's values and its catalog entry to what the protocol core needs.

The catalog entry (``app/providers/catalog/<type>.yaml``) is the data: endpoint templates, where the metadata
comes from (discovery, or the endpoints themselves), token-endpoint authentication, PKCE, claim names, how a
refresh token is asked for, the revoke request. This module renders it with the config's values; what data
cannot say comes from the entry's hooks (Entra ID's multi-tenant issuer). Nothing here knows a provider id,
a database or Flask: :func:`app.oauth.runtime.build_provider` reads a stored config and calls
:func:`provider_from_values`.

- Metadata: with a ``discovery`` endpoint (and ``oauth.discovery_when`` holding, if given) the discovery
  document, its issuer being the rendered ``oauth.issuer`` (or the hook's, or what the discovery URL names,
  OIDC Discovery §4 / RFC 8414 §3), an endpoint the document lacks filled in from the catalog (Microsoft
  does not list its device endpoint); otherwise the rendered endpoints (GitHub, manual configuration).
- An ID token is checked when the entry says it issues them and the issuer and JWKS are known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

from app.errors import N_, AppError
from app.net import OutboundClient
from app.oauth.discovery import ProviderMetadata
from app.oauth.id_token import IdTokenPolicy, KeySource
from app.oauth.revocation import RevocationRequest, RevokeResult, revoke
from app.oauth.tokens import AuthMethod, ClientCredentials, TokenSet
from app.providers.entries import ProviderEntry
from app.providers.hooks import HOOKS
from app.providers.registry import render_template_string, template_scopes
from app.providers.templating import TemplateError
from app.providers.types import AuthProviderType
from app.providers.validation import effective_values
from app.vault import Secret

# provider_data key that says an account's tokens came from the device client (refresh must use it too).
DEVICE_CLIENT_MARK: Final = "oauth_client"

__all__ = [
    "DEVICE_CLIENT_MARK",
    "ClaimMap",
    "Discover",
    "OAuthProvider",
    "provider_from_values",
    "render",
    "revoke_tokens",
]

# With manual endpoints nothing says which algorithms sign the ID tokens; the asymmetric ones are safe to
# accept because the key comes from the configured JWKS (HMAC would need the client secret as key).
MANUAL_ID_TOKEN_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
WELL_KNOWN_SUFFIXES: Final = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")

# (issuer, discovery URL or None) → metadata: the app's cache, or an uncached fetch for "Test connection".
Discover = Callable[[str, str | None], ProviderMetadata]


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
    # The device flow's own client and scopes (the catalog's `oauth.device_client`, Google); None: the main one.
    device_credentials: ClientCredentials | None = field(default=None, repr=False)
    device_scopes: tuple[str, ...] = ()
    # True on the copy for_device() returns: tokens it obtains belong to the device client.
    via_device_client: bool = False

    @property
    def display_name(self) -> str:
        return self.name or self.entry.display_name

    @property
    def signin_enabled(self) -> bool:
        # `signin` defaults on: a config made before the field existed keeps offering sign-in.
        return self.entry.capabilities.signin and self.values.get("signin", True) is not False

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
        return (
            self.entry.capabilities.device_flow
            and self.values.get("device_flow") is True
            and self.metadata.device_authorization_endpoint is not None
        )

    def for_device(self) -> OAuthProvider:
        """This provider as the device flow (and the refresh of what it connected) must use it: with the
        device client and its scopes where the config has one, else unchanged."""
        if self.device_credentials is None:
            return self
        return replace(
            self, credentials=self.device_credentials, scopes=self.device_scopes or self.scopes, via_device_client=True
        )

    @property
    def refreshable(self) -> bool:
        """Whether a connect asks for a refresh token (the catalog's ``refresh_when``: Google only with
        access type "offline")."""
        spec = self.entry.oauth
        if spec is not None and spec.refresh_when is not None:
            return spec.refresh_when.matches({"config": self.values})
        return self.entry.capabilities.refresh == "standard"

    @property
    def revoke_supported(self) -> bool:
        return bool(self.revocation_url())

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
        + the core's ``prompt=consent``; GitHub: nothing to ask for)."""
        spec = self.entry.oauth
        if spec is None:
            return "offline_access", None
        params = dict(spec.refresh_params) if spec.refresh_params is not None else None
        return spec.offline_scope, params

    def revocation_url(self) -> str:
        """The catalog's revoke URL rendered, else the discovery document's (``discovery_key``); blank: none."""
        spec = self.entry.revoke
        if spec is None or not spec.supported:
            return ""
        url = render(self.entry, spec.url, self.values) if spec.url else ""
        if not url and spec.discovery_key:
            value = self.metadata.document.get(spec.discovery_key)
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                url = value
            elif spec.discovery_key == "revocation_endpoint" and self.metadata.revocation_endpoint:
                url = self.metadata.revocation_endpoint
        return url

    def revocation_request(self, tokens: TokenSet) -> RevocationRequest:
        """The catalog's revoke request for a token set: the refresh token when there is one (revoking it ends
        the grant, RFC 7009 §2.1), else the access token. ``url`` is blank when the provider has none."""
        spec = self.entry.revoke
        if spec is None or not spec.supported:
            return RevocationRequest(url="")
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
            self.entry, config=self.values, token=token_values, secrets={"client_secret": self.client_secret}
        )
        headers = {"Authorization": f"Bearer {tokens.access_token}"} if spec.auth == "bearer" else {}
        return RevocationRequest(
            url=self.revocation_url(),
            body={k: render_template_string(v, **scopes) for k, v in spec.body.items()},
            method="DELETE" if spec.method == "DELETE" else "POST",
            body_format=spec.body_format,
            client=self.credentials if spec.auth == "basic" else None,
            headers=headers,
            expect_status=spec.expect_status,
        )


def render(entry: ProviderEntry, template: str, values: Mapping[str, Any]) -> str:
    try:
        return render_template_string(template, **template_scopes(entry, config=values)).strip()
    except TemplateError as exc:
        raise AppError(
            "invalid_config", N_("The catalog entry for %(id)s is inconsistent: %(exc)s", id=entry.id, exc=exc)
        ) from None


def _render_map(entry: ProviderEntry, templates: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, str]:
    return {name: render(entry, template, values) for name, template in templates.items()}


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
        N_("The discovery URL does not end in /.well-known/openid-configuration"),
        N_("Give the provider's OpenID Connect discovery URL"),
        fields={"discovery_url": N_("Use the URL ending in /.well-known/openid-configuration.")},
    )


def _issuer(entry: ProviderEntry, values: Mapping[str, Any]) -> str:
    """What the ID tokens' ``iss`` must be, byte for byte: a hook's answer, else ``oauth.issuer`` rendered."""
    for name in entry.hooks:
        hook = HOOKS[name].issuer
        if hook is not None:
            return hook(entry, values)
    template = entry.oauth.issuer if entry.oauth is not None else None
    return render(entry, template, values) if template else ""


def _discovers(entry: ProviderEntry, values: Mapping[str, Any]) -> bool:
    if "discovery" not in entry.endpoints:
        return False
    condition = entry.oauth.discovery_when if entry.oauth is not None else None
    return condition is None or condition.matches({"config": values})


def _metadata(
    entry: ProviderEntry, values: Mapping[str, Any], endpoints: Mapping[str, str], discover_with: Discover
) -> ProviderMetadata:
    """The provider's metadata: discovered (and completed from the catalog), or built from its endpoints."""
    issuer = _issuer(entry, values)
    if _discovers(entry, values):
        url = endpoints.get("discovery") or ""
        if not issuer and not url:
            raise AppError(
                "invalid_config", N_("The issuer is not set"), fields={"issuer": N_("This field is required.")}
            )
        # OIDC Discovery §4: the document lives under the issuer unless an explicit URL is given.
        metadata = discover_with(issuer or _issuer_from_discovery_url(url), url or None)
        if metadata.device_authorization_endpoint is None and endpoints.get("device_authorization"):
            metadata = replace(metadata, device_authorization_endpoint=endpoints["device_authorization"])
        return metadata
    for name, label in (("authorization", "authorization_url"), ("token", "token_url")):
        if not endpoints.get(name):
            raise AppError(
                "invalid_config",
                N_("The %(label)s is not set", label=label),
                fields={label: N_("This field is required.")},
            )
    return ProviderMetadata(
        authorization_endpoint=endpoints["authorization"],
        token_endpoint=endpoints["token"],
        issuer=issuer or None,
        jwks_uri=endpoints.get("jwks") or None,
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
    if not entry.capabilities.oauth or entry.oauth is None:
        raise AppError(
            "invalid_config", N_("%(display_name)s is not an OAuth provider", display_name=entry.display_name)
        )
    values = effective_values(entry, "config", stored)
    endpoints = {k: v for k, v in _render_map(entry, entry.endpoints, values).items() if v}
    metadata = _metadata(entry, values, endpoints, discover_with)
    method = render(entry, entry.oauth.token_auth, values) or "client_secret_basic"
    if method not in ("client_secret_basic", "client_secret_post", "none"):
        raise AppError(
            "invalid_config", N_("Unsupported token endpoint authentication %(method)s", method=repr(method))
        )
    auth_method: AuthMethod = method  # type: ignore[assignment]
    secret = secrets.get("client_secret")
    if auth_method != "none" and secret is None:
        raise AppError(
            "invalid_config",
            N_("The client secret is not set"),
            N_("Set the client secret in the provider configuration"),
            fields={"client_secret": N_("This field is required.")},
        )
    client_id = str(values.get("client_id") or "")
    if not client_id:
        raise AppError(
            "invalid_config", N_("The client ID is not set"), fields={"client_id": N_("This field is required.")}
        )
    credentials = ClientCredentials(
        client_id, secret.reveal() if secret is not None and auth_method != "none" else None, auth_method
    )
    scopes = tuple(str(s) for s in values.get("scopes") or ())
    pkce_raw: object = entry.oauth.pkce
    pkce = _flag(render(entry, pkce_raw, values)) if isinstance(pkce_raw, str) else bool(pkce_raw)
    checks_id_token = entry.oauth.id_token and metadata.issuer is not None and metadata.jwks_uri is not None
    if "openid" in scopes and not checks_id_token:
        raise AppError(
            "invalid_config",
            N_("The scopes ask for an ID token (openid), but the provider's issuer or JWKS URI is not known"),
            N_("Set the issuer and the JWKS URI, or remove openid from the scopes"),
            fields={"jwks_uri": N_("Needed to check ID tokens.")},
        )
    hosted_domain = render(entry, entry.oauth.hosted_domain, values) if entry.oauth.hosted_domain else ""
    device_credentials, device_scopes = _device_client(entry, values, secrets, auth_method)
    return OAuthProvider(
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
        policy=IdTokenPolicy(hosted_domain=hosted_domain or None),
        default_expires_in=entry.refresh.default_expires_in,
        client_secret=secret,
        keys=keys if checks_id_token else None,
        device_credentials=device_credentials,
        device_scopes=device_scopes,
    )


def _device_client(
    entry: ProviderEntry, values: Mapping[str, Any], secrets: Mapping[str, Secret | None], method: AuthMethod
) -> tuple[ClientCredentials | None, tuple[str, ...]]:
    """The catalog's ``oauth.device_client`` for this config: its credentials and scopes, or ``(None, ())``
    when the entry has none, the device flow is off or its client ID is blank (then the main client is used)."""
    spec = entry.oauth.device_client if entry.oauth is not None else None
    if spec is None or values.get("device_flow") is not True:
        return None, ()
    client_id = render(entry, spec.client_id, values)
    if not client_id:
        return None, ()
    secret = secrets.get(spec.client_secret)
    if method != "none" and secret is None:
        raise AppError(
            "invalid_config",
            N_("The device flow's client secret is not set"),
            N_("Set it in the provider configuration, or turn the device flow off"),
            fields={spec.client_secret: N_("This field is required.")},
        )
    scopes = tuple(str(s) for s in values.get(spec.scopes) or ()) if spec.scopes else ()
    revealed = secret.reveal() if secret is not None and method != "none" else None
    return ClientCredentials(client_id, revealed, method), scopes


def revoke_tokens(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> RevokeResult:
    """Revoke a connected account's grant with the catalog's revoke request (RFC 7009, Google, GitHub).

    A token the provider no longer knows counts as revoked (``already_invalid``). Raises ``invalid_config``
    when the provider has no revocation (Azure AD): the caller deletes locally.
    """
    request = provider.revocation_request(tokens)
    if not request.url:
        raise AppError(
            "invalid_config",
            N_("%(display_name)s has no endpoint to revoke tokens", display_name=provider.entry.display_name),
            provider.revoke_hint or "Tokens expire on their own; the account is removed here only",
        )
    return revoke(client, request)
