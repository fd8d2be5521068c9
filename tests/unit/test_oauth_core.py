"""The protocol core's pure parts: token sets, the pending-authorization store, the authorization URL,
metadata validation, callback checks that happen before any request, and the package's public names."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

import app.oauth
from app.errors import AppError
from app.net import OutboundClient
from app.oauth import (
    ClientCredentials,
    PendingAuthorization,
    ProviderMetadata,
    TokenSet,
    complete_authorization,
    remember_pending,
    start_authorization,
    take_pending,
)
from app.oauth.flow import MAX_PENDING, PENDING_MAX_AGE, PENDING_SESSION_KEY

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
METADATA = ProviderMetadata(
    issuer="https://op.example.test",
    authorization_endpoint="https://op.example.test/authorize",
    token_endpoint="https://op.example.test/token",
    jwks_uri="https://op.example.test/jwks",
    code_challenge_methods_supported=("S256",),
    authorization_response_iss_parameter_supported=True,
)
CREDENTIALS = ClientCredentials("client-1", "very-secret")


def test_public_names_are_pinned() -> None:
    assert sorted(app.oauth.__all__) == [
        "AuthorizationRequest",
        "ClientCredentials",
        "DeviceAuthorization",
        "DeviceResult",
        "DiscoveryCache",
        "IdTokenPolicy",
        "KeySource",
        "PendingAuthorization",
        "ProviderMetadata",
        "TokenSet",
        "complete_authorization",
        "discover",
        "discovery_url_for",
        "exchange_code",
        "fetch_jwks",
        "fetch_userinfo",
        "poll_once",
        "refresh",
        "remember_pending",
        "revoke",
        "start_authorization",
        "start_device_authorization",
        "take_pending",
        "validate_id_token",
        "wait_for_device_token",
    ]


# --- TokenSet -----------------------------------------------------------------------------------------


def test_token_set_from_a_full_response() -> None:
    tokens = TokenSet.from_response(
        {"access_token": "at", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt", "scope": "a b"},
        now=NOW,
    )
    assert tokens.expires_at == NOW + timedelta(hours=1)
    assert tokens.refresh_token == "rt"
    assert tokens.scopes == ("a", "b")
    assert tokens.expires_within(timedelta(minutes=61), now=NOW)
    assert not tokens.expires_within(timedelta(minutes=59), now=NOW)


def test_refresh_response_without_refresh_token_keeps_the_old_one_and_the_scopes() -> None:
    old = TokenSet("at-1", refresh_token="rt-1", scopes=("openid", "offline_access"))
    fresh = TokenSet.from_response({"access_token": "at-2", "expires_in": 60}, now=NOW, previous=old)
    assert fresh.refresh_token == "rt-1"
    assert fresh.scopes == ("openid", "offline_access")
    rotated = TokenSet.from_response({"access_token": "at-3", "refresh_token": "rt-2"}, now=NOW, previous=fresh)
    assert rotated.refresh_token == "rt-2"


def test_expiry_defaults() -> None:
    # GitHub OAuth-app tokens: no expires_in, never expire (unless the catalog gives a default).
    assert TokenSet.from_response({"access_token": "x"}, now=NOW).expires_at is None
    assert TokenSet.from_response({"access_token": "x"}, now=NOW).expires_within(timedelta(days=999)) is False
    assert TokenSet.from_response({"access_token": "x"}, now=NOW, default_expires_in=600).expires_at == NOW + timedelta(
        minutes=10
    )
    assert TokenSet.from_response({"access_token": "x", "expires_in": "120"}, now=NOW).expires_at == NOW + timedelta(
        minutes=2
    )


def test_scopes_from_request_or_github_commas() -> None:
    assert TokenSet.from_response({"access_token": "x"}, requested_scopes=["openid", "email"]).scopes == (
        "openid",
        "email",
    )
    assert TokenSet.from_response({"access_token": "x", "scope": "repo,gist"}).scopes == ("repo", "gist")


def test_a_response_without_access_token_is_refused() -> None:
    with pytest.raises(AppError) as excinfo:
        TokenSet.from_response({"token_type": "Bearer"})
    assert excinfo.value.code == "provider_unreachable"


def test_token_set_round_trip_and_repr_hides_secrets() -> None:
    tokens = TokenSet("at-secret", "Bearer", NOW, "rt-secret", ("a",), "id.token.value", {"sub": "u"})
    assert TokenSet.from_dict(tokens.to_dict()) == tokens
    shown = repr(tokens) + repr(CREDENTIALS)
    for secret in ("at-secret", "rt-secret", "id.token.value", "very-secret"):
        assert secret not in shown


# --- the authorization request ------------------------------------------------------------------------


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_authorization_url_has_pkce_state_and_nonce() -> None:
    one = start_authorization(METADATA, CREDENTIALS, redirect_uri="https://app.test/cb", scopes=["openid", "email"])
    two = start_authorization(METADATA, CREDENTIALS, redirect_uri="https://app.test/cb", scopes=["openid", "email"])
    query = _query(one.url)
    assert one.url.startswith(METADATA.authorization_endpoint + "?")
    assert query["response_type"] == "code"
    assert query["client_id"] == "client-1"
    assert query["redirect_uri"] == "https://app.test/cb"
    assert query["scope"] == "openid email"
    assert query["state"] == one.pending.state
    assert query["nonce"] == one.pending.nonce
    assert query["code_challenge_method"] == "S256"
    assert one.pending.code_verifier is not None and len(one.pending.code_verifier) >= 43
    assert query["code_challenge"] == create_s256_code_challenge(one.pending.code_verifier)
    assert "prompt" not in query and "very-secret" not in one.url
    assert one.pending.state != two.pending.state
    assert one.pending.nonce != two.pending.nonce
    assert one.pending.code_verifier != two.pending.code_verifier
    assert one.pending.issuer == METADATA.issuer


def test_refresh_the_oidc_way_and_the_google_way() -> None:
    oidc = _query(
        start_authorization(
            METADATA, CREDENTIALS, redirect_uri="https://a/cb", scopes=["openid"], want_refresh=True
        ).url
    )
    assert oidc["scope"] == "openid offline_access" and oidc["prompt"] == "consent"
    google = _query(
        start_authorization(
            METADATA,
            CREDENTIALS,
            redirect_uri="https://a/cb",
            scopes=["openid", "email"],
            want_refresh=True,
            offline_scope=None,
            refresh_params={"access_type": "offline", "prompt": "consent"},
            extra_params={"hd": "example.com"},
        ).url
    )
    assert google["scope"] == "openid email"
    assert google["access_type"] == "offline" and google["prompt"] == "consent" and google["hd"] == "example.com"


def test_pkce_off_and_plain_oauth() -> None:
    request = start_authorization(METADATA, CREDENTIALS, redirect_uri="https://a/cb", scopes=["repo"], pkce=False)
    query = _query(request.url)
    assert "code_challenge" not in query and "nonce" not in query
    assert request.pending.code_verifier is None and request.pending.nonce is None


def test_pkce_needs_s256() -> None:
    plain_only = ProviderMetadata("https://op/a", "https://op/t", code_challenge_methods_supported=("plain",))
    with pytest.raises(AppError) as excinfo:
        start_authorization(plain_only, CREDENTIALS, redirect_uri="https://a/cb", scopes=["x"])
    assert excinfo.value.code == "invalid_config"


def test_extra_params_cannot_override_protocol_params() -> None:
    with pytest.raises(AppError) as excinfo:
        start_authorization(
            METADATA, CREDENTIALS, redirect_uri="https://a/cb", scopes=["openid"], extra_params={"state": "fixed"}
        )
    assert excinfo.value.code == "invalid_config"


# --- the pending store --------------------------------------------------------------------------------


def _pending(state: str, created_at: float = 1000.0) -> PendingAuthorization:
    return PendingAuthorization(state, "https://a/cb", ("openid",), "n", "v" * 43, METADATA.issuer, "7", created_at)


def test_pending_is_single_use() -> None:
    session: dict[str, Any] = {}
    remember_pending(session, _pending("s1"))
    assert take_pending(session, "s1", now=1001.0) == _pending("s1")
    with pytest.raises(AppError) as excinfo:
        take_pending(session, "s1", now=1001.0)
    assert excinfo.value.code == "validation_failed"


@pytest.mark.parametrize("state", [None, "", "unknown"])
def test_unknown_state_is_refused(state: str | None) -> None:
    session: dict[str, Any] = {}
    remember_pending(session, _pending("s1"))
    with pytest.raises(AppError) as excinfo:
        take_pending(session, state, now=1001.0)
    assert excinfo.value.code == "validation_failed"


def test_stale_pending_is_refused() -> None:
    session: dict[str, Any] = {}
    remember_pending(session, _pending("s1"))
    with pytest.raises(AppError):
        take_pending(session, "s1", now=1000.0 + PENDING_MAX_AGE + 1)


def test_only_a_few_pending_are_kept() -> None:
    session: dict[str, Any] = {}
    for i in range(MAX_PENDING + 2):
        remember_pending(session, _pending(f"s{i}", 1000.0 + i))
    assert sorted(session[PENDING_SESSION_KEY]) == sorted(f"s{i}" for i in range(2, MAX_PENDING + 2))


# --- the callback, before any request -----------------------------------------------------------------


def _callback(params: dict[str, str], metadata: ProviderMetadata = METADATA) -> AppError:
    pending = replace(_pending("s1"), issuer=metadata.issuer)
    # No request may be sent: the client would refuse the .test host anyway (not on the allow list).
    with OutboundClient(retries=0) as client, pytest.raises(AppError) as excinfo:
        complete_authorization(client, metadata, CREDENTIALS, pending, params, keys=None)
    return excinfo.value


def test_callback_errors_are_mapped() -> None:
    iss = METADATA.issuer or ""
    assert _callback({"state": "s1", "iss": iss, "error": "access_denied"}).code == "consent_required"
    assert _callback({"state": "s1", "iss": iss, "error": "login_required"}).code == "consent_required"
    assert _callback({"state": "s1", "iss": iss, "error": "temporarily_unavailable"}).code == "provider_unreachable"
    assert _callback({"state": "s1", "iss": iss, "error": "invalid_scope"}).code == "invalid_config"
    assert _callback({"state": "s1", "iss": iss}).code == "validation_failed"  # no code


def test_callback_checks_state_and_iss_first() -> None:
    iss = METADATA.issuer or ""
    assert _callback({"state": "s2", "iss": iss, "error": "access_denied"}).code == "validation_failed"
    assert _callback({"state": "s1", "iss": "https://evil.test", "code": "c"}).code == "validation_failed"
    assert _callback({"state": "s1", "code": "c"}).code == "validation_failed"


def test_callback_iss_for_a_multi_tenant_issuer() -> None:
    azure = ProviderMetadata(
        "https://login.example.test/common/oauth2/v2.0/authorize",
        "https://login.example.test/common/oauth2/v2.0/token",
        issuer="https://login.example.test/{tenantid}/v2.0",
    )
    tenant_iss = "https://login.example.test/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"
    assert _callback({"state": "s1", "iss": tenant_iss, "error": "access_denied"}, azure).code == "consent_required"
    for bad in ("https://evil.test/x/v2.0", "https://login.example.test//v2.0", "https://login.example.test/a/b/v2.0"):
        assert _callback({"state": "s1", "iss": bad, "error": "access_denied"}, azure).code == "validation_failed"


# --- metadata -----------------------------------------------------------------------------------------


def _document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": "https://op.example.test",
        "authorization_endpoint": "https://op.example.test/authorize",
        "token_endpoint": "https://op.example.test/token",
        "jwks_uri": "https://op.example.test/jwks",
        "id_token_signing_alg_values_supported": ["none", "RS256"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def test_metadata_from_a_document() -> None:
    metadata = ProviderMetadata.from_document(_document(), "https://op.example.test")
    assert metadata.id_token_signing_alg_values_supported == ("RS256",)
    assert metadata.authorization_response_iss_parameter_supported is False
    assert metadata.userinfo_endpoint is None


@pytest.mark.parametrize(
    "document",
    [
        ["not", "an", "object"],
        _document(issuer="https://op.example.test/"),
        _document(issuer=None),
        _document(token_endpoint=None),
        _document(jwks_uri="not a url"),
        _document(id_token_signing_alg_values_supported=["none"]),
    ],
)
def test_bad_documents_are_configuration_errors(document: Any) -> None:
    with pytest.raises(AppError) as excinfo:
        ProviderMetadata.from_document(document, "https://op.example.test")
    assert excinfo.value.code == "invalid_config"
