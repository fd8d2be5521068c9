"""The Microsoft identity platform (Entra ID) and Microsoft Graph.

Microsoft's discovery for ``common``/``organizations`` has the literal issuer ``…/{tenantid}/v2.0``; ID
tokens carry the real tenant in ``tid`` and ``iss``; refresh tokens rotate and the old one stays valid.
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from tests.support.vendors.base import (
    RecordedRequest,
    Reply,
    b64url,
    random_token,
    with_retry_after,
)
from tests.support.vendors.oauth import (
    AccessToken,
    Grant,
    OAuthClient,
    OAuthVendor,
    pkce_ok,
)

MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
"""The tenant of personal Microsoft accounts (``consumers``)."""

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


@dataclass
class MicrosoftAccount:
    upn: str
    name: str
    tenant_id: str
    oid: str
    mail: str | None
    roles: list[str]
    given_name: str
    surname: str

    @property
    def personal(self) -> bool:
        return self.tenant_id == MSA_TENANT_ID


class Microsoft(OAuthVendor):
    """The Microsoft identity platform (v2.0 endpoints) and Microsoft Graph ``/v1.0/me`` on one server.

    ``/{tenant}/v2.0/.well-known/openid-configuration``, ``/{tenant}/oauth2/v2.0/authorize``,
    ``/{tenant}/oauth2/v2.0/token``, ``/{tenant}/discovery/v2.0/keys`` (and ``/discovery/v2.0/keys``),
    Graph ``GET /v1.0/me`` and ``GET /oidc/userinfo``. ``{tenant}`` is ``common``, ``organizations``,
    ``consumers``, a tenant GUID or a verified domain. The app's authority is :attr:`url` (the
    ``login.microsoftonline.com`` part) and its Graph base URL is :attr:`url` too. ``/me`` needs a token
    with ``User.Read`` (the documented least privilege for it); otherwise Graph answers 403.
    """

    name = "microsoft"
    server_header = "Microsoft-IIS/10.0"
    GRAPH_SCOPES: ClassVar[tuple[str, ...]] = ("user.read", "https://graph.microsoft.com/user.read", ".default")

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.tenants: dict[str, str] = {}  # tenant id -> primary domain
        self.accounts: dict[str, MicrosoftAccount] = {}
        self.keep_old_refresh_tokens = True
        """Microsoft rotates refresh tokens on use but the previous one stays valid."""
        t = r"(?P<tenant>[^/]+)"
        self.route("GET", rf"/{t}/v2\.0/\.well-known/openid-configuration", self._discovery)
        self.route("GET", rf"/{t}/oauth2/v2\.0/authorize", self._authorize)
        self.route("GET", rf"/{t}/v2\.0/adminconsent", self._admin_consent)
        self.tenant_admins: set[str] = set()
        """UPNs of accounts that are admins of their tenant (may grant admin consent)."""
        self.admin_consents: set[tuple[str, str]] = set()
        """(client id, tenant id) pairs an admin consented for, tenant-wide."""
        self.route("POST", rf"/{t}/oauth2/v2\.0/token", self._token)
        self.route("GET", rf"/{t}/discovery/v2\.0/keys", self._keys_endpoint)
        self.route("GET", r"/discovery/v2\.0/keys", self._keys_endpoint)
        self.route("GET", r"/v1\.0/me", self._me)
        self.route("GET", r"/oidc/userinfo", self._userinfo)

    def _account_keys(self) -> list[str]:
        return list(self.accounts)

    def add_tenant(self, tenant_id: str | None = None, *, domain: str | None = None) -> str:
        tenant_id = tenant_id or str(uuid.uuid4())
        with self._lock:
            self.tenants[tenant_id] = domain or f"tenant{len(self.tenants) + 1}.onmicrosoft.com"
        return tenant_id

    def add_client(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: Sequence[str] = (),
    ) -> OAuthClient:
        return self._register_client(
            OAuthClient(
                client_id or str(uuid.uuid4()),
                client_secret or random_token("", 3) + "8Q~" + random_token("", 34),
                list(redirect_uris),
            )
        )

    def add_account(
        self,
        upn: str,
        *,
        tenant: str | None = None,
        name: str | None = None,
        mail: str | None = None,
        roles: Sequence[str] = (),
        personal: bool = False,
    ) -> MicrosoftAccount:
        """A work account in ``tenant`` (default: the first tenant, created if none), or a personal
        Microsoft account (``personal=True``, tenant ``MSA_TENANT_ID``). ``roles`` are app roles."""
        if personal:
            tenant_id = MSA_TENANT_ID
        else:
            tenant_id = tenant or (next(iter(self.tenants)) if self.tenants else self.add_tenant())
            if tenant_id not in self.tenants:
                raise KeyError(f"unknown tenant {tenant_id!r}: add_tenant() first")
        name = name or upn.split("@")[0].replace(".", " ").title()
        given, _, surname = name.partition(" ")
        account = MicrosoftAccount(
            upn, name, tenant_id, str(uuid.uuid4()), mail if mail is not None else upn, list(roles), given, surname
        )
        with self._lock:
            self.accounts[upn] = account
        return account

    # tenants

    def _resolve_tenant(self, segment: str) -> str | None:
        """``common``/``organizations``/``consumers`` as given; a GUID or domain as the tenant id."""
        if segment in ("common", "organizations"):
            return segment
        if segment == "consumers" or segment == MSA_TENANT_ID:
            return MSA_TENANT_ID
        if _GUID.fullmatch(segment) and segment.lower() in self.tenants:
            return segment.lower()
        for tenant_id, domain in self.tenants.items():
            if domain.lower() == segment.lower():
                return tenant_id
        return None

    def issuer_for(self, tenant_id: str) -> str:
        return f"{self.url}/{tenant_id}/v2.0"

    def discovery(self, segment: str) -> dict[str, Any]:
        resolved = self._resolve_tenant(segment)
        issuer_tenant = "{tenantid}" if resolved in ("common", "organizations") else resolved
        base = f"{self.url}/{segment}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": None if resolved in ("common", "organizations", MSA_TENANT_ID) else "WW",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": urllib.parse.urlsplit(self.url).netloc,
            "rbac_url": "https://pas.windows.net",
        }

    # errors

    def _aad_error(self, status: int, error: str, code: int, message: str) -> Reply:
        now = datetime.now(UTC)
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{self.url}/error?code={code}",
        }
        return Reply.json(status, body, self._token_headers())

    def _graph_error(self, status: int, code: str, message: str) -> Reply:
        request_id = str(uuid.uuid4())
        body = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        }
        return Reply.json(status, body, [("request-id", request_id), ("client-request-id", request_id)])

    def error_reply(self, status: int, req: RecordedRequest, *, retry_after: int | str | None = None) -> Reply:
        if req.path.startswith(("/v1.0/", "/oidc/")):
            codes = {
                400: ("BadRequest", "Bad request."),
                401: ("InvalidAuthenticationToken", "Access token validation failure."),
                403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
                404: ("Request_ResourceNotFound", "Resource not found."),
                429: ("TooManyRequests", "Too many requests."),
                503: ("serviceNotAvailable", "Service unavailable."),
            }
            code, message = codes.get(status, ("generalException", "General exception while processing."))
            reply = self._graph_error(status, code, message)
        else:
            aad = {
                400: (
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'grant_type'.",
                ),
                401: ("invalid_client", 7000215, "Invalid client secret provided."),
                403: ("access_denied", 50105, "The signed in user is not assigned to a role for the application."),
                404: ("invalid_request", 90002, "Tenant not found."),
                429: (
                    "temporarily_unavailable",
                    50196,
                    "The server terminated an operation because it encountered a client request loop.",
                ),
            }
            error, code_n, message = aad.get(
                status, ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")
            )
            reply = self._aad_error(status, error, code_n, message)
        return with_retry_after(reply, retry_after)

    def _error_page(self, status: int, code: int, message: str) -> Reply:
        return Reply.html(
            status,
            f"<html><title>Sign in to your account</title><body><h1>Sorry, but we're having trouble signing you in."
            f"</h1><p>AADSTS{code}: {html.escape(message)}</p></body></html>",
        )

    # endpoints

    def _discovery(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        segment = match["tenant"]
        if self._resolve_tenant(segment) is None:
            return self._aad_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing "
                "into the correct cloud.",
            )
        return Reply.json(200, self.discovery(segment))

    def _keys_endpoint(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        keys = self.jwks()
        for key in keys["keys"]:
            key["x5t"] = key["kid"]
            key["issuer"] = f"{self.url}/{{tenantid}}/v2.0"
        return Reply.json(200, keys)

    def _tenant_allows(self, segment_tenant: str, account: MicrosoftAccount) -> bool:
        if segment_tenant == "common":
            return True
        if segment_tenant == "organizations":
            return not account.personal
        return account.tenant_id == segment_tenant

    def _authorize(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        q = req.query
        segment_tenant = self._resolve_tenant(match["tenant"])
        if segment_tenant is None:
            return self._error_page(400, 90002, f"Tenant '{match['tenant']}' not found.")
        client_id = q.get("client_id", "")
        client = self.clients.get(client_id)
        if client is None:
            return self._error_page(
                400, 700016, f"Application with identifier '{client_id}' was not found in the directory."
            )
        redirect_uri = q.get("redirect_uri") or (client.redirect_uris[0] if len(client.redirect_uris) == 1 else "")
        if redirect_uri not in client.redirect_uris:
            return self._error_page(
                400,
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                f"configured for the application '{client_id}'.",
            )
        state = q.get("state")
        mode = q.get("response_mode", "query")
        if mode not in ("query", "fragment", "form_post"):
            return self._error_page(400, 900144, f"Invalid response_mode '{mode}'.")

        def answer(params: dict[str, str | None]) -> Reply:
            if mode == "form_post":
                return self._form_post(redirect_uri, params)
            return Reply.redirect(self._with_params(redirect_uri, params, fragment=mode == "fragment"))

        if q.get("response_type") != "code":
            return answer(
                {
                    "error": "unsupported_response_type",
                    "error_description": "AADSTS700054: response_type "
                    f"'{q.get('response_type')}' is not enabled for the application.",
                    "state": state,
                }
            )
        scopes = q.get("scope", "").split()
        if not scopes:
            return answer(
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS900144: The request body must contain the "
                    "following parameter: 'scope'.",
                    "state": state,
                }
            )
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and (method or "plain") not in ("S256", "plain"):
            return answer(
                {
                    "error": "invalid_request",
                    "error_description": "AADSTS501491: Invalid code_challenge_method.",
                    "state": state,
                }
            )
        deny = self._take_deny()
        if deny is not None:
            description = deny[1] or "AADSTS65004: User declined to consent to access the app."
            return answer({"error": deny[0], "error_description": description, "state": state})
        account_key = self._signed_in(q.get("login_hint"))
        if account_key is None:
            return answer({"error": "login_required", "state": state})
        account = self.accounts[account_key]
        if not self._tenant_allows(segment_tenant, account):
            return self._error_page(
                400,
                50020,
                f"User account '{account.upn}' from identity provider does not exist in tenant '{match['tenant']}' "
                "and cannot access the application in that tenant.",
            )
        code = self._issue_code(
            "1.A" + random_token("", 120),
            client_id=client.client_id,
            account=account_key,
            redirect_uri=redirect_uri,
            scopes=tuple(scopes),
            nonce=q.get("nonce"),
            code_challenge=challenge,
            code_challenge_method=(method or "plain") if challenge else None,
            offline="offline_access" in scopes,
        )
        return answer({"code": code, "state": state, "session_state": str(uuid.uuid4())})

    def _admin_consent(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        """``GET /{tenant}/v2.0/adminconsent?client_id&redirect_uri&scope&state`` (v2-admin-consent): an admin of
        the tenant grants the app's ``.default`` permissions; the answer goes to the redirect URI as
        ``admin_consent=True&tenant=<id>&scope=…&state=…``, or ``error=…&error_description=…&state=…``."""
        q = req.query
        segment = match["tenant"]
        if segment.lower() in ("common", "consumers"):
            return self._error_page(400, 90130, f"Admin consent is not supported for the '{segment}' endpoint.")
        tenant = self._resolve_tenant(segment)
        if tenant is None:
            return self._error_page(400, 90002, f"Tenant '{segment}' not found.")
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return self._error_page(400, 700016, f"Application with identifier '{q.get('client_id')}' was not found.")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return self._error_page(400, 50011, f"The redirect URI '{redirect_uri}' does not match.")
        scope = q.get("scope", "")
        if not scope.endswith("/.default"):
            return self._error_page(400, 70011, "The provided value for the input parameter 'scope' is not valid.")
        state = q.get("state")
        deny = self._take_deny()
        if deny is not None:
            description = deny[1] or "The admin canceled the request"
            return Reply.redirect(
                self._with_params(redirect_uri, {"error": deny[0], "error_description": description, "state": state})
            )
        account_key = self._signed_in(None)
        account = self.accounts.get(account_key or "")
        if account is None or account.personal or (tenant != "organizations" and account.tenant_id != tenant):
            return self._error_page(400, 50020, "The signed-in user cannot consent for this tenant.")
        if account.upn not in self.tenant_admins:
            return Reply.redirect(
                self._with_params(
                    redirect_uri,
                    {
                        "error": "access_denied",
                        "error_description": "AADSTS90094: Admin consent is required; the signed-in user is not an "
                        "administrator of this tenant.",
                        "state": state,
                    },
                )
            )
        with self._lock:
            self.admin_consents.add((client.client_id, account.tenant_id))
        return Reply.redirect(
            self._with_params(
                redirect_uri, {"admin_consent": "True", "tenant": account.tenant_id, "scope": scope, "state": state}
            )
        )

    def _authenticate(self, req: RecordedRequest, tenant: str) -> OAuthClient | Reply:
        client_id, secret = self._client_credentials(req, req.form)
        if not client_id:
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        client = self.clients.get(client_id)
        if client is None:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
            )
        if not secret:
            return self._aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if not secrets.compare_digest(secret, client.client_secret):
            return self._aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        return client

    def _token(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        if self._resolve_tenant(match["tenant"]) is None:
            return self._aad_error(400, "invalid_request", 90002, f"Tenant '{match['tenant']}' not found.")
        form = req.form
        grant_type = form.get("grant_type")
        if not grant_type:
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."
            )
        if grant_type not in ("authorization_code", "refresh_token"):
            return self._aad_error(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
            )
        client = self._authenticate(req, match["tenant"])
        if isinstance(client, Reply):
            return client
        if grant_type == "refresh_token":
            return self._refresh(client, form)
        if not form.get("code"):
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'code'."
            )
        code, why = self._redeem(form["code"], client.client_id)
        if code is None:
            if why == "used":
                return self._aad_error(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                    "existing refresh token.",
                )
            if why == "expired":
                return self._aad_error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                )
            return self._aad_error(
                400, "invalid_grant", 70000, "The provided value for the 'code' parameter is not valid."
            )
        if form.get("redirect_uri") != code.redirect_uri:
            return self._aad_error(
                400,
                "invalid_grant",
                50011,
                f"The redirect URI '{form.get('redirect_uri')}' specified in the request does not match the "
                "redirect URI used to obtain the authorization code.",
            )
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                return self._aad_error(
                    400,
                    "invalid_request",
                    50148,
                    "The code_verifier does not match the code_challenge supplied in the authorization request for "
                    "PKCE.",
                )
            if not pkce_ok(code.code_challenge, code.code_challenge_method or "plain", verifier):
                return self._aad_error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                )
        body = self._grant_tokens(client.client_id, code.account, code.scopes, code.nonce, code.code)
        return Reply.json(200, body, self._token_headers())

    @staticmethod
    def _resource_scopes(scopes: Sequence[str]) -> list[str]:
        oidc = [s for s in scopes if s in ("openid", "profile", "email")]
        graph = [
            s if s.startswith("https://") else f"https://graph.microsoft.com/{s}"
            for s in scopes
            if s not in ("openid", "profile", "email", "offline_access")
        ]
        return oidc + graph

    def _grant_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], nonce: str | None, code: str | None
    ) -> dict[str, Any]:
        refresh = "1.A" + random_token("", 180) if "offline_access" in scopes else None
        grant = self._new_grant(client_id, account, scopes, refresh, code=code)
        return self._token_body(grant, nonce, refresh)

    def _token_body(self, grant: Grant, nonce: str | None, refresh: str | None) -> dict[str, Any]:
        access = self._new_access_token(grant, "EwB" + random_token("", 200), self.access_token_ttl)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(self._resource_scopes(grant.scopes)),
            "expires_in": self.access_token_ttl,
            "ext_expires_in": self.access_token_ttl,
            "access_token": access,
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if "openid" in grant.scopes:
            body["id_token"] = self._id_token(grant, nonce)
        return body

    def mint_tokens(
        self, client_id: str, account: str, scopes: Sequence[str], *, offline: bool = True
    ) -> dict[str, Any]:
        if client_id not in self.clients or account not in self.accounts:
            raise KeyError("unknown client or account")
        wanted = list(scopes) + (["offline_access"] if offline and "offline_access" not in scopes else [])
        return self._grant_tokens(client_id, account, wanted, None, None)

    def _id_token(self, grant: Grant, nonce: str | None) -> str:
        account = self.accounts[grant.account]
        now = int(self.now())
        # Pairwise subject: stable per (user, application), different across applications.
        sub = b64url(hashlib.sha256(f"{account.oid}:{grant.client_id}".encode()).digest())[:43]
        claims: dict[str, Any] = {
            "ver": "2.0",
            "iss": self.issuer_for(account.tenant_id),
            "sub": sub,
            "aud": grant.client_id,
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "tid": account.tenant_id,
            "oid": account.oid,
            "uti": random_token("", 22),
            "aio": random_token("", 40),
        }
        if "profile" in grant.scopes:
            claims.update(name=account.name, preferred_username=account.upn)
        if "email" in grant.scopes and account.mail:
            claims["email"] = account.mail
        if account.roles:
            claims["roles"] = list(account.roles)
        if nonce is not None:
            claims["nonce"] = nonce
        return self.sign_id_token(claims)

    def _refresh(self, client: OAuthClient, form: Mapping[str, str]) -> Reply:
        token = form.get("refresh_token")
        if not token:
            return self._aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'refresh_token'.",
            )
        with self._lock:
            known = self._refresh_tokens.get(token)
        if known is not None and known.revoked:
            return self._aad_error(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            )
        grant = self.refresh_grant(token)
        if grant is None or grant.client_id != client.client_id:
            return self._aad_error(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        refresh = "1.A" + random_token("", 180)
        with self._lock:
            grant.refreshes += 1
            self._rotate_refresh(grant, refresh, keep_old=self.keep_old_refresh_tokens)
        return Reply.json(200, self._token_body(grant, None, refresh), self._token_headers())

    def _graph_auth(self, req: RecordedRequest) -> AccessToken | Reply:
        raw = req.bearer()
        if raw is None:
            reply = self._graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        else:
            info = self.access_token_info(raw)
            if info is not None:
                return info
            with self._lock:
                known = raw in self._access
            message = (
                "Lifetime validation failed, the token is expired." if known else "IDX14100: JWT is not well formed."
            )
            reply = self._graph_error(401, "InvalidAuthenticationToken", message)
        reply.headers.append(
            (
                "WWW-Authenticate",
                f'Bearer realm="", authorization_uri="{self.url}/common/oauth2/authorize", '
                'client_id="00000003-0000-0000-c000-000000000000"',
            )
        )
        return reply

    def _me(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._graph_auth(req)
        if isinstance(info, Reply):
            return info
        if not {s.lower() for s in info.grant.scopes} & set(self.GRAPH_SCOPES):
            return self._graph_error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        account = self.accounts[info.grant.account]
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#users/$entity",
            "businessPhones": [],
            "displayName": account.name,
            "givenName": account.given_name,
            "jobTitle": None,
            "mail": account.mail,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "surname": account.surname,
            "userPrincipalName": account.upn,
            "id": account.oid,
        }
        return Reply.json(200, body)

    def _userinfo(self, req: RecordedRequest, match: re.Match[str]) -> Reply:
        info = self._graph_auth(req)
        if isinstance(info, Reply):
            return info
        account = self.accounts[info.grant.account]
        sub = b64url(hashlib.sha256(f"{account.oid}:{info.grant.client_id}".encode()).digest())[:43]
        body: dict[str, Any] = {"sub": sub}
        if "profile" in info.grant.scopes:
            body.update(name=account.name, family_name=account.surname, given_name=account.given_name)
        if "email" in info.grant.scopes and account.mail:
            body["email"] = account.mail
        return Reply.json(200, body)
