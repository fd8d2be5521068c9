"""The admin's work on a production deployment, in Chromium over HTTPS through nginx: an OpenID Connect provider
configured, tested against the real OP and used to sign in; an OpenAI key added through the secure dialog that the
CMS — a second HTTPS origin behind the same nginx — shows in an iframe (same site) or, from another site, as a
top-level page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import press_test_connection
from tests.e2e.production.conftest import ProdUsers
from tests.support.cms_standin import CmsStandin, cms_credentials
from tests.support.live import free_port
from tests.support.op import OPClient, running_op
from tests.support.prod_stack import ProductionStack
from tests.support.vendors.openai import OpenAI

pytest_plugins = ("tests.support.vendor_fixtures",)

OIDC_MEMBER = "oidc-member@example.com"


def test_an_oidc_provider_is_configured_tested_and_signs_a_member_in(
    prod: ProductionStack, admin_page: Page, prod_page: Page, prod_users: ProdUsers
) -> None:
    page = admin_page
    op_port = free_port()
    issuer = f"http://127.0.0.1:{op_port}"
    page.goto(prod.url + "/admin/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Providers").click()
    page.get_by_role("link", name="Add a provider").click()
    page.get_by_role("link", name="OpenID Connect (any provider)").click()
    page.get_by_label("Name", exact=True).fill("Corp ID")
    page.get_by_label("Issuer").fill(issuer)
    page.get_by_label("Client ID").fill("ami-prod")
    page.get_by_label("Client secret").fill("op secret for production")
    page.get_by_label("Link by verified email").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Corp ID")).to_be_visible()
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_text("“Corp ID” is now enabled.")).to_be_visible()

    # The admin registers the redirect URI the setup page shows at the provider, then tests the connection.
    page.get_by_role("link", name="OAuth setup & test connection").click()
    redirect_uri = page.locator("#redirect-uri").inner_text()
    assert re.fullmatch(rf"{re.escape(prod.url)}/oauth/\d+/callback", redirect_uri), redirect_uri
    client = OPClient("ami-prod", "op secret for production", redirect_uri=redirect_uri)
    accounts = {"oidc-member": {"email": OIDC_MEMBER, "email_verified": True, "name": "Olga"}}
    with running_op(clients=[client], port=op_port, accounts=accounts):
        press_test_connection(page)
        expect(page.locator("#test-result")).to_have_attribute("data-ok", "true")
        expect(page.locator("#test-result")).to_contain_text("The provider answered.")
        expect(page.locator(".oauth-findings")).to_contain_text(issuer)

        # A member signs in through it: out to the OP's own pages over http, back to the https callback.
        prod_users.create(OIDC_MEMBER)
        prod_page.goto(prod.url + "/signin")
        prod_page.get_by_role("link", name="Continue with Corp ID").click()
        expect(prod_page).to_have_url(re.compile(re.escape(issuer) + "/interaction/"))
        prod_page.locator('input[name="login"]').fill("oidc-member")
        prod_page.locator('input[name="password"]').fill("any")
        prod_page.locator('button[type="submit"]').click()
        prod_page.locator('button[type="submit"]', has_text="Continue").click()
        expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
        expect(prod_page.locator(".who")).to_have_text(OIDC_MEMBER)
        assert prod_page.url.startswith(prod.url + "/")


@pytest.fixture(scope="module")
def cms(prod: ProductionStack) -> Iterator[CmsStandin]:
    """The CMS server behind nginx's second server block: its service token, an OpenAI provider config."""
    config_id, raw = cms_credentials(prod.app, "openai", "OpenAI (CMS)")
    standin = CmsStandin(prod.cms_backend_port, prod.url, raw, config_id, verify=prod.ssl_context()).start()
    yield standin
    standin.stop()


def _fill_openai(scope: Page, frame: bool, key: str, base_url: str, label: str) -> None:
    target = scope.frame_locator("#dialog") if frame else scope
    target.locator("#label").fill(label)
    target.locator("#api_key").fill(key)
    target.locator("summary", has_text="Advanced").click()
    target.locator("#base_url").fill(base_url)


def test_the_cms_frames_the_dialog_and_the_admin_adds_an_openai_key(
    prod: ProductionStack, admin_page: Page, cms: CmsStandin, openai_standin: OpenAI
) -> None:
    page = admin_page
    cms_url = prod.cms_url("localhost")  # another origin, the same site: the frame gets the session cookie
    page.goto(cms_url + "/")
    frame = page.frame_locator("#dialog")
    expect(frame.get_by_role("heading", name="Add an account")).to_be_visible()
    assert cms.dialog_answers[-1] == 201
    key = openai_standin.add_key()
    _fill_openai(page, True, key, openai_standin.url, "GPT (CMS)")
    press_test_connection(frame)
    expect(frame.locator('.test-result[data-code="ok"]')).to_be_visible()
    frame.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(rf"^{re.escape(cms_url)}/\?from=dialog&status=saved&account=\d+$"))
    account_id = page.url.rsplit("=", 1)[1]
    expect(page.locator("#outcome")).to_have_text(f"Dialog saved (account {account_id})")
    expect(page.locator(f'#accounts li[data-account-id="{account_id}"]')).to_have_text("GPT (CMS) · openai · active")
    assert key not in page.content()
    assert [r.bearer() for r in openai_standin.requests_to("/v1/models")] == [key, key]  # Test, then Save


def test_a_cms_on_another_site_opens_the_dialog_as_a_page_that_returns_to_it(
    prod: ProductionStack, admin_page: Page, cms: CmsStandin, openai_standin: OpenAI
) -> None:
    page = admin_page
    cms_url = prod.cms_url("127.0.0.1")  # another site than localhost: SameSite=Lax keeps the cookie out
    page.goto(cms_url + "/")
    frame = page.frame_locator("#dialog")
    expect(frame.get_by_role("heading", name="Sign in to AMI Auth to continue")).to_be_visible()
    frame.get_by_role("link", name="Sign in and open the dialog").click()
    page.wait_for_url(re.compile(rf"^{re.escape(prod.url)}/dialogs/cms\?dialog="))
    expect(page.get_by_role("heading", name="Add an account")).to_be_visible()
    _fill_openai(page, False, openai_standin.add_key(), openai_standin.url, "GPT (other site)")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(re.compile(rf"^{re.escape(cms_url)}/\?from=dialog&status=saved&account=\d+$"))
    account_id = page.url.rsplit("=", 1)[1]
    expect(page.locator(f'#accounts li[data-account-id="{account_id}"]')).to_have_text(
        "GPT (other site) · openai · active"
    )
