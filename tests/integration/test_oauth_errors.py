"""How provider failures reach the taxonomy, and what exactly is sent, against a scripted server on
127.0.0.1: the real OP cannot be made to answer 503, 429, GitHub's HTTP-200 errors or form-encoded bodies."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
from joserfc import jwt
from joserfc.jwk import Key, OctKey

from app.errors import AppError
from app.net import OutboundClient
from app.oauth import (
    ClientCredentials,
    DiscoveryCache,
    ProviderMetadata,
    TokenSet,
    discover,
    exchange_code,
    fetch_jwks,
    fetch_userinfo,
    refresh,
    revoke,
)
from tests.support.live import free_port
from tests.support.revocation import rfc7009


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    form: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


class Stub(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: dict[str, Reply] = {}
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def metadata(self, **overrides: Any) -> ProviderMetadata:
        values: dict[str, Any] = {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "userinfo_endpoint": self.url + "/userinfo",
            "revocation_endpoint": self.url + "/revoke",
            "jwks_uri": self.url + "/jwks",
        }
        values.update(overrides)
        return ProviderMetadata(**values)


class _Handler(BaseHTTPRequestHandler):
    server: Stub

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        path = self.path.split("?")[0]
        self.server.seen.append(
            Seen(self.command, path, {k.lower(): v for k, v in self.headers.items()}, dict(parse_qsl(raw)))
        )
        reply = self.server.replies.get(path, Reply(404, {"error": "not_found"}))
        if reply.form:
            body = "&".join(f"{k}={v}" for k, v in reply.body.items()).encode()
            content_type = "application/x-www-form-urlencoded"
        elif isinstance(reply.body, str):
            body, content_type = reply.body.encode(), "text/html"
        else:
            body, content_type = json.dumps(reply.body).encode(), "application/json"
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def outbound() -> Iterator[OutboundClient]:
    with OutboundClient(allow=("127.0.0.1",), retries=0, timeout=5) as client:
        yield client


CREDENTIALS = ClientCredentials("client:1", "p%ss+w:rd", "client_secret_basic")
TOKENS = TokenSet("old-access", refresh_token="old-refresh", scopes=("openid",))


def _raises(call: Callable[[], object]) -> AppError:
    with pytest.raises(AppError) as excinfo:
        call()
    return excinfo.value


def test_refresh_sends_basic_auth_form_encoded_per_rfc6749(stub: Stub, outbound: OutboundClient) -> None:
    stub.replies["/token"] = Reply(body={"access_token": "new", "token_type": "Bearer", "expires_in": 60})
    fresh = refresh(outbound, stub.metadata(), CREDENTIALS, TOKENS)
    assert fresh.access_token == "new" and fresh.refresh_token == "old-refresh"
    seen = stub.seen[-1]
    assert seen.form == {"grant_type": "refresh_token", "refresh_token": "old-refresh"}
    assert seen.headers["accept"] == "application/json"
    basic = base64.b64decode(seen.headers["authorization"].removeprefix("Basic ")).decode()
    assert basic == "client%3A1:p%25ss%2Bw%3Ard"
    user, _, password = basic.partition(":")
    assert (unquote(user), unquote(password)) == ("client:1", "p%ss+w:rd")


def test_client_secret_post_puts_the_credentials_in_the_body(stub: Stub, outbound: OutboundClient) -> None:
    stub.replies["/token"] = Reply(body={"access_token": "new"})
    refresh(outbound, stub.metadata(), ClientCredentials("c", "s", "client_secret_post"), TOKENS)
    seen = stub.seen[-1]
    assert "authorization" not in seen.headers
    assert seen.form["client_id"] == "c" and seen.form["client_secret"] == "s"


def test_server_errors_and_rate_limits_keep_their_retry_after(stub: Stub, outbound: OutboundClient) -> None:
    stub.replies["/token"] = Reply(503, {"error": "temporarily_unavailable"}, {"Retry-After": "7"})
    error = _raises(lambda: refresh(outbound, stub.metadata(), CREDENTIALS, TOKENS))
    assert (error.code, error.retry_after) == ("provider_unreachable", 7)
    stub.replies["/token"] = Reply(429, {"error": "rate_limited"}, {"Retry-After": "30"})
    error = _raises(lambda: refresh(outbound, stub.metadata(), CREDENTIALS, TOKENS))
    assert (error.code, error.retry_after) == ("rate_limited", 30)
    stub.replies["/token"] = Reply(502, "<html>bad gateway</html>")
    assert _raises(lambda: refresh(outbound, stub.metadata(), CREDENTIALS, TOKENS)).code == "provider_unreachable"


def test_an_unreachable_token_endpoint(outbound: OutboundClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    metadata = ProviderMetadata(closed + "/authorize", closed + "/token")
    assert _raises(lambda: refresh(outbound, metadata, CREDENTIALS, TOKENS)).code == "provider_unreachable"


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(400, {"error": "invalid_grant"}), "consent_required"),
        (Reply(401, {"error": "invalid_client"}), "invalid_config"),
        (Reply(400, {"error": "invalid_scope"}), "invalid_config"),
        (Reply(400, {"error": "unsupported_grant_type"}), "invalid_config"),
        # GitHub: HTTP 200 with an error member.
        (Reply(200, {"error": "bad_refresh_token"}), "consent_required"),
        (Reply(200, "<html>not json</html>"), "provider_unreachable"),
    ],
)
def test_refresh_error_mapping(stub: Stub, outbound: OutboundClient, reply: Reply, code: str) -> None:
    stub.replies["/token"] = reply
    assert _raises(lambda: refresh(outbound, stub.metadata(), CREDENTIALS, TOKENS)).code == code


def test_github_style_code_exchange(stub: Stub, outbound: OutboundClient) -> None:
    # A form-encoded answer with comma-separated scopes and no expiry (an OAuth-app token).
    stub.replies["/token"] = Reply(
        body={"access_token": "gho_x", "scope": "repo,user", "token_type": "bearer"}, form=True
    )
    tokens = exchange_code(
        outbound, stub.metadata(), CREDENTIALS, code="c", redirect_uri="https://a/cb", code_verifier="v" * 43
    )
    assert tokens.access_token == "gho_x" and tokens.scopes == ("repo", "user") and tokens.expires_at is None
    assert stub.seen[-1].form == {
        "grant_type": "authorization_code",
        "code": "c",
        "redirect_uri": "https://a/cb",
        "code_verifier": "v" * 43,
    }
    stub.replies["/token"] = Reply(200, {"error": "bad_verification_code"})
    error = _raises(
        lambda: exchange_code(outbound, stub.metadata(), CREDENTIALS, code="c", redirect_uri="https://a/cb")
    )
    assert error.code == "token_expired"


def test_userinfo_failures(stub: Stub, outbound: OutboundClient) -> None:
    metadata = stub.metadata()
    stub.replies["/userinfo"] = Reply(401, {"error": "invalid_token"})
    assert _raises(lambda: fetch_userinfo(outbound, metadata, "at")).code == "token_expired"
    stub.replies["/userinfo"] = Reply(403, {"error": "insufficient_scope"})
    assert _raises(lambda: fetch_userinfo(outbound, metadata, "at")).code == "consent_required"
    stub.replies["/userinfo"] = Reply(200, {"sub": "someone-else"})
    assert _raises(lambda: fetch_userinfo(outbound, metadata, "at", expected_subject="me")).code == "validation_failed"
    stub.replies["/userinfo"] = Reply(200, {"sub": "me", "email": "me@example.test"})
    assert fetch_userinfo(outbound, metadata, "at", expected_subject="me")["email"] == "me@example.test"
    assert stub.seen[-1].headers["authorization"] == "Bearer at"


class _NoKeys:
    """A key source for HS256 tokens, which are checked with the client secret, never a JWKS key."""

    def signing_key(self, jwks_uri: str, kid: str | None) -> Key:
        raise AssertionError("an HS256 ID token needs no JWKS key")


def test_answers_about_another_user_say_so_and_what_to_do(stub: Stub, outbound: OutboundClient) -> None:
    # OIDC Core §5.3.4 (userinfo) and §12.2 (refresh): the sub must not change. The message says what the
    # provider did; the hint what the person can do (not "correct the highlighted fields": there are none).
    stub.replies["/userinfo"] = Reply(200, {"sub": "someone-else"})
    error = _raises(lambda: fetch_userinfo(outbound, stub.metadata(), "at", expected_subject="me"))
    assert error.text == "The provider's user information is about a different user than the one who signed in"
    assert error.help.startswith("Nothing was changed. Sign in again")

    secret = "a-client-secret-long-enough-for-hs256!"
    metadata = stub.metadata(id_token_signing_alg_values_supported=("HS256",))
    now = int(time.time())

    def id_token(sub: str) -> str:
        claims = {"iss": stub.url, "aud": "client:1", "sub": sub, "iat": now, "exp": now + 300}
        return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))

    stub.replies["/token"] = Reply(
        200, {"access_token": "new", "token_type": "Bearer", "expires_in": 300, "id_token": id_token("someone-else")}
    )
    mine = TokenSet("old", refresh_token="r", scopes=("openid",), id_token=id_token("me"), id_claims={"sub": "me"})
    credentials = ClientCredentials("client:1", secret, "client_secret_basic")
    error = _raises(lambda: refresh(outbound, metadata, credentials, mine, keys=_NoKeys()))
    assert error.text == "The provider answered the refresh with an ID token for a different user than this account's"
    assert error.help.startswith("The tokens were not changed. Reconnect the account")
    # The same answer about the same user is taken.
    stub.replies["/token"].body["id_token"] = id_token("me")
    assert refresh(outbound, metadata, credentials, mine, keys=_NoKeys()).access_token == "new"


def test_revoke(stub: Stub, outbound: OutboundClient) -> None:
    stub.replies["/revoke"] = Reply(200, {})
    revoke(outbound, rfc7009(stub.metadata(), CREDENTIALS, "rt", "refresh_token"))
    assert stub.seen[-1].form == {"token": "rt", "token_type_hint": "refresh_token"}
    assert stub.seen[-1].headers["authorization"].startswith("Basic ")
    stub.replies["/revoke"] = Reply(503, {}, {"Retry-After": "3"})
    error = _raises(lambda: revoke(outbound, rfc7009(stub.metadata(), CREDENTIALS, "rt")))
    assert (error.code, error.retry_after) == ("provider_unreachable", 3)
    # Azure AD has no revocation endpoint: the caller is told, nothing is sent.
    count = len(stub.seen)
    assert _raises(
        lambda: revoke(outbound, rfc7009(stub.metadata(revocation_endpoint=None), CREDENTIALS, "rt"))
    ).code == ("invalid_config")
    assert len(stub.seen) == count


def test_discovery_and_jwks_failures(stub: Stub, outbound: OutboundClient) -> None:
    assert _raises(lambda: discover(outbound, stub.url)).code == "invalid_config"  # 404
    stub.replies["/.well-known/openid-configuration"] = Reply(500, {})
    assert _raises(lambda: discover(outbound, stub.url)).code == "provider_unreachable"
    stub.replies["/.well-known/openid-configuration"] = Reply(200, "<html>login page</html>")
    assert _raises(lambda: discover(outbound, stub.url)).code == "invalid_config"
    stub.replies["/jwks"] = Reply(200, {"keys": [{"kty": "RSA", "n": "x"}]})
    assert _raises(lambda: fetch_jwks(outbound, stub.url + "/jwks")).code == "invalid_config"
    stub.replies["/jwks"] = Reply(200, {"no": "keys"})
    assert _raises(lambda: fetch_jwks(outbound, stub.url + "/jwks")).code == "invalid_config"
    # A templated (Azure multi-tenant) issuer needs its discovery URL spelled out.
    assert _raises(lambda: DiscoveryCache(outbound).metadata(stub.url + "/{tenantid}/v2.0")).code == "invalid_config"


def test_discovery_is_guarded_against_internal_addresses() -> None:
    # Without 127.0.0.1 on the allow list, the SSRF guard refuses before any request is made.
    with OutboundClient(retries=0) as client:
        assert _raises(lambda: discover(client, "http://127.0.0.1:9")).code == "invalid_config"
