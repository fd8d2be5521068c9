"""A stranger cannot lock the owner out (smart lockout, app/auth/throttle.py), through the real app.

A guesser spread over many addresses stays held to the rate docs/throttling.md documents, counted in
password checks that really ran, while the owner keeps signing in from their known browser; a passkey
gets in during a password lock; the unlock link from the locked page works once and remembers the
browser. Memory storage and Redis (two workers would share it); SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from typing import Any

import argon2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.auth import throttle
from app.extensions import get_limit_storage
from app.models import AuditEvent
from app.settings import Settings
from tests.conftest import PASSWORD, csrf_token, redis_url
from tests.integration.test_mfa import post_json, register_passkey
from tests.support.limits_storage import unique_prefix
from tests.support.mailbox import last_mail, link_path, outbox
from tests.support.soft_authenticator import SoftAuthenticator
from tests.support.throttle_app import WRONG, AppFactory, add_user, db_for, post_signin

OWNER_IP = "203.0.113.5"
ATTEMPTS = 1000


def stranger_ip(n: int) -> str:
    """A different address for every attempt (198.18.0.0/15, the benchmarking range): the per-IP layers never
    see the same client twice, so only the account's unfamiliar count stands in the way."""
    return f"198.18.{n // 250}.{n % 250 + 1}"


def documented_bound(settings: Settings, seconds: float) -> int:
    """docs/throttling.md: the threshold's worth of guesses, then one more each time a lock has run out, each
    lock twice the one before up to the maximum. The most password checks that fit in ``seconds``."""
    allowed = settings.throttle_account_failures
    spent = 0
    while True:
        spent += throttle.lock_seconds(settings, allowed)
        if spent > seconds:
            return allowed
        allowed += 1


def sign_out(client: FlaskClient) -> None:
    assert client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")}).status_code == 302


def lock_from_strangers(client: FlaskClient, email: str, settings: Settings, first: int = 0) -> None:
    for n in range(first, first + settings.throttle_account_failures):
        post_signin(client, email, WRONG, ip=stranger_ip(n))
    assert post_signin(client, email, PASSWORD, ip=stranger_ip(first + 500)).status_code == 429


def events(application: Flask, action: str) -> list[AuditEvent]:
    with db_for(application) as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_documented_rate_with_the_default_settings() -> None:
    # The figures docs/throttling.md gives: 5 guesses at once, 10 in the first hour, 33 in a day (failures
    # are forgotten a day after the first one, so a day is the period).
    settings = Settings()
    assert documented_bound(settings, 0) == 5
    assert documented_bound(settings, 3600) == 10
    assert documented_bound(settings, throttle.FAILURE_MEMORY_SECONDS - 1) == 33


# The database plays no part in the counting: SQLite only, on both throttle storages.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_guesser_on_many_addresses_is_held_to_the_documented_rate_while_the_owner_signs_in(
    make_app: AppFactory, verify_calls: list[argon2.Parameters], store: str, database_url: str
) -> None:
    env = {"AMI_AUTH_THROTTLE_LOCK_SECONDS": "1", "AMI_AUTH_THROTTLE_LOCK_MAX_SECONDS": "4"}
    if store == "redis":
        env |= {"AMI_AUTH_REDIS_URL": redis_url(), "AMI_AUTH_REDIS_KEY_PREFIX": unique_prefix()}
    application = make_app(**env)
    settings: Settings = application.extensions["ami_settings"]
    email = "own@example.com"
    add_user(application, email)
    owner = application.test_client()
    assert post_signin(owner, email, PASSWORD, ip=OWNER_IP).status_code == 302  # the owner's browser is known now

    attacker = application.test_client()
    token = csrf_token(attacker, "/signin")
    checked: list[int] = []  # the status of each guess whose password was really checked
    unchecked: list[int] = []  # ... and of each one refused before any check
    owner_signins: list[int] = []
    started = time.monotonic()
    for n in range(ATTEMPTS):
        before = len(verify_calls)
        response = attacker.post(
            "/signin",
            data={"email": email, "password": f"guess number {n}", "csrf_token": token},
            environ_base={"REMOTE_ADDR": stranger_ip(n)},
        )
        (checked if len(verify_calls) - before == 1 else unchecked).append(response.status_code)
        if n % 100 == 99:
            sign_out(owner)
            owner_signins.append(post_signin(owner, email, PASSWORD, ip=OWNER_IP).status_code)
            assert owner.get("/account/").status_code == 200
    elapsed = time.monotonic() - started

    bound = documented_bound(settings, elapsed)
    print(
        f"\n[{store}] {ATTEMPTS} guesses from {ATTEMPTS} addresses in {elapsed:.1f}s: {len(checked)} password checks"
        f" ran, {len(unchecked)} refused unchecked (429); documented bound for {elapsed:.1f}s: {bound};"
        f" owner sign-ins meanwhile: {owner_signins}"
    )
    assert len(checked) + len(unchecked) == ATTEMPTS
    assert set(unchecked) == {429}
    # Wrong guesses answer 401 until the threshold; the one that reaches it (and each after a lock ran out)
    # starts a lock and says so (429).
    threshold = settings.throttle_account_failures
    assert checked[: threshold - 1] == [401] * (threshold - 1) and set(checked[threshold - 1 :]) == {429}
    assert threshold <= len(checked) <= bound
    assert owner_signins == [302] * (ATTEMPTS // 100)
    locks = events(application, "account.locked")
    assert {(e.details["layer"], e.details["source"]) for e in locks} == {("account", "unfamiliar")}
    assert len(locks) == len(checked) - threshold + 1
    assert len(events(application, "signin.failure")) == len(checked)  # refusals are not audited one by one


def test_a_passkey_gets_in_during_a_password_lock(make_app: AppFactory) -> None:
    application = make_app(AMI_AUTH_BASE_URL="http://localhost:5000")
    email = "pia@example.com"
    add_user(application, email)
    settings: Settings = application.extensions["ami_settings"]
    laptop = application.test_client()
    assert post_signin(laptop, email, PASSWORD, ip=OWNER_IP).status_code == 302
    auth = SoftAuthenticator(rp_id="localhost", origin="http://localhost:5000")
    assert register_passkey(laptop, auth).status_code == 200
    sign_out(laptop)

    lock_from_strangers(application.test_client(), email, settings)
    # A new browser on a new network: the password is refused unchecked, the passkey is not.
    phone = application.test_client()
    refused = post_signin(phone, email, PASSWORD, ip="192.0.2.77")
    assert refused.status_code == 429 and 'id="unlock-offer"' in refused.get_data(as_text=True)
    options = post_json(phone, "/signin/passkey/options", {}, "/signin")
    assert options.json is not None
    assertion = auth.assert_(options.json["publicKey"])
    done = post_json(phone, "/signin/passkey/verify?next=/account/", {"credential": assertion}, "/signin")
    assert done.status_code == 200 and done.json == {"redirect": "/account/"}
    assert phone.get("/account/").status_code == 200
    # The passkey does not reset the strangers' count: they stay locked.
    assert throttle.account_status(get_limit_storage(application), email).locked
    assert post_signin(application.test_client(), email, PASSWORD, ip=stranger_ip(900)).status_code == 429


def _offer(html: str) -> dict[str, str]:
    form = re.search(r'<form method="post" action="(/signin/unlock)"[^>]*id="unlock-offer">(.*?)</form>', html, re.S)
    assert form, "no unlock offer on the page"
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)))
    return {"action": form.group(1), **fields}


def _request_unlock(client: FlaskClient, email: str) -> Any:
    return client.post("/signin/unlock", data={"email": email, "csrf_token": csrf_token(client, "/signin/unlock")})


def test_the_unlock_link_from_the_locked_page_works_once(make_app: AppFactory) -> None:
    application = make_app()
    email = "uli@example.com"
    add_user(application, email)
    settings: Settings = application.extensions["ami_settings"]
    stranger = application.test_client()
    lock_from_strangers(stranger, email, settings)

    owner = application.test_client()  # a browser the owner never signed in with
    locked = post_signin(owner, email, PASSWORD, ip="192.0.2.10")
    assert locked.status_code == 429
    offer = _offer(locked.get_data(as_text=True))
    assert offer["email"] == email
    sent = owner.post(offer["action"], data={"email": offer["email"], "csrf_token": offer["csrf_token"]})
    assert sent.status_code == 200 and "Check your inbox" in sent.get_data(as_text=True)
    # The same page for an address without an account.
    unknown = _request_unlock(application.test_client(), "nobody@example.com")

    def page(response: Any, address: str) -> str:
        return re.sub(r'"X-CSRFToken": "[^"]+"', "", response.get_data(as_text=True)).replace(address, "ADDR")

    assert unknown.status_code == 200 and page(unknown, "nobody@example.com") == page(sent, email)

    with db_for(application) as db:
        path = link_path(last_mail(db, email).text, "/unlock/")
        assert "/unlock/" not in last_mail(db, "nobody@example.com").text
    confirm = owner.get(path)
    assert confirm.status_code == 200 and email in confirm.get_data(as_text=True)
    done = owner.post(path, data={"csrf_token": csrf_token(owner, path)})
    assert done.status_code == 302 and done.headers["Location"] == "/signin"
    assert "Your account is unlocked" in owner.get("/signin").get_data(as_text=True)

    # The stranger carries on and locks the unfamiliar count again; the browser that followed the link is
    # known to the account now and gets in.
    lock_from_strangers(stranger, email, settings, first=100)
    assert post_signin(owner, email, PASSWORD, ip="192.0.2.10").status_code == 302

    # Once only.
    assert owner.get(path).status_code == 410
    assert owner.post(path, data={"csrf_token": csrf_token(owner, "/account/")}).status_code == 410
    [unlocked] = events(application, "account.unlocked")
    assert unlocked.details == {"by": "link", "was_locked": True} and unlocked.target == f"email:{email}"
    requested = events(application, "account.unlock_requested")
    assert [e.details["account"] for e in requested] == ["active", "none"]


def test_unlock_mails_are_throttled_per_recipient(make_app: AppFactory) -> None:
    application = make_app()
    add_user(application, "uma@example.com")
    client = application.test_client()
    for address in ("uma@example.com", "nobody@example.com"):  # counted alike: a 429 reveals nothing
        assert [_request_unlock(client, address).status_code for _ in range(3)] == [200] * 3
        refused = _request_unlock(client, address)
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 900
        assert "Too many emails were sent to this address." in refused.get_data(as_text=True)
    with db_for(application) as db:
        assert len(outbox(db, "uma@example.com")) == 3


def test_a_malformed_address_is_refused_on_the_field(make_app: AppFactory) -> None:
    application = make_app()
    response = _request_unlock(application.test_client(), "not an address")
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'id="email-error"[^>]*>[^<]*(valid|@)', html), html
