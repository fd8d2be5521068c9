"""CSRF still defends on a production deployment (app/http/csrf.py): in Chromium over HTTPS, a form posted from a
sibling origin of the same site (whose requests carry the SameSite=Lax session cookie) with a leaked token, a form
without its token and one with a wrong token are each refused, and each refusal is one log line an operator can
read; the same three cases with a plain HTTP client, over HTTPS through nginx and over HTTP to gunicorn itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.production.conftest import ProdUsers, sign_in
from tests.support.prod_stack import ProductionStack

REFUSED = "The form expired or did not come from this site."


def _refusals(stack: ProductionStack, since: int) -> list[str]:
    return [line for line in stack.app_log(since).splitlines() if "CSRF check refused" in line]


def _token(page: Page) -> str:
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    assert token
    return token


def test_a_sibling_origin_cannot_post_even_with_a_leaked_token(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers
) -> None:
    user = prod_users.create("csrf-target@example.com")
    sign_in(prod_page, prod, user.email, user.password)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    leaked = _token(prod_page)
    # The attacker's page: https://localhost:OTHER — another origin, the same site, so the browser attaches the
    # session cookie to its POST. Only the Origin check tells it apart.
    (prod.foreign_dir / "prize.html").write_text(
        f'<!doctype html><title>Prize</title><form method="post" action="{prod.url}/signout">'
        f'<input type="hidden" name="csrf_token" value="{leaked}"><button>Claim your prize</button></form>'
    )
    since = prod.log_offset()
    prod_page.goto(prod.foreign_url + "/prize.html")
    prod_page.get_by_role("button", name="Claim your prize").click()
    expect(prod_page.get_by_role("heading", name=REFUSED)).to_be_visible()
    # Still signed in: the sign-out did not happen.
    prod_page.goto(prod.url + "/account/")
    expect(prod_page.locator(".who")).to_have_text(user.email)

    [line] = _refusals(prod, since)
    assert "POST /signout" in line and "reason=origin" in line and f"origin={prod.foreign_url}" in line
    assert leaked not in line and "ami_session" not in line


@pytest.mark.parametrize(("tamper", "reason"), [("remove", "token_missing"), ("change", "token_invalid")])
def test_a_form_without_its_token_or_with_a_wrong_one_is_refused_and_logged(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers, tamper: str, reason: str
) -> None:
    user = prod_users.create(f"csrf-{tamper}@example.com")
    prod_page.goto(prod.url + "/signin")
    token = _token(prod_page)
    if tamper == "remove":
        prod_page.evaluate("document.querySelector('input[name=csrf_token]').remove()")
    else:
        prod_page.evaluate("document.querySelector('input[name=csrf_token]').value = 'IjAwMDAi.forged.token'")
    prod_page.get_by_label("Email").fill(user.email)
    prod_page.get_by_label("Password").fill(user.password)
    since = prod.log_offset()
    prod_page.get_by_role("button", name="Sign in", exact=True).click()
    expect(prod_page.get_by_role("heading", name=REFUSED)).to_be_visible()
    [line] = _refusals(prod, since)
    assert re.search(rf"POST /signin: .*\(reason={reason}, origin={re.escape(prod.url)}, ", line), line
    assert token not in line and "forged" not in line
    # The form itself is fine: submitted as served, it signs in.
    sign_in(prod_page, prod, user.email, user.password)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()


@dataclass
class Form:
    """A sign-in form fetched by a plain HTTP client: the session cookie it came with, and its token."""

    cookie: str
    token: str


@pytest.mark.parametrize("via", ["https through nginx", "http to gunicorn"])
def test_plain_http_clients_get_the_same_answers(prod: ProductionStack, prod_users: ProdUsers, via: str) -> None:
    user = prod_users.create(f"csrf-{via.split()[0]}@example.com")
    # gunicorn itself is what only the proxy should reach; the rule is the same there, over plain HTTP.
    base = prod.url if via.startswith("https") else prod.upstream_url
    tls = prod.ssl_context()

    # Each call stands alone (no cookie jar): the Cookie header is exactly the one the test sends.
    def fetch_form() -> Form:
        page = httpx.get(base + "/signin", verify=tls, trust_env=False)
        cookie = page.headers["set-cookie"].split(";", 1)[0]
        match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)
        assert page.status_code == 200 and match and cookie.startswith("ami_session="), page.text[:300]
        return Form(cookie, match.group(1))

    def post(form: Form, token: str | None, origin: str) -> httpx.Response:
        data = {"email": user.email, "password": user.password} | ({"csrf_token": token} if token else {})
        headers = {"Cookie": form.cookie, "Origin": origin}
        return httpx.post(base + "/signin", data=data, headers=headers, verify=tls, trust_env=False)

    form = fetch_form()
    for token, origin in [
        (form.token, "https://localhost:1"),  # another origin of the same site
        (form.token, "https://evil.example"),
        (None, base),
        ("IjAwMDAi.forged.token", base),
        (fetch_form().token, base),  # the token of another session
    ]:
        response = post(form, token, origin)
        assert response.status_code == 400 and REFUSED in response.text, (via, token, origin)
    assert post(form, form.token, base).status_code == 302
