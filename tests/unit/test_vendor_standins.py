"""The SaaS stand-ins speak their vendor's documented protocol: plain httpx against real sockets.

These tests are the stand-ins' contract. If the app's provider tests pass against a stand-in that these
tests vouch for, the app sends what the vendor expects and copes with what the vendor answers.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet

from app.net import OutboundClient, ProviderUnreachable, retry_after
from tests.support.vendors.anthropic import Anthropic
from tests.support.vendors.base import RecordedRequest, Reply, StartVendor, Vendor
from tests.support.vendors.generic import GenericApi
from tests.support.vendors.github import GitHub, GitHubEmail
from tests.support.vendors.google import Google
from tests.support.vendors.huggingface import HuggingFace
from tests.support.vendors.microsoft import MSA_TENANT_ID, Microsoft
from tests.support.vendors.oauth import pkce_pair
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

CALLBACK = "http://localhost:5000/oauth/callback"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # Plain http only; verify=False skips loading a CA bundle (~30 ms a client).
    with httpx.Client(trust_env=False, timeout=5.0, follow_redirects=False, verify=False) as client:
        yield client


def verify_id_token(
    http: httpx.Client, token: str, jwks_uri: str, *, issuer: str, audience: str, nonce: str | None = None
) -> dict[str, Any]:
    """Verify like a relying party: signature against the published JWKS, then iss/aud/exp/nonce."""
    keys = KeySet.import_key_set(http.get(jwks_uri).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": audience},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    jwt.JWTClaimsRegistry(leeway=5, **options).validate(decoded.claims)
    return dict(decoded.claims)


def jwt_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return parsed


def authorize_url(base: str, **params: str) -> str:
    return f"{base}?{urllib.parse.urlencode(params)}"


# --- the shared controls ------------------------------------------------------------------------------


def test_requests_are_recorded_with_headers_and_parsed_bodies(
    generic_api_standin: GenericApi, http: httpx.Client
) -> None:
    key = generic_api_standin.add_key(label="ci")
    http.post(
        f"{generic_api_standin.url}/v1/things?x=1",
        json={"name": "a"},
        headers={"Authorization": f"Bearer {key}", "X-Trace": "t1"},
    )
    http.post(f"{generic_api_standin.url}/v1/form", data={"a": "b"}, headers={"Authorization": f"Bearer {key}"})
    first, second = generic_api_standin.requests
    assert (first.method, first.path, first.query) == ("POST", "/v1/things", {"x": "1"})
    assert first.headers["authorization"] == f"Bearer {key}"
    assert first.header("X-TRACE") == "t1"
    assert first.json == {"name": "a"}
    assert second.form == {"a": "b"}
    assert generic_api_standin.last_request("/v1/form") == second
    generic_api_standin.clear_requests()
    assert generic_api_standin.requests == []


def test_failures_are_injected_for_n_requests_then_normal(generic_api_standin: GenericApi, http: httpx.Client) -> None:
    key = generic_api_standin.add_key()
    auth = {"Authorization": f"Bearer {key}"}
    generic_api_standin.fail_next(503, times=2)
    statuses = [http.get(f"{generic_api_standin.url}/ping", headers=auth).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert len(generic_api_standin.requests) == 3  # failures are recorded too


def test_failures_can_target_a_path_and_last_until_cleared(generic_api_standin: GenericApi, http: httpx.Client) -> None:
    key = generic_api_standin.add_key()
    auth = {"Authorization": f"Bearer {key}"}
    generic_api_standin.fail_next(500, times=None, path="/v1/broken")
    assert http.get(f"{generic_api_standin.url}/v1/ok", headers=auth).status_code == 200
    assert http.get(f"{generic_api_standin.url}/v1/broken/deep", headers=auth).status_code == 500
    assert http.get(f"{generic_api_standin.url}/v1/broken", headers=auth).status_code == 500
    generic_api_standin.clear_faults()
    assert http.get(f"{generic_api_standin.url}/v1/broken", headers=auth).status_code == 200


def test_rate_limit_carries_retry_after(generic_api_standin: GenericApi, http: httpx.Client) -> None:
    generic_api_standin.rate_limit_next(retry_after=17)
    response = http.get(f"{generic_api_standin.url}/x")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    generic_api_standin.fail_next(429)
    assert http.get(f"{generic_api_standin.url}/x").headers["Retry-After"] == "120"


def test_a_hung_request_times_out_the_client_and_release_lets_it_go(
    generic_api_standin: GenericApi, http: httpx.Client
) -> None:
    key = generic_api_standin.add_key()
    auth = {"Authorization": f"Bearer {key}"}
    generic_api_standin.hang_next()
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{generic_api_standin.url}/slow", headers=auth, timeout=0.2)
    generic_api_standin.release()
    assert http.get(f"{generic_api_standin.url}/slow", headers=auth).status_code == 200


def test_a_hang_with_seconds_answers_normally_afterwards(generic_api_standin: GenericApi, http: httpx.Client) -> None:
    key = generic_api_standin.add_key()
    generic_api_standin.hang_next(seconds=0.05)
    response = http.get(f"{generic_api_standin.url}/slow", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_stop_is_prompt_with_idle_keepalive_and_hung_connections() -> None:
    vendor = GenericApi().start()
    key = vendor.add_key()
    client = httpx.Client(trust_env=False, verify=False)
    try:
        assert client.get(f"{vendor.url}/a", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        vendor.hang_next()
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"{vendor.url}/b", timeout=0.2)
        vendor.stop()  # the pooled keep-alive connection and the hung handler must not block this
    finally:
        client.close()
    vendor.assert_healthy()


def test_wait_for_sees_requests_made_in_the_background(generic_api_standin: GenericApi, http: httpx.Client) -> None:
    http.get(f"{generic_api_standin.url}/bg")
    assert [r.path for r in generic_api_standin.wait_for(1, path="/bg", timeout=1)] == ["/bg"]
    with pytest.raises(AssertionError, match="0 of 1"):
        generic_api_standin.wait_for(1, path="/never", timeout=0.05)


def test_an_internal_stand_in_error_is_a_500_and_fails_assert_healthy(http: httpx.Client) -> None:
    def broken(req: RecordedRequest, match: Any) -> Reply:
        raise RuntimeError("stand-in bug")

    with OpenAI() as vendor:
        vendor.route("GET", r"/v1/boom", broken)
        assert http.get(f"{vendor.url}/v1/boom").status_code == 500
    with pytest.raises(AssertionError, match="stand-in bug"):
        vendor.assert_healthy()


def test_start_vendor_runs_extra_instances(start_vendor: StartVendor, http: httpx.Client) -> None:
    first = start_vendor(OpenAI())
    second = start_vendor(OpenAI())
    assert first.url != second.url
    assert http.get(f"{second.url}/v1/models").status_code == 401


def test_the_apps_outbound_client_reaches_stand_ins_and_meets_injected_failures(openai_standin: OpenAI) -> None:
    """What the module docstring promises about app.net: a single 503 is retried away, the default 429
    Retry-After (120 s, over the 30 s cap) comes straight back, and a hang surfaces as a timeout."""
    key = openai_standin.add_key()
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{openai_standin.url}/v1/models"
    with OutboundClient(allow=("127.0.0.1",), timeout=2, retries=2, backoff_base=0.01) as client:
        openai_standin.fail_next(503)
        assert client.get(url, headers=auth).status_code == 200
        assert len(openai_standin.requests_to("/v1/models")) == 2
        openai_standin.rate_limit_next(times=None)
        limited = client.get(url, headers=auth)
        assert (limited.status_code, retry_after(limited)) == (429, 120.0)
        assert len(openai_standin.requests_to("/v1/models")) == 3
        openai_standin.clear_faults()
    openai_standin.hang_next()
    with OutboundClient(allow=("127.0.0.1",), timeout=0.2, retries=0) as client, pytest.raises(ProviderUnreachable):
        client.get(url, headers=auth)
    openai_standin.release()


# Every vendor's injected errors keep that vendor's documented shape.
ERROR_SHAPES: list[tuple[type[Vendor], str, int, Any]] = [
    (OpenAI, "/v1/models", 429, lambda b: b["error"]["code"] == "rate_limit_exceeded" and "param" in b["error"]),
    (OpenAI, "/v1/models", 503, lambda b: b["error"]["type"] == "server_error"),
    (Anthropic, "/v1/models", 429, lambda b: b["type"] == "error" and b["error"]["type"] == "rate_limit_error"),
    (Anthropic, "/v1/models", 529, lambda b: b["error"]["type"] == "overloaded_error"),
    (HuggingFace, "/api/whoami-v2", 429, lambda b: isinstance(b["error"], str)),
    (GenericApi, "/x", 403, lambda b: b["error"] == "forbidden"),
    (Google, "/token", 503, lambda b: b["error"] == "temporarily_unavailable"),
    (Google, "/v1/userinfo", 429, lambda b: b["error"]["status"] == "RESOURCE_EXHAUSTED"),
    (GitHub, "/user", 403, lambda b: b["message"] == "Forbidden" and b["status"] == "403"),
    (GitHub, "/user", 429, lambda b: "secondary rate limit" in b["message"]),
    (Microsoft, "/common/oauth2/v2.0/token", 429, lambda b: b["error_codes"] and b["trace_id"]),
    (Microsoft, "/v1.0/me", 429, lambda b: b["error"]["code"] == "TooManyRequests"),
    (Microsoft, "/v1.0/me", 503, lambda b: b["error"]["code"] == "serviceNotAvailable"),
]


@pytest.mark.parametrize(("cls", "path", "status", "shape"), ERROR_SHAPES)
def test_injected_errors_have_the_vendors_documented_shape(
    start_vendor: StartVendor, http: httpx.Client, cls: type[Vendor], path: str, status: int, shape: Any
) -> None:
    vendor = start_vendor(cls())
    vendor.fail_next(status)
    response = http.get(f"{vendor.url}{path}")
    assert response.status_code == status
    assert shape(response.json())
    if status == 429:
        assert response.headers["Retry-After"] == "120"


# --- OpenAI -------------------------------------------------------------------------------------------


def test_openai_lists_models_for_a_key_with_its_org_and_project(openai_standin: OpenAI, http: httpx.Client) -> None:
    key = openai_standin.add_key(organization="org-acme", projects=["proj_a"])
    response = http.get(
        f"{openai_standin.url}/v1/models",
        headers={"Authorization": f"Bearer {key}", "OpenAI-Organization": "org-acme", "OpenAI-Project": "proj_a"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"} in body["data"]
    assert response.headers["x-request-id"].startswith("req_")
    model = http.get(f"{openai_standin.url}/v1/models/gpt-4o", headers={"Authorization": f"Bearer {key}"})
    assert model.json()["id"] == "gpt-4o"


def test_openai_rejects_a_missing_or_wrong_key_as_documented(openai_standin: OpenAI, http: httpx.Client) -> None:
    missing = http.get(f"{openai_standin.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] is None
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key")
    wrong_key = "sk-proj-thisisnotarealkeyatallWXYZ"
    wrong = http.get(f"{openai_standin.url}/v1/models", headers={"Authorization": f"Bearer {wrong_key}"})
    assert wrong.status_code == 401
    error = wrong.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_api_key")
    assert wrong_key not in error["message"]  # masked, as OpenAI does
    assert "sk-proj-*" in error["message"] and "WXYZ" in error["message"]
    revoked = openai_standin.add_key()
    openai_standin.revoke_key(revoked)
    assert (
        http.get(f"{openai_standin.url}/v1/models", headers={"Authorization": f"Bearer {revoked}"}).status_code == 401
    )


def test_openai_rejects_a_foreign_org_or_project_and_blocked_regions(
    openai_standin: OpenAI, http: httpx.Client
) -> None:
    key = openai_standin.add_key(organization="org-acme", projects=["proj_a"])
    auth = {"Authorization": f"Bearer {key}"}
    org = http.get(f"{openai_standin.url}/v1/models", headers={**auth, "OpenAI-Organization": "org-other"})
    assert (org.status_code, org.json()["error"]["code"]) == (401, "mismatched_organization")
    project = http.get(f"{openai_standin.url}/v1/models", headers={**auth, "OpenAI-Project": "proj_b"})
    assert (project.status_code, project.json()["error"]["code"]) == (401, "mismatched_project")
    blocked = openai_standin.add_key(region_blocked=True)
    forbidden = http.get(f"{openai_standin.url}/v1/models", headers={"Authorization": f"Bearer {blocked}"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "unsupported_country_region_territory"


def test_openai_unknown_paths_and_models(openai_standin: OpenAI, http: httpx.Client) -> None:
    key = openai_standin.add_key()
    auth = {"Authorization": f"Bearer {key}"}
    bad_url = http.get(f"{openai_standin.url}/models", headers=auth)
    assert bad_url.status_code == 404
    assert bad_url.json()["error"]["message"] == "Invalid URL (GET /models)"
    missing = http.get(f"{openai_standin.url}/v1/models/gpt-9", headers=auth)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")


# --- Anthropic ----------------------------------------------------------------------------------------


def test_anthropic_lists_models_with_pagination(anthropic_standin: Anthropic, http: httpx.Client) -> None:
    key = anthropic_standin.add_key()
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    page = http.get(f"{anthropic_standin.url}/v1/models", params={"limit": 2}, headers=headers)
    assert page.status_code == 200
    body = page.json()
    assert [m["type"] for m in body["data"]] == ["model", "model"]
    assert set(body["data"][0]) == {"type", "id", "display_name", "created_at"}
    assert body["has_more"] is True
    assert (body["first_id"], body["last_id"]) == (body["data"][0]["id"], body["data"][1]["id"])
    rest = http.get(f"{anthropic_standin.url}/v1/models", params={"after_id": body["last_id"]}, headers=headers).json()
    assert rest["has_more"] is False and len(rest["data"]) == 1
    assert page.headers["request-id"].startswith("req_")


def test_anthropic_requires_the_version_header(anthropic_standin: Anthropic, http: httpx.Client) -> None:
    key = anthropic_standin.add_key()
    missing = http.get(f"{anthropic_standin.url}/v1/models", headers={"x-api-key": key})
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }
    bad = http.get(f"{anthropic_standin.url}/v1/models", headers={"x-api-key": key, "anthropic-version": "2024-10-22"})
    assert bad.status_code == 400
    assert "is not a valid version" in bad.json()["error"]["message"]


def test_anthropic_rejects_bad_keys_and_denied_permissions(anthropic_standin: Anthropic, http: httpx.Client) -> None:
    version = {"anthropic-version": "2023-06-01"}
    no_key = http.get(f"{anthropic_standin.url}/v1/models", headers=version)
    assert no_key.status_code == 401
    wrong = http.get(f"{anthropic_standin.url}/v1/models", headers={**version, "x-api-key": "sk-ant-nope"})
    assert wrong.status_code == 401
    assert wrong.json()["type"] == "error"
    assert wrong.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    # Bearer auth is not how API keys are sent to Anthropic.
    bearer = http.get(
        f"{anthropic_standin.url}/v1/models",
        headers={**version, "Authorization": f"Bearer {anthropic_standin.add_key()}"},
    )
    assert bearer.status_code == 401
    denied = anthropic_standin.add_key(permission_denied=True)
    forbidden = http.get(f"{anthropic_standin.url}/v1/models", headers={**version, "x-api-key": denied})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["type"] == "permission_error"


# --- HuggingFace --------------------------------------------------------------------------------------


def test_huggingface_whoami_describes_user_orgs_and_token(huggingface_standin: HuggingFace, http: httpx.Client) -> None:
    huggingface_standin.add_user("alice", fullname="Alice Liddell", orgs=[("acme", "admin"), ("lab", "read")])
    token = huggingface_standin.add_token("alice", role="write", display_name="ci-token")
    response = http.get(f"{huggingface_standin.url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.json()
    assert (body["type"], body["name"], body["fullname"]) == ("user", "alice", "Alice Liddell")
    assert [(o["name"], o["roleInOrg"]) for o in body["orgs"]] == [("acme", "admin"), ("lab", "read")]
    assert body["auth"]["type"] == "access_token"
    assert body["auth"]["accessToken"]["displayName"] == "ci-token"
    assert body["auth"]["accessToken"]["role"] == "write"
    assert "RateLimit" not in response.headers


def test_huggingface_fine_grained_tokens_and_rate_limit_headers(
    huggingface_standin: HuggingFace, http: httpx.Client
) -> None:
    token = huggingface_standin.add_token("bob", role="fineGrained")
    huggingface_standin.set_rate_limit(remaining=499, reset=211, quota=500)
    response = http.get(f"{huggingface_standin.url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
    access = response.json()["auth"]["accessToken"]
    assert access["role"] == "fineGrained"
    assert "global" in access["fineGrained"]
    assert response.headers["RateLimit"] == '"api";r=499;t=211'
    assert response.headers["RateLimit-Policy"] == '"fixed window";"api";q=500;w=300'
    huggingface_standin.extra_headers["X-RateLimit-Remaining"] = "499"
    again = http.get(f"{huggingface_standin.url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
    assert again.headers["X-RateLimit-Remaining"] == "499"


def test_huggingface_rejects_bad_credentials_as_documented(
    huggingface_standin: HuggingFace, http: httpx.Client
) -> None:
    bad = http.get(f"{huggingface_standin.url}/api/whoami-v2", headers={"Authorization": "Bearer hf_nope"})
    assert bad.status_code == 401
    assert bad.json() == {"error": "Invalid credentials in Authorization header"}
    assert bad.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert http.get(f"{huggingface_standin.url}/api/whoami-v2").status_code == 401
    huggingface_standin.rate_limit_next(retry_after=60)
    limited = http.get(f"{huggingface_standin.url}/api/whoami-v2")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "60")
    assert limited.headers["RateLimit"] == '"api";r=0;t=60'


# --- Generic API --------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth_type", ["bearer", "header", "basic", "query"])
def test_generic_api_checks_the_configured_credential(
    start_vendor: StartVendor, http: httpx.Client, auth_type: str
) -> None:
    vendor = start_vendor(GenericApi(auth_type=auth_type, header_name="X-Key", query_param="key"))
    key = vendor.add_key(secret="s3cret" if auth_type == "basic" else None, label="prod")

    def call(credential: str) -> httpx.Response:
        url = f"{vendor.url}/v1/check"
        if auth_type == "bearer":
            return http.get(url, headers={"Authorization": f"Bearer {credential}"})
        if auth_type == "header":
            return http.get(url, headers={"X-Key": credential})
        if auth_type == "basic":
            return http.get(url, auth=(credential, "s3cret"))
        return http.get(url, params={"key": credential, "page": "2"})

    ok = call(key)
    assert ok.status_code == 200
    assert ok.json()["key_label"] == "prod"
    assert key not in ok.text  # the credential is never echoed
    assert call("wrong").status_code == 401
    missing = http.get(f"{vendor.url}/v1/check")
    assert missing.status_code == 401
    if auth_type in ("bearer", "basic"):
        assert missing.headers["WWW-Authenticate"].startswith("Bearer" if auth_type == "bearer" else "Basic")


def test_generic_api_can_restrict_paths(start_vendor: StartVendor, http: httpx.Client) -> None:
    vendor = start_vendor(GenericApi(paths=["/health"]))
    key = vendor.add_key()
    assert http.get(f"{vendor.url}/health", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert http.get(f"{vendor.url}/other", headers={"Authorization": f"Bearer {key}"}).status_code == 404


# --- Google -------------------------------------------------------------------------------------------


def google_flow(
    google: Google, http: httpx.Client, *, prompt: str | None = "consent", **extra: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Code + PKCE flow as a relying party runs it; returns (token response, callback params)."""
    client = next(iter(google.clients.values()))
    discovery = http.get(f"{google.url}/.well-known/openid-configuration").json()
    verifier, challenge = pkce_pair()
    params = {
        "client_id": client.client_id,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "openid email profile",
        "state": "st-1",
        "nonce": "nonce-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "access_type": "offline",
        **({"prompt": prompt} if prompt else {}),
        **extra,
    }
    callback = google.approve(authorize_url(discovery["authorization_endpoint"], **params))
    assert callback.url.startswith(CALLBACK)
    token = http.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": callback.code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )
    assert token.status_code == 200, token.text
    assert token.headers["Cache-Control"] == "no-store"
    return token.json(), callback.params


def test_google_discovery_names_the_stand_in_as_issuer(google_standin: Google, http: httpx.Client) -> None:
    doc = http.get(f"{google_standin.url}/.well-known/openid-configuration").json()
    assert doc["issuer"] == google_standin.url
    for endpoint in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
        "jwks_uri",
    ):
        assert doc[endpoint].startswith(google_standin.url + "/")
    assert "S256" in doc["code_challenge_methods_supported"]
    assert http.get(doc["jwks_uri"]).json()["keys"][0]["alg"] == "RS256"


def test_google_code_pkce_flow_issues_a_verifiable_id_token_with_hd(google_standin: Google, http: httpx.Client) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com", name="Ada Lovelace", hd="example.com")
    tokens, callback = google_flow(google_standin, http, hd="example.com")
    assert callback["state"] == "st-1"
    assert callback["hd"] == "example.com"
    assert {"access_token", "refresh_token", "id_token", "expires_in", "scope", "token_type"} <= set(tokens)
    assert "https://www.googleapis.com/auth/userinfo.email" in tokens["scope"].split()
    claims = verify_id_token(
        http,
        tokens["id_token"],
        f"{google_standin.url}/oauth2/v3/certs",
        issuer=google_standin.url,
        audience=client.client_id,
        nonce="nonce-1",
    )
    assert (claims["email"], claims["email_verified"], claims["hd"]) == ("ada@example.com", True, "example.com")
    assert claims["azp"] == client.client_id
    assert claims["at_hash"] == Google.at_hash(tokens["access_token"])
    # The recorded token request proves what a client sent.
    sent = google_standin.last_request("/token")
    assert sent.form["code_verifier"] and sent.form["grant_type"] == "authorization_code"


def test_google_hd_request_parameter_is_only_a_hint(google_standin: Google, http: httpx.Client) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("eve@gmail.com")
    tokens, callback = google_flow(google_standin, http, hd="example.com")
    claims = verify_id_token(
        http,
        tokens["id_token"],
        f"{google_standin.url}/oauth2/v3/certs",
        issuer=google_standin.url,
        audience=client.client_id,
    )
    assert "hd" not in claims and "hd" not in callback  # the relying party must check the claim itself


def test_google_refresh_tokens_follow_offline_and_consent(google_standin: Google, http: httpx.Client) -> None:
    google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com")
    first, _ = google_flow(google_standin, http, prompt=None)
    assert "refresh_token" in first  # first consent of an offline request
    second, callback = google_flow(google_standin, http, prompt=None)
    assert "refresh_token" not in second  # consent already given: no new refresh token
    assert callback["prompt"] == "none"
    third, _ = google_flow(google_standin, http, prompt="consent")
    assert "refresh_token" in third


def test_google_refresh_and_revoke(google_standin: Google, http: httpx.Client) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com")
    tokens, _ = google_flow(google_standin, http)
    refresh_form = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    }
    refreshed = http.post(f"{google_standin.url}/token", data=refresh_form).json()
    assert "refresh_token" not in refreshed and refreshed["access_token"] != tokens["access_token"]
    assert "id_token" in refreshed
    assert google_standin.grants[0].refreshes == 1
    userinfo = http.get(
        f"{google_standin.url}/v1/userinfo", headers={"Authorization": f"Bearer {refreshed['access_token']}"}
    )
    assert userinfo.json()["email"] == "ada@example.com"

    revoke = http.post(f"{google_standin.url}/revoke", data={"token": tokens["refresh_token"]})
    assert revoke.status_code == 200
    again = http.post(f"{google_standin.url}/token", data=refresh_form)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    dead = http.get(
        f"{google_standin.url}/v1/userinfo", headers={"Authorization": f"Bearer {refreshed['access_token']}"}
    )
    assert dead.status_code == 401 and "invalid_token" in dead.headers["WWW-Authenticate"]
    twice = http.post(f"{google_standin.url}/revoke", data={"token": tokens["refresh_token"]})
    assert (twice.status_code, twice.json()["error"]) == (400, "invalid_token")


def test_google_token_endpoint_rejects_bad_verifier_reuse_and_secret(
    google_standin: Google, http: httpx.Client
) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com")
    _, challenge = pkce_pair()
    callback = google_standin.approve(
        authorize_url(
            f"{google_standin.url}/o/oauth2/v2/auth",
            client_id=client.client_id,
            redirect_uri=CALLBACK,
            response_type="code",
            scope="openid",
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )
    form = {"grant_type": "authorization_code", "code": callback.code, "redirect_uri": CALLBACK}
    wrong_secret = http.post(f"{google_standin.url}/token", data=form, auth=(client.client_id, "nope"))
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
    wrong_verifier = http.post(
        f"{google_standin.url}/token",
        data={**form, "code_verifier": pkce_pair()[0]},
        auth=(client.client_id, client.client_secret),
    )
    assert wrong_verifier.status_code == 400
    assert wrong_verifier.json()["error"] == "invalid_grant"
    reused = http.post(
        f"{google_standin.url}/token",
        data={**form, "code_verifier": pkce_pair()[0]},
        auth=(client.client_id, client.client_secret),
    )
    assert reused.json() == {"error": "invalid_grant", "error_description": "Bad Request"}


def test_google_authorize_errors(google_standin: Google, http: httpx.Client) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com")
    base = f"{google_standin.url}/o/oauth2/v2/auth"
    common = {"client_id": client.client_id, "response_type": "code", "scope": "openid", "state": "s"}
    mismatch = http.get(authorize_url(base, **common, redirect_uri="http://evil.example/cb"))
    assert mismatch.status_code == 400 and "Location" not in mismatch.headers
    assert "redirect_uri_mismatch" in mismatch.text
    google_standin.deny_next()
    denied = google_standin.approve(authorize_url(base, **common, redirect_uri=CALLBACK))
    assert denied.params == {"error": "access_denied", "state": "s"}


def test_google_signing_key_rotation_and_tampering(google_standin: Google, http: httpx.Client) -> None:
    client = google_standin.add_client(redirect_uris=[CALLBACK])
    google_standin.add_account("ada@example.com")
    old_kid = jwt_header(google_standin.mint_tokens(client.client_id, "ada@example.com", ["openid"])["id_token"])["kid"]
    new_kid = google_standin.rotate_signing_key()
    token = google_standin.mint_tokens(client.client_id, "ada@example.com", ["openid"])["id_token"]
    assert jwt_header(token)["kid"] == new_kid != old_kid
    kids = {k["kid"] for k in http.get(f"{google_standin.url}/oauth2/v3/certs").json()["keys"]}
    assert kids == {old_kid, new_kid}

    google_standin.tamper_next_id_token(unsigned=True)
    unsigned = google_standin.mint_tokens(client.client_id, "ada@example.com", ["openid"])["id_token"]
    assert jwt_header(unsigned)["alg"] == "none"
    google_standin.tamper_next_id_token({"aud": "someone-else"})
    foreign = google_standin.mint_tokens(client.client_id, "ada@example.com", ["openid"])["id_token"]
    with pytest.raises(Exception, match="aud"):
        verify_id_token(
            http,
            foreign,
            f"{google_standin.url}/oauth2/v3/certs",
            issuer=google_standin.url,
            audience=client.client_id,
        )
    jwks_uri = f"{google_standin.url}/oauth2/v3/certs"
    forged = token.rsplit(".", 1)[0] + "." + "A" * 342
    with pytest.raises(BadSignatureError):
        verify_id_token(http, forged, jwks_uri, issuer=google_standin.url, audience=client.client_id)
    google_standin.rotate_signing_key(keep_old=False)  # the old kid is gone from the JWKS
    with pytest.raises(InvalidKeyIdError):
        verify_id_token(http, token, jwks_uri, issuer=google_standin.url, audience=client.client_id)


# --- GitHub -------------------------------------------------------------------------------------------


def github_code(github: GitHub, client_id: str, scope: str = "read:user user:email") -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    callback = github.approve(
        authorize_url(
            f"{github.url}/login/oauth/authorize",
            client_id=client_id,
            redirect_uri=CALLBACK,
            scope=scope,
            state="gh-state",
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )
    assert callback.params["state"] == "gh-state"
    return callback.code, verifier


def test_github_oauth_app_flow_answers_urlencoded_or_json(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=[CALLBACK])
    github_standin.add_account("octocat", name="The Octocat")
    code, verifier = github_code(github_standin, client.client_id)
    form = {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    plain = http.post(f"{github_standin.url}/login/oauth/access_token", data=form)
    assert plain.headers["content-type"].startswith("application/x-www-form-urlencoded")
    parsed = dict(urllib.parse.parse_qsl(plain.text))
    assert parsed["access_token"].startswith("gho_")
    assert (parsed["scope"], parsed["token_type"]) == ("read:user,user:email", "bearer")

    code, verifier = github_code(github_standin, client.client_id)
    as_json = http.post(
        f"{github_standin.url}/login/oauth/access_token",
        data={**form, "code": code, "code_verifier": verifier},
        headers={"Accept": "application/json"},
    ).json()
    assert as_json["access_token"].startswith("gho_") and "refresh_token" not in as_json and "expires_in" not in as_json


def test_github_token_errors_come_with_http_200(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=[CALLBACK])
    github_standin.add_account("octocat")
    accept = {"Accept": "application/json"}
    url = f"{github_standin.url}/login/oauth/access_token"
    bad_code = http.post(
        url, data={"client_id": client.client_id, "client_secret": client.client_secret, "code": "x"}, headers=accept
    )
    assert bad_code.status_code == 200
    assert bad_code.json()["error"] == "bad_verification_code"
    assert bad_code.json()["error_uri"].startswith("https://docs.github.com/")
    code, _ = github_code(github_standin, client.client_id)
    bad_secret = http.post(url, data={"client_id": client.client_id, "client_secret": "nope", "code": code})
    assert dict(urllib.parse.parse_qsl(bad_secret.text))["error"] == "incorrect_client_credentials"
    bad_verifier = http.post(
        url,
        data={
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "code": code,
            "code_verifier": pkce_pair()[0],
        },
        headers=accept,
    )
    assert bad_verifier.json()["error"] == "bad_verification_code"


def test_github_redirect_uri_must_be_under_the_callback(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=["http://localhost:5000/oauth"])
    github_standin.add_account("octocat")
    base = f"{github_standin.url}/login/oauth/authorize"
    below = github_standin.approve(authorize_url(base, client_id=client.client_id, redirect_uri=CALLBACK))
    assert "code" in below.params
    elsewhere = github_standin.approve(
        authorize_url(base, client_id=client.client_id, redirect_uri="http://localhost:6000/oauth/callback", state="s")
    )
    assert elsewhere.url.startswith("http://localhost:5000/oauth?")
    assert elsewhere.params["error"] == "redirect_uri_mismatch" and elsewhere.params["state"] == "s"


def test_github_user_and_emails_need_auth_scope_and_user_agent(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=[CALLBACK])
    github_standin.add_account(
        "octocat",
        name="The Octocat",
        emails=[
            GitHubEmail("octo@private.example", primary=True, verified=True, visibility="private"),
            GitHubEmail("old@example.com", verified=False),
        ],
        public_email="octocat@github.example",
    )
    token = github_standin.mint_tokens(client.client_id, "octocat", ["user:email"])["access_token"]
    user = http.get(f"{github_standin.url}/user", headers={"Authorization": f"token {token}"})
    assert user.status_code == 200
    body = user.json()
    assert (body["login"], body["name"], body["email"], body["type"]) == (
        "octocat",
        "The Octocat",
        "octocat@github.example",
        "User",
    )
    assert isinstance(body["id"], int)
    assert user.headers["X-OAuth-Scopes"] == "user:email"
    emails = http.get(f"{github_standin.url}/user/emails", headers={"Authorization": f"Bearer {token}"}).json()
    assert emails[0] == {"email": "octo@private.example", "primary": True, "verified": True, "visibility": "private"}
    assert emails[1]["verified"] is False and emails[1]["visibility"] is None

    no_scope = github_standin.mint_tokens(client.client_id, "octocat", ["read:user"])["access_token"]
    hidden = http.get(f"{github_standin.url}/user/emails", headers={"Authorization": f"Bearer {no_scope}"})
    assert (hidden.status_code, hidden.json()["message"]) == (404, "Not Found")
    unauthenticated = http.get(f"{github_standin.url}/user")
    assert (unauthenticated.status_code, unauthenticated.json()["message"]) == (401, "Requires authentication")
    bad = http.get(f"{github_standin.url}/user", headers={"Authorization": "Bearer gho_nope"})
    assert bad.json() == {"message": "Bad credentials", "documentation_url": GitHub.DOCS, "status": "401"}
    no_agent = httpx.Request("GET", f"{github_standin.url}/user", headers={"Authorization": f"Bearer {token}"})
    no_agent.headers.pop("User-Agent", None)
    assert http.send(no_agent).status_code == 403


def test_github_revokes_a_token_with_basic_auth_and_a_json_body(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=[CALLBACK])
    github_standin.add_account("octocat")
    token = github_standin.mint_tokens(client.client_id, "octocat", [])["access_token"]
    url = f"{github_standin.url}/applications/{client.client_id}/token"
    wrong = http.request("DELETE", url, auth=(client.client_id, "nope"), json={"access_token": token})
    assert wrong.status_code == 404
    no_body = http.request("DELETE", url, auth=(client.client_id, client.client_secret))
    assert no_body.status_code == 422
    done = http.request("DELETE", url, auth=(client.client_id, client.client_secret), json={"access_token": token})
    assert done.status_code == 204
    assert http.get(f"{github_standin.url}/user", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    sent = github_standin.last_request(f"/applications/{client.client_id}/token")
    assert sent.json == {"access_token": token} and sent.basic() == (client.client_id, client.client_secret)


def test_github_app_tokens_expire_and_refresh_tokens_rotate(github_standin: GitHub, http: httpx.Client) -> None:
    client = github_standin.add_client(redirect_uris=[CALLBACK], expiring_tokens=True)
    github_standin.add_account("octocat")
    code, verifier = github_code(github_standin, client.client_id)
    url = f"{github_standin.url}/login/oauth/access_token"
    accept = {"Accept": "application/json"}
    creds = {"client_id": client.client_id, "client_secret": client.client_secret}
    tokens = http.post(url, data={**creds, "code": code, "code_verifier": verifier}, headers=accept).json()
    assert tokens["access_token"].startswith("ghu_") and tokens["refresh_token"].startswith("ghr_")
    assert tokens["expires_in"] == 28800 and tokens["refresh_token_expires_in"] == 15811200
    refresh = {**creds, "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    rotated = http.post(url, data=refresh, headers=accept).json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    reused = http.post(url, data=refresh, headers=accept).json()
    assert reused["error"] == "bad_refresh_token"
    github_standin.expire_access_tokens()
    assert (
        http.get(
            f"{github_standin.url}/user", headers={"Authorization": f"Bearer {rotated['access_token']}"}
        ).status_code
        == 401
    )


def test_github_enterprise_serves_the_api_under_api_v3(start_vendor: StartVendor, http: httpx.Client) -> None:
    ghes = start_vendor(GitHub(enterprise=True))
    client = ghes.add_client(redirect_uris=[CALLBACK])
    ghes.add_account("octocat")
    token = ghes.mint_tokens(client.client_id, "octocat", ["user"])["access_token"]
    assert ghes.api_url == f"{ghes.url}/api/v3"
    ok = http.get(f"{ghes.api_url}/user", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json()["url"].startswith(f"{ghes.url}/api/v3/")
    assert http.get(f"{ghes.url}/user", headers={"Authorization": f"Bearer {token}"}).status_code == 404


# --- Microsoft ----------------------------------------------------------------------------------------


def microsoft_flow(
    ms: Microsoft, http: httpx.Client, tenant: str, scope: str = "openid profile email offline_access User.Read"
) -> dict[str, Any]:
    client = next(iter(ms.clients.values()))
    discovery = http.get(f"{ms.url}/{tenant}/v2.0/.well-known/openid-configuration").json()
    verifier, challenge = pkce_pair()
    callback = ms.approve(
        authorize_url(
            discovery["authorization_endpoint"],
            client_id=client.client_id,
            redirect_uri=CALLBACK,
            response_type="code",
            scope=scope,
            state="ms-state",
            nonce="ms-nonce",
            code_challenge=challenge,
            code_challenge_method="S256",
        )
    )
    assert callback.params["state"] == "ms-state"
    response = http.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": callback.code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def test_microsoft_discovery_templates_the_issuer_for_multi_tenant_endpoints(
    microsoft_standin: Microsoft, http: httpx.Client
) -> None:
    tenant = microsoft_standin.add_tenant(domain="contoso.onmicrosoft.com")
    common = http.get(f"{microsoft_standin.url}/common/v2.0/.well-known/openid-configuration").json()
    assert common["issuer"] == f"{microsoft_standin.url}/{{tenantid}}/v2.0"
    assert common["authorization_endpoint"] == f"{microsoft_standin.url}/common/oauth2/v2.0/authorize"
    assert common["jwks_uri"] == f"{microsoft_standin.url}/common/discovery/v2.0/keys"
    single = http.get(f"{microsoft_standin.url}/{tenant}/v2.0/.well-known/openid-configuration").json()
    assert single["issuer"] == f"{microsoft_standin.url}/{tenant}/v2.0"
    by_domain = http.get(f"{microsoft_standin.url}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration")
    assert by_domain.json()["issuer"] == single["issuer"]
    consumers = http.get(f"{microsoft_standin.url}/consumers/v2.0/.well-known/openid-configuration").json()
    assert consumers["issuer"] == f"{microsoft_standin.url}/{MSA_TENANT_ID}/v2.0"
    unknown = http.get(f"{microsoft_standin.url}/nowhere.example/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_tenant" and unknown.json()["error_codes"] == [90002]


def test_microsoft_code_flow_issues_id_tokens_with_tenant_oid_and_roles(
    microsoft_standin: Microsoft, http: httpx.Client
) -> None:
    tenant = microsoft_standin.add_tenant()
    client = microsoft_standin.add_client(redirect_uris=[CALLBACK])
    account = microsoft_standin.add_account("ada@contoso.example", tenant=tenant, roles=["Admin"])
    tokens = microsoft_flow(microsoft_standin, http, "organizations")
    assert {"token_type", "scope", "expires_in", "ext_expires_in", "access_token", "refresh_token", "id_token"} <= set(
        tokens
    )
    templated = http.get(f"{microsoft_standin.url}/organizations/v2.0/.well-known/openid-configuration").json()
    issuer = templated["issuer"].replace("{tenantid}", tenant)
    claims = verify_id_token(
        http, tokens["id_token"], templated["jwks_uri"], issuer=issuer, audience=client.client_id, nonce="ms-nonce"
    )
    assert (claims["tid"], claims["oid"], claims["preferred_username"]) == (tenant, account.oid, "ada@contoso.example")
    assert claims["roles"] == ["Admin"] and claims["ver"] == "2.0"

    me = http.get(f"{microsoft_standin.url}/v1.0/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    body = me.json()
    assert (body["id"], body["userPrincipalName"], body["mail"]) == (
        account.oid,
        "ada@contoso.example",
        "ada@contoso.example",
    )
    assert body["displayName"] == "Ada"


def test_microsoft_graph_errors(microsoft_standin: Microsoft, http: httpx.Client) -> None:
    microsoft_standin.add_client(redirect_uris=[CALLBACK])
    microsoft_standin.add_account("ada@contoso.example")
    empty = http.get(f"{microsoft_standin.url}/v1.0/me")
    assert empty.status_code == 401
    assert empty.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "innerError" in empty.json()["error"]
    tokens = microsoft_flow(microsoft_standin, http, "common", scope="openid profile")
    no_user_read = http.get(
        f"{microsoft_standin.url}/v1.0/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert (no_user_read.status_code, no_user_read.json()["error"]["code"]) == (403, "Authorization_RequestDenied")
    assert "refresh_token" not in tokens  # no offline_access, no refresh token


def test_microsoft_refresh_rotates_and_revocation_is_aadsts50173(
    microsoft_standin: Microsoft, http: httpx.Client
) -> None:
    client = microsoft_standin.add_client(redirect_uris=[CALLBACK])
    microsoft_standin.add_account("ada@contoso.example")
    tokens = microsoft_flow(microsoft_standin, http, "common")
    url = f"{microsoft_standin.url}/common/oauth2/v2.0/token"
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "openid User.Read"}
    first = http.post(url, data=form, auth=(client.client_id, client.client_secret)).json()
    assert first["refresh_token"] != tokens["refresh_token"]
    # Microsoft leaves the previous refresh token valid.
    assert http.post(url, data=form, auth=(client.client_id, client.client_secret)).status_code == 200
    assert microsoft_standin.grants[0].refreshes == 2
    microsoft_standin.revoke_all("ada@contoso.example")
    revoked = http.post(url, data=form, auth=(client.client_id, client.client_secret))
    assert revoked.status_code == 400
    assert revoked.json()["error"] == "invalid_grant" and revoked.json()["error_codes"] == [50173]
    wrong_secret = http.post(url, data=form, auth=(client.client_id, "nope"))
    assert (wrong_secret.status_code, wrong_secret.json()["error_codes"]) == (401, [7000215])


def test_microsoft_tenant_rules_and_personal_accounts(microsoft_standin: Microsoft, http: httpx.Client) -> None:
    client = microsoft_standin.add_client(redirect_uris=[CALLBACK])
    microsoft_standin.add_account("me@outlook.example", personal=True)
    refused = http.get(
        authorize_url(
            f"{microsoft_standin.url}/organizations/oauth2/v2.0/authorize",
            client_id=client.client_id,
            redirect_uri=CALLBACK,
            response_type="code",
            scope="openid",
        )
    )
    assert refused.status_code == 400 and "AADSTS50020" in refused.text
    tokens = microsoft_flow(microsoft_standin, http, "consumers", scope="openid profile")
    keys = KeySet.import_key_set(http.get(f"{microsoft_standin.url}/consumers/discovery/v2.0/keys").json())
    claims = jwt.decode(tokens["id_token"], keys).claims
    assert claims["tid"] == MSA_TENANT_ID
    assert claims["iss"] == f"{microsoft_standin.url}/{MSA_TENANT_ID}/v2.0"


def test_microsoft_form_post_and_code_reuse(microsoft_standin: Microsoft, http: httpx.Client) -> None:
    client = microsoft_standin.add_client(redirect_uris=[CALLBACK])
    microsoft_standin.add_account("ada@contoso.example")
    callback = microsoft_standin.approve(
        authorize_url(
            f"{microsoft_standin.url}/common/oauth2/v2.0/authorize",
            client_id=client.client_id,
            redirect_uri=CALLBACK,
            response_type="code",
            scope="openid",
            response_mode="form_post",
            state="fp",
        )
    )
    assert (callback.method, callback.url, callback.params["state"]) == ("POST", CALLBACK, "fp")
    form = {
        "grant_type": "authorization_code",
        "code": callback.code,
        "redirect_uri": CALLBACK,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    }
    url = f"{microsoft_standin.url}/common/oauth2/v2.0/token"
    assert http.post(url, data=form).status_code == 200
    reused = http.post(url, data=form)
    assert reused.status_code == 400 and reused.json()["error_codes"] == [54005]
