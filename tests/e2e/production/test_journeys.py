"""What a user does on a production deployment, in Chromium over HTTPS through nginx (tests/support/prod_stack.py)."""

from __future__ import annotations

from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.production.conftest import ProdUsers, sign_in
from tests.support.prod_stack import ProductionStack


def test_a_member_signs_in_over_https_behind_the_proxy(
    prod: ProductionStack, prod_page: Page, prod_context: BrowserContext, prod_users: ProdUsers
) -> None:
    user = prod_users.create("https-member@example.com")
    sign_in(prod_page, prod, user.email, user.password)
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    expect(prod_page.locator(".who")).to_have_text(user.email)
