"""AMI Auth as an OpenID Provider, proven with a real relying party: openid-client v6 and jose (tests/peers/rp.mjs)
against the app served live, a user's browser walking AMI's own sign-in, second-factor and consent pages.

Discovery, code + PKCE, consent, userinfo, refresh rotation, introspection, revocation, client credentials with
private_key_jwt, RP-initiated logout, back-channel logout for each way a session ends, step-up (max_age,
prompt=login, acr_values) — and the refusals: redirect-URI mismatch, missing or wrong PKCE verifier, code reuse,
refresh-token reuse, wrong client secret, a token for another audience, an open redirect through
post_logout_redirect_uri, prompt=none without a session. One app, one live server and one node process per module.
"""

from __future__ import annotations

import base64
import itertools
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import create_app
from app.audit import AuditContext
from app.auth import users
from app.extensions import get_database
from app.idp import clients, consents, logout
from app.idp.claims import ACR_MFA, ACR_SFA
from app.idp.delivery import sender, stop_delivery
from app.models import AuditEvent, OidcToken, User, UserSession, utcnow
from tests.conftest import PASSWORD, dispose_app, make_settings
from tests.support.live import free_port, serve
from tests.support.mfa import enrol_totp
from tests.support.rp import Browser, RelyingParty, RPError, landed, page, query, running_rp

AUDIENCE = "https://cms.example.com/api"


@dataclass
class Stack:
    app: Flask
    issuer: str
    rp: RelyingParty

    def db(self) -> Session:
        return Session(get_database(self.app).engine, expire_on_commit=False)

    def browser(self) -> Browser:
        return Browser(self.issuer)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("idp")
    shutil.copy(sqlite_template, tmp / "ami.db")
    port = free_port()
    settings = make_settings(tmp, f"sqlite:///{tmp / 'ami.db'}", AMI_AUTH_BASE_URL=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    try:
        with serve(app, port), running_rp() as rp:
            yield Stack(app, settings.base_url, rp)
    finally:
        stop_delivery(app)
        dispose_app(app)


_n = itertools.count(1)


def new_user(stack: Stack, *, role: str = "member", name: str = "") -> User:
    with stack.app.app_context():
        db = get_database(stack.app).session()
        user = users.create_user(
            db,
            stack.app.extensions["ami_settings"],
            email=f"user{next(_n)}@example.com",
            password=PASSWORD,
            role=role,
            display_name=name,
            verified=True,
        )
        db.commit()
        return user


@dataclass(frozen=True)
class Registered:
    name: str
    client_id: str
    secret: str | None
    redirect_uri: str


def register(stack: Stack, auth: str = "client_secret_basic", **values: Any) -> Registered:
    """A client registered through the service (as the CLI does), and openid-client configured for it."""
    name = f"rp{next(_n)}"
    redirect_uri = stack.rp.redirect_uri(name)
    settings = {"name": f"App {name}", "redirect_uris": [redirect_uri], "auth_method": auth, **values}
    if auth == "none":
        settings["client_type"] = "public"
    if auth == "private_key_jwt":
        stack.rp.call("key", name=name, alg="ES256")
        settings["jwks_uri"] = f"{stack.rp.url}/jwks/{name}"
    with stack.app.app_context():
        db = get_database(stack.app).session()
        saved = clients.create_client(db, AuditContext(actor="test"), settings)
        db.commit()
    found = Registered(name, saved.client.client_id, saved.secret, redirect_uri)
    stack.rp.call(
        "configure",
        name=name,
        issuer=stack.issuer,
        client_id=found.client_id,
        client_secret=found.secret,
        auth=auth,
        insecure=True,
    )
    return found


def start(stack: Stack, rp: Registered, scope: str = "openid profile email", **params: str) -> dict[str, str]:
    return dict(stack.rp.call("authorize_url", name=rp.name, redirect_uri=rp.redirect_uri, scope=scope, params=params))


def sign_in_to_app(
    stack: Stack, browser: Browser, rp: Registered, user: User, *, consent: bool = True, **params: str
) -> dict[str, Any]:
    """The whole front channel: the app's authorization URL, AMI's sign-in page, consent, back at the app; then
    openid-client exchanges the code (checking state, nonce, PKCE, the ID token). Returns the token response."""
    auth = start(stack, rp, **params)
    result = browser.get(auth["url"])
    if isinstance(result, str):  # already signed in
        callback = result
    else:
        result = browser.sign_in(page(result), user.email, PASSWORD)
        if consent:
            consent_page = page(result)
            assert "Allow App" in consent_page.text, consent_page.text[:800]
            result = browser.submit(consent_page, "/oauth2/authorize/decide", decision="allow")
        callback = landed(result)
    assert query(callback)["iss"] == stack.issuer  # RFC 9207
    tokens: dict[str, Any] = stack.rp.call(
        "callback", name=rp.name, url=callback, verifier=auth["verifier"], state=auth["state"], nonce=auth["nonce"]
    )
    return tokens


def count_tokens(stack: Stack, client_id: str) -> int:
    with stack.db() as db:
        stmt = select(func.count()).select_from(OidcToken).where(OidcToken.client_id == _client_pk(db, client_id))
        return int(db.scalar(stmt) or 0)


def _client_pk(db: Session, client_id: str) -> int:
    found = clients.find_client(db, client_id)
    assert found is not None
    return found.id


def events(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def wait_for_events(stack: Stack, action: str, client_id: str, count: int = 1) -> list[AuditEvent]:
    """The audit events of a client's back-channel deliveries (recorded just after the receiver answered)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in events(stack, action) if e.details.get("client") == client_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def verify_offline(stack: Stack, token: str, audience: str) -> dict[str, Any]:
    """What a resource server does with an RFC 9068 access token: jose.jwtVerify against the provider's JWKS."""
    jwks_uri = stack.issuer + "/oauth2/jwks"
    result: dict[str, Any] = stack.rp.call(
        "verify", jwks_uri=jwks_uri, issuer=stack.issuer, token=token, audience=audience, typ="at+jwt"
    )
    return result


def basic(rp: Registered, secret: str | None = None) -> dict[str, str]:
    raw = f"{rp.client_id}:{secret if secret is not None else rp.secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


# --- discovery ----------------------------------------------------------------------------------------------------


def test_discovery_and_jwks_are_cacheable_and_what_openid_client_expects(stack: Stack) -> None:
    rp = register(stack)
    metadata = stack.rp.call(
        "configure",
        name=rp.name,
        issuer=stack.issuer,
        client_id=rp.client_id,
        client_secret=rp.secret,
        auth="client_secret_basic",
        insecure=True,
    )
    assert metadata["issuer"] == stack.issuer
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["backchannel_logout_supported"] is True
    assert {"ES256", "RS256"} <= set(metadata["id_token_signing_alg_values_supported"])
    for path in ("/.well-known/openid-configuration", "/oauth2/jwks"):
        browser = stack.browser()
        first = browser.http.get(path)
        assert first.status_code == 200
        assert first.headers["Cache-Control"] == "public, max-age=300"
        again = browser.http.get(path, headers={"If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304
        browser.close()
    jwks = stack.browser().http.get("/oauth2/jwks").json()["keys"]
    # Per algorithm a current key and the next one, published ahead of use.
    assert sorted(k["alg"] for k in jwks) == ["ES256", "ES256", "RS256", "RS256"]
    assert all("d" not in k and "p" not in k for k in jwks)  # public halves only


# --- the code flow ---------------------------------------------------------------------------------------------------


def test_code_flow_with_pkce_consent_userinfo_refresh_rotation_and_introspection(stack: Stack) -> None:
    rp = register(stack, audiences=[AUDIENCE], backchannel_logout_uri=None)
    user = new_user(stack, name="Ada Lovelace")
    browser = stack.browser()
    tokens = sign_in_to_app(stack, browser, rp, user)

    claims = tokens["claims"]
    assert claims["iss"] == stack.issuer and claims["aud"] == [rp.client_id]
    assert claims["sub"] == str(user.id)
    assert claims["email"] == user.email and claims["name"] == "Ada Lovelace"
    assert claims["amr"] == ["pwd"] and claims["acr"] == ACR_SFA
    assert claims["sid"] and claims["auth_time"] <= time.time()

    info = stack.rp.call("userinfo", name=rp.name, access_token=tokens["access_token"], sub=str(user.id))
    assert info["email"] == user.email and info["email_verified"] is True

    # RFC 9068: a resource server verifies the access token offline, against the JWKS, for its own audience...
    verified = verify_offline(stack, tokens["access_token"], AUDIENCE)
    assert verified["payload"]["client_id"] == rp.client_id and verified["payload"]["sub"] == str(user.id)
    # ...and refuses it when it is for another API.
    with pytest.raises(RPError) as other_api:
        verify_offline(stack, tokens["access_token"], "https://billing.example.com/api")
    assert other_api.value.info["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED"

    active = stack.rp.call("introspect", name=rp.name, token=tokens["access_token"])
    assert active["active"] is True and active["sub"] == str(user.id) and active["aud"] == AUDIENCE

    grants = REGISTRY.get_sample_value("ami_auth_oidc_grants_total", {"grant_type": "refresh_token"}) or 0.0
    refreshed = stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    assert refreshed["refresh_token"] != tokens["refresh_token"]  # rotated
    assert stack.rp.call("introspect", name=rp.name, token=tokens["refresh_token"])["active"] is False
    assert stack.rp.call("introspect", name=rp.name, token=refreshed["refresh_token"])["active"] is True
    again = stack.rp.call("refresh", name=rp.name, refresh_token=refreshed["refresh_token"])
    assert again["access_token"] != refreshed["access_token"]
    # /metrics counts every grant, refreshes included (they are too many to audit one by one).
    assert REGISTRY.get_sample_value("ami_auth_oidc_grants_total", {"grant_type": "refresh_token"}) == grants + 2
    assert len(events(stack, "oidc.grant.issue")) >= 1
    browser.close()


def test_a_reused_refresh_token_revokes_the_grant(stack: Stack) -> None:
    rp = register(stack)
    user = new_user(stack)
    tokens = sign_in_to_app(stack, stack.browser(), rp, user)
    rotated = stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])

    with pytest.raises(RPError) as reused:
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    assert reused.value.error == "invalid_grant"
    # The whole family is gone: the newest refresh token and every access token of it.
    with pytest.raises(RPError) as after:
        stack.rp.call("refresh", name=rp.name, refresh_token=rotated["refresh_token"])
    assert after.value.error == "invalid_grant"
    for token in (tokens["access_token"], rotated["access_token"]):
        assert stack.rp.call("introspect", name=rp.name, token=token)["active"] is False
    [event] = [e for e in events(stack, "oidc.refresh.reuse") if e.target == f"oidc_client:{rp.client_id}"]
    assert event.outcome == "denied" and event.details["revoked"] == 2


def test_a_reused_code_is_refused_and_revokes_what_it_issued(stack: Stack) -> None:
    rp = register(stack)
    user = new_user(stack)
    browser = stack.browser()
    auth = start(stack, rp)
    consent = page(browser.sign_in(page(browser.get(auth["url"])), user.email, PASSWORD))
    callback = landed(browser.submit(consent, "/oauth2/authorize/decide", decision="allow"))
    checks = {"verifier": auth["verifier"], "state": auth["state"], "nonce": auth["nonce"]}
    tokens = stack.rp.call("callback", name=rp.name, url=callback, **checks)
    with pytest.raises(RPError) as reused:
        stack.rp.call("callback", name=rp.name, url=callback, **checks)
    assert reused.value.error == "invalid_grant"
    assert stack.rp.call("introspect", name=rp.name, token=tokens["access_token"])["active"] is False
    with pytest.raises(RPError):
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    assert [e.outcome for e in events(stack, "oidc.code.reuse") if e.target == f"oidc_client:{rp.client_id}"] == [
        "denied"
    ]


def _code(stack: Stack, browser: Browser, rp: Registered, user: User, **params: str) -> tuple[str, dict[str, str]]:
    auth = start(stack, rp, **params)
    result = browser.get(auth["url"])
    if not isinstance(result, str):
        result = browser.sign_in(page(result), user.email, PASSWORD)
        if isinstance(result, str):
            return result, auth
        result = browser.submit(page(result), "/oauth2/authorize/decide", decision="allow")
    return landed(result), auth


def test_pkce_is_required_for_a_public_client_and_a_wrong_or_missing_verifier_gets_nothing(stack: Stack) -> None:
    rp = register(stack, auth="none")
    user = new_user(stack)
    browser = stack.browser()
    # No code_challenge at all: refused at the authorization endpoint, told to the app (with iss and state).
    url = (
        f"{stack.issuer}/oauth2/authorize?response_type=code&client_id={rp.client_id}&redirect_uri={rp.redirect_uri}"
        "&scope=openid&state=s1"
    )
    refused = query(landed(browser.get(url)))
    assert refused["error"] == "invalid_request" and "PKCE" in refused["error_description"]
    assert refused["state"] == "s1" and refused["iss"] == stack.issuer
    plain = query(landed(browser.get(url + "&code_challenge=" + "a" * 43 + "&code_challenge_method=plain")))
    assert plain["error"] == "invalid_request"

    callback, auth = _code(stack, browser, rp, user)
    code = query(callback)["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": rp.redirect_uri,
        "client_id": rp.client_id,
    }
    http = stack.browser().http
    missing = http.post("/oauth2/token", data=form)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    wrong = http.post("/oauth2/token", data={**form, "code_verifier": "x" * 43})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert count_tokens(stack, rp.client_id) == 0
    # The right verifier still works (openid-client sends it).
    tokens = stack.rp.call(
        "callback", name=rp.name, url=callback, verifier=auth["verifier"], state=auth["state"], nonce=auth["nonce"]
    )
    assert tokens["claims"]["sub"] == str(user.id)


def test_a_redirect_uri_mismatch_is_a_page_not_a_redirect(stack: Stack) -> None:
    rp = register(stack)
    auth = start(stack, rp)
    evil = auth["url"].replace("redirect_uri=", "redirect_uri=https%3A%2F%2Fevil.example%2Fcb%3Fx%3D", 1)
    response = stack.browser().http.get(evil)
    assert response.status_code == 400 and "Location" not in response.headers
    assert "not supported by client" in response.text
    # A prefix of a registered URI is not a match either (exact comparison).
    prefix = auth["url"].replace(f"cb%2F{rp.name}", f"cb%2F{rp.name}extra")
    assert stack.browser().http.get(prefix).status_code == 400


def test_a_wrong_client_secret_is_refused_and_gets_nothing(stack: Stack) -> None:
    rp = register(stack)
    user = new_user(stack)
    callback, auth = _code(stack, stack.browser(), rp, user)
    form = {
        "grant_type": "authorization_code",
        "code": query(callback)["code"],
        "redirect_uri": rp.redirect_uri,
        "code_verifier": auth["verifier"],
    }
    refused = stack.browser().http.post("/oauth2/token", data=form, headers=basic(rp, "amic_not-the-secret"))
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert count_tokens(stack, rp.client_id) == 0


def test_prompt_none_answers_login_required_or_consent_required_to_the_app(stack: Stack) -> None:
    rp = register(stack)
    user = new_user(stack)
    browser = stack.browser()
    auth = start(stack, rp, prompt="none")
    answer = query(landed(browser.get(auth["url"])))
    assert answer["error"] == "login_required" and answer["state"] == auth["state"] and answer["iss"] == stack.issuer

    # Signed in, but this app was never allowed: consent_required, and still no code.
    signed = page(browser.get("/signin"))
    browser.sign_in(signed, user.email, PASSWORD)
    answer = query(landed(browser.get(start(stack, rp, prompt="none")["url"])))
    assert answer["error"] == "consent_required" and "code" not in answer


def test_first_party_apps_skip_consent_and_a_signed_in_user_goes_straight_back(stack: Stack) -> None:
    rp = register(stack, first_party=True)
    user = new_user(stack)
    browser = stack.browser()
    tokens = sign_in_to_app(stack, browser, rp, user, consent=False)
    assert tokens["claims"]["sub"] == str(user.id)
    # Already signed in: no page at all, even with prompt=none.
    again = sign_in_to_app(stack, browser, rp, user, consent=False, prompt="none")
    assert again["claims"]["sid"] == tokens["claims"]["sid"]
    with stack.db() as db:
        assert [a.client_id for a in consents.authorized_apps(db, user.id)] == [rp.client_id]


def test_client_credentials_with_private_key_jwt(stack: Stack) -> None:
    rp = register(
        stack,
        auth="private_key_jwt",
        grant_types=["client_credentials"],
        redirect_uris=[],
        scopes=["reports:read"],
        audiences=[AUDIENCE],
    )
    tokens = stack.rp.call("client_credentials", name=rp.name, params={"scope": "reports:read"})
    assert "refresh_token" not in tokens and "id_token" not in tokens
    verified = verify_offline(stack, tokens["access_token"], AUDIENCE)
    assert verified["payload"]["sub"] == rp.client_id and verified["payload"]["scope"] == "reports:read"
    assert stack.rp.call("introspect", name=rp.name, token=tokens["access_token"])["active"] is True

    # A key the client does not publish is refused.
    stack.rp.call("key", name=rp.name, alg="ES256")  # the node side now signs with a new key...
    stack.rp.call(
        "configure", name=rp.name, issuer=stack.issuer, client_id=rp.client_id, auth="private_key_jwt", insecure=True
    )
    with stack.app.app_context():
        db = get_database(stack.app).session()
        client = clients.get_client(db, rp.client_id)
        clients.update_client(db, AuditContext(actor="test"), client, {"jwks_uri": f"{stack.rp.url}/jwks/nobody"})
        db.commit()
    stack.app.extensions["ami_idp"]._client_keys.clear()
    with pytest.raises(RPError) as refused:
        stack.rp.call("client_credentials", name=rp.name)
    assert refused.value.error == "invalid_client"


def test_revoking_a_refresh_token_ends_the_grant(stack: Stack) -> None:
    rp = register(stack, auth="client_secret_post")
    user = new_user(stack)
    tokens = sign_in_to_app(stack, stack.browser(), rp, user)
    stack.rp.call("revoke", name=rp.name, token=tokens["refresh_token"], hint="refresh_token")
    with pytest.raises(RPError) as refused:
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    assert refused.value.error == "invalid_grant"
    assert stack.rp.call("introspect", name=rp.name, token=tokens["access_token"])["active"] is False
    with pytest.raises(RPError):
        stack.rp.call("userinfo", name=rp.name, access_token=tokens["access_token"], sub=str(user.id))


# --- step-up ---------------------------------------------------------------------------------------------------------


def test_max_age_and_prompt_login_mean_a_fresh_sign_in_and_the_apps_keep_their_logout(stack: Stack) -> None:
    rp = register(stack, backchannel_logout_uri=None)
    user = new_user(stack)
    browser = stack.browser()
    first = sign_in_to_app(stack, browser, rp, user)["claims"]
    time.sleep(1.1)

    auth = start(stack, rp, max_age="0")
    confirm = page(browser.get(auth["url"]))
    assert "needs a recent sign-in" in confirm.text
    signin = page(browser.submit(confirm, "/oauth2/authorize/decide", decision="reauthenticate"))
    assert "/signin" in signin.url and f'value="{user.email}"' in signin.text  # login_hint
    callback = landed(browser.sign_in(signin, user.email, PASSWORD))
    second = stack.rp.call(
        "callback",
        name=rp.name,
        url=callback,
        verifier=auth["verifier"],
        state=auth["state"],
        nonce=auth["nonce"],
        max_age=0,
    )["claims"]
    assert second["auth_time"] > first["auth_time"]
    with stack.db() as db:
        live = db.scalars(select(UserSession).where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None)))
        assert len(list(live)) == 1  # the session the browser left ended with the fresh sign-in

    # prompt=login the same way; without the confirmation nobody is signed out (a link cannot do it).
    auth = start(stack, rp, prompt="login")
    confirm = page(browser.get(auth["url"]))
    assert "asks you to confirm it's you" in confirm.text
    assert page(browser.get("/account/")).url.endswith("/account/")
    # Cancel: the app hears access_denied, and the user is still signed in.
    cancelled = query(landed(browser.submit(confirm, "/oauth2/authorize/decide", decision="deny")))
    assert cancelled["error"] == "access_denied" and cancelled["state"] == auth["state"]
    assert page(browser.get("/account/")).url.endswith("/account/")


def test_acr_values_asking_for_mfa(stack: Stack) -> None:
    rp = register(stack)
    plain = new_user(stack)
    browser = stack.browser()
    sign_in_to_app(stack, browser, rp, plain)
    # No second factor to step up with: a page says so, and prompt=none tells the app.
    step = page(browser.get(start(stack, rp, acr_values=ACR_MFA)["url"]))
    assert "A second factor is needed" in step.text
    answer = query(landed(browser.get(start(stack, rp, acr_values=ACR_MFA, prompt="none")["url"])))
    assert answer["error"] == "interaction_required"

    # With an authenticator app: password + code, and the ID token says so.
    strong = new_user(stack)
    secret = enrol_totp(stack.app, stack.app.extensions["ami_settings"], strong)
    other = stack.browser()
    auth = start(stack, rp, acr_values=ACR_MFA)
    mfa_page = page(other.sign_in(page(other.get(auth["url"])), strong.email, PASSWORD))
    result = other.submit(mfa_page, "/signin/mfa/totp", code=pyotp.TOTP(secret).now())
    callback = landed(other.submit(page(result), "/oauth2/authorize/decide", decision="allow"))
    claims = stack.rp.call(
        "callback", name=rp.name, url=callback, verifier=auth["verifier"], state=auth["state"], nonce=auth["nonce"]
    )["claims"]
    assert claims["acr"] == ACR_MFA and claims["amr"] == ["pwd", "otp", "mfa"]


# --- logout ----------------------------------------------------------------------------------------------------------


def test_rp_initiated_logout_returns_only_to_a_registered_address(stack: Stack) -> None:
    after = "https://app.example.com/signed-out"
    rp = register(stack, post_logout_redirect_uris=[after])
    user = new_user(stack)
    browser = stack.browser()
    tokens = sign_in_to_app(stack, browser, rp, user)

    evil = stack.rp.call(
        "end_session_url",
        name=rp.name,
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/", "state": "x"},
    )
    refused = browser.http.get(evil)
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert page(browser.get("/account/")).url.endswith("/account/")  # still signed in

    url = stack.rp.call(
        "end_session_url",
        name=rp.name,
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": after, "state": "bye"},
    )
    assert landed(browser.get(url)) == after + "?state=bye"
    assert "/signin" in page(browser.get("/account/")).url
    with pytest.raises(RPError):
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])


def _admin(stack: Stack) -> Browser:
    admin = new_user(stack, role="admin")
    browser = stack.browser()
    browser.sign_in(page(browser.get("/signin")), admin.email, PASSWORD)
    return browser


def _session_of(stack: Stack, user: User) -> UserSession:
    with stack.db() as db:
        found = db.scalars(
            select(UserSession)
            .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
            .order_by(UserSession.created_at)
        ).first()
        assert found is not None
        return found


@pytest.mark.parametrize("cause", ["sign-out", "admin revoke", "password change", "user disabled"])
def test_back_channel_logout_when_the_session_ends(stack: Stack, cause: str) -> None:
    name = f"bc{next(_n)}"
    rp = register(stack, backchannel_logout_uri=stack.rp.backchannel_uri(name))
    stack.rp.receive_logouts(name, issuer=stack.issuer, client_id=rp.client_id)
    user = new_user(stack)
    browser = stack.browser()
    tokens = sign_in_to_app(stack, browser, rp, user)
    session = _session_of(stack, user)

    if cause == "sign-out":
        account = page(browser.get("/account/"))
        browser.submit(account, "/signout")
    elif cause == "admin revoke":
        admin = _admin(stack)
        detail = page(admin.get(f"/admin/users/{user.id}"))
        admin.submit(detail, f"/sessions/{session.public_id}/revoke")
    elif cause == "password change":
        other = stack.browser()
        other.sign_in(page(other.get("/signin")), user.email, PASSWORD)
        account = page(other.get("/account/"))
        new = "a different passphrase 2027"
        other.submit(account, "/account/password", current_password=PASSWORD, new_password=new, confirm=new)
    else:
        admin = _admin(stack)
        admin.submit(page(admin.get(f"/admin/users/{user.id}")), "/disable")

    [received] = stack.rp.wait_for_logouts(name)
    assert "error" not in received, received
    logout = received["claims"]
    assert logout["sub"] == str(user.id) and logout["sid"] == tokens["claims"]["sid"]
    assert logout["aud"] == rp.client_id and logout["iss"] == stack.issuer
    assert received["header"]["typ"] == "logout+jwt"
    with pytest.raises(RPError):
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    assert len(wait_for_events(stack, "oidc.backchannel.deliver", rp.client_id)) == 1


def test_back_channel_logout_is_retried_until_the_app_answers(stack: Stack) -> None:
    name = f"bc{next(_n)}"
    rp = register(stack, backchannel_logout_uri=stack.rp.backchannel_uri(name))
    stack.rp.receive_logouts(name, issuer=stack.issuer, client_id=rp.client_id, status=503)
    user = new_user(stack)
    browser = stack.browser()
    sign_in_to_app(stack, browser, rp, user)
    browser.submit(page(browser.get("/account/")), "/signout")

    [refused] = stack.rp.wait_for_logouts(name)
    assert "claims" in refused  # a valid token, which the app answered 503
    failed = wait_for_events(stack, "oidc.backchannel.fail", rp.client_id)
    assert [(e.details["attempt"], e.details["final"]) for e in failed] == [(1, False)]

    # The app is back; the retry (due ten seconds later) delivers the same logout.
    stack.rp.receive_logouts(name, issuer=stack.issuer, client_id=rp.client_id, status=200)
    run = sender(stack.app)
    assert run is not None
    result = run.run_once(now=utcnow() + logout.BACKOFF[0] + timedelta(seconds=1))
    assert result.delivered == 1
    first, second = stack.rp.logouts(name)
    assert first["claims"]["jti"] == second["claims"]["jti"]  # one logout event, delivered at least once
    assert [
        e.details["attempt"] for e in events(stack, "oidc.backchannel.deliver") if e.details["client"] == rp.client_id
    ] == [2]


def test_revoking_the_apps_access_from_the_account_revokes_its_tokens(stack: Stack) -> None:
    rp = register(stack)
    user = new_user(stack)
    tokens = sign_in_to_app(stack, stack.browser(), rp, user)
    with stack.app.app_context():
        db = get_database(stack.app).session()
        assert [a.name for a in consents.authorized_apps(db, user.id)] == [f"App {rp.name}"]
        consents.revoke(db, AuditContext(actor=user.email, actor_id=user.id), user.id, rp.client_id)
        db.commit()
        assert consents.authorized_apps(db, user.id) == []
    assert stack.rp.call("introspect", name=rp.name, token=tokens["access_token"])["active"] is False
    with pytest.raises(RPError):
        stack.rp.call("refresh", name=rp.name, refresh_token=tokens["refresh_token"])
    # The next sign-in asks again.
    browser = stack.browser()
    consent = page(browser.sign_in(page(browser.get(start(stack, rp)["url"])), user.email, PASSWORD))
    assert "Allow App" in consent.text
