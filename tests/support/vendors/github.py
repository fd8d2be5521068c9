"""GitHub (github.com and Enterprise Server layouts): OAuth apps, GitHub Apps and the REST API.

GitHub's ``/login/oauth/access_token`` reports errors with **HTTP 200** and an ``error`` field, and answers
urlencoded unless the request says ``Accept: application/json``; ``/user/emails`` is a **404** without the
``user``/``user:email`` scope; the REST API refuses requests without ``User-Agent`` (403).
"""

from __future__ import annotations

import html
import itertools
import re
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    b64url,
    random_token,
    reason_phrase,
    with_retry_after,
)
from tests.support.vendors.oauth import (
    AccessToken,
    OAuthClient,
    OAuthVendor,
    pkce_ok,
)


@dataclass
class GitHubEmail:
    email: str
    primary: bool = False
    verified: bool = True
    visibility: str | None = None


@dataclass
class GitHubAccount:
    login: str
    id: int
    name: str | None
    emails: list[GitHubEmail]
    public_email: str | None
    company: str | None = None
    created_at: str = "2015-03-14T09:26:53Z"


class GitHub(OAuthVendor):
    """GitHub's OAuth web flow and the REST endpoints the app uses.

    ``/login/oauth/authorize``, ``POST /login/oauth/access_token``, and the API (``GET /user``,
    ``GET /user/emails``, ``DELETE /applications/{client_id}/token``, ``DELETE /applications/{client_id}/grant``)
    at the root like ``api.github.com``, or under ``/api/v3`` when ``enterprise=True`` like GitHub Enterprise
    Server. The app's "GitHub URL" is :attr:`url`; its API base URL is :attr:`api_url`. Clients added with
    ``expiring_tokens=True`` behave like GitHub Apps: user tokens expire (``expires_in`` 8 h) and come with
    a rotating refresh token.
    """

    name = "github"
    server_header = "github.com"
    access_token_ttl = 28800
    refresh_token_ttl = 15811200
    DOCS = "https://docs.github.com/rest"
    TOKEN_ERRORS: ClassVar[dict[str, str]] = {
        "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
        "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for this application.",
        "bad_verification_code": "The code passed is incorrect or expired.",
        "bad_refresh_token": "The refresh token passed is incorrect or expired.",
        "unsupported_grant_type": "The grant type is not supported.",
    }

    def __init__(self, *, enterprise: bool = False, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.enterprise = enterprise
        self.accounts: dict[str, GitHubAccount] = {}
        self._ids = itertools.count(583231)
        api = "/api/v3" if enterprise else ""
        self.route("GET", r"/login/oauth/authorize", self._authorize)
        self.route("POST", r"/login/oauth/access_token", self._token)
        self.route("GET", rf"{api}/user", self._user)
        self.route("GET", rf"{api}/user/emails", self._emails)
        self.route("DELETE", rf"{api}/applications/(?P<client_id>[^/]+)/token", self._revoke_token)
        self.route("DELETE", rf"{api}/applications/(?P<client_id>[^/]+)/grant", self._revoke_grant_endpoint)

    @property
    def api_url(self) -> str:
        return self.url + ("/api/v3" if self.enterprise else "")

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
        *,
        expiring_tokens: bool = False,
    ) -> OAuthClient:
        """An OAuth app (or a GitHub App with ``expiring_tokens``). ``redirect_uris`` are its callback URLs."""
        prefix = "Iv23li" if expiring_tokens else "Ov23li"
        return self._register_client(
            OAuthClient(
                client_id or random_token(prefix, 14),
                client_secret or secrets.token_hex(20),
                list(redirect_uris),
                expiring_tokens,
            )
        )

    def add_account(
        self,
        login: str,
        *,
        name: str | None = None,
        emails: Sequence[GitHubEmail | str] | None = None,
        public_email: str | None = None,
        company: str | None = None,
    ) -> GitHubAccount:
        """A GitHub user. Plain-string ``emails``: the first is primary, all verified, visibility private."""
        parsed: list[GitHubEmail] = []
        for i, item in enumerate(emails if emails is not None else [f"{login}@users.example.com"]):
            if isinstance(item, str):
                parsed.append(
                    GitHubEmail(item, primary=i == 0, verified=True, visibility="private" if i == 0 else None)
                )
            else:
                parsed.append(item)
        account = GitHubAccount(login, next(self._ids), name, parsed, public_email, company)
        with self._lock:
            self.accounts[login] = account
        return account

    # errors

    def _api_error(self, status: int, message: str, docs: str | None = None) -> Reply:
        body = {"message": message, "documentation_url": docs or self.DOCS, "status": str(status)}
        return Reply.json(status, body, self._api_headers())

    def _api_headers(self, scopes: Sequence[str] | None = None) -> list[tuple[str, str]]:
        headers = [
            ("X-GitHub-Media-Type", "github.v3; format=json"),
            ("X-GitHub-Request-Id", f"{secrets.token_hex(2).upper()}:{secrets.token_hex(3).upper()}"),
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4999"),
            ("x-ratelimit-reset", str(int(self.now()) + 3600)),
            ("x-ratelimit-used", "1"),
            ("x-ratelimit-resource", "core"),
        ]
        if scopes is not None:
            headers.append(("X-OAuth-Scopes", ", ".join(scopes)))
        return headers

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        messages = {
            401: "Bad credentials",
            403: "Forbidden",
            404: "Not Found",
            405: "Not Found",
            422: "Validation Failed",
            429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            500: "Server Error",
            503: "Service Unavailable",
        }
        reply = self._api_error(status, messages.get(status, reason_phrase(status)))
        if status == 429:
            reply.headers = [(k, "0" if k == "x-ratelimit-remaining" else v) for k, v in reply.headers]
        return with_retry_after(reply, retry_after)

    def _token_error(self, req: RecordedRequest, error: str) -> Reply:
        anchor = error.replace("_", "-")
        body = {
            "error": error,
            "error_description": self.TOKEN_ERRORS[error],
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
            f"troubleshooting-oauth-app-access-token-request-errors/#{anchor}",
        }
        # GitHub reports token errors with HTTP 200.
        return self._token_reply(req, body)

    def _token_reply(self, req: RecordedRequest, body: Mapping[str, Any]) -> Reply:
        accept = (req.header("accept") or "").lower()
        if "application/json" in accept:
            return Reply.json(200, body, self._token_headers())
        if "application/xml" in accept:
            inner = "".join(f"<{k}>{html.escape(str(v))}</{k}>" for k, v in body.items())
            return Reply(200, f"<OAuth>{inner}</OAuth>".encode(), [("Content-Type", "application/xml; charset=utf-8")])
        encoded = urllib.parse.urlencode({k: str(v) for k, v in body.items()})
        return Reply(200, encoded.encode(), [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")])

    # OAuth endpoints

    @staticmethod
    def _redirect_allowed(client: OAuthClient, redirect_uri: str) -> bool:
        """GitHub: same scheme, host and port as a callback URL, and a path at or below its path."""
        target = urllib.parse.urlsplit(redirect_uri)
        for callback in client.redirect_uris:
            base = urllib.parse.urlsplit(callback)
            if (target.scheme, target.netloc) != (base.scheme, base.netloc):
                continue
            prefix = base.path.rstrip("/")
            if target.path == base.path or target.path.startswith(prefix + "/"):
                return True
        return False

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        client = self.clients.get(q.get("client_id", ""))
        if client is None or not client.redirect_uris:
            return Reply.html(404, "<html><body><h1>404 - page not found</h1></body></html>")
        state = q.get("state")
        redirect_uri = q.get("redirect_uri") or client.redirect_uris[0]
        docs = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/"
        if not self._redirect_allowed(client, redirect_uri):
            return Reply.redirect(
                self._with_params(
                    client.redirect_uris[0],
                    {
                        "error": "redirect_uri_mismatch",
                        "error_description": self.TOKEN_ERRORS["redirect_uri_mismatch"],
                        "error_uri": docs + "#redirect-uri-mismatch",
                        "state": state,
                    },
                )
            )
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and (method or "S256") != "S256":
            return Reply.html(400, "<html><body><h1>Only S256 code challenges are supported</h1></body></html>")
        deny = self._take_deny()
        if deny is not None:
            return Reply.redirect(
                self._with_params(
                    redirect_uri,
                    {
                        "error": deny[0],
                        "error_description": deny[1] or "The user has denied your application access.",
                        "error_uri": docs + "#access-denied",
                        "state": state,
                    },
                )
            )
        account = self._signed_in(q.get("login"))
        if account is None:
            return Reply.html(200, "<html><body>Sign in to GitHub</body></html>")
        raw_scope = q.get("scope", "")
        scopes = tuple(s for s in re.split(r"[\s,]+", raw_scope) if s) if not client.expiring_tokens else ()
        code = self._issue_code(
            secrets.token_hex(10),
            client_id=client.client_id,
            account=account,
            redirect_uri=q.get("redirect_uri"),
            scopes=scopes,
            nonce=None,
            code_challenge=challenge,
            code_challenge_method="S256" if challenge else None,
            offline=client.expiring_tokens,
        )
        return Reply.redirect(self._with_params(redirect_uri, {"code": code, "state": state}))

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        params = {**req.query, **req.params()} if req.method == "POST" else req.query
        client_id, secret = self._client_credentials(req, params)
        client = self.clients.get(client_id or "")
        if client is None or not secret or not secrets.compare_digest(secret, client.client_secret):
            return self._token_error(req, "incorrect_client_credentials")
        grant_type = params.get("grant_type", "authorization_code")
        if grant_type == "refresh_token":
            return self._refresh(req, client, params)
        if grant_type != "authorization_code":
            return self._token_error(req, "unsupported_grant_type")
        code, _why = self._redeem(params.get("code", ""), client.client_id)
        if code is None:
            return self._token_error(req, "bad_verification_code")
        sent_redirect = params.get("redirect_uri")
        if sent_redirect is not None and code.redirect_uri is not None and sent_redirect != code.redirect_uri:
            return self._token_error(req, "redirect_uri_mismatch")
        if code.code_challenge is not None and not pkce_ok(
            code.code_challenge, "S256", params.get("code_verifier", "")
        ):
            return self._token_error(req, "bad_verification_code")
        return self._token_reply(req, self._grant_tokens(client, code.account, code.scopes, code.code))

    def _grant_tokens(
        self, client: OAuthClient, account: str, scopes: Sequence[str], code: str | None
    ) -> dict[str, Any]:
        if client.expiring_tokens:
            refresh = random_token("ghr_", 76)
            grant = self._new_grant(client.client_id, account, (), refresh, code=code)
            grant.refresh_expires_at = self.now() + self.refresh_token_ttl
            access = self._new_access_token(grant, random_token("ghu_", 36), self.access_token_ttl)
            return {
                "access_token": access,
                "expires_in": self.access_token_ttl,
                "refresh_token": refresh,
                "refresh_token_expires_in": self.refresh_token_ttl,
                "scope": "",
                "token_type": "bearer",
            }
        grant = self._new_grant(client.client_id, account, scopes, None, code=code)
        access = self._new_access_token(grant, random_token("gho_", 36), None)
        return {"access_token": access, "scope": ",".join(scopes), "token_type": "bearer"}

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        client = self.clients[client_id]
        if account not in self.accounts:
            raise KeyError(f"unknown GitHub account {account!r}")
        return self._grant_tokens(client, account, scopes, None)

    def _refresh(self, req: RecordedRequest, client: OAuthClient, params: Mapping[str, str]) -> Reply:
        grant = self.refresh_grant(params.get("refresh_token"))
        if not client.expiring_tokens or grant is None or grant.client_id != client.client_id:
            return self._token_error(req, "bad_refresh_token")
        refresh = random_token("ghr_", 76)
        with self._lock:
            grant.refreshes += 1
            # Each refresh token works once at GitHub.
            self._rotate_refresh(grant, refresh, keep_old=False)
            grant.refresh_expires_at = self.now() + self.refresh_token_ttl
        access = self._new_access_token(grant, random_token("ghu_", 36), self.access_token_ttl)
        body = {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "refresh_token": refresh,
            "refresh_token_expires_in": self.refresh_token_ttl,
            "scope": "",
            "token_type": "bearer",
        }
        return self._token_reply(req, body)

    # REST API

    def _api_auth(self, req: RecordedRequest, docs: str) -> AccessToken | Reply:
        if not req.header("user-agent"):
            return Reply.html(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header "
                "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). "
                "Check https://developer.github.com for other possible causes.",
            )
        if req.header("authorization") is None:
            return self._api_error(401, "Requires authentication", docs)
        info = self.access_token_info(req.bearer("Bearer", "token"))
        if info is None:
            return self._api_error(401, "Bad credentials")
        return info

    def _user_json(self, account: GitHubAccount) -> dict[str, Any]:
        html_base = self.url
        api = self.api_url
        return {
            "login": account.login,
            "id": account.id,
            "node_id": "MDQ6VXNlcj" + b64url(str(account.id).encode()),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{account.id}?v=4",
            "gravatar_id": "",
            "url": f"{api}/users/{account.login}",
            "html_url": f"{html_base}/{account.login}",
            "type": "User",
            "user_view_type": "public",
            "site_admin": False,
            "name": account.name,
            "company": account.company,
            "blog": "",
            "location": None,
            "email": account.public_email,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": 3,
            "public_gists": 0,
            "followers": 1,
            "following": 0,
            "created_at": account.created_at,
            "updated_at": account.created_at,
        }

    def _user(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._api_auth(req, "https://docs.github.com/rest/users/users#get-the-authenticated-user")
        if isinstance(info, Reply):
            return info
        account = self.accounts[info.grant.account]
        return Reply.json(200, self._user_json(account), self._api_headers(info.grant.scopes))

    def _emails(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        docs = "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user"
        info = self._api_auth(req, docs)
        if isinstance(info, Reply):
            return info
        client = self.clients.get(info.grant.client_id)
        expiring = client is not None and client.expiring_tokens
        if not expiring and not {"user", "user:email"} & set(info.grant.scopes):
            # GitHub hides endpoints a token has no scope for behind a 404.
            reply = self._api_error(404, "Not Found", docs)
            reply.headers += [("X-OAuth-Scopes", ", ".join(info.grant.scopes)), ("X-Accepted-OAuth-Scopes", "user")]
            return reply
        account = self.accounts[info.grant.account]
        body = [
            {"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": e.visibility}
            for e in account.emails
        ]
        reply = Reply.json(200, body, self._api_headers(info.grant.scopes))
        reply.headers.append(("X-Accepted-OAuth-Scopes", "user"))
        return reply

    def _app_auth(self, req: RecordedRequest, client_id: str) -> OAuthClient | Reply:
        basic = req.basic()
        docs = "https://docs.github.com/rest/apps/oauth-applications#delete-an-app-token"
        if basic is None:
            return self._api_error(401, "Requires authentication", docs)
        client = self.clients.get(client_id)
        if client is None or basic[0] != client_id or not secrets.compare_digest(basic[1], client.client_secret):
            return self._api_error(404, "Not Found", docs)
        return client

    def _token_from_body(self, req: RecordedRequest) -> str | Reply:
        if req.json_invalid:
            return self._api_error(400, "Problems parsing JSON")
        token = req.json.get("access_token") if isinstance(req.json, dict) else None
        if not isinstance(token, str) or not token:
            return self._api_error(422, 'Invalid request.\n\n"access_token" wasn\'t supplied.')
        return token

    def _revoke_token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        client = self._app_auth(req, match["client_id"])
        if isinstance(client, Reply):
            return client
        token = self._token_from_body(req)
        if isinstance(token, Reply):
            return token
        info = self.access_token_info(token)
        if info is None or info.grant.client_id != client.client_id:
            return self._api_error(404, "Not Found")
        with self._lock:
            self._access.pop(token, None)
        return Reply.empty(204, self._api_headers())

    def _revoke_grant_endpoint(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        client = self._app_auth(req, match["client_id"])
        if isinstance(client, Reply):
            return client
        token = self._token_from_body(req)
        if isinstance(token, Reply):
            return token
        info = self.access_token_info(token)
        if info is None or info.grant.client_id != client.client_id:
            return self._api_error(404, "Not Found")
        with self._lock:
            for grant in self._grants:
                if grant.client_id == client.client_id and grant.account == info.grant.account:
                    self._revoke_grant(grant)
        return Reply.empty(204, self._api_headers())
