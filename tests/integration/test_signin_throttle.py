"""Sign-in throttling, hashing rules and the breached-password flow through the real app (SQLite, PostgreSQL).

The Redis runs build two apps on one Redis, as two workers or hosts would be, and check that what
happens on one is enforced by the other.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import argon2
import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app.auth import passwords, throttle
from app.errors import AppError
from app.extensions import get_limit_storage
from app.models import AuditEvent, User
from tests.conftest import PASSWORD, csrf_token, redis_url
from tests.integration.test_mfa import pending_signin, post_code, wrong_code
from tests.support.limits_storage import redis_keys, unique_prefix
from tests.support.live import free_port
from tests.support.mfa import enrol_totp
from tests.support.range_api import RangeApi, range_api
from tests.support.throttle_app import WRONG, AppFactory, add_user, db_for, post_signin

NEW_PASSWORD = "a brand new long passphrase"


def assert_rate_limited(response: Any, wait_text: str, max_seconds: int) -> int:
    html = response.get_data(as_text=True)
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= max_seconds
    assert 'data-error-code="rate_limited"' in html
    # wait_text is what the page says while the lock is fresh; a slow machine may already be a second in.
    assert f"Try again in {wait_text}." in html or f"Try again in {throttle.describe_wait(retry_after)}." in html
    return retry_after


# --- the account lock -----------------------------------------------------------------------------------


def test_fifth_failure_locks_the_account_with_429_and_retry_after(make_app: AppFactory) -> None:
    application = make_app()
    add_user(application, "ann@example.com")
    client = application.test_client()
    for _ in range(4):
        response = post_signin(client, "ann@example.com", WRONG)
        assert response.status_code == 401
        assert "Email or password is not right." in response.get_data(as_text=True)
    fifth = post_signin(client, "ann@example.com", WRONG)
    assert 55 <= assert_rate_limited(fifth, "1 minute", 60) <= 60
    assert "Too many failed sign-ins for this account." in fifth.get_data(as_text=True)
    # Even the right password is refused now, and no session starts.
    right = post_signin(client, "ann@example.com", PASSWORD)
    assert_rate_limited(right, "1 minute", 60)
    assert client.get("/account/").status_code == 302


def test_a_locked_account_is_not_even_verified(make_app: AppFactory, verify_calls: list[argon2.Parameters]) -> None:
    application = make_app()
    add_user(application, "bea@example.com")
    client = application.test_client()
    for _ in range(5):
        post_signin(client, "bea@example.com", WRONG)
    assert len(verify_calls) == 5
    post_signin(client, "bea@example.com", PASSWORD)
    assert len(verify_calls) == 5


def test_unknown_email_is_counted_and_locked_the_same(make_app: AppFactory) -> None:
    application = make_app()
    add_user(application, "known@example.com")
    known, unknown = application.test_client(), application.test_client()
    seen: dict[str, list[int]] = {"known": [], "unknown": []}
    for _ in range(6):
        seen["known"].append(post_signin(known, "known@example.com", WRONG).status_code)
        seen["unknown"].append(post_signin(unknown, "nobody@example.com", WRONG).status_code)
    assert seen["known"] == seen["unknown"] == [401, 401, 401, 401, 429, 429]


def test_unknown_email_costs_one_verify_with_current_parameters(
    make_app: AppFactory, verify_calls: list[argon2.Parameters]
) -> None:
    application = make_app()
    add_user(application, "cid@example.com")
    current = passwords.hasher(application.extensions["ami_settings"])
    expected = argon2.extract_parameters(current.hash("x"))
    client = application.test_client()
    post_signin(client, "cid@example.com", WRONG)
    known_calls = list(verify_calls)
    verify_calls.clear()
    post_signin(client, "nobody@example.com", WRONG)
    assert known_calls == verify_calls == [expected]


def test_success_resets_the_failure_count(make_app: AppFactory) -> None:
    application = make_app()
    add_user(application, "dan@example.com")
    client = application.test_client()
    for _ in range(4):
        post_signin(client, "dan@example.com", WRONG)
    assert post_signin(client, "dan@example.com", PASSWORD).status_code == 302
    other = application.test_client()
    assert [post_signin(other, "dan@example.com", WRONG).status_code for _ in range(4)] == [401] * 4


# --- per IP and per IP x account -------------------------------------------------------------------------


def test_ip_limit_refuses_a_client_spraying_accounts(make_app: AppFactory) -> None:
    application = make_app(AMI_AUTH_THROTTLE_IP_PER_MINUTE="3")
    client = application.test_client()
    codes = [post_signin(client, f"user{n}@example.com", WRONG, ip="198.51.100.7").status_code for n in range(3)]
    assert codes == [401, 401, 401]
    refused = post_signin(client, "user9@example.com", WRONG, ip="198.51.100.7")
    assert_rate_limited(refused, "1 minute", 60)
    assert "Too many sign-in attempts from your network." in refused.get_data(as_text=True)
    assert post_signin(client, "user9@example.com", WRONG, ip="198.51.100.8").status_code == 401


def _signin_via_proxy(client: FlaskClient, email: str, forwarded_for: str) -> Any:
    """A sign-in as the load balancer (10.0.0.5) forwards it: the client's address in X-Forwarded-For."""
    token = csrf_token(client, "/signin")
    return client.post(
        "/signin",
        data={"email": email, "password": WRONG, "csrf_token": token},
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
        headers={"X-Forwarded-For": forwarded_for},
    )


def test_behind_a_trusted_proxy_each_client_has_its_own_ip(make_app: AppFactory) -> None:
    application = make_app(AMI_AUTH_THROTTLE_IP_PER_MINUTE="3", AMI_AUTH_TRUSTED_PROXIES="1")
    client = application.test_client()
    # A client who forges the header gets the proxy's append: the rightmost (trusted) hop counts.
    codes = [
        _signin_via_proxy(client, f"user{n}@example.com", f"203.0.113.{n}, 198.51.100.7").status_code for n in range(3)
    ]
    assert codes == [401, 401, 401]
    assert _signin_via_proxy(client, "user9@example.com", "1.2.3.4, 198.51.100.7").status_code == 429
    # Another client behind the same proxy is not throttled with it.
    assert _signin_via_proxy(client, "user9@example.com", "198.51.100.8").status_code == 401
    with db_for(application) as db:
        ips = db.scalars(select(AuditEvent.ip).where(AuditEvent.action == "signin.failure")).all()
    assert sorted(set(ips)) == ["198.51.100.7", "198.51.100.8"]


def test_without_trusted_proxies_the_forwarded_header_is_ignored(make_app: AppFactory) -> None:
    application = make_app(AMI_AUTH_THROTTLE_IP_PER_MINUTE="3")
    client = application.test_client()
    # Rotating a forged X-Forwarded-For does not dodge the per-IP limit: the socket's peer is the client.
    codes = [_signin_via_proxy(client, f"user{n}@example.com", f"198.51.100.{n}").status_code for n in range(4)]
    assert codes == [401, 401, 401, 429]
    with db_for(application) as db:
        ips = db.scalars(select(AuditEvent.ip).where(AuditEvent.action == "signin.failure")).all()
    assert set(ips) == {"10.0.0.5"}


def test_ip_account_pair_blocks_the_attacker_not_the_owner(make_app: AppFactory) -> None:
    application = make_app(AMI_AUTH_THROTTLE_ACCOUNT_FAILURES="100")
    add_user(application, "eli@example.com")
    attacker, owner = application.test_client(), application.test_client()
    codes = [post_signin(attacker, "eli@example.com", WRONG, ip="198.51.100.66").status_code for _ in range(10)]
    assert codes == [401] * 9 + [429]
    refused = post_signin(attacker, "eli@example.com", PASSWORD, ip="198.51.100.66")
    assert_rate_limited(refused, "1 hour", 3600)
    assert post_signin(owner, "eli@example.com", PASSWORD, ip="203.0.113.5").status_code == 302


# --- admin unlock and audit --------------------------------------------------------------------------------


def _lock(client: FlaskClient, email: str) -> None:
    for _ in range(5):
        post_signin(client, email, WRONG)
    assert post_signin(client, email, PASSWORD).status_code == 429


def test_admin_unlock(make_app: AppFactory) -> None:
    application = make_app()
    user_id = add_user(application, "fay@example.com")
    add_user(application, "root@example.com", role="admin")
    add_user(application, "mel@example.com")
    _lock(application.test_client(), "fay@example.com")

    member = application.test_client()
    assert post_signin(member, "mel@example.com", PASSWORD, ip="203.0.113.1").status_code == 302
    token = csrf_token(member, "/account/")
    assert member.post(f"/admin/users/{user_id}/unlock", data={"csrf_token": token}).status_code == 403

    admin = application.test_client()
    assert post_signin(admin, "root@example.com", PASSWORD, ip="203.0.113.2").status_code == 302
    page = admin.get(f"/admin/users/{user_id}").get_data(as_text=True)
    assert re.search(r"locked</span> after 5 failed sign-ins; opens in (1 minute|[1-5]?[0-9] seconds)", page)
    assert ">Unlock</button>" in page
    token = csrf_token(admin, f"/admin/users/{user_id}")
    response = admin.post(
        f"/admin/users/{user_id}/unlock",
        data={"csrf_token": token, "next": f"/admin/users/{user_id}"},
        follow_redirects=True,
    )
    assert response.status_code == 200 and response.request.path == f"/admin/users/{user_id}"
    shown = response.get_data(as_text=True)
    assert "fay@example.com is unlocked." in shown and "Not locked" in shown and ">Unlock</button>" not in shown
    assert admin.post("/admin/users/99999/unlock", data={"csrf_token": token}).status_code == 404
    assert post_signin(application.test_client(), "fay@example.com", PASSWORD).status_code == 302


def _user(application: Flask, user_id: int) -> User:
    with db_for(application) as session:
        user = session.get(User, user_id)
        assert user is not None
        return user


def test_locks_and_unlocks_are_audit_events(make_app: AppFactory) -> None:
    application = make_app()
    user_id = add_user(application, "gus@example.com")
    add_user(application, "root@example.com", role="admin")
    _lock(application.test_client(), "gus@example.com")
    admin = application.test_client()
    post_signin(admin, "root@example.com", PASSWORD, ip="203.0.113.2")
    admin.post(f"/admin/users/{user_id}/unlock", data={"csrf_token": csrf_token(admin, "/admin/")})
    with db_for(application) as session:
        events = {e.action: e for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))}
    assert events["account.locked"].target == "email:gus@example.com"
    assert events["account.locked"].details["seconds"] == 60
    assert events["account.unlocked"].actor == "root@example.com"


# --- hashing rules at sign-in --------------------------------------------------------------------------------


def test_stale_hash_is_rehashed_at_the_next_successful_signin(make_app: AppFactory) -> None:
    application = make_app()
    user_id = add_user(application, "hal@example.com")
    old = argon2.PasswordHasher(memory_cost=2048, time_cost=2, parallelism=1).hash(PASSWORD)
    with db_for(application) as session:
        user = session.get(User, user_id)
        assert user is not None
        user.password_hash = old
        session.commit()
    client = application.test_client()
    assert post_signin(client, "hal@example.com", WRONG).status_code == 401
    assert _user(application, user_id).password_hash == old  # a failure changes nothing
    assert post_signin(client, "hal@example.com", PASSWORD).status_code == 302
    stored = _user(application, user_id).password_hash
    assert stored is not None and stored != old
    params = argon2.extract_parameters(stored)
    settings = application.extensions["ami_settings"]
    assert (params.memory_cost, params.time_cost, params.parallelism) == (
        settings.argon2_memory_kib,
        settings.argon2_time_cost,
        settings.argon2_parallelism,
    )
    assert passwords.verify_password(settings, stored, PASSWORD)


# --- breached password at sign-in --------------------------------------------------------------------------


def change_password(client: FlaskClient, current: str, new: str) -> Any:
    token = csrf_token(client, "/account/")
    data = {"current_password": current, "new_password": new, "confirm": new, "csrf_token": token}
    return client.post("/account/password", data=data)


def test_breached_password_forces_a_change_before_anything_else(make_app: AppFactory) -> None:
    other_breached = "monkey business 1987"
    with range_api(RangeApi(breached={PASSWORD: 97, other_breached: 5})) as api:
        application = make_app(AMI_AUTH_PWNED_RANGE_URL=api.url)
        user_id = add_user(make_app(), "ivy@example.com")  # created while the check is off
        first, second = application.test_client(), application.test_client()
        response = post_signin(first, "ivy@example.com", PASSWORD)
        assert response.status_code == 302 and response.headers["Location"] == "/account/#password"
        assert _user(application, user_id).must_change_password
        page = first.get("/account/").get_data(as_text=True)
        assert "Your password has appeared in a data breach" in page
        assert 'data-notice="must-change-password"' in page
        assert post_signin(second, "ivy@example.com", PASSWORD).status_code == 302
        # Every other page leads to the change form until the password is changed.
        blocked = first.get("/admin/audit")
        assert blocked.status_code == 302 and blocked.headers["Location"] == "/account/#password"

        refused = change_password(first, PASSWORD, other_breached)
        assert refused.status_code == 422
        assert re.search(r'id="new_password-error"[^>]*>This password has appeared in a data breach', refused.text)
        common = change_password(first, PASSWORD, "qwerty123456")
        assert "one of the most common passwords" in common.get_data(as_text=True)
        assert change_password(first, PASSWORD, NEW_PASSWORD).status_code == 302
    assert not _user(application, user_id).must_change_password
    assert first.get("/account/").status_code == 200
    # The other session, opened with the breached password, is over.
    assert second.get("/account/").headers["Location"].startswith("/signin")
    assert post_signin(application.test_client(), "ivy@example.com", NEW_PASSWORD).status_code == 302


def test_breached_admin_who_must_still_enrol_mfa_changes_the_password_first(make_app: AppFactory) -> None:
    # Two guards (forced password change, required MFA enrolment) must not send the user back and forth.
    with range_api(RangeApi(breached={PASSWORD: 3})) as api:
        application = make_app(AMI_AUTH_PWNED_RANGE_URL=api.url, AMI_AUTH_MFA_REQUIRED_ROLES="admin")
        add_user(make_app(), "ada@example.com", role="admin")
        client = application.test_client()
        assert post_signin(client, "ada@example.com", PASSWORD).headers["Location"] == "/account/#password"
        assert client.get("/account/").status_code == 200
        assert client.get("/admin/").headers["Location"] == "/account/#password"
        assert change_password(client, PASSWORD, NEW_PASSWORD).status_code == 302
    # Then the MFA enrolment requirement takes over.
    assert client.get("/admin/").headers["Location"] == "/account/mfa"


def test_unreachable_range_api_lets_the_user_in(make_app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    application = make_app(
        AMI_AUTH_PWNED_RANGE_URL=f"http://127.0.0.1:{free_port()}/range", AMI_AUTH_OUTBOUND_RETRIES="0"
    )
    user_id = add_user(application, "joe@example.com")
    caplog.set_level(logging.WARNING, logger="ami_auth.passwords")
    response = post_signin(application.test_client(), "joe@example.com", PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/account/"
    assert not _user(application, user_id).must_change_password
    assert "breached-password check skipped" in caplog.text


def test_breached_password_refused_when_set(make_app: AppFactory) -> None:
    with range_api(RangeApi(breached={"monkey business 1987": 12})) as api:
        application = make_app(AMI_AUTH_PWNED_RANGE_URL=api.url)
        with pytest.raises(AppError) as info:
            add_user(application, "kim@example.com", password="monkey business 1987")
        assert info.value.code == "validation_failed" and "data breach" in info.value.fields["password"]


# --- the second factor and mail sends count too ------------------------------------------------------------


def _totp_user(application: Flask, email: str) -> str:
    """A user with an authenticator app; returns its secret."""
    user_id = add_user(application, email)
    return enrol_totp(application, application.extensions["ami_settings"], _user(application, user_id))


def test_wrong_totp_codes_count_toward_the_account_lock(make_app: AppFactory) -> None:
    application = make_app()
    secret = _totp_user(application, "tom@example.com")
    client = application.test_client()
    pending_signin(client, "tom@example.com")  # a right password does not clear failures while a code is due
    assert [post_code(client, wrong_code(secret)).status_code for _ in range(3)] == [401] * 3
    assert [post_signin(client, "tom@example.com", WRONG).status_code for _ in range(2)] == [401, 429]
    assert_rate_limited(post_signin(client, "tom@example.com", PASSWORD), "1 minute", 60)


def test_a_complete_mfa_signin_clears_password_failures(make_app: AppFactory) -> None:
    application = make_app()
    secret = _totp_user(application, "uma@example.com")
    client = application.test_client()
    assert [post_signin(client, "uma@example.com", WRONG).status_code for _ in range(4)] == [401] * 4
    pending_signin(client, "uma@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302
    storage = get_limit_storage(application)
    assert throttle.account_status(storage, "uma@example.com").failures == 0


def test_reset_mails_are_throttled_per_recipient(make_app: AppFactory) -> None:
    application = make_app()
    add_user(application, "val@example.com")
    client = application.test_client()

    def ask(email: str) -> Any:
        token = csrf_token(client, "/reset")
        return client.post("/reset", data={"email": email, "csrf_token": token})

    # Unknown addresses are counted like known ones, so the 429 does not reveal which exist.
    for email in ("val@example.com", "nobody@example.com"):
        assert [ask(email).status_code for _ in range(3)] == [200] * 3
        refused = ask(email)
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 900
        assert "Too many emails were sent to this address." in refused.get_data(as_text=True)


# --- Redis: two app instances, one store ---------------------------------------------------------------------


@pytest.mark.redis
def test_failures_on_one_instance_lock_the_account_on_another(make_app: AppFactory) -> None:
    url, prefix = redis_url(), unique_prefix()
    instance_a = make_app(AMI_AUTH_REDIS_URL=url, AMI_AUTH_REDIS_KEY_PREFIX=prefix)
    instance_b = make_app(AMI_AUTH_REDIS_URL=url, AMI_AUTH_REDIS_KEY_PREFIX=prefix)
    assert get_limit_storage(instance_a) is not get_limit_storage(instance_b)
    user_id = add_user(instance_a, "lea@example.com")
    add_user(instance_a, "root@example.com", role="admin")
    on_a = instance_a.test_client()
    assert [post_signin(on_a, "lea@example.com", WRONG).status_code for _ in range(4)] == [401] * 4
    on_b = instance_b.test_client()
    assert post_signin(on_b, "lea@example.com", WRONG).status_code == 429  # the 5th failure, counted on B
    assert_rate_limited(post_signin(on_a, "lea@example.com", PASSWORD), "1 minute", 60)
    assert_rate_limited(post_signin(on_b, "lea@example.com", PASSWORD), "1 minute", 60)
    assert redis_keys(url, prefix), "the counts live in Redis under the test's prefix"

    admin_on_b = instance_b.test_client()
    assert post_signin(admin_on_b, "root@example.com", PASSWORD, ip="203.0.113.2").status_code == 302
    token = csrf_token(admin_on_b, "/admin/")
    assert admin_on_b.post(f"/admin/users/{user_id}/unlock", data={"csrf_token": token}).status_code == 302
    assert post_signin(on_a, "lea@example.com", PASSWORD).status_code == 302
    assert throttle.account_status(get_limit_storage(instance_a), "lea@example.com").failures == 0
