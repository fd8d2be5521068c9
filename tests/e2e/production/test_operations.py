"""Operating the production shape (docs/operations.md): /metrics and its guard, summed over a host's workers;
the Grafana dashboard's metric names against a real scrape; request ids from the proxy to the response and the
log; and every log line of the stack — gunicorn's and the app's, both hosts, plus nginx's — searched for every
secret value that the journeys of this module used (password, TOTP seed and codes, API key, session cookie, CSRF
token, service token, reset link token)."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pyotp
import pytest
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select

from app import metrics
from app.auth import totp
from app.extensions import get_cipher, get_database, get_settings
from app.models import ConnectedAccount, User, utcnow
from tests.e2e.conftest import press_test_connection
from tests.e2e.production.conftest import ProdUsers, sign_in, sign_out
from tests.support.accounts import make_config
from tests.support.prod_stack import ROOT, ProductionStack, metric_value
from tests.support.smtp import body_text
from tests.support.vendors.openai import OpenAI

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
HEX_ID = re.compile(r"[0-9a-f]{32}")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _log_lines(stack: ProductionStack, since: int = 0) -> list[dict[str, object]]:
    return [json.loads(line) for line in stack.app_log(since).splitlines() if line.strip()]


def test_metrics_answer_only_the_token_and_add_up_every_worker_of_a_host(prod: ProductionStack) -> None:
    host = prod.hosts[0]
    with httpx.Client(trust_env=False, timeout=15) as client:
        # 404 for anyone without the token — directly, through nginx, with a wrong token: a page that isn't there.
        assert client.get(host.url + "/metrics").status_code == 404
        assert client.get(host.url + "/metrics", headers=_bearer(secrets.token_urlsafe(32))).status_code == 404
        with prod.http() as proxied:
            assert proxied.get("/metrics").status_code == 404
        opened = client.get(host.url + "/metrics", headers=_bearer(prod.metrics_token))
        assert opened.status_code == 200 and opened.headers["content-type"] == metrics.CONTENT_TYPE
        since = prod.log_offset()
        signin_200 = {"route": "/signin", "method": "GET", "status": "200"}
        before = metric_value(prod.scrape(host), "ami_auth_http_requests_total", **signin_200)

        # 40 page loads, 8 at a time, so both of the host's workers serve some (checked in the log: their pids).
        tag = secrets.token_hex(4)

        def load(i: int) -> int:
            headers = {"X-Request-ID": f"metrics-{tag}-{i}"}  # gunicorn is only reachable by the proxy: trusted
            return client.get(host.url + "/signin", headers=headers).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(load, range(40))) == {200}
        served_by = {
            line["pid"]
            for line in _log_lines(prod, since)
            if str(line.get("request_id", "")).startswith(f"metrics-{tag}-")
        }
        assert len(served_by) == 2, f"both workers should have served: {served_by}"
        assert served_by <= host.worker_pids()

        # Every scrape, whichever worker answers it, counts all 40.
        counts = {metric_value(prod.scrape(host), "ami_auth_http_requests_total", **signin_200) for _ in range(8)}
        assert counts == {before + 40}


def _dashboard_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    return {name for expr in exprs for name in re.findall(r"\bami_auth_[a-z_]+\b", expr)}


def test_the_dashboard_uses_exactly_the_exported_metric_names(prod: ProductionStack) -> None:
    # One failed sign-in, so the sign-in counter has a series (the rest start at 0 or count any request).
    with prod.http() as client:
        page = client.get("/signin")
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)
        assert token
        refused = client.post(
            "/signin",
            data={"email": "nobody-dashboard@example.com", "password": "wrong wrong wrong", "csrf_token": token[1]},
            headers={"Origin": prod.url},
        )
        assert refused.status_code == 401
    scraped = prod.scrape(prod.hosts[0]) + prod.scrape(prod.hosts[1])  # the sign-in landed on one of them
    samples = {line.split("{")[0].split(" ")[0] for line in scraped.splitlines() if line.startswith("ami_auth_")}
    families = set(re.findall(r"^# TYPE (ami_auth_\w+) ", scraped, re.M))

    used = _dashboard_names()
    assert used - samples == set(), "the dashboard queries names /metrics does not export"
    # …and no exported family is left off the dashboard (a histogram counts as used through any of its series).
    assert {f for f in families if not any(name.startswith(f) for name in used)} == set()
    assert len(families) >= 9


def test_request_ids_come_from_the_proxy_and_reach_the_response_and_the_log(prod: ProductionStack) -> None:
    since = prod.log_offset()
    with prod.http() as client:
        forged = "client-chosen-id-0001"
        response = client.get("/signin", headers={"X-Request-ID": forged})
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    # nginx's $request_id (docs/deployment.md sets it, overwriting the client's).
    assert HEX_ID.fullmatch(request_id) and request_id != forged
    [line] = [line for line in _log_lines(prod, since) if line.get("request_id") == request_id]
    assert line["route"] == "/signin" and line["status"] == 200 and line["method"] == "GET"
    assert isinstance(line["duration_ms"], float) and line["level"] == "INFO" and line["logger"] == "ami_auth.request"
    assert not [line for line in _log_lines(prod, since) if line.get("request_id") == forged]
    # An error page's reference is that id too (a 404 here: its page names the code; the id is in the header).
    missing = httpx.get(prod.url + "/no/such/page", verify=prod.ssl_context(), trust_env=False)
    assert missing.status_code == 404 and HEX_ID.fullmatch(missing.headers["X-Request-ID"])


# --- the log scan -------------------------------------------------------------------------------------------


def _enrol_totp(stack: ProductionStack, user_id: int) -> str:
    app = stack.app
    with app.app_context():
        db = get_database(app).session()
        user = db.get(User, user_id)
        assert user is not None
        enrolment = totp.start_enrolment(db, get_settings(app), user)
        secret = enrolment.secret.reveal()
        earlier = utcnow() - timedelta(minutes=2)
        totp.confirm_enrolment(db, get_settings(app), user, pyotp.TOTP(secret).at(earlier), now=earlier)
        db.commit()
        return secret


def _csrf(page: Page) -> str:
    value = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    assert value
    return value


@pytest.fixture
def openai_standin() -> Iterator[OpenAI]:
    with OpenAI() as standin:
        yield standin


def test_journeys_leave_no_secret_in_any_log_line(
    prod: ProductionStack,
    prod_page: Page,
    prod_context: BrowserContext,
    prod_users: ProdUsers,
    admin_page: Page,
    openai_standin: OpenAI,
) -> None:
    used: dict[str, str] = {}  # what each secret is -> its value
    codes: list[str] = []  # TOTP codes: six digits, searched as whole tokens

    # 1. Sign-in with password + authenticator app (one wrong code first).
    password = "ops log scan passphrase " + secrets.token_hex(4)
    user = prod_users.create(f"log-scan-{secrets.token_hex(3)}@example.com", password=password)
    seed = _enrol_totp(prod, user.id)
    used |= {"password": password, "TOTP seed": seed}
    sign_in(prod_page, prod, user.email, password)
    expect(prod_page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    wrong = pyotp.TOTP(seed).at(time.time() + 3600)
    prod_page.get_by_label("Authentication code").fill(wrong)
    prod_page.get_by_role("button", name="Verify code").click()
    expect(prod_page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    right = pyotp.TOTP(seed).now()
    prod_page.get_by_label("Authentication code").fill(right)
    prod_page.get_by_role("button", name="Verify code").click()
    expect(prod_page.get_by_role("heading", name="My account")).to_be_visible()
    codes += [wrong, right]
    [cookie] = [c for c in prod_context.cookies(prod.url) if c["name"] == "ami_session"]
    used |= {"session cookie": cookie["value"], "CSRF token": _csrf(prod_page)}
    sign_out(prod_page)

    # 2. An admin adds an API-key account (OpenAI, against the stand-in) through the secure dialog.
    with prod.app.app_context():
        db = get_database(prod.app).session()
        make_config(db, get_cipher(prod.app), get_settings(prod.app), "openai", {"rotation_days": 90}, "OpenAI (ops)")
    api_key = openai_standin.add_key()
    used["API key"] = api_key
    admin_page.goto(prod.url + "/admin/accounts/")
    admin_page.get_by_role("link", name="Add account").click()
    admin_page.get_by_role("link", name="OpenAI (ops)").click()
    admin_page.get_by_label("Label").fill("OpenAI ops scan")
    admin_page.get_by_text("Advanced").click()
    admin_page.get_by_label("Base URL").fill(openai_standin.url)
    admin_page.get_by_role("button", name="Continue to the secret").click()
    admin_page.get_by_label("API key").fill(api_key)
    press_test_connection(admin_page)
    expect(admin_page.locator("#test-result .test-result")).to_have_attribute("data-code", "ok")
    admin_page.get_by_role("button", name="Save").click()
    # The dialog's heading names the account too: wait for the saved account's page, not the heading alone.
    expect(admin_page.get_by_text("Saved.")).to_be_visible()
    expect(admin_page.get_by_role("heading", name="OpenAI ops scan")).to_be_visible()

    # 3. A service token, used: the CMS reads the account's headers (the one endpoint that discloses the key).
    made = prod.cli("tokens", "create", "ops log scan", "--scope", "accounts:headers")
    assert made.returncode == 0, made.stderr
    service_token = made.stdout.strip()
    used["service token"] = service_token
    with prod.app.app_context():
        db = get_database(prod.app).session()
        account_id = db.scalars(select(ConnectedAccount.id).where(ConnectedAccount.label == "OpenAI ops scan")).one()
        db.rollback()
    with prod.http() as client:
        headers = client.get(f"/api/account-manager/accounts/{account_id}/headers", headers=_bearer(service_token))
    assert headers.status_code == 200 and api_key in headers.text

    # 4. A password reset through the mail.
    prod_page.goto(prod.url + "/reset")
    prod_page.get_by_label("Email").fill(user.email)
    prod_page.get_by_role("button", name="Send reset link").click()
    expect(prod_page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    link = re.search(rf"{re.escape(prod.url)}/reset/(\S+)", body_text(prod.smtp.wait_for(user.email, timeout=30)))
    assert link
    used["reset link token"] = link.group(1)
    new_password = "ops log scan new passphrase " + secrets.token_hex(4)
    used["new password"] = new_password
    prod_page.goto(link.group(0))
    prod_page.get_by_label("New password", exact=True).fill(new_password)
    prod_page.get_by_label("Repeat new password").fill(new_password)
    prod_page.get_by_role("button", name="Set new password").click()
    expect(prod_page.get_by_role("status")).to_contain_text("Your password was changed")

    # Every line both hosts wrote since the stack started is one JSON object with a time, a level and a message.
    text = prod.app_log()
    lines = text.splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(records) > 50 and all({"time", "level", "message"} <= set(r) for r in records)
    assert {"gunicorn.error", "ami_auth.request"} <= {str(r["logger"]) for r in records}
    assert any(r.get("route") == "/reset/<token>" for r in records)  # the route template, not the URL
    assert any(r.get("user_id") == user.id for r in records)
    # …and holds none of the secrets; nor does nginx's log.
    nginx_logs = [p.read_text(errors="replace") for p in (prod.directory / "error.log", prod.directory / "access.log")]
    for source, content in [("gunicorn and the app", text)] + [("nginx", c) for c in nginx_logs if c]:
        for what, value in used.items():
            assert value not in content, f"the {what} is in the {source} log"
        for code in codes:
            found = re.search(rf"(?<![0-9A-Za-z.:]){code}(?![0-9A-Za-z])", content)
            where = content[found.start() - 120 : found.end() + 40] if found else ""
            assert found is None, f"a TOTP code is in the {source} log: …{where}…"
