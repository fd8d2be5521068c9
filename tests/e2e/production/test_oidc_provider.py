"""AMI Auth as the platform's OpenID Provider, on a production deployment (gunicorn + PostgreSQL + Redis behind nginx
TLS): an operator registers an app with `ami-auth oidc clients create`; openid-client v6 (tests/peers/rp.mjs, trusting
the stack's CA, no insecure option) discovers the provider over HTTPS; a member signs in through AMI's own pages in
Chromium, allows the app, and lands back on it; the app exchanges the code, reads userinfo, rotates its refresh token,
introspects, and verifies the access token offline; the member signs out of AMI and the app hears it through
back-channel logout."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.production.conftest import ProdUsers
from tests.support.prod_stack import ProductionStack
from tests.support.rp import RelyingParty, RPError, query, running_rp

API = "https://cms.example.com/api"


@pytest.fixture(scope="module")
def rp(prod: ProductionStack) -> Iterator[RelyingParty]:
    with running_rp({"NODE_EXTRA_CA_CERTS": str(prod.tls.ca_file)}) as peer:
        yield peer


def _register(prod: ProductionStack, rp: RelyingParty, name: str) -> tuple[str, str]:
    created = prod.cli(
        "oidc", "clients", "create", "The CMS",
        "--redirect-uri", rp.redirect_uri(name),
        "--backchannel-logout-uri", rp.backchannel_uri(name),
        "--post-logout-uri", rp.redirect_uri(name + "-out"),
        "--audience", API,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    client_id = re.search(r"client_id: (\S+)", created.stdout)
    secret = re.search(r"client_secret: (\S+)", created.stdout)
    assert client_id and secret, created.stdout
    return client_id.group(1), secret.group(1)


def test_a_member_signs_in_to_an_app_with_openid_client_over_https_and_signing_out_reaches_the_app(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers, rp: RelyingParty
) -> None:
    user = prod_users.create("idp-member@example.com")  # not oidc-member: test_console signs that one in upstream
    client_id, secret = _register(prod, rp, "cms")
    metadata = rp.call(
        "configure", name="cms", issuer=prod.url, client_id=client_id, client_secret=secret, auth="client_secret_basic"
    )
    assert metadata["issuer"] == prod.url and metadata["token_endpoint"] == prod.url + "/oauth2/token"
    rp.receive_logouts("cms", issuer=prod.url, client_id=client_id)
    auth = rp.call("authorize_url", name="cms", redirect_uri=rp.redirect_uri("cms"), scope="openid profile email")

    # The app sends the browser to AMI Auth: the sign-in page, then the consent page, then back to the app.
    prod_page.goto(auth["url"])
    expect(prod_page.get_by_role("heading", name="Sign in")).to_be_visible()
    prod_page.get_by_label("Email").fill(user.email)
    prod_page.get_by_label("Password").fill(user.password)
    prod_page.get_by_role("button", name="Sign in", exact=True).click()
    expect(prod_page.get_by_role("heading", name="Allow The CMS to use your AMI account?")).to_be_visible()
    expect(prod_page.locator("[data-scope=email]")).to_have_text("Your email address and whether it is verified")
    prod_page.get_by_role("button", name="Allow").click()
    expect(prod_page.get_by_role("heading", name="Back at the app")).to_be_visible()

    [callback] = rp.seen("cms")
    assert query(callback)["iss"] == prod.url  # RFC 9207
    tokens = rp.call(
        "callback", name="cms", url=callback, verifier=auth["verifier"], state=auth["state"], nonce=auth["nonce"]
    )
    claims = tokens["claims"]
    assert claims["sub"] == str(user.id) and claims["email"] == user.email and claims["amr"] == ["pwd"]

    info = rp.call("userinfo", name="cms", access_token=tokens["access_token"], sub=str(user.id))
    assert info["email"] == user.email
    verified = rp.call(
        "verify", jwks_uri=metadata["jwks_uri"], issuer=prod.url, token=tokens["access_token"], audience=API,
        typ="at+jwt",
    )  # fmt: skip
    assert verified["payload"]["sub"] == str(user.id)
    refreshed = rp.call("refresh", name="cms", refresh_token=tokens["refresh_token"])
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert rp.call("introspect", name="cms", token=refreshed["access_token"])["active"] is True

    # Signing out of AMI Auth ends the app's session too: a verified logout token for this session.
    prod_page.goto(prod.url + "/account/")
    prod_page.get_by_role("button", name="Sign out").click()
    expect(prod_page.get_by_role("heading", name="Sign in")).to_be_visible()
    [received] = rp.wait_for_logouts("cms", timeout=30)
    assert "error" not in received, received
    assert received["claims"]["sid"] == claims["sid"] and received["claims"]["sub"] == str(user.id)
    with pytest.raises(RPError) as ended:
        rp.call("refresh", name="cms", refresh_token=refreshed["refresh_token"])
    assert ended.value.error == "invalid_grant"


def test_prompt_none_without_a_session_and_an_unregistered_logout_address(
    prod: ProductionStack, prod_page: Page, rp: RelyingParty
) -> None:
    client_id, secret = _register(prod, rp, "cms2")
    rp.call("configure", name="cms2", issuer=prod.url, client_id=client_id, client_secret=secret,
            auth="client_secret_basic")  # fmt: skip
    auth = rp.call(
        "authorize_url", name="cms2", redirect_uri=rp.redirect_uri("cms2"), scope="openid", params={"prompt": "none"}
    )
    prod_page.goto(auth["url"])
    expect(prod_page.get_by_role("heading", name="Back at the app")).to_be_visible()
    [answer] = rp.seen("cms2")
    assert query(answer)["error"] == "login_required" and "code" not in query(answer)

    evil = rp.call("end_session_url", name="cms2", params={"post_logout_redirect_uri": "https://evil.example/"})
    response = prod_page.goto(evil)
    assert response is not None and response.status == 400
    expect(prod_page.get_by_role("heading", name="This sign-out request cannot be used")).to_be_visible()
    assert prod_page.url.startswith(prod.url)
