"""OAuth plumbing the OAuth stand-ins share: PKCE, clients, authorization codes, grants and tokens, the
signing-key pool, and :class:`OAuthVendor` (``add_client``, ``add_account``, ``login_as``, ``deny_next``,
``approve(url)``, ``mint_tokens``, ``expire_access_tokens``, ``revoke_all``, ``grants``, ``rotate_signing_key``,
``tamper_next_id_token``)."""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    Vendor,
    b64url,
)


def pkce_pair(verifier: str | None = None) -> tuple[str, str]:
    """``(code_verifier, S256 code_challenge)`` per RFC 7636 §4.1-4.2."""
    verifier = verifier or b64url(secrets.token_bytes(48))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def pkce_ok(challenge: str, method: str, verifier: str) -> bool:
    if not _VERIFIER.fullmatch(verifier):  # RFC 7636 §4.1
        return False
    if method == "plain":
        return secrets.compare_digest(verifier, challenge)
    return secrets.compare_digest(pkce_pair(verifier)[1], challenge)


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    expiring_tokens: bool = False
    """GitHub only: a GitHub App whose user tokens expire and come with a refresh token."""


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    account: str
    redirect_uri: str | None
    scopes: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float
    offline: bool
    extra: dict[str, Any] = field(default_factory=dict)
    used: bool = False


@dataclass
class Grant:
    """What one authorization produced: the refresh token (if any), its access tokens, and how often it
    was refreshed — so a test can assert "refreshed exactly once" at the provider."""

    client_id: str
    account: str
    scopes: tuple[str, ...]
    refresh_token: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    access_tokens: list[str] = field(default_factory=list)
    old_refresh_tokens: list[str] = field(default_factory=list)
    refreshes: int = 0
    revoked: bool = False
    refresh_expires_at: float | None = None


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_at: float | None


@dataclass(frozen=True)
class Callback:
    """Where the authorize endpoint sent the browser: ``url`` (the full redirect for query mode, the form
    action for ``form_post``), the response parameters, and the HTTP method the browser would use."""

    url: str
    params: dict[str, str]
    method: str = "GET"

    @property
    def code(self) -> str:
        return self.params["code"]


_KEY_POOL: list[rsa.RSAPrivateKey] = []
_KEY_POOL_SIZE = 6
_key_counter = itertools.count()
_key_lock = threading.Lock()


def _signing_key() -> RSAKey:
    """A fresh-kid RSA key; the key material is reused from a small pool because generating RSA keys is
    the slowest thing a stand-in does. Distinct kids keep each stand-in's JWKS its own."""
    with _key_lock:
        n = next(_key_counter)
        if len(_KEY_POOL) < _KEY_POOL_SIZE:
            _KEY_POOL.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        native = _KEY_POOL[n % _KEY_POOL_SIZE]
    # Wrapping the native key: importing a private JWK again would re-validate it (~90 ms).
    return RSAKey(native, native, parameters={"kid": secrets.token_hex(20), "use": "sig", "alg": "RS256"})


class OAuthVendor(Vendor):
    """Shared OAuth 2.0 / OIDC machinery: clients, accounts, codes with PKCE, grants, RS256 ID tokens."""

    code_ttl: float = 600.0
    access_token_ttl: int = 3599
    token_endpoint_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.clients: dict[str, OAuthClient] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self._grants: list[Grant] = []
        self._access: dict[str, AccessToken] = {}
        self._refresh_tokens: dict[str, Grant] = {}
        self._current_login: str | None = None
        self._deny: tuple[str, str | None] | None = None
        self._keys: list[RSAKey] = [_signing_key()]
        self._tamper: tuple[dict[str, Any], tuple[str, ...], bool] | None = None

    # accounts and clients (subclasses define add_account and _accounts)

    def _account_keys(self) -> list[str]:
        raise NotImplementedError

    def login_as(self, account: str) -> None:
        """The account that "signs in" at the next authorizations (default: the first one added)."""
        if account not in self._account_keys():
            raise KeyError(f"unknown {self.name} account {account!r}")
        self._current_login = account

    def deny_next(self, error: str = "access_denied", description: str | None = None) -> None:
        """The next authorization is declined by the user: the browser is sent back with ``error``."""
        self._deny = (error, description)

    def _signed_in(self, hint: str | None) -> str | None:
        keys = self._account_keys()
        if hint and hint in keys:
            return hint
        if self._current_login is not None:
            return self._current_login
        return keys[0] if keys else None

    def _take_deny(self) -> tuple[str, str | None] | None:
        with self._lock:
            deny, self._deny = self._deny, None
        return deny

    def _register_client(self, client: OAuthClient) -> OAuthClient:
        with self._lock:
            self.clients[client.client_id] = client
        return client

    # codes and tokens

    def _issue_code(self, code: str, **fields: Any) -> str:
        with self._lock:
            self.codes[code] = AuthorizationCode(code=code, issued_at=self.now(), **fields)
        return code

    def _redeem(self, code_value: str, client_id: str) -> tuple[AuthorizationCode | None, str]:
        """The code if usable by ``client_id``, else ``(None, reason)`` with reason missing/used/expired."""
        with self._lock:
            code = self.codes.get(code_value)
            if code is None or code.client_id != client_id:
                return None, "missing"
            if code.used:
                # RFC 6749 §4.1.2: a reused code SHOULD revoke what it issued.
                for grant in self._grants:
                    if grant.extra.get("code") == code_value:
                        self._revoke_grant(grant)
                return None, "used"
            if self.now() > code.issued_at + self.code_ttl:
                return None, "expired"
            code.used = True
            return code, ""

    def _new_grant(
        self, client_id: str, account: str, scopes: Sequence[str], refresh: str | None, **extra: Any
    ) -> Grant:
        grant = Grant(client_id, account, tuple(scopes), refresh, extra=dict(extra))
        with self._lock:
            self._grants.append(grant)
            if refresh is not None:
                self._refresh_tokens[refresh] = grant
        return grant

    def _new_access_token(self, grant: Grant, token: str, ttl: int | None) -> str:
        with self._lock:
            self._access[token] = AccessToken(token, grant, self.now() + ttl if ttl is not None else None)
            grant.access_tokens.append(token)
        return token

    def _rotate_refresh(self, grant: Grant, new: str, *, keep_old: bool) -> None:
        with self._lock:
            if grant.refresh_token is not None:
                grant.old_refresh_tokens.append(grant.refresh_token)
                if not keep_old:
                    self._refresh_tokens.pop(grant.refresh_token, None)
            grant.refresh_token = new
            self._refresh_tokens[new] = grant

    def _revoke_grant(self, grant: Grant) -> None:
        # The tokens stay indexed (and are refused as revoked) so a vendor can say "revoked" rather than
        # "unknown" where it does (Microsoft's AADSTS50173).
        with self._lock:
            grant.revoked = True

    def access_token_info(self, token: str | None) -> AccessToken | None:
        """The live access token, or None if unknown, revoked or expired."""
        with self._lock:
            found = self._access.get(token or "")
        if found is None or found.grant.revoked:
            return None
        if found.expires_at is not None and self.now() >= found.expires_at:
            return None
        return found

    def refresh_grant(self, token: str | None) -> Grant | None:
        with self._lock:
            grant = self._refresh_tokens.get(token or "")
        if grant is None or grant.revoked:
            return None
        if grant.refresh_expires_at is not None and self.now() >= grant.refresh_expires_at:
            return None
        return grant

    @property
    def grants(self) -> list[Grant]:
        with self._lock:
            return list(self._grants)

    def expire_access_tokens(self, account: str | None = None) -> None:
        """Every access token (of ``account``) is expired from now on; refresh tokens stay valid."""
        with self._lock:
            for info in self._access.values():
                if account is None or info.grant.account == account:
                    info.expires_at = self.now() - 1

    def revoke_all(self, account: str | None = None) -> None:
        """The user (or an admin) removed the app's access at the provider: every token of ``account`` dies."""
        with self._lock:
            for grant in self._grants:
                if account is None or grant.account == account:
                    self._revoke_grant(grant)

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        """A grant as if the user had just authorized ``client_id``; returns the token response body."""
        raise NotImplementedError

    # client authentication

    def _client_credentials(self, req: RecordedRequest, params: Mapping[str, str]) -> tuple[str | None, str | None]:
        """``(client_id, client_secret)`` from Basic (RFC 6749 §2.3.1) or the body."""
        basic = req.basic()
        if basic is not None:
            return basic
        return params.get("client_id"), params.get("client_secret")

    # ID tokens

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        return {"keys": [self._public_jwk(k) for k in keys]}

    def _public_jwk(self, key: RSAKey) -> dict[str, Any]:
        data = dict(key.as_dict(private=False))
        data.setdefault("use", "sig")
        data.setdefault("alg", "RS256")
        return data

    def rotate_signing_key(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; return its kid. ``keep_old`` leaves the old key in the JWKS."""
        key = _signing_key()
        with self._lock:
            self._keys = [key, *self._keys] if keep_old else [key]
        return str(key.kid)

    def tamper_next_id_token(
        self, claims: Mapping[str, Any] | None = None, *, drop: Sequence[str] = (), unsigned: bool = False
    ) -> None:
        """The next ID token gets ``claims`` overridden, ``drop`` removed, or ``alg: none`` if ``unsigned``."""
        self._tamper = (dict(claims or {}), tuple(drop), unsigned)

    def sign_id_token(self, claims: dict[str, Any]) -> str:
        with self._lock:
            tamper, self._tamper = self._tamper, None
            key = self._keys[0]
        if tamper is not None:
            overrides, drop, unsigned = tamper
            claims = {k: v for k, v in {**claims, **overrides}.items() if k not in drop}
            if unsigned:
                header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
                return f"{header}.{b64url(json.dumps(claims).encode())}."
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    @staticmethod
    def at_hash(access_token: str) -> str:
        """OIDC Core §3.1.3.6: left half of SHA-256 of the access token, base64url."""
        return b64url(hashlib.sha256(access_token.encode()).digest()[:16])

    # the browser side

    def approve(self, authorize_url: str) -> Callback:
        """Open ``authorize_url`` as the browser would and return where the stand-in sent it back.

        Raises AssertionError when the stand-in shows an error page instead (wrong client or redirect URI).
        """
        # verify=False: the stand-ins speak plain http, and loading a CA bundle costs ~30 ms per client.
        with httpx.Client(follow_redirects=False, trust_env=False, verify=False) as client:
            response = client.get(authorize_url)
        if response.status_code in (301, 302, 303, 307):
            location = response.headers["location"]
            split = urllib.parse.urlsplit(location)
            params = dict(urllib.parse.parse_qsl(split.query or split.fragment, keep_blank_values=True))
            return Callback(location, params)
        if response.status_code == 200 and "<form" in response.text:
            action = re.search(r'action="([^"]+)"', response.text)
            fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text)
            assert action is not None
            return Callback(html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields}, method="POST")
        raise AssertionError(f"{self.name} authorize answered {response.status_code}: {response.text[:300]}")

    @staticmethod
    def _with_params(url: str, params: Mapping[str, str | None], *, fragment: bool = False) -> str:
        clean = {k: v for k, v in params.items() if v is not None}
        split = urllib.parse.urlsplit(url)
        if fragment:
            return urllib.parse.urlunsplit(split._replace(fragment=urllib.parse.urlencode(clean)))
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True) + list(clean.items())
        return urllib.parse.urlunsplit(split._replace(query=urllib.parse.urlencode(query)))

    @staticmethod
    def _form_post(action: str, params: Mapping[str, str | None]) -> Reply:
        """``response_mode=form_post`` (OAuth 2.0 Form Post Response Mode): an auto-submitting form."""
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if v is not None
        )
        return Reply.html(
            200,
            f'<html><body onload="document.forms[0].submit()"><form method="POST" action="{html.escape(action)}">'
            f"{inputs}</form></body></html>",
        )

    def _token_headers(self) -> list[tuple[str, str]]:
        # RFC 6749 §5.1: token responses must not be cached.
        return [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
