"""OpenID Provider metadata (OIDC Discovery 1.0, RFC 8414) and signing keys (JWKS), fetched and cached.

Everything goes through :class:`app.net.OutboundClient`, so discovery documents and JWKS URIs (which an
admin types in, or which a provider hands back) get the SSRF guard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from app.errors import N_, AppError
from app.net import OutboundClient, Response, retry_after

__all__ = [
    "DiscoveryCache",
    "ProviderMetadata",
    "discover",
    "discovery_url_for",
    "fetch_jwks",
]

WELL_KNOWN: Final = "/.well-known/openid-configuration"
# Azure AD's multi-tenant discovery names this placeholder in its issuer; the ID token's `tid` fills it.
TENANT_PLACEHOLDER: Final = "{tenantid}"
# OIDC Discovery §3: RS256 is the default when the provider does not list its ID-token algorithms.
DEFAULT_ID_TOKEN_ALGS: Final = ("RS256",)
DEFAULT_METADATA_TTL: Final = 3600.0
DEFAULT_JWKS_TTL: Final = 3600.0
# A token naming a kid we do not know makes us fetch the JWKS again, but never more often than this,
# so forged tokens with random kids cannot turn us into a request amplifier against the provider.
DEFAULT_JWKS_MIN_INTERVAL: Final = 60.0


def _str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@dataclass(frozen=True)
class ProviderMetadata:
    """What the app needs to know about an authorization server.

    Built from a discovery document (:meth:`from_document`) or, for providers without discovery
    (GitHub OAuth apps, manual configuration), directly by the caller. ``issuer`` is ``None`` for a
    plain OAuth 2.0 server: then there is no ID token to check and no RFC 9207 ``iss``.
    ``id_token_signing_alg_values_supported`` never contains ``none``.
    """

    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None = None
    jwks_uri: str | None = None
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    end_session_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = DEFAULT_ID_TOKEN_ALGS
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    # RFC 9207 §3: when true, every authorization response must carry `iss`.
    authorization_response_iss_parameter_supported: bool = False
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        algs = tuple(a for a in self.id_token_signing_alg_values_supported if a != "none")
        object.__setattr__(self, "id_token_signing_alg_values_supported", algs)

    @property
    def issuer_is_template(self) -> bool:
        """True for Azure AD's multi-tenant issuer (``…/{tenantid}/v2.0``)."""
        return self.issuer is not None and TENANT_PLACEHOLDER in self.issuer

    @classmethod
    def from_document(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        """Validate a discovery document; ``issuer`` must equal ``expected_issuer`` byte for byte.

        OIDC Discovery §4.3: the issuer in the document must be identical to the one the client was
        configured with, or an attacker's document could claim to speak for another provider.
        """
        if not isinstance(document, dict):
            raise AppError(
                "invalid_config",
                N_("The discovery document is not a JSON object"),
                N_("Check the issuer or discovery URL"),
            )
        issuer = document.get("issuer")
        if issuer != expected_issuer:
            raise AppError(
                "invalid_config",
                N_(
                    "The discovery document names issuer %(found)s, not %(expected)s",
                    found=repr(str(issuer)[:200]),
                    expected=repr(expected_issuer),
                ),
                N_("Set the issuer exactly as the provider publishes it (scheme, host, port, path, trailing slash)"),
                fields={"issuer": N_("Does not match the provider's issuer")},
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _http_url(document.get(name)):
                raise AppError(
                    "invalid_config",
                    N_("The discovery document has no valid %(name)s", name=name),
                    N_("The provider's discovery document is incomplete; configure the endpoints manually"),
                )
        optional: dict[str, str | None] = {}
        for name in (
            "userinfo_endpoint",
            "revocation_endpoint",
            "introspection_endpoint",
            "device_authorization_endpoint",
            "end_session_endpoint",
        ):
            value = document.get(name)
            optional[name] = value if _http_url(value) else None
        algs = _str_tuple(document.get("id_token_signing_alg_values_supported")) or DEFAULT_ID_TOKEN_ALGS
        if not [a for a in algs if a != "none"]:
            raise AppError(
                "invalid_config",
                N_("The provider signs ID tokens only with 'none'"),
                N_("Unsigned ID tokens are never accepted; configure the provider to sign them"),
            )
        return cls(
            issuer=issuer,
            authorization_endpoint=document["authorization_endpoint"],
            token_endpoint=document["token_endpoint"],
            jwks_uri=document["jwks_uri"],
            userinfo_endpoint=optional["userinfo_endpoint"],
            revocation_endpoint=optional["revocation_endpoint"],
            introspection_endpoint=optional["introspection_endpoint"],
            device_authorization_endpoint=optional["device_authorization_endpoint"],
            end_session_endpoint=optional["end_session_endpoint"],
            id_token_signing_alg_values_supported=algs,
            code_challenge_methods_supported=_str_tuple(document.get("code_challenge_methods_supported")),
            token_endpoint_auth_methods_supported=_str_tuple(document.get("token_endpoint_auth_methods_supported")),
            scopes_supported=_str_tuple(document.get("scopes_supported")),
            authorization_response_iss_parameter_supported=(
                document.get("authorization_response_iss_parameter_supported") is True
            ),
            document=document,
        )


def discovery_url_for(issuer: str) -> str:
    """OIDC Discovery §4: the issuer (without a trailing slash) + ``/.well-known/openid-configuration``."""
    return issuer.rstrip("/") + WELL_KNOWN


def _fetch_json(client: OutboundClient, url: str, what: str) -> Any:
    response = client.get(url, headers={"Accept": "application/json"})
    _raise_for_status(response, what)
    try:
        return response.json()
    except ValueError:
        raise AppError(
            "invalid_config",
            N_("The %(what)s is not valid JSON", what=what),
            N_("Check the %(what)s URL: %(url)s", what=what, url=_where(url)),
        ) from None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _raise_for_status(response: Response, what: str) -> None:
    status = response.status_code
    if status == 200:
        return
    wait = retry_after(response)
    if status == 429:
        raise AppError(
            "rate_limited",
            N_("The provider rate-limited the %(what)s request", what=what),
            retry_after=round(wait) if wait is not None else None,
        )
    if status >= 500:
        raise AppError(
            "provider_unreachable",
            N_("The provider answered the %(what)s request with HTTP %(status)s", what=what, status=status),
            retry_after=round(wait) if wait is not None else None,
        )
    raise AppError(
        "invalid_config",
        N_("The %(what)s request was answered with HTTP %(status)s", what=what, status=status),
        N_("Check the %(what)s URL: %(url)s", what=what, url=_where(str(response.request.url))),
    )


def discover(client: OutboundClient, issuer: str, *, discovery_url: str | None = None) -> ProviderMetadata:
    """Fetch and validate the provider's discovery document (no cache: "Test connection" uses this).

    ``discovery_url`` defaults to :func:`discovery_url_for`; Azure AD's multi-tenant issuer (a
    ``{tenantid}`` template) has to give it, e.g. ``…/common/v2.0/.well-known/openid-configuration``.
    """
    if discovery_url is None:
        if TENANT_PLACEHOLDER in issuer:
            raise AppError(
                "invalid_config",
                N_("A templated issuer needs an explicit discovery URL"),
                N_("Give the discovery URL of the tenant-independent endpoint"),
            )
        discovery_url = discovery_url_for(issuer)
    return ProviderMetadata.from_document(_fetch_json(client, discovery_url, "discovery document"), issuer)


def fetch_jwks(client: OutboundClient, jwks_uri: str) -> KeySet:
    """Fetch a JWK Set; keys for encryption (``use: enc``) and unknown key types are left out."""
    document = _fetch_json(client, jwks_uri, "JWKS")
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise AppError(
            "invalid_config",
            N_("The JWKS has no 'keys' array"),
            N_("Check the JWKS URL: %(jwks_uri)s", jwks_uri=_where(jwks_uri)),
        )
    signing = [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    try:
        return KeySet.import_key_set({"keys": signing})
    except (JoseError, ValueError, TypeError):
        raise AppError(
            "invalid_config",
            N_("The JWKS holds no usable signing key"),
            N_("Check the JWKS URL: %(jwks_uri)s", jwks_uri=_where(jwks_uri)),
        ) from None


@dataclass
class _Entry:
    value: Any
    fetched_at: float


# Transient failures: while a provider is down, a cached document or key set past its TTL is still
# better than failing every sign-in; a configuration error (4xx, bad JSON, wrong issuer) is not hidden.
_TRANSIENT: Final = frozenset({"provider_unreachable", "rate_limited"})


class DiscoveryCache:
    """Discovery documents and JWKS, cached per URL; one instance per app, shared by all threads.

    ``signing_key`` fetches the JWKS again once when a token names an unknown ``kid`` (the provider
    rotated its keys), but not more often than every ``jwks_min_interval`` seconds. When a refresh
    after the TTL fails transiently, the stale copy is used until the provider answers again.
    Fetches for one URL are serialised (one request, however many threads ask); other URLs are not held up.
    """

    def __init__(
        self,
        client: OutboundClient,
        *,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        jwks_ttl: float = DEFAULT_JWKS_TTL,
        jwks_min_interval: float = DEFAULT_JWKS_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.metadata_ttl = metadata_ttl
        self.jwks_ttl = jwks_ttl
        self.jwks_min_interval = jwks_min_interval
        self._clock = clock
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def metadata(self, issuer: str, *, discovery_url: str | None = None) -> ProviderMetadata:
        """The provider's metadata, from the cache while younger than ``metadata_ttl``."""
        key = ("metadata", issuer, discovery_url or "")
        with self._lock_for(key):
            entry = self._fresh(
                key, self.metadata_ttl, lambda: discover(self.client, issuer, discovery_url=discovery_url)
            )
        metadata: ProviderMetadata = entry.value
        return metadata

    def jwks(self, jwks_uri: str) -> KeySet:
        """The JWK Set at ``jwks_uri``, from the cache while younger than ``jwks_ttl``."""
        key = ("jwks", jwks_uri)
        with self._lock_for(key):
            keys: KeySet = self._fresh(key, self.jwks_ttl, lambda: fetch_jwks(self.client, jwks_uri)).value
        return keys

    def signing_key(self, jwks_uri: str, kid: str | None) -> Key:
        """The key that signed a token (by ``kid``), re-fetching the JWKS once if the kid is unknown.

        OIDC Core §10.1.1: a provider rotates keys by publishing the new one in its JWKS; the client
        picks up the new key when a token names it. Without ``kid`` the set must hold exactly one key.
        """
        key = ("jwks", jwks_uri)
        with self._lock_for(key):
            entry = self._fresh(key, self.jwks_ttl, lambda: fetch_jwks(self.client, jwks_uri))
            found = _find_key(entry.value, kid)
            if found is None and self._clock() - entry.fetched_at >= self.jwks_min_interval:
                entry = _Entry(fetch_jwks(self.client, jwks_uri), self._clock())
                self._entries[key] = entry
                found = _find_key(entry.value, kid)
        if found is None:
            raise AppError(
                "validation_failed",
                N_(
                    "The token is signed with a key the provider does not publish (kid %(kid)s)",
                    kid=repr(str(kid)[:64]),
                ),
                N_("Sign in again; if it keeps failing, the provider's keys may be misconfigured"),
            )
        return found

    def invalidate(self) -> None:
        """Forget everything (e.g. after an admin changed a provider's URLs)."""
        with self._guard:
            self._entries.clear()

    def _lock_for(self, key: tuple[str, ...]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _fresh(self, key: tuple[str, ...], ttl: float, fetch: Callable[[], Any]) -> _Entry:
        """The cached entry, fetched anew when missing or older than ``ttl``; the caller holds its lock."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.fetched_at < ttl:
            return entry
        try:
            entry = _Entry(fetch(), self._clock())
        except AppError as exc:
            if entry is not None and exc.code in _TRANSIENT:
                return entry
            raise
        self._entries[key] = entry
        return entry


def _find_key(keys: KeySet, kid: str | None) -> Key | None:
    if kid is None:
        candidates = list(keys)
        return candidates[0] if len(candidates) == 1 else None
    for key in keys:
        if key.kid == kid:
            return key
    return None
