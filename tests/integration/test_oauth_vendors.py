"""Google, GitHub and Microsoft through the app, against local stand-ins that speak their documented endpoints,
configured with the same URLs the catalog templates produce (issuer, GitHub/API URL, authority, Graph URL).

Google: hosted domain checked on the ID token's ``hd``, offline access, refresh keeping the refresh token,
revoke at ``/revoke``. GitHub: ``/user`` + ``/user/emails`` (primary verified email), non-expiring OAuth-app
tokens, GitHub App tokens that refresh, revoke with ``DELETE /applications/{client_id}/token``. Microsoft:
multi-tenant issuer, Graph ``/me`` and app roles, no revocation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from html import unescape
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.api import tokens
from app.audit import AuditContext
from app.extensions import get_cipher, get_database
from app.jobs.refresh import run_refresh
from app.models import AuditEvent, ConnectedAccount, OAuthIdentity, User
from app.oauth.connections import load_tokens
from app.oauth.runtime import runtime
from tests.conftest import PASSWORD, UserFactory, sign_in
from tests.support.hold import connections_while_held
from tests.support.oauth_app import create_config, follow_callback, location, page_csrf
from tests.support.vendors.base import StartVendor
from tests.support.vendors.github import GitHub, GitHubEmail
from tests.support.vendors.google import Google
from tests.support.vendors.microsoft import Microsoft
from tests.support.vendors.oauth import OAuthVendor

pytest_plugins = ("tests.support.vendor_fixtures",)

T = TypeVar("T")

BASE = "http://127.0.0.1:5000"
CALLBACK = f"{BASE}/oauth/1/callback"  # every test's database starts empty: its first config is #1
GOOGLE_CLIENT = "1234567890-abcdefghijklmnop.apps.googleusercontent.com"


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def _signin(client: FlaskClient, vendor: OAuthVendor, login: str) -> TestResponse:
    start = client.get("/oauth/1/login?next=/account/")
    vendor.login_as(login)
    return follow_callback(client, vendor.approve(location(start)).url)


def _connect(client: FlaskClient, vendor: OAuthVendor, login: str) -> tuple[str, TestResponse]:
    assert "Connect " in client.get("/account/connections/").get_data(as_text=True)
    start = client.get("/account/connections/connect/1")
    vendor.login_as(login)
    return location(start), follow_callback(client, vendor.approve(location(start)).url)


def _account(db: Session) -> ConnectedAccount:
    db.expire_all()
    return db.scalars(select(ConnectedAccount)).one()


def _disconnect(client: FlaskClient, account_id: int) -> str:
    page = client.get(f"/account/connections/{account_id}/disconnect").get_data(as_text=True)
    done = client.post(f"/account/connections/{account_id}/disconnect", data={"csrf_token": page_csrf(page)})
    assert location(done) == "/account/connections/"
    return client.get("/account/connections/").get_data(as_text=True)


# --- Google ---------------------------------------------------------------------------------------------


def _google(app: Flask, google: Google, **extra: object) -> None:
    client = google.add_client(GOOGLE_CLIENT, "GOCSPX-secret", [CALLBACK])
    create_config(
        app,
        "google",
        "Google",
        {"client_id": client.client_id, "client_secret": client.client_secret, "issuer": google.url, **extra},
    )


def test_google_hosted_domain_is_checked_on_the_id_token(
    app: Flask, client: FlaskClient, db: Session, google_standin: Google
) -> None:
    google = google_standin
    google.add_account("ann@example.com", hd="example.com")
    google.add_account("ann.private@gmail.com")
    _google(app, google, hosted_domain="example.com", jit=True)

    # The hd parameter only steers Google's account chooser; a consumer account can still come back.
    start = client.get("/oauth/1/login")
    assert _query(location(start))["hd"] == ["example.com"] and "access_type" not in _query(location(start))
    google.login_as("ann.private@gmail.com")
    refused = follow_callback(client, google.approve(location(start)).url)
    assert refused.status_code == 422
    assert "The account is not in the allowed hosted domain" in refused.get_data(as_text=True)
    assert db.scalars(select(User)).all() == []

    done = _signin(client, google, "ann@example.com")
    assert location(done) == "/account/"
    assert db.scalars(select(User.email)).all() == ["ann@example.com"]


def test_a_sign_in_waiting_on_the_provider_holds_no_database_connection(
    app: Flask, client: FlaskClient, google_standin: Google
) -> None:
    """A provider answering slowly (its token endpoint, its keys, its userinfo: up to the outbound timeout each)
    must not tie up the worker's database connections: with a transaction open through each sign-in's wait, eleven
    sign-ins at once left every other request of the worker (the sign-in page itself) waiting for a connection."""
    google = google_standin
    google.add_account("ann@example.com")
    _google(app, google, jit=True)
    start = client.get("/oauth/1/login?next=/account/")
    google.login_as("ann@example.com")
    callback = google.approve(location(start)).url
    idle, held, done = connections_while_held(
        get_database(app).engine, google.held("/token"), lambda: follow_callback(client, callback)
    )
    assert held == idle
    assert location(done) == "/account/"  # signed in once the provider answered


def _discovery_held(app: Flask, google: Google, run: Callable[[], T]) -> T:
    """``run`` while Google's discovery URL leaves its next request unanswered (the app's copy forgotten first), and
    what it returned once released; no more database connections may be out while it waits than before."""
    runtime(app).cache.invalidate()
    idle, held, done = connections_while_held(
        get_database(app).engine, google.held("/.well-known/openid-configuration"), run
    )
    assert held == idle
    return done


def test_a_provider_slow_to_answer_its_discovery_holds_no_database_connection(
    app: Flask, client: FlaskClient, db: Session, google_standin: Google, make_user: UserFactory
) -> None:
    """The metadata is fetched when the app's cache misses (first use, then hourly), and every thread that needs it
    waits on that one fetch: a discovery URL slow to answer must not tie up a database connection per sign-in,
    connect, refresh or disconnect waiting on it."""
    google = google_standin
    google.add_account("ann@example.com")
    _google(app, google, jit=True)

    signin = _discovery_held(app, google, lambda: client.get("/oauth/1/login"))
    assert location(signin).startswith(google.url)
    make_user()
    sign_in(client, "member@example.com")
    start = _discovery_held(app, google, lambda: client.get("/account/connections/connect/1"))
    google.login_as("ann@example.com")
    assert location(follow_callback(client, google.approve(location(start)).url)).startswith("/account/connections/")
    account_id = _account(db).id
    db.rollback()

    report = _discovery_held(
        app, google, lambda: run_refresh(runtime(app), get_database(app).engine, margin=timedelta(hours=2), workers=1)
    )
    assert report.refreshed == 1 and google.grants[0].refreshes == 1
    page = client.get(f"/account/connections/{account_id}/disconnect").get_data(as_text=True)
    done = _discovery_held(
        app,
        google,
        lambda: client.post(f"/account/connections/{account_id}/disconnect", data={"csrf_token": page_csrf(page)}),
    )
    assert location(done) == "/account/connections/"
    assert google.grants[0].revoked and db.scalars(select(ConnectedAccount)).all() == []


def test_an_admin_testing_a_slow_provider_holds_no_database_connection(
    app: Flask, client: FlaskClient, db: Session, google_standin: Google, make_user: UserFactory
) -> None:
    """ "Test connection" (the console, the JSON API, the CLI) fetches discovery uncached: while the provider takes
    its time, no database connection waits with it."""
    _google(app, google_standin)
    make_user("admin@example.com", role="admin")
    sign_in(client, "admin@example.com")
    csrf = page_csrf(client.get("/admin/providers/1/oauth").get_data(as_text=True))
    raw = tokens.create_token(db, AuditContext(actor="test"), name="CMS", scopes=["providers:write"], created_by=None)
    db.commit()
    bearer = {"Authorization": f"Bearer {raw.raw}"}

    page = _discovery_held(
        app, google_standin, lambda: client.post("/admin/providers/1/test-oauth", data={"csrf_token": csrf})
    )
    assert 'data-ok="true"' in page.get_data(as_text=True)
    answer = _discovery_held(
        app, google_standin, lambda: client.post("/api/account-manager/provider-configs/1/test", headers=bearer)
    )
    assert answer.get_json()["status"] == "ok"
    cli = app.test_cli_runner()
    printed = _discovery_held(app, google_standin, lambda: cli.invoke(args=["providers", "test", "1"]))
    assert printed.exit_code == 0 and "Google: ok" in printed.output


def test_google_connect_offline_refresh_keeps_the_refresh_token_and_revoke(
    app: Flask, client: FlaskClient, db: Session, google_standin: Google, make_user: UserFactory
) -> None:
    google = google_standin
    google.add_account("ann@example.com")
    _google(app, google)
    make_user()
    sign_in(client, "member@example.com")
    url, _ = _connect(client, google, "ann@example.com")
    query = _query(url)
    # Google's way to a refresh token: access_type=offline + prompt=consent, not the offline_access scope.
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert "offline_access" not in query["scope"][0]
    account = _account(db)
    tokens = load_tokens(db, get_cipher(app), account.id)
    assert tokens is not None and tokens.refresh_token is not None
    assert account.label == "ann@example.com"

    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(hours=2), workers=1)
    assert report.refreshed == 1
    [grant] = google.grants
    assert grant.refreshes == 1
    after = load_tokens(db, get_cipher(app), account.id)
    assert (
        after is not None and after.refresh_token == tokens.refresh_token and after.access_token != tokens.access_token
    )

    page = _disconnect(client, account.id)
    assert "revoked its access at the provider" in page
    [revoke] = google.requests_to("/revoke")
    assert revoke.form["token"] == tokens.refresh_token
    assert google.grants[0].revoked


# --- GitHub --------------------------------------------------------------------------------------------------


def _github(app: Flask, github: GitHub, *, expiring: bool = False, **extra: object) -> None:
    client = github.add_client(redirect_uris=[CALLBACK], expiring_tokens=expiring)
    create_config(
        app,
        "github",
        "GitHub",
        {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "web_url": github.url,
            "api_url": github.api_url,
            **extra,
        },
    )


def test_github_primary_verified_email_links(
    app: Flask, client: FlaskClient, db: Session, start_vendor: StartVendor, make_user: UserFactory
) -> None:
    github = start_vendor(GitHub(enterprise=True))  # the Enterprise Server layout: API under /api/v3
    user = make_user("octo@example.com")
    github.add_account(
        "octocat",
        name="Mona",
        emails=[
            GitHubEmail("noreply@users.example.com", verified=False),
            GitHubEmail("octo@example.com", primary=True),
        ],
    )
    _github(app, github)
    done = _signin(client, github, "octocat")
    assert location(done) == "/account/"
    identity = db.scalars(select(OAuthIdentity)).one()
    assert identity.user_id == user.id and identity.subject == str(github.accounts["octocat"].id)
    assert github.requests_to("/api/v3/user/emails")[0].header("user-agent")


def test_github_unverified_primary_email_needs_the_password(
    app: Flask, client: FlaskClient, db: Session, github_standin: GitHub, make_user: UserFactory
) -> None:
    make_user("octo@example.com")
    github_standin.add_account("octocat", emails=[GitHubEmail("octo@example.com", primary=True, verified=False)])
    _github(app, github_standin)
    assert location(_signin(client, github_standin, "octocat")) == "/oauth/link"
    assert db.scalars(select(OAuthIdentity)).all() == []


def test_github_oauth_app_tokens_do_not_expire_and_revoke_with_basic_auth(
    app: Flask, client: FlaskClient, db: Session, github_standin: GitHub, make_user: UserFactory
) -> None:
    github = github_standin
    github.add_account("octocat", emails=["octo@example.com"])
    _github(app, github)
    make_user()
    sign_in(client, "member@example.com")
    _connect(client, github, "octocat")
    account = _account(db)
    assert account.provider_data["email"] == "octo@example.com" and account.provider_data["login"] == "octocat"
    assert account.expires_at is None
    page = client.get("/account/connections/").get_data(as_text=True)
    assert "GitHub OAuth-app tokens do not expire and have no refresh token" in page
    assert "Refresh now" not in page
    tokens = load_tokens(db, get_cipher(app), account.id)
    assert tokens is not None

    _disconnect(client, account.id)
    [delete] = github.requests_to(f"/applications/{github.clients and next(iter(github.clients))}/token")
    assert delete.method == "DELETE" and delete.json == {"access_token": tokens.access_token}
    assert delete.basic() == (next(iter(github.clients)), next(iter(github.clients.values())).client_secret)
    assert github.access_token_info(tokens.access_token) is None


def test_github_app_user_tokens_refresh_and_rotate(
    app: Flask, client: FlaskClient, db: Session, github_standin: GitHub, make_user: UserFactory
) -> None:
    github = github_standin
    github.add_account("octocat", emails=["octo@example.com"])
    _github(app, github, expiring=True)
    make_user()
    sign_in(client, "member@example.com")
    _connect(client, github, "octocat")
    account = _account(db)
    before = load_tokens(db, get_cipher(app), account.id)
    assert before is not None and before.refresh_token and account.expires_at is not None
    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(hours=9), workers=1)
    assert report.refreshed == 1
    after = load_tokens(db, get_cipher(app), account.id)
    assert after is not None and after.refresh_token != before.refresh_token
    assert github.refresh_grant(after.refresh_token) is not None and github.refresh_grant(before.refresh_token) is None


# --- Microsoft -------------------------------------------------------------------------------------------------


def _azure(app: Flask, microsoft: Microsoft, tenant: str = "organizations", **extra: object) -> None:
    client = microsoft.add_client(redirect_uris=[CALLBACK])
    create_config(
        app,
        "azure_ad",
        "Microsoft",
        {
            "tenant": tenant,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "authority": microsoft.url,
            "graph_url": microsoft.url,
            **extra,
        },
    )


def test_azure_graph_me_roles_and_the_no_revoke_message(
    app: Flask, client: FlaskClient, db: Session, microsoft_standin: Microsoft, make_user: UserFactory
) -> None:
    ms = microsoft_standin
    tenant = ms.add_tenant(domain="contoso.example")
    ms.add_account("ada@contoso.example", tenant=tenant, mail="ada.lovelace@contoso.example", roles=["Reports.Admin"])
    _azure(app, ms)
    make_user()
    sign_in(client, "member@example.com")
    _connect(client, ms, "ada@contoso.example")
    account = _account(db)
    data = account.provider_data
    oid = ms.accounts["ada@contoso.example"].oid
    assert data["graph"]["mail"] == "ada.lovelace@contoso.example"
    assert data["graph"]["userPrincipalName"] == "ada@contoso.example"
    assert (data["oid"], data["tenant_id"], data["roles"]) == (oid, tenant, ["Reports.Admin"])
    assert account.subject == oid and account.label == "ada.lovelace@contoso.example"
    assert "Reports.Admin" in client.get("/account/connections/").get_data(as_text=True)

    confirm = client.get(f"/account/connections/{account.id}/disconnect").get_data(as_text=True)
    assert "Microsoft has no endpoint to revoke a single token" in confirm
    assert account.expires_at is not None and account.expires_at.strftime("%Y-%m-%d %H:%M UTC") in confirm
    page = _disconnect(client, account.id)
    assert "This provider cannot revoke tokens: the access token it issued stays valid until" in page
    assert db.scalars(select(ConnectedAccount)).all() == []


@pytest.mark.parametrize("kind", ["common", "tenant_guid"])
def test_azure_signs_in_and_refreshes_with_common_and_with_a_tenant_guid(
    app: Flask, client: FlaskClient, db: Session, microsoft_standin: Microsoft, make_user: UserFactory, kind: str
) -> None:
    ms = microsoft_standin
    home = ms.add_tenant(domain="contoso.example")
    other = ms.add_tenant(domain="fabrikam.example")
    ms.add_account("ada@contoso.example", tenant=home)
    ms.add_account("bo@fabrikam.example", tenant=other)
    segment = "common" if kind == "common" else home
    _azure(app, ms, tenant=segment)
    make_user("ada@contoso.example")

    start = client.get("/oauth/1/login?next=/account/")
    assert urlsplit(location(start)).path == f"/{segment}/oauth2/v2.0/authorize"
    ms.login_as("ada@contoso.example")
    assert location(follow_callback(client, ms.approve(location(start)).url)) == "/oauth/link"
    page = client.get("/oauth/link").get_data(as_text=True)
    form = {"email": "ada@contoso.example", "password": PASSWORD, "csrf_token": page_csrf(page)}
    assert location(client.post("/oauth/link", data=form)) == "/account/"
    identity = db.scalars(select(OAuthIdentity)).one()
    assert identity.subject == ms.accounts["ada@contoso.example"].oid
    # Signed out, the linked identity signs straight in (the ID token's issuer: …/<home tenant>/v2.0).
    client.post("/signout", data={"csrf_token": page_csrf(client.get("/account/").get_data(as_text=True))})
    assert location(_signin(client, ms, "ada@contoso.example")) == "/account/"

    # Another organization's user: common lets them reach the app (issuer checked against their tid); a tenant
    # GUID keeps them at Microsoft (AADSTS50020).
    stranger = app.test_client()
    begin = stranger.get("/oauth/1/login")
    ms.login_as("bo@fabrikam.example")
    if kind == "common":
        assert location(follow_callback(stranger, ms.approve(location(begin)).url)) == "/oauth/link"
    else:
        with pytest.raises(AssertionError, match="does not exist in tenant"):
            ms.approve(location(begin))

    # Connect, then the refresh job rotates the refresh token through the same tenant's token endpoint.
    _connect(client, ms, "ada@contoso.example")
    account = _account(db)
    before = load_tokens(db, get_cipher(app), account.id)
    assert before is not None and before.refresh_token
    report = run_refresh(runtime(app), get_database(app).engine, margin=timedelta(hours=2), workers=1)
    assert report.refreshed == 1
    after = load_tokens(db, get_cipher(app), account.id)
    assert after is not None and after.refresh_token and after.refresh_token != before.refresh_token
    assert after.access_token != before.access_token


def test_azure_admin_consent_from_the_setup_page(
    app: Flask, client: FlaskClient, db: Session, microsoft_standin: Microsoft, make_user: UserFactory
) -> None:
    ms = microsoft_standin
    home = ms.add_tenant(domain="contoso.example")
    ms.add_account("ada@contoso.example", tenant=home)
    ms.add_account("it@contoso.example", tenant=home)
    ms.tenant_admins.add("it@contoso.example")
    _azure(app, ms, tenant=home)
    [registration] = ms.clients.values()
    make_user("root@example.com", role="admin")
    sign_in(client, "root@example.com")
    setup = "/admin/providers/1/oauth"
    page = client.get(setup).get_data(as_text=True)
    found = re.search(r'id="admin-consent-url">([^<]+)<', page)
    assert found is not None
    link = unescape(found.group(1))
    assert link.startswith(f"{ms.url}/{home}/v2.0/adminconsent?")
    assert _query(link) == {
        "client_id": [registration.client_id],
        "scope": [f"{ms.url}/.default"],
        "redirect_uri": [CALLBACK],
    }

    def consent() -> str:
        start = client.post("/admin/providers/1/admin-consent", data={"csrf_token": page_csrf(page)})
        assert location(start).startswith(link + "&state=")
        back = follow_callback(client, ms.approve(location(start)).url)
        assert location(back) == setup
        return unescape(client.get(setup).get_data(as_text=True))

    # A user who is not an admin of the tenant: Microsoft refuses; the page says why.
    ms.login_as("ada@contoso.example")
    refused = consent()
    assert "Admin consent was not granted" in refused and "AADSTS90094" in refused
    # The tenant's admin grants it for everyone.
    ms.login_as("it@contoso.example")
    assert f"Admin consent granted for tenant {home}" in consent()
    assert (registration.client_id, home) in ms.admin_consents
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.admin_consent")).all()
    assert [(e.outcome, e.details["tenant"]) for e in events] == [("failure", None), ("success", home)]
    # The answer's state is used once: replayed, it is an ordinary (refused) callback, not a consent.
    replay = client.get("/oauth/1/callback", query_string={"admin_consent": "True", "tenant": home, "state": "x"})
    assert replay.status_code >= 400
    assert len(db.scalars(select(AuditEvent).where(AuditEvent.action == "provider_config.admin_consent")).all()) == 2

    # common asks the organizations endpoint (personal accounts have no admin); consumers has no admin consent.
    for tenant in ("common", "consumers"):
        create_config(
            app,
            "azure_ad",
            f"Microsoft {tenant}",
            {
                "tenant": tenant,
                "client_id": registration.client_id,
                "client_secret": registration.client_secret,
                "authority": ms.url,
                "graph_url": ms.url,
            },
        )
    shown = [client.get(f"/admin/providers/{i}/oauth").get_data(as_text=True) for i in (2, 3)]
    assert f"{ms.url}/organizations/v2.0/adminconsent?" in unescape(shown[0])
    assert 'id="admin-consent"' not in shown[1]


def test_azure_multi_tenant_sign_in_never_links_an_unverified_email(
    app: Flask, client: FlaskClient, db: Session, microsoft_standin: Microsoft, make_user: UserFactory
) -> None:
    ms = microsoft_standin
    tenant = ms.add_tenant(domain="fabrikam.example")
    ms.add_account("bo@fabrikam.example", tenant=tenant)
    make_user("bo@fabrikam.example")
    _azure(app, ms, trust_email=True)
    # The ID token's issuer is …/<tenant>/v2.0, checked against the template …/{tenantid}/v2.0 with its tid.
    assert location(_signin(client, ms, "bo@fabrikam.example")) == "/oauth/link"
