"""A provider type that exists only as a file in the operator's catalog folder (``AMI_AUTH_CATALOG_DIR``, here
the synthetic entries of tests/fixtures/catalog) works on a production deployment: its sign-in button, with the
entry's label and logo, and the whole OpenID Connect sign-in through the real OP, in Chromium over HTTPS
through nginx, gunicorn's workers doing discovery, the token exchange and the ID-token checks."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from app import audit
from app.extensions import get_cipher, get_database, get_settings
from app.models import ConnectedAccount, ProviderConfig
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import validate_submission
from tests.e2e.production.conftest import ProdUsers, sign_in
from tests.support.oauth_app import generic_values
from tests.support.op import OPClient, running_op
from tests.support.prod_stack import ProductionStack

EMAIL = "prod-synthetic@example.com"


def test_a_type_from_the_operators_catalog_folder_signs_in_over_https(prod: ProductionStack, prod_page: Page) -> None:
    app = prod.app
    with app.app_context():
        db = get_database(app).session()
        config_id = int(db.scalar(select(func.max(ProviderConfig.id))) or 0) + 1
        client = OPClient("ami-prod", "prod-op-secret", redirect_uri=f"{prod.url}/oauth/{config_id}/callback")
        with running_op(clients=[client], accounts={"prodie": {"email": EMAIL, "email_verified": True}}) as op:
            provider = entry("acme_id")  # the app's catalog: the shipped entries and the operator's folder
            values = {"issuer": op.issuer, "client_id": client.client_id, "client_secret": client.client_secret}
            clean, errors = validate_submission(provider, "config", {**values, "jit": True})
            assert errors == {}, errors
            cfg = configs.create_config(
                db, get_cipher(app), get_settings(app), audit.AuditContext(actor="test"), provider, "Acme Prod", clean
            )
            configs.set_enabled(db, audit.AuditContext(actor="test"), cfg, True)
            db.commit()
            assert cfg.id == config_id

            prod_page.goto(prod.url + "/signin")
            button = prod_page.get_by_role("link", name="Sign in with Acme Prod")
            expect(button).to_be_visible()
            # The entry's logo, served like any static file (and allowed by the CSP: no console error).
            logo = button.locator("img.oauth-logo")
            expect(logo).to_have_attribute("src", "/static/favicon.svg")
            assert prod_page.evaluate("e => e.complete && e.naturalWidth > 0", logo.element_handle())
            button.click()
            expect(prod_page).to_have_url(re.compile(re.escape(op.issuer) + "/interaction/"))
            prod_page.locator('input[name="login"]').fill("prodie")
            prod_page.locator('input[name="password"]').fill("any")
            prod_page.locator('button[type="submit"]').click()
            prod_page.locator('button[type="submit"]', has_text="Continue").click()
            expect(prod_page).to_have_url(re.compile(re.escape(prod.url) + "/"))
            expect(prod_page.locator(".who")).to_have_text(EMAIL)


def test_a_member_connects_their_own_oauth_account_from_a_cms_link_over_https(
    prod: ProductionStack, prod_page: Page, prod_users: ProdUsers
) -> None:
    """The CMS asks for a connect link for a member and an OIDC config that lets end users connect; the member
    goes through the provider's consent and is sent back to the CMS with the account made theirs (issue 17)."""
    app = prod.app
    member = prod_users.create("prod-connector@example.com")
    made = prod.cli("tokens", "create", "CMS connect links", "--scope", "accounts:write")
    assert made.returncode == 0, made.stderr
    service_token = made.stdout.strip()
    with app.app_context():
        db = get_database(app).session()
        config_id = int(db.scalar(select(func.max(ProviderConfig.id))) or 0) + 1
        client = OPClient("ami-prod-connect", "prod-op-secret", redirect_uri=f"{prod.url}/oauth/{config_id}/callback")
        with running_op(clients=[client], accounts={"conny": {"email": "conny@corp.example"}}) as op:
            provider = entry("generic_oidc")
            clean, errors = validate_submission(
                provider, "config", generic_values(op.issuer, client, end_users_connect=True)
            )
            assert errors == {}, errors
            ctx = audit.AuditContext(actor="test")
            cfg = configs.create_config(db, get_cipher(app), get_settings(app), ctx, provider, "Corp Prod", clean)
            configs.set_enabled(db, ctx, cfg, True)
            db.commit()
            assert cfg.id == config_id
            return_to = prod.cms_url("localhost") + "/me/connections"
            with prod.http() as api:
                answer = api.post(
                    "/api/account-manager/connect-links",
                    json={"provider_config_id": config_id, "user_id": member.id, "return_to": return_to},
                    headers={"Authorization": f"Bearer {service_token}"},
                )
            assert answer.status_code == 201, answer.text

            sign_in(prod_page, prod, member.email, member.password)
            expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
            prod_page.goto(answer.json()["url"])
            expect(prod_page.get_by_role("heading", name="Connect your account")).to_be_visible()
            prod_page.get_by_role("link", name=re.compile("^Continue to ")).click()
            expect(prod_page).to_have_url(re.compile(re.escape(op.issuer) + "/interaction/"))
            prod_page.locator('input[name="login"]').fill("conny")
            prod_page.locator('input[name="password"]').fill("any")
            prod_page.locator('button[type="submit"]').click()
            prod_page.locator('button[type="submit"]', has_text="Continue").click()
            # Back at the CMS (no CMS serves the page in this test: the address is what the CMS reads).
            prod_page.wait_for_url(
                re.compile(rf"^{re.escape(return_to)}\?status=saved&account=\d+$"), wait_until="commit"
            )
            account_id = int(prod_page.url.rsplit("=", 1)[1])
        db.rollback()
        account = db.get(ConnectedAccount, account_id)
        assert account is not None
        assert (account.user_id, account.subject, account.status) == (member.id, "conny", "active")
        db.close()
