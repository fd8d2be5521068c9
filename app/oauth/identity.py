"""Who a token set belongs to: ID-token claims, userinfo and the entry's profile hooks, mapped with the
config's claim names. Catalog glue over the protocol core: HTTP through the app's client, no database.

Userinfo is read the OpenID Connect way (OIDC Core §5.3, its ``sub`` checked against the ID token's) for an
``oidc`` entry, and as a plain API call with the entry's headers for an ``oauth2`` one (GitHub's ``/user``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from app.errors import N_, AppError
from app.net import OutboundClient, Response, retry_after
from app.oauth.flow import PendingAuthorization, complete_authorization
from app.oauth.provider import OAuthProvider
from app.oauth.tokens import TokenSet, fetch_userinfo
from app.providers.hooks import HOOKS
from app.providers.registry import render_template_string, template_scopes
from app.providers.templating import pick
from app.providers.types import AuthMode

__all__ = ["ProviderIdentity", "api_fetcher", "fetch_identity", "finish_authorization"]


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
        return AppError(
            "token_expired", N_("The provider did not accept the access token (%(what)s)", what=what), N_("Reconnect")
        )
    if status == 429 or (status == 403 and response.headers.get("x-ratelimit-remaining") == "0"):
        return AppError(
            "rate_limited",
            N_("The provider rate-limited %(what)s", what=what),
            retry_after=round(wait) if wait is not None else None,
        )
    if status >= 500:
        return AppError(
            "provider_unreachable",
            N_("The provider failed to answer %(what)s (HTTP %(status)s)", what=what, status=status),
        )
    if status in (403, 404):
        # GitHub hides endpoints a token has no scope for behind a 404.
        return AppError(
            "consent_required",
            N_("The token may not read %(what)s (HTTP %(status)s)", what=what, status=status),
            N_("Add the scope it needs to the provider configuration and reconnect"),
        )
    return AppError(
        "provider_unreachable", N_("Unexpected answer from %(what)s (HTTP %(status)s)", what=what, status=status)
    )


def api_fetcher(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> Callable[[str], Any]:
    """``fetch(endpoint name)`` → JSON, with the catalog's headers (Bearer token, GitHub's Accept/version)."""
    entry = provider.entry
    scopes = template_scopes(entry, config=provider.values, token={"access_token": tokens.access_token}, secrets={})

    def fetch(name: str) -> Any:
        url = provider.endpoints.get(name)
        if not url:
            raise AppError(
                "invalid_config",
                N_(
                    "The %(display_name)s catalog entry has no %(name)s endpoint",
                    display_name=entry.display_name,
                    name=name,
                ),
            )
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
            raise AppError("provider_unreachable", N_("The answer from %(what)s is not JSON", what=what)) from None

    return fetch


def fetch_identity(client: OutboundClient, provider: OAuthProvider, tokens: TokenSet) -> ProviderIdentity:
    """Who the tokens belong to: ID-token claims + userinfo (or an OAuth 2.0 API's ``userinfo``) + the entry's hooks."""
    claims: dict[str, Any] = {}
    userinfo: dict[str, Any] = {}
    fetch = api_fetcher(client, provider, tokens)
    if provider.entry.auth_mode == AuthMode.OAUTH2:
        # Plain OAuth 2.0 has no userinfo standard: the `userinfo` endpoint is an API call like any other.
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
            N_(
                "The provider's answer has no %(claim)s claim to identify the user",
                claim=repr(provider.claims.user_id),
            ),
            N_("Check the user ID claim in the provider configuration"),
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


def finish_authorization(
    client: OutboundClient, provider: OAuthProvider, pending: PendingAuthorization, params: Mapping[str, str]
) -> tuple[TokenSet, ProviderIdentity]:
    """The provider's answer to an authorization this app started: checked and exchanged
    (:func:`app.oauth.flow.complete_authorization` with the provider's metadata, credentials, keys and policy),
    then the identity behind the tokens. Sign-in, connecting an account and a CMS connect link all end here."""
    tokens = complete_authorization(
        client,
        provider.metadata,
        provider.credentials,
        pending,
        params,
        keys=provider.keys,
        policy=provider.policy,
        default_expires_in=provider.default_expires_in,
    )
    return tokens, fetch_identity(client, provider, tokens)
