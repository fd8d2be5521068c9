"""ID-token rules that need a token the real OP will not issue (wrong ``iss``, foreign ``azp``, Azure ``tid``,
Google ``hd``…): the tokens are signed here with our own keys (joserfc), and the validator fetches the
public keys over HTTP from a small JWKS server on 127.0.0.1, through the app's outbound client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OctKey, RSAKey

from app.errors import AppError
from app.net import OutboundClient
from app.oauth import DiscoveryCache, IdTokenPolicy, ProviderMetadata, validate_id_token
from app.oauth.discovery import DEFAULT_ID_TOKEN_ALGS

ISSUER = "https://issuer.example.test"
CLIENT_ID = "ami-auth"
CLIENT_SECRET = "a-client-secret-long-enough-for-hs256!"
NONCE = "n-0S6_WzA2Mj"


class JWKSServer(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JWKSHandler)
        self.keys: list[Key] = []
        self.hits = 0
        self.status = 200

    @property
    def jwks_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/jwks"

    def document(self) -> bytes:
        self.hits += 1
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()


class _JWKSHandler(BaseHTTPRequestHandler):
    server: JWKSServer

    def do_GET(self) -> None:
        body = self.server.document()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"})


@pytest.fixture
def jwks(rsa_key: RSAKey, ec_key: ECKey) -> Iterator[JWKSServer]:
    server = JWKSServer()
    server.keys = [rsa_key, ec_key]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def outbound() -> Iterator[OutboundClient]:
    with OutboundClient(allow=("127.0.0.1",), retries=0) as client:
        yield client


@pytest.fixture
def cache(outbound: OutboundClient) -> DiscoveryCache:
    return DiscoveryCache(outbound)


def metadata_for(
    jwks: JWKSServer, issuer: str = ISSUER, algs: tuple[str, ...] = ("RS256", "ES256")
) -> ProviderMetadata:
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=issuer + "/authorize",
        token_endpoint=issuer + "/token",
        jwks_uri=jwks.jwks_uri,
        id_token_signing_alg_values_supported=algs,
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Key, payload: dict[str, Any], alg: str = "RS256", **header: Any) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, payload, key, algorithms=[alg])


def check(
    token: str,
    metadata: ProviderMetadata,
    cache: DiscoveryCache,
    *,
    nonce: str | None = NONCE,
    policy: IdTokenPolicy = IdTokenPolicy(),
    **options: Any,
) -> dict[str, Any]:
    return validate_id_token(
        token, metadata=metadata, client_id=CLIENT_ID, keys=cache, nonce=nonce, policy=policy, **options
    )


def refused(token: str, metadata: ProviderMetadata, cache: DiscoveryCache, **options: Any) -> str:
    with pytest.raises(AppError) as excinfo:
        check(token, metadata, cache, **options)
    assert excinfo.value.code == "validation_failed"
    return excinfo.value.message or ""


def test_a_correct_token_is_accepted(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey, ec_key: ECKey) -> None:
    metadata = metadata_for(jwks)
    assert check(sign(rsa_key, claims()), metadata, cache)["sub"] == "user-1"
    assert check(sign(ec_key, claims(), "ES256"), metadata, cache)["sub"] == "user-1"
    assert jwks.hits == 1  # cached


def test_wrong_iss(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    message = refused(sign(rsa_key, claims(iss="https://evil.example.test")), metadata_for(jwks), cache)
    assert "iss" in message


def test_wrong_aud(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    assert "aud" in refused(sign(rsa_key, claims(aud="someone-else")), metadata_for(jwks), cache)


def test_several_audiences_need_azp_naming_us(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    metadata = metadata_for(jwks)
    audiences = [CLIENT_ID, "api://other"]
    assert check(sign(rsa_key, claims(aud=audiences, azp=CLIENT_ID)), metadata, cache)["azp"] == CLIENT_ID
    assert "azp" in refused(sign(rsa_key, claims(aud=audiences, azp="api://other")), metadata, cache)
    assert "azp" in refused(sign(rsa_key, claims(aud=audiences)), metadata, cache)


def test_expiry_with_leeway(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    metadata = metadata_for(jwks)
    now = int(time.time())
    # 30 s past exp is inside the default 60 s leeway; 120 s is not.
    assert check(sign(rsa_key, claims(exp=now - 30, iat=now - 330)), metadata, cache)
    assert "expired" in refused(sign(rsa_key, claims(exp=now - 120, iat=now - 420)), metadata, cache)
    assert "expired" in refused(
        sign(rsa_key, claims(exp=now - 30, iat=now - 330)), metadata, cache, policy=IdTokenPolicy(leeway=5)
    )


def test_issued_in_the_future(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    now = int(time.time())
    assert "iat" in refused(sign(rsa_key, claims(iat=now + 600, exp=now + 900)), metadata_for(jwks), cache)


def test_missing_required_claims(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    metadata = metadata_for(jwks)
    for name in ("sub", "iat", "exp", "iss", "aud"):
        assert name in refused(sign(rsa_key, claims(**{name: None})), metadata, cache)


def test_nonce_must_match_and_be_present(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    metadata = metadata_for(jwks)
    assert "nonce" in refused(sign(rsa_key, claims(nonce="another")), metadata, cache)
    assert "nonce" in refused(sign(rsa_key, claims(nonce=None)), metadata, cache)


def test_an_algorithm_the_provider_does_not_list(jwks: JWKSServer, cache: DiscoveryCache, ec_key: ECKey) -> None:
    metadata = metadata_for(jwks, algs=DEFAULT_ID_TOKEN_ALGS)
    assert "ES256" in refused(sign(ec_key, claims(), "ES256"), metadata, cache)


def test_hmac_with_the_public_key_is_refused(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    """Algorithm confusion: HS256 'signed' with the provider's public RSA key as the HMAC secret."""
    metadata = metadata_for(jwks, algs=("RS256", "HS256"))
    # joserfc will not build such a key, so the forgery is assembled by hand.
    header = b64url(json.dumps({"alg": "HS256", "kid": rsa_key.kid}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims()).encode())}"
    mac = hmac.new(rsa_key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64url(mac)}"
    assert "signature" in refused(forged, metadata, cache, client_secret=CLIENT_SECRET)
    # Without a client secret there is nothing an HS256 token could be checked with.
    assert "shared secret" in refused(forged, metadata, cache)
    # And with RS256 only in the metadata, HS256 is refused before any key is looked at.
    assert "HS256" in refused(forged, metadata_for(jwks), cache, client_secret=CLIENT_SECRET)


def test_hmac_signed_with_the_client_secret_is_accepted_when_listed(jwks: JWKSServer, cache: DiscoveryCache) -> None:
    metadata = metadata_for(jwks, algs=("RS256", "HS256"))
    token = jwt.encode({"alg": "HS256"}, claims(), OctKey.import_key(CLIENT_SECRET), algorithms=["HS256"])
    assert check(token, metadata, cache, client_secret=CLIENT_SECRET)["sub"] == "user-1"
    assert jwks.hits == 0  # the JWKS is never consulted for a shared-secret token


def test_at_hash_must_match_the_access_token(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    from authlib.oidc.core.util import create_half_hash

    metadata = metadata_for(jwks)
    at_hash = create_half_hash("the-access-token", "RS256").decode()
    token = sign(rsa_key, claims(at_hash=at_hash))
    assert check(token, metadata, cache, access_token="the-access-token")
    assert "at_hash" in refused(token, metadata, cache, access_token="another-access-token")


def test_google_hosted_domain(jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey) -> None:
    metadata = metadata_for(jwks)
    policy = IdTokenPolicy(hosted_domain="example.com")
    assert check(sign(rsa_key, claims(hd="example.com")), metadata, cache, policy=policy)
    assert check(sign(rsa_key, claims(hd="Example.COM")), metadata, cache, policy=policy)
    assert "hosted domain" in refused(sign(rsa_key, claims(hd="evil.com")), metadata, cache, policy=policy)
    # A consumer account has no hd at all.
    assert "hosted domain" in refused(sign(rsa_key, claims()), metadata, cache, policy=policy)


AZURE = "https://login.microsoftonline.example.test/{tenantid}/v2.0"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
OTHER_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def test_azure_multi_tenant_issuer_is_checked_with_tid(
    jwks: JWKSServer, cache: DiscoveryCache, rsa_key: RSAKey
) -> None:
    metadata = metadata_for(jwks, issuer=AZURE)
    issued_by = AZURE.replace("{tenantid}", TENANT)
    assert check(sign(rsa_key, claims(iss=issued_by, tid=TENANT)), metadata, cache)["tid"] == TENANT
    # A token from one tenant claiming to be from another.
    assert "iss" in refused(sign(rsa_key, claims(iss=issued_by, tid=OTHER_TENANT)), metadata, cache)
    assert "tenant" in refused(sign(rsa_key, claims(iss=issued_by)), metadata, cache)
    assert "iss" in refused(sign(rsa_key, claims(iss=AZURE, tid=TENANT)), metadata, cache)
    only_other = IdTokenPolicy(allowed_tenants=(OTHER_TENANT,))
    assert "tenant" in refused(sign(rsa_key, claims(iss=issued_by, tid=TENANT)), metadata, cache, policy=only_other)


def test_rotated_key_is_fetched_once_and_unknown_kids_do_not_hammer_the_jwks(
    jwks: JWKSServer, outbound: OutboundClient, rsa_key: RSAKey
) -> None:
    now = [1000.0]
    cache = DiscoveryCache(outbound, jwks_min_interval=60, clock=lambda: now[0])
    metadata = metadata_for(jwks)
    assert check(sign(rsa_key, claims()), metadata, cache)
    assert jwks.hits == 1

    # The provider rotates: the new key is published, tokens name its kid.
    new_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"})
    jwks.keys = [new_key, rsa_key]
    now[0] += 61
    assert check(sign(new_key, claims()), metadata, cache)
    assert jwks.hits == 2

    # A forged kid right after: refused without asking the provider again.
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-forged", "use": "sig"})
    now[0] += 1
    assert "kid" in refused(sign(stranger, claims()), metadata, cache)
    assert jwks.hits == 2
    # Once the interval has passed, one more fetch is allowed (and it still does not know the kid).
    now[0] += 60
    assert "kid" in refused(sign(stranger, claims()), metadata, cache)
    assert jwks.hits == 3


def test_garbage_is_not_a_token(jwks: JWKSServer, cache: DiscoveryCache) -> None:
    metadata = metadata_for(jwks)
    for junk in ("", "abc", "a.b", "a.b.c.d.e", "é.é.é"):
        assert refused(junk, metadata, cache)


def test_stale_keys_serve_while_the_provider_is_down(
    jwks: JWKSServer, outbound: OutboundClient, rsa_key: RSAKey
) -> None:
    now = [0.0]
    cache = DiscoveryCache(outbound, jwks_ttl=3600, clock=lambda: now[0])
    metadata = metadata_for(jwks)
    assert check(sign(rsa_key, claims()), metadata, cache)
    now[0] += 3601
    jwks.status = 503
    assert check(sign(rsa_key, claims()), metadata, cache)  # the refresh failed; the stale set still works
    assert jwks.hits == 2
    jwks.status = 404  # not transient: a configuration problem is not papered over
    with pytest.raises(AppError) as excinfo:
        check(sign(rsa_key, claims()), metadata, cache)
    assert excinfo.value.code == "invalid_config"
    jwks.status = 200
    assert check(sign(rsa_key, claims()), metadata, cache)
    assert jwks.hits == 4
