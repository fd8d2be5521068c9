"""Google's OpenID Provider.

Google returns refresh tokens only with ``access_type=offline`` on the first consent or with
``prompt=consent``; its token response spells ``email``/``profile`` as full ``userinfo.*`` scope URLs; its
``hd`` request parameter is only a hint — the ``hd`` *claim* comes from the account.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    random_token,
    reason_phrase,
    with_retry_after,
)
from tests.support.vendors.oauth import (
    OAuthClient,
    OAuthVendor,
    pkce_ok,
)


@dataclass
class GoogleAccount:
    email: str
    name: str
    given_name: str
    family_name: str
    sub: str
    email_verified: bool
    hd: str | None
    picture: str
    locale: str = "en"


GOOGLE_SCOPE_URLS = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


# https://developers.google.com/identity/protocols/oauth2/limited-input-device#allowedscopes
DEVICE_SCOPES = frozenset(
    {
        "openid",
        "email",
        "profile",
        "https://www.googleapis.com/auth/drive.appdata",
        "https://www.googleapis.com/auth/drive.file",
        "https://www.googleapis.com/auth/youtube",
        "https://www.googleapis.com/auth/youtube.readonly",
    }
)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class DeviceGrant:
    """A device authorization at the stand-in: the user approves (or denies) it with ``user_code``."""

    device_code: str
    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    account: str | None = None
    denied: bool = False


class Google(OAuthVendor):
    """Google's OpenID Provider: discovery at ``/.well-known/openid-configuration`` (issuer = :attr:`url`),
    JWKS at ``/oauth2/v3/certs``, authorize at ``/o/oauth2/v2/auth``, ``POST /token``, userinfo at
    ``/v1/userinfo`` (and ``/oauth2/v3/userinfo``), ``POST /revoke``.

    The app is configured with :attr:`url` as the discovery base (or the individual endpoint URLs).
    """

    name = "google"
    server_header = "ESF"

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.accounts: dict[str, GoogleAccount] = {}
        self._consented: set[tuple[str, str]] = set()
        self.route("GET", r"/\.well-known/openid-configuration", self._discovery)
        self.route("GET", r"/oauth2/v3/certs", lambda req, m: Reply.json(200, self.jwks()))
        self.route("GET", r"/o/oauth2/v2/auth", self._authorize)
        self.route("POST", r"/token", self._token)
        self.route("GET", r"/v1/userinfo", self._userinfo)
        self.route("GET", r"/oauth2/v3/userinfo", self._userinfo)
        self.route("POST", r"/revoke", self._revoke)
        self.route("POST", r"/device/code", self._device_code)
        self.tv_clients: set[str] = set()
        """Client ids of type "TVs and Limited Input devices": the only ones the device flow accepts."""
        self.devices: dict[str, DeviceGrant] = {}

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
    ) -> OAuthClient:
        return self._register_client(
            OAuthClient(
                client_id
                or f"{secrets.randbelow(10**12):012d}-{random_token('', 32).lower()}.apps.googleusercontent.com",
                client_secret or random_token("GOCSPX-", 28),
                list(redirect_uris),
            )
        )

    def add_tv_client(self) -> OAuthClient:
        """An OAuth client of type "TVs and Limited Input devices" (no redirect URIs)."""
        client = self.add_client()
        with self._lock:
            self.tv_clients.add(client.client_id)
        return client

    def approve_device(self, user_code: str, account: str) -> None:
        """``account`` enters ``user_code`` at the verification URL and allows access."""
        with self._lock:
            grant = next(g for g in self.devices.values() if g.user_code == user_code)
            grant.account = account
            self._consented.add((grant.client_id, account))

    def deny_device(self, user_code: str) -> None:
        with self._lock:
            next(g for g in self.devices.values() if g.user_code == user_code).denied = True

    def add_account(
        self,
        email: str,
        *,
        name: str | None = None,
        hd: str | None = None,
        email_verified: bool = True,
        sub: str | None = None,
    ) -> GoogleAccount:
        """A Google account; ``hd`` is its Workspace domain (None for consumer accounts)."""
        name = name or email.split("@")[0].replace(".", " ").title()
        given, _, family = name.partition(" ")
        account = GoogleAccount(
            email=email,
            name=name,
            given_name=given,
            family_name=family,
            sub=sub or str(10**20 + secrets.randbelow(9 * 10**20)),
            email_verified=email_verified,
            hd=hd,
            picture=f"https://lh3.googleusercontent.com/a/{random_token('', 20)}=s96-c",
        )
        with self._lock:
            self.accounts[email] = account
        return account

    def discovery(self) -> dict[str, Any]:
        url = self.url
        return {
            "issuer": url,
            "authorization_endpoint": f"{url}/o/oauth2/v2/auth",
            "token_endpoint": f"{url}/token",
            "userinfo_endpoint": f"{url}/v1/userinfo",
            "revocation_endpoint": f"{url}/revoke",
            "device_authorization_endpoint": f"{url}/device/code",
            "jwks_uri": f"{url}/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud",
                "email",
                "email_verified",
                "exp",
                "family_name",
                "given_name",
                "iat",
                "iss",
                "name",
                "picture",
                "sub",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
        }

    def _discovery(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        return Reply.json(200, self.discovery())

    # errors

    def _oauth_error(self, status: int, error: str, description: str) -> Reply:
        return Reply.json(status, {"error": error, "error_description": description}, self._token_headers())

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if req.path in ("/token", "/revoke"):
            errors = {
                400: ("invalid_request", "Bad Request"),
                401: ("invalid_client", "Unauthorized"),
                403: ("access_denied", "Forbidden"),
                429: ("rate_limit_exceeded", "Rate Limit Exceeded"),
                503: ("temporarily_unavailable", "Service Unavailable"),
            }
            error, description = errors.get(status, ("internal_failure", "Backend Error"))
            reply = self._oauth_error(status, error, description)
        else:
            statuses = {
                400: "INVALID_ARGUMENT",
                401: "UNAUTHENTICATED",
                403: "PERMISSION_DENIED",
                404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED",
                503: "UNAVAILABLE",
            }
            reply = Reply.json(
                status,
                {
                    "error": {
                        "code": status,
                        "message": reason_phrase(status),
                        "status": statuses.get(status, "INTERNAL"),
                    }
                },
            )
            if status == 401:
                reply.headers.append(("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"'))
        return with_retry_after(reply, retry_after)

    def _error_page(self, status: int, error: str, detail: str) -> Reply:
        # Google shows these on its own page: it must not redirect to an unverified redirect_uri (RFC 6749
        # §4.1.2.1).
        return Reply.html(
            status,
            f"<html><title>Error {status} ({html.escape(error)})</title><body><h1>Access blocked: "
            f"authorization error</h1><p>Error {status}: {html.escape(error)}</p><p>{html.escape(detail)}</p>"
            "</body></html>",
        )

    # endpoints

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return self._error_page(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = q.get("redirect_uri")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            return self._error_page(400, "redirect_uri_mismatch", f"redirect_uri={redirect_uri}")
        state = q.get("state")
        if q.get("response_type") != "code":
            return Reply.redirect(
                self._with_params(redirect_uri, {"error": "unsupported_response_type", "state": state})
            )
        scope = q.get("scope", "").split()
        if not scope:
            return self._error_page(400, "invalid_request", "Missing required parameter: scope")
        unknown = [s for s in scope if s not in ("openid", "email", "profile") and not s.startswith("https://")]
        if unknown:
            return self._error_page(400, "invalid_scope", f"Some requested scopes were invalid: {unknown}")
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if method is not None and (challenge is None or method not in ("S256", "plain")):
            return self._error_page(400, "invalid_request", "Invalid code_challenge_method or missing code_challenge")
        access_type = q.get("access_type", "online")
        if access_type not in ("online", "offline"):
            return self._error_page(400, "invalid_request", f"Invalid access_type: {access_type}")
        deny = self._take_deny()
        if deny is not None:
            return Reply.redirect(self._with_params(redirect_uri, {"error": deny[0], "state": state}))
        account_key = self._signed_in(q.get("login_hint"))
        prompts = set(q.get("prompt", "").split())
        if account_key is None:
            return Reply.redirect(self._with_params(redirect_uri, {"error": "login_required", "state": state}))
        consented = (client.client_id, account_key) in self._consented
        if "none" in prompts and not consented:
            return Reply.redirect(self._with_params(redirect_uri, {"error": "consent_required", "state": state}))
        # Google hands out a refresh token only when the consent screen was shown for an offline request.
        offline = access_type == "offline" and (not consented or "consent" in prompts)
        with self._lock:
            self._consented.add((client.client_id, account_key))
        account = self.accounts[account_key]
        code = self._issue_code(
            random_token("4/0A", 60),
            client_id=client.client_id,
            account=account_key,
            redirect_uri=redirect_uri,
            scopes=tuple(scope),
            nonce=q.get("nonce"),
            code_challenge=challenge,
            code_challenge_method=(method or "plain") if challenge else None,
            offline=offline,
        )
        params = {
            "state": state,
            "code": code,
            "scope": self._granted_scope(scope),
            "authuser": "0",
            "hd": account.hd,
            "prompt": "consent" if not consented or "consent" in prompts else "none",
        }
        return Reply.redirect(self._with_params(redirect_uri, params))

    @staticmethod
    def _granted_scope(scopes: Sequence[str]) -> str:
        return " ".join(GOOGLE_SCOPE_URLS.get(s, s) for s in scopes)

    def _authenticate(self, req: RecordedRequest) -> OAuthClient | Reply:
        client_id, secret = self._client_credentials(req, req.form)
        client = self.clients.get(client_id or "")
        if client is None:
            return self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if not secret:
            return self._oauth_error(400, "invalid_request", "client_secret is missing.")
        if not secrets.compare_digest(secret, client.client_secret):
            return self._oauth_error(401, "invalid_client", "Unauthorized")
        return client

    def _device_code(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        """``POST /device/code`` (Google's device endpoint): only "TVs and Limited Input devices" clients, only
        the allowed scopes; answers with Google's pre-RFC ``verification_url`` spelling."""
        client_id, _secret = self._client_credentials(req, req.form)
        if client_id not in self.clients:
            return self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if client_id not in self.tv_clients:
            return self._oauth_error(401, "invalid_client", "Invalid client type.")
        scopes = tuple(req.form.get("scope", "").split())
        refused = [s for s in scopes if s not in DEVICE_SCOPES]
        if not scopes or refused:
            return self._oauth_error(400, "invalid_scope", f"Some requested scopes were invalid: {refused}")
        grant = DeviceGrant(
            device_code="AH-1Ng" + random_token("", 60),
            user_code=f"{random_token('', 4).upper()}-{random_token('', 4).upper()}",
            client_id=client_id,
            scopes=scopes,
            expires_at=self.now() + 1800,
        )
        with self._lock:
            self.devices[grant.device_code] = grant
        body = {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_url": f"{self.url}/device",
            "expires_in": 1800,
            "interval": 5,
        }
        return Reply.json(200, body, self._token_headers())

    def _device_grant(self, client: OAuthClient, form: Mapping[str, str]) -> Reply:
        grant = self.devices.get(form.get("device_code", ""))
        if grant is None or grant.client_id != client.client_id:
            return self._oauth_error(400, "invalid_grant", "Malformed auth code.")
        if self.now() >= grant.expires_at:
            return self._oauth_error(400, "expired_token", "Expired device code.")
        if grant.denied:
            return self._oauth_error(403, "access_denied", "Forbidden")
        if grant.account is None:
            # Google answers a pending poll with HTTP 428.
            return self._oauth_error(428, "authorization_pending", "Precondition Required")
        with self._lock:
            self.devices.pop(grant.device_code, None)
        body = self._grant_tokens(client.client_id, grant.account, grant.scopes, True, None, None)
        return Reply.json(200, body, self._token_headers())

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        form = req.form
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token", DEVICE_GRANT):
            return self._oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        client = self._authenticate(req)
        if isinstance(client, Reply):
            return client
        if grant_type == "refresh_token":
            return self._refresh_grant(client, form)
        if grant_type == DEVICE_GRANT:
            return self._device_grant(client, form)
        if not form.get("code"):
            return self._oauth_error(400, "invalid_request", "Missing required parameter: code")
        if not form.get("redirect_uri"):
            return self._oauth_error(400, "invalid_request", "Missing parameter: redirect_uri")
        code, _ = self._redeem(form["code"], client.client_id)
        if code is None:
            return self._oauth_error(400, "invalid_grant", "Bad Request")
        if form["redirect_uri"] != code.redirect_uri:
            return self._oauth_error(400, "redirect_uri_mismatch", "Bad Request")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return self._oauth_error(400, "invalid_grant", "Missing code verifier.")
            if not pkce_ok(code.code_challenge, code.code_challenge_method or "plain", verifier):
                return self._oauth_error(400, "invalid_grant", "Invalid code verifier.")
        body = self._grant_tokens(client.client_id, code.account, code.scopes, code.offline, code.nonce, code.code)
        return Reply.json(200, body, self._token_headers())

    def _grant_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], offline: bool, nonce: str | None, code: str | None
    ) -> dict[str, Any]:
        refresh = random_token("1//0", 100) if offline else None
        grant = self._new_grant(client_id, account, scopes, refresh, code=code)
        access = self._new_access_token(grant, random_token("ya29.", 150), self.access_token_ttl)
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "scope": self._granted_scope(scopes),
            "token_type": "Bearer",
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if "openid" in scopes:
            body["id_token"] = self._id_token(client_id, account, scopes, access, nonce)
        return body

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        if client_id not in self.clients or account not in self.accounts:
            raise KeyError("unknown client or account")
        with self._lock:
            self._consented.add((client_id, account))
        return self._grant_tokens(client_id, account, scopes, offline, None, None)

    def _id_token(self, client_id: str, account_key: str, scopes: Sequence[str], access: str, nonce: str | None) -> str:
        account = self.accounts[account_key]
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.url,
            "azp": client_id,
            "aud": client_id,
            "sub": account.sub,
            "at_hash": self.at_hash(access),
            "iat": now,
            "exp": now + 3600,
        }
        if account.hd:
            claims["hd"] = account.hd
        if "email" in scopes:
            claims.update(email=account.email, email_verified=account.email_verified)
        if "profile" in scopes:
            claims.update(
                name=account.name,
                picture=account.picture,
                given_name=account.given_name,
                family_name=account.family_name,
            )
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign_id_token(claims)

    def _refresh_grant(self, client: OAuthClient, form: Mapping[str, str]) -> Reply:
        token = form.get("refresh_token")
        if not token:
            return self._oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        grant = self.refresh_grant(token)
        if grant is None or grant.client_id != client.client_id:
            return self._oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        with self._lock:
            grant.refreshes += 1
        access = self._new_access_token(grant, random_token("ya29.", 150), self.access_token_ttl)
        # Google keeps the refresh token: the response has none.
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "scope": self._granted_scope(grant.scopes),
            "token_type": "Bearer",
        }
        if "openid" in grant.scopes:
            body["id_token"] = self._id_token(client.client_id, grant.account, grant.scopes, access, None)
        return Reply.json(200, body, self._token_headers())

    def _userinfo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self.access_token_info(req.bearer())
        if info is None:
            return Reply.json(
                401,
                {"error": "invalid_request", "error_description": "Invalid Credentials"},
                [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/", error="invalid_token"')],
            )
        account = self.accounts[info.grant.account]
        body: dict[str, Any] = {"sub": account.sub}
        if "profile" in info.grant.scopes:
            body.update(
                name=account.name,
                given_name=account.given_name,
                family_name=account.family_name,
                picture=account.picture,
            )
        if "email" in info.grant.scopes:
            body.update(email=account.email, email_verified=account.email_verified)
        if account.hd:
            body["hd"] = account.hd
        return Reply.json(200, body)

    def _revoke(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        token = req.form.get("token") or req.query.get("token")
        if not token:
            return self._oauth_error(400, "invalid_request", "Missing required parameter: token")
        with self._lock:
            access = self._access.get(token)
            grant = access.grant if access is not None else self._refresh_tokens.get(token)
        if grant is None or grant.revoked:
            return self._oauth_error(400, "invalid_token", "Token expired or revoked")
        # Google revokes the whole grant, whichever of its tokens was sent.
        self._revoke_grant(grant)
        return Reply.json(200, {})
