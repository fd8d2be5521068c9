"""The admin's OAuth setup page (redirect URI, notes, "Test connection" against the real OP and a broken URL),
the sign-in buttons, the device flow through the console with the test client, and the in-app scheduler
(off unless enabled, started by the first request a process serves, never by the CLI)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import create_app
from app.jobs.scheduler import RefreshScheduler, ensure_started, stop
from app.models import AuditEvent, ConnectedAccount
from tests.conftest import UserFactory, dispose_app, make_settings, sign_in
from tests.support.oauth_app import create_config, generic_values, location, page_csrf
from tests.support.op import OPClient, OpenIDProvider, op_device_login, running_op
from tests.support.vendors.github import GitHub

pytest_plugins = ("tests.support.vendor_fixtures",)

ADMIN = "admin@example.com"


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIDProvider]:
    with running_op(clients=[OPClient("ami-auth", "op-secret")], deviceInterval=1) as provider:
        yield provider


def _admin(client: FlaskClient, make_user: UserFactory) -> None:
    make_user(ADMIN, role="admin")
    sign_in(client, ADMIN)


def test_setup_page_shows_the_redirect_uri_and_test_connection_reads_discovery_and_jwks(
    app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory, db: Session
) -> None:
    make_user("member@example.com")
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    sign_in(client, "member@example.com")
    assert client.get(f"/admin/providers/{config_id}/oauth").status_code == 403
    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})

    _admin(client, make_user)
    edit = client.get(f"/admin/providers/{config_id}").get_data(as_text=True)
    assert f'href="/admin/providers/{config_id}/oauth"' in edit
    page = client.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    assert f"http://127.0.0.1:5000/oauth/{config_id}/callback" in page
    assert "offline_access" in page  # the generic setup notes
    done = client.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(page)})
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and 'data-ok="true"' in html
    assert op.issuer in html and f"{op.issuer}/jwks" in html and "1 signing key(s)" in html
    assert f"{op.issuer}/device/auth" in html and "ID-token algorithms" in html


def test_a_german_admin_reads_the_setup_notes_and_the_test_findings_in_german(
    app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory, db: Session
) -> None:
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client))
    _admin(client, make_user)
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de-DE,de;q=0.9"
    page = client.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    assert "Registrieren Sie bei Ihrem Anbieter einen vertraulichen Client" in page  # the catalog's setup notes
    assert "Fügen Sie <code>offline_access</code> zu den Scopes hinzu" in page  # with their markup
    done = client.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(page)})
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and 'data-ok="true"' in html
    assert "<dt>Token-Endpunkt</dt>" in html and "<dt>ID-Token-Algorithmen</dt>" in html
    assert f"{op.issuer}/jwks — 1 Signaturschlüssel: " in html and "<dd>unterstützt</dd>" in html


def test_test_connection_reports_a_wrong_issuer(
    app: Flask, client: FlaskClient, op: OpenIDProvider, make_user: UserFactory, db: Session
) -> None:
    config_id = create_config(app, "generic_oidc", "Typo", generic_values(op.issuer + "/realms/nope", op.client))
    _admin(client, make_user)
    page = client.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    done = client.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(page)})
    html = done.get_data(as_text=True)
    assert done.status_code == 422 and 'data-ok="false"' in html and 'data-error-code="invalid_config"' in html


def test_github_setup_says_tokens_do_not_expire(
    app: Flask, client: FlaskClient, github_standin: GitHub, make_user: UserFactory, db: Session
) -> None:
    gh = github_standin.add_client(redirect_uris=["http://127.0.0.1:5000/oauth/1/callback"])
    config_id = create_config(
        app,
        "github",
        "GitHub",
        {
            "client_id": gh.client_id,
            "client_secret": gh.client_secret,
            "web_url": github_standin.url,
            "api_url": github_standin.api_url,
        },
    )
    _admin(client, make_user)
    page = client.get(f"/admin/providers/{config_id}/oauth").get_data(as_text=True)
    assert "OAuth-app tokens do not expire and have no refresh token" in page
    done = client.post(f"/admin/providers/{config_id}/test-oauth", data={"csrf_token": page_csrf(page)})
    html = done.get_data(as_text=True)
    assert "GitHub has no discovery document" in html and f"{github_standin.url}/login/oauth/access_token" in html
    # A test that cannot test says so (issue 15), and the audit does not record a success.
    assert done.status_code == 200 and 'data-tested="false"' in html
    assert "GitHub cannot be tested from here: nothing was contacted." in html
    assert "The provider answered." not in html
    event = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "provider_config.test").order_by(AuditEvent.id.desc())
    ).first()
    assert event is not None and event.outcome == "untested"


def test_device_flow_through_the_console(
    app: Flask, client: FlaskClient, db: Session, op: OpenIDProvider, make_user: UserFactory
) -> None:
    config_id = create_config(app, "generic_oidc", "Corp ID", generic_values(op.issuer, op.client, device_flow=True))
    make_user()
    sign_in(client, "member@example.com")
    listing = client.get("/account/connections/").get_data(as_text=True)
    assert "Connect with a code" in listing
    started = client.post(f"/account/connections/device/{config_id}", data={"csrf_token": page_csrf(listing)})
    page = client.get(location(started)).get_data(as_text=True)
    code = re.search(r'id="user-code">([^<]+)<', page)
    assert code is not None
    # The OP's own interval (1 s) drives the polling, and the QR code is inline SVG with no style attribute.
    assert 'hx-trigger="every 1000ms"' in page and 'class="device-qr"' in page and "style=" not in page
    poll = f"/account/connections/device/{config_id}/poll"
    token = page_csrf(page)
    pending = client.post(poll, data={"csrf_token": token}).get_data(as_text=True)
    assert 'data-status="pending"' in pending
    verification = re.search(r'id="verification-uri">([^<]+)<', page)
    assert verification is not None
    op_device_login(f"{verification.group(1)}?user_code={code.group(1)}", "alice")
    deadline = time.monotonic() + 15
    while True:
        time.sleep(1.05)  # the poll endpoint never asks the OP sooner than the interval
        answer = client.post(poll, data={"csrf_token": token})
        if "HX-Redirect" in answer.headers:
            break
        assert 'data-status="pending"' in answer.get_data(as_text=True)
        assert time.monotonic() < deadline
    assert answer.headers["HX-Redirect"].startswith("/account/connections/#account-")
    account = db.scalars(select(ConnectedAccount)).one()
    assert account.subject == "alice" and account.provider_data["userinfo"]["email"] == "alice@example.test"


def test_scheduler_starts_with_the_first_request_only_when_enabled(tmp_path: Path, sqlite_url: str) -> None:
    off = create_app(make_settings(tmp_path, sqlite_url))
    try:
        off.test_client().get("/signin")
        assert ensure_started(off) is None and "ami_scheduler" not in off.extensions
    finally:
        dispose_app(off)

    on = create_app(make_settings(tmp_path, sqlite_url, AMI_AUTH_SCHEDULER="true"))
    try:
        assert "ami_scheduler" not in on.extensions  # not at create_app (the CLI builds the app too)
        on.test_client().get("/signin")
        scheduler = on.extensions["ami_scheduler"]
        assert isinstance(scheduler, RefreshScheduler) and scheduler.running
        on.test_client().get("/signin")
        assert on.extensions["ami_scheduler"] is scheduler  # one per process
        scheduler.run_once()  # nothing due: a run on an empty table is harmless
        stop(on)
        assert not scheduler.running
    finally:
        dispose_app(on)
