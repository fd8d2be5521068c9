"""The OAuth/OIDC protocol core against a real OpenID Provider (oidc-provider on 127.0.0.1).

Each test walks the provider's own login and consent pages over HTTP (tests/support/op.py), so what is
checked is what a real sign-in produces: the callback URL, the token endpoint's answers, real ID tokens.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from joserfc import jws, jwt

from app.errors import AppError
from app.net import OutboundClient
from app.oauth import (
    DiscoveryCache,
    IdTokenPolicy,
    PendingAuthorization,
    ProviderMetadata,
    TokenSet,
    complete_authorization,
    discover,
    exchange_code,
    fetch_userinfo,
    refresh,
    remember_pending,
    revoke,
    start_authorization,
    take_pending,
    validate_id_token,
)
from tests.support.op import OPClient, OpenIDProvider, op_login, running_op
from tests.support.revocation import rfc7009

SCOPES = ("openid", "email", "profile")


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    # Like Google, this OP leaves `refresh_token` out of refresh responses that do not rotate it.
    with running_op(
        accounts={"alice": {"email": "alice@example.test", "email_verified": True, "name": "Alice"}},
        omitUnchangedRefreshToken=True,
    ) as p:
        yield p


@pytest.fixture(scope="module")
def es_op() -> Iterator[OpenIDProvider]:
    """The second instance: ES256 ID tokens, a new refresh token on every use, codes that expire in 1 s."""
    with running_op(signing="ES256", rotateRefreshToken=True, ttl={"AuthorizationCode": 1}) as p:
        yield p


@pytest.fixture(scope="module")
def outbound() -> Iterator[OutboundClient]:
    with OutboundClient(allow=("127.0.0.1",), retries=0, timeout=10) as client:
        yield client


@dataclass
class Party:
    """The app's side of one provider: the HTTP client, a discovery cache and the provider's metadata."""

    op: OpenIDProvider
    client: OutboundClient
    cache: DiscoveryCache
    metadata: ProviderMetadata

    def authorize(
        self, oc: OPClient | None = None, *, want_refresh: bool = True, login: str = "alice", **options: Any
    ) -> tuple[PendingAuthorization, dict[str, str]]:
        """Start a sign-in, walk the OP's pages, return the pending authorization and the callback's query."""
        oc = oc or self.op.client
        request = start_authorization(
            self.metadata,
            oc.credentials,
            redirect_uri=oc.redirect_uri,
            scopes=SCOPES,
            want_refresh=want_refresh,
            **options,
        )
        callback = op_login(request.url, login)
        return request.pending, dict(parse_qsl(urlsplit(callback).query))

    def complete(self, pending: PendingAuthorization, params: dict[str, str], oc: OPClient | None = None) -> TokenSet:
        oc = oc or self.op.client
        return complete_authorization(self.client, self.metadata, oc.credentials, pending, params, keys=self.cache)

    def sign_in(self, oc: OPClient | None = None, **options: Any) -> TokenSet:
        pending, params = self.authorize(oc, **options)
        return self.complete(pending, params, oc)


def party_for(op: OpenIDProvider, client: OutboundClient, **cache_options: Any) -> Party:
    cache = DiscoveryCache(client, **cache_options)
    return Party(op, client, cache, cache.metadata(op.issuer))


@pytest.fixture(scope="module")
def party(op: OpenIDProvider, outbound: OutboundClient) -> Party:
    return party_for(op, outbound)


@pytest.fixture(scope="module")
def es_party(es_op: OpenIDProvider, outbound: OutboundClient) -> Party:
    return party_for(es_op, outbound)


# --- discovery ----------------------------------------------------------------------------------------


def test_discovery_reads_the_provider_and_caches_it(op: OpenIDProvider, outbound: OutboundClient) -> None:
    cache = DiscoveryCache(outbound)
    before = op.request_count("GET", "/.well-known/openid-configuration")
    metadata = cache.metadata(op.issuer)
    assert cache.metadata(op.issuer) is metadata
    assert op.request_count("GET", "/.well-known/openid-configuration") == before + 1
    assert metadata.issuer == op.issuer
    assert metadata.token_endpoint == f"{op.issuer}/token"
    assert metadata.device_authorization_endpoint == f"{op.issuer}/device/auth"
    assert metadata.revocation_endpoint == f"{op.issuer}/token/revocation"
    assert metadata.id_token_signing_alg_values_supported == ("RS256",)
    assert metadata.code_challenge_methods_supported == ("S256",)
    assert metadata.authorization_response_iss_parameter_supported is True


@pytest.mark.parametrize("variant", ["localhost", "trailing-slash"])
def test_discovery_refuses_an_issuer_that_differs_by_a_byte(
    op: OpenIDProvider, outbound: OutboundClient, variant: str
) -> None:
    # The OP answers at localhost too, but its document says 127.0.0.1: that is a different issuer.
    issuer = op.issuer.replace("127.0.0.1", "localhost") if variant == "localhost" else op.issuer + "/"
    discovery_url = op.discovery_url.replace("127.0.0.1", "localhost")
    with OutboundClient(allow=("127.0.0.1", "localhost"), retries=0) as client, pytest.raises(AppError) as excinfo:
        discover(client, issuer, discovery_url=discovery_url)
    assert excinfo.value.code == "invalid_config"
    assert "issuer" in excinfo.value.fields


# --- the code flow ------------------------------------------------------------------------------------


def test_code_flow_with_pkce_gives_a_validated_id_token_and_a_refresh_token(party: Party, op: OpenIDProvider) -> None:
    session: dict[str, Any] = {}
    oc = op.client
    request = start_authorization(
        party.metadata, oc.credentials, redirect_uri=oc.redirect_uri, scopes=SCOPES, want_refresh=True
    )
    query = dict(parse_qsl(urlsplit(request.url).query))
    assert query["code_challenge_method"] == "S256"
    assert query["prompt"] == "consent"
    assert "offline_access" in query["scope"].split()
    remember_pending(session, request.pending)

    callback = op_login(request.url, "alice")
    params = dict(parse_qsl(urlsplit(callback).query))
    assert params["iss"] == op.issuer  # RFC 9207
    pending = take_pending(session, params["state"])
    tokens = complete_authorization(party.client, party.metadata, oc.credentials, pending, params, keys=party.cache)

    assert tokens.refresh_token
    assert tokens.token_type == "Bearer"
    assert tokens.expires_at is not None and not tokens.expires_within()
    assert set(tokens.scopes) == {"openid", "email", "profile", "offline_access"}
    assert tokens.id_claims is not None
    assert tokens.id_claims["sub"] == "alice"
    assert tokens.id_claims["aud"] == oc.client_id
    assert tokens.id_claims["nonce"] == pending.nonce
    userinfo = fetch_userinfo(party.client, party.metadata, tokens.access_token, expected_subject="alice")
    assert userinfo["email"] == "alice@example.test"
    assert userinfo["name"] == "Alice"
    # The same callback cannot be used twice: the pending authorization is gone.
    with pytest.raises(AppError) as excinfo:
        take_pending(session, params["state"])
    assert excinfo.value.code == "validation_failed"


def test_the_provider_checks_our_pkce_verifier(party: Party) -> None:
    pending, params = party.authorize()
    with pytest.raises(AppError) as excinfo:
        exchange_code(
            party.client,
            party.metadata,
            party.op.client.credentials,
            code=params["code"],
            redirect_uri=pending.redirect_uri,
            code_verifier="x" * 64,
        )
    assert excinfo.value.code == "token_expired"


def test_client_secret_post_and_a_second_client(party: Party, op: OpenIDProvider) -> None:
    other = op.clients["ami-other"]
    tokens = party.sign_in(other, login="bob")
    assert tokens.id_claims is not None
    assert tokens.id_claims["sub"] == "bob"
    assert tokens.id_claims["aud"] == "ami-other"


def test_a_wrong_client_secret_is_a_configuration_error(party: Party, op: OpenIDProvider) -> None:
    oc = op.client
    wrong = OPClient(oc.client_id, "not-the-secret", oc.redirect_uri)
    pending, params = party.authorize(oc)
    with pytest.raises(AppError) as excinfo:
        party.complete(pending, params, wrong)
    assert excinfo.value.code == "invalid_config"


def test_without_want_refresh_there_is_no_refresh_token(party: Party) -> None:
    tokens = party.sign_in(want_refresh=False)
    assert tokens.refresh_token is None
    assert "offline_access" not in tokens.scopes
    with pytest.raises(AppError) as excinfo:
        refresh(party.client, party.metadata, party.op.client.credentials, tokens)
    assert excinfo.value.code == "consent_required"


def test_user_refuses_consent(party: Party, op: OpenIDProvider) -> None:
    oc = op.client
    request = start_authorization(party.metadata, oc.credentials, redirect_uri=oc.redirect_uri, scopes=SCOPES)
    params = dict(parse_qsl(urlsplit(op_login(request.url, approve=False)).query))
    assert params["error"] == "access_denied"
    with pytest.raises(AppError) as excinfo:
        party.complete(request.pending, params)
    assert excinfo.value.code == "consent_required"


# --- refresh, rotation, revocation --------------------------------------------------------------------


def test_refresh_keeps_the_refresh_token_when_the_response_omits_it(party: Party, op: OpenIDProvider) -> None:
    credentials = op.client.credentials
    tokens = party.sign_in()
    before = op.grant_count("refresh_token")
    first = refresh(party.client, party.metadata, credentials, tokens)
    # oidc-provider rotates a confidential client's refresh token only after 70 % of its life; until then
    # this instance answers without `refresh_token`, and the one we had must be kept.
    assert first.refresh_token == tokens.refresh_token
    assert first.access_token != tokens.access_token
    assert first.id_claims == tokens.id_claims
    second = refresh(party.client, party.metadata, credentials, first)
    assert second.refresh_token == tokens.refresh_token
    assert second.access_token not in (tokens.access_token, first.access_token)
    assert op.grant_count("refresh_token") == before + 2
    userinfo = fetch_userinfo(party.client, party.metadata, second.access_token, expected_subject="alice")
    assert userinfo["sub"] == "alice"


def test_refresh_validates_a_new_id_token_when_keys_are_given(party: Party, op: OpenIDProvider) -> None:
    credentials = op.client.credentials
    tokens = party.sign_in()
    fresh = refresh(party.client, party.metadata, credentials, tokens, keys=party.cache)
    assert fresh.id_token is not None
    assert fresh.id_claims is not None and fresh.id_claims["sub"] == "alice"
    # The refreshed ID token really is checked: a policy it does not meet refuses it.
    with pytest.raises(AppError) as excinfo:
        refresh(
            party.client, party.metadata, credentials, fresh, keys=party.cache, policy=IdTokenPolicy(hosted_domain="x")
        )
    assert excinfo.value.code == "validation_failed"


def test_es256_provider_rotating_refresh_tokens_on_every_use(es_party: Party, es_op: OpenIDProvider) -> None:
    credentials = es_op.client.credentials
    tokens = es_party.sign_in()
    assert tokens.id_token is not None
    assert jwt.decode(tokens.id_token, es_party.cache.jwks(es_party.metadata.jwks_uri or "")).header["alg"] == "ES256"
    assert tokens.id_claims is not None and tokens.id_claims["sub"] == "alice"

    first = refresh(es_party.client, es_party.metadata, credentials, tokens)
    assert first.refresh_token and first.refresh_token != tokens.refresh_token
    second = refresh(es_party.client, es_party.metadata, credentials, first)
    assert second.refresh_token and second.refresh_token not in (tokens.refresh_token, first.refresh_token)
    # Replaying a rotated-away refresh token is refused (and the OP revokes the grant: reuse detection).
    with pytest.raises(AppError) as excinfo:
        refresh(es_party.client, es_party.metadata, credentials, tokens)
    assert excinfo.value.code == "consent_required"


def test_revoke_then_refresh_needs_consent(party: Party, op: OpenIDProvider) -> None:
    credentials = op.client.credentials
    tokens = party.sign_in()
    revoke(party.client, rfc7009(party.metadata, credentials, tokens.refresh_token or "", "refresh_token"))
    with pytest.raises(AppError) as excinfo:
        refresh(party.client, party.metadata, credentials, tokens)
    assert excinfo.value.code == "consent_required"
    # RFC 7009 §2.2: revoking again (an invalid token) still succeeds.
    revoke(party.client, rfc7009(party.metadata, credentials, tokens.refresh_token or "", "refresh_token"))


def test_revoked_access_token_is_refused_by_userinfo(party: Party, op: OpenIDProvider) -> None:
    tokens = party.sign_in(want_refresh=False)
    revoke(party.client, rfc7009(party.metadata, op.client.credentials, tokens.access_token, "access_token"))
    with pytest.raises(AppError) as excinfo:
        fetch_userinfo(party.client, party.metadata, tokens.access_token)
    assert excinfo.value.code == "token_expired"


def test_refresh_tokens_minted_at_the_op_work(party: Party, op: OpenIDProvider) -> None:
    # The bulk fixture later concurrency tests use: real tokens, no login per account.
    minted = op.mint_refresh_tokens(2, account_id="carol")
    for value in minted:
        fresh = refresh(party.client, party.metadata, op.client.credentials, TokenSet("", refresh_token=value))
        assert fresh.access_token
        assert fresh.refresh_token == value


# --- negative cases: the callback ---------------------------------------------------------------------


def test_mismatched_state_is_refused_before_any_token_request(party: Party, op: OpenIDProvider) -> None:
    pending, params = party.authorize()
    codes_before = op.grant_count("authorization_code")
    with pytest.raises(AppError) as excinfo:
        party.complete(pending, {**params, "state": "forged-" + params["state"]})
    assert excinfo.value.code == "validation_failed"
    # A callback for another browser's sign-in finds nothing in this session.
    session: dict[str, Any] = {}
    remember_pending(session, pending)
    with pytest.raises(AppError):
        take_pending(session, "forged-" + params["state"])
    assert op.grant_count("authorization_code") == codes_before
    # The genuine state still completes.
    assert party.complete(pending, params).id_claims is not None


def test_callback_with_a_foreign_iss_is_refused(party: Party, op: OpenIDProvider) -> None:
    pending, params = party.authorize()
    codes_before = op.grant_count("authorization_code")
    with pytest.raises(AppError) as excinfo:
        party.complete(pending, {**params, "iss": "http://127.0.0.1:1"})
    assert excinfo.value.code == "validation_failed"
    assert op.grant_count("authorization_code") == codes_before


def test_callback_without_iss_is_refused_when_the_provider_promises_it(party: Party) -> None:
    pending, params = party.authorize()
    del params["iss"]
    with pytest.raises(AppError) as excinfo:
        party.complete(pending, params)
    assert excinfo.value.code == "validation_failed"


def test_a_reused_code_is_refused_and_revokes_what_it_gave(party: Party, op: OpenIDProvider) -> None:
    pending, params = party.authorize()
    tokens = party.complete(pending, params)
    with pytest.raises(AppError) as excinfo:
        exchange_code(
            party.client,
            party.metadata,
            op.client.credentials,
            code=params["code"],
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
        )
    assert excinfo.value.code == "token_expired"
    # RFC 6749 §4.1.2: the provider revokes the tokens issued from a code that is used twice.
    with pytest.raises(AppError) as refused:
        refresh(party.client, party.metadata, op.client.credentials, tokens)
    assert refused.value.code == "consent_required"


def test_an_expired_code_is_refused(es_party: Party) -> None:
    pending, params = es_party.authorize()
    time.sleep(1.5)  # the es_op instance's codes live 1 s
    with pytest.raises(AppError) as excinfo:
        es_party.complete(pending, params)
    assert excinfo.value.code == "token_expired"


# --- negative cases: the ID token from the callback ---------------------------------------------------


def test_missing_nonce_is_refused(party: Party, op: OpenIDProvider) -> None:
    oc = op.client
    request = start_authorization(party.metadata, oc.credentials, redirect_uri=oc.redirect_uri, scopes=SCOPES)
    # The authorization request goes out without its nonce, so the ID token comes back without one.
    parts = urlsplit(request.url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "nonce"]
    stripped = urlunsplit(parts._replace(query=urlencode(query)))
    params = dict(parse_qsl(urlsplit(op_login(stripped)).query))
    with pytest.raises(AppError) as excinfo:
        party.complete(request.pending, params)
    assert excinfo.value.code == "validation_failed"
    assert "nonce" in (excinfo.value.message or "")


def test_replayed_nonce_is_refused(party: Party, op: OpenIDProvider) -> None:
    first = party.sign_in()
    assert first.id_token is not None
    # A later sign-in has its own nonce; the earlier (valid, signed) ID token cannot stand in for it.
    second, _ = party.authorize()
    with pytest.raises(AppError) as excinfo:
        validate_id_token(
            first.id_token,
            metadata=party.metadata,
            client_id=op.client.client_id,
            keys=party.cache,
            nonce=second.nonce,
        )
    assert excinfo.value.code == "validation_failed"
    assert "nonce" in (excinfo.value.message or "")


def test_id_token_for_another_client_has_the_wrong_audience(party: Party, op: OpenIDProvider) -> None:
    pending, params = party.authorize(op.clients["ami-other"])
    tokens = party.complete(pending, params, op.clients["ami-other"])
    assert tokens.id_token is not None
    with pytest.raises(AppError) as excinfo:
        validate_id_token(
            tokens.id_token,
            metadata=party.metadata,
            client_id=op.client.client_id,
            keys=party.cache,
            nonce=pending.nonce,
        )
    assert excinfo.value.code == "validation_failed"
    assert "aud" in (excinfo.value.message or "")


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[10] != "A" else "B").join((signature[:10], signature[11:]))
    return f"{header}.{payload}.{flipped}"


def test_tampered_signature_is_refused(party: Party, op: OpenIDProvider) -> None:
    tokens = party.sign_in()
    assert tokens.id_token is not None and tokens.id_claims is not None
    with pytest.raises(AppError) as excinfo:
        validate_id_token(
            _tamper(tokens.id_token),
            metadata=party.metadata,
            client_id=op.client.client_id,
            keys=party.cache,
            nonce=tokens.id_claims["nonce"],
        )
    assert excinfo.value.code == "validation_failed"
    assert "signature" in (excinfo.value.message or "")


def test_alg_none_is_refused(party: Party, op: OpenIDProvider) -> None:
    tokens = party.sign_in()
    assert tokens.id_token is not None and tokens.id_claims is not None

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(tokens.id_claims)}."
    with pytest.raises(AppError) as excinfo:
        validate_id_token(
            unsigned,
            metadata=party.metadata,
            client_id=op.client.client_id,
            keys=party.cache,
            nonce=tokens.id_claims["nonce"],
        )
    assert excinfo.value.code == "validation_failed"
    assert "not signed" in (excinfo.value.message or "")


def test_hosted_domain_policy_refuses_a_token_without_hd(party: Party, op: OpenIDProvider) -> None:
    pending, params = party.authorize()
    with pytest.raises(AppError) as excinfo:
        complete_authorization(
            party.client,
            party.metadata,
            op.client.credentials,
            pending,
            params,
            keys=party.cache,
            policy=IdTokenPolicy(hosted_domain="example.test"),
        )
    assert excinfo.value.code == "validation_failed"


# --- key rotation -------------------------------------------------------------------------------------


def test_unknown_kid_after_key_rotation_is_fetched_once_and_accepted(outbound: OutboundClient) -> None:
    with running_op() as rotating:
        party = party_for(rotating, outbound, jwks_min_interval=0)
        first = party.sign_in()
        assert first.id_claims is not None
        old_kid = _kid(first.id_token)

        rotating.restart()  # same issuer and port, a new signing key with a new kid
        second = party.sign_in()
        assert second.id_claims is not None and second.id_claims["sub"] == "alice"
        assert _kid(second.id_token) != old_kid
        # The cached JWKS lacked the new kid: exactly one new fetch picked it up.
        assert rotating.request_count("GET", "/jwks") == 1
        party.sign_in()
        assert rotating.request_count("GET", "/jwks") == 1


def test_unknown_kid_is_not_refetched_more_often_than_allowed(outbound: OutboundClient) -> None:
    with running_op() as rotating:
        party = party_for(rotating, outbound, jwks_min_interval=3600)
        party.sign_in()
        rotating.restart()
        pending, params = party.authorize()
        with pytest.raises(AppError) as excinfo:
            party.complete(pending, params)
        assert excinfo.value.code == "validation_failed"
        assert "kid" in (excinfo.value.message or "")
        assert rotating.request_count("GET", "/jwks") == 0


def _kid(token: str | None) -> str:
    assert token is not None
    kid = jws.extract_compact(token.encode()).protected.get("kid")
    assert isinstance(kid, str)
    return kid
