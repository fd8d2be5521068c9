"""Multi-factor authentication over HTTP and against the database, on SQLite and PostgreSQL: TOTP, recovery
codes, the pending sign-in, enforcement, last-factor protection, and the WebAuthn checks a software
authenticator can drive without a browser."""

from __future__ import annotations

import base64
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.auth import recovery_codes, totp
from app.extensions import get_database
from app.models import AuditEvent, Base, Credential, MfaPolicy, User, UserSession, WebAuthnChallenge, utcnow
from app.settings import Settings
from tests.conftest import PASSWORD, UserFactory, csrf_token, make_settings, sign_in
from tests.support.mfa import enrol_totp
from tests.support.soft_authenticator import SoftAuthenticator

BASE_URL = "http://localhost:5000"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, AMI_AUTH_BASE_URL=BASE_URL, AMI_AUTH_MFA_REQUIRED_ROLES="admin")


# --- helpers ----------------------------------------------------------------------------------------------


def generate_codes(app: Flask, settings: Settings, user: User) -> list[str]:
    with app.app_context():
        db = get_database(app).session()
        codes = recovery_codes.generate(db, settings, user)
        db.commit()
        return codes


def wrong_code(secret: str) -> str:
    """A well-formed code that is not valid at any step near now."""
    otp = pyotp.TOTP(secret)
    near = {otp.at(time.time() + 30 * k) for k in range(-3, 4)}
    return next(f"{n:06d}" for n in range(0, 1_000_000, 7919) if f"{n:06d}" not in near)


def pending_signin(client: FlaskClient, email: str) -> None:
    response = sign_in(client, email)
    assert response.status_code == 302 and response.headers["Location"] == "/signin/mfa", response.headers


def post_code(client: FlaskClient, code: str) -> TestResponse:
    token = csrf_token(client, "/signin/mfa")
    return client.post("/signin/mfa/totp", data={"code": code, "csrf_token": token})


def post_json(client: FlaskClient, path: str, body: dict[str, Any], page: str) -> TestResponse:
    token = csrf_token(client, page)
    return client.post(path, json=body, headers={"X-CSRFToken": token, "Accept": "application/json"})


def live_session(db: Session) -> UserSession | None:
    db.expire_all()
    return db.scalar(select(UserSession).where(UserSession.revoked_at.is_(None)).order_by(UserSession.created_at))


def actions(db: Session) -> list[str]:
    db.expire_all()
    return [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]


# --- TOTP -------------------------------------------------------------------------------------------------


def test_totp_enrolment_through_the_pages(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    user = make_user("tina@example.com")
    sign_in(client, "tina@example.com")
    token = csrf_token(client, "/account/mfa")
    started = client.post("/account/mfa/totp", data={"csrf_token": token})
    assert started.status_code == 302 and started.headers["Location"] == "/account/mfa/totp"
    page = client.get("/account/mfa/totp").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page)
    assert secret, page
    secret_value = secret.group(1).replace(" ", "")
    assert len(secret_value) == 32  # 160 bits (RFC 4226 §4)
    # The QR code is an SVG data URI (img-src allows data:) without style attributes (CSP style-src 'self').
    qr = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    assert qr
    svg = base64.b64decode(qr.group(1)).decode()
    assert "<svg" in svg and "style" not in svg

    wrong = client.post("/account/mfa/totp/confirm", data={"code": wrong_code(secret_value), "csrf_token": token})
    assert wrong.status_code == 401
    assert re.search(r'id="code-error"[^>]*>That code is not right', wrong.get_data(as_text=True))

    done = client.post("/account/mfa/totp/confirm", data={"code": pyotp.TOTP(secret_value).now(), "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/account/mfa"
    # Enrolling proved the factor: this session stays signed in, now marked as MFA-verified.
    assert client.get("/account/mfa").status_code == 200
    record = live_session(db)
    assert record is not None and record.mfa_verified and "totp" in record.auth_methods
    credential = db.scalar(select(Credential).where(Credential.user_id == user.id, Credential.kind == "totp"))
    assert credential is not None and credential.confirmed_at is not None
    assert "mfa.totp.enrol" in actions(db)


def test_totp_secret_is_encrypted_at_rest(app: Flask, settings: Settings, make_user: UserFactory, db: Session) -> None:
    user = make_user("enc@example.com")
    secret = enrol_totp(app, settings, user)
    for table in Base.metadata.sorted_tables:
        for row in db.execute(select(table)).all():
            dumped = repr(tuple(row))
            assert secret not in dumped and secret.lower() not in dumped, f"secret found in {table.name}"
            assert secret.encode() not in b"".join(v for v in row if isinstance(v, bytes))
    stored = db.execute(text("SELECT count(*) FROM secrets WHERE owner_type = 'credential'")).scalar()
    assert stored == 1


def test_signin_with_totp_window_and_replay(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("otto@example.com")
    secret = enrol_totp(app, settings, user)
    otp = pyotp.TOTP(secret)
    pending_signin(client, "otto@example.com")
    # No session until the second factor: the console and account pages still ask to sign in.
    assert live_session(db) is None
    assert client.get("/account/").status_code == 302
    page = client.get("/signin/mfa").get_data(as_text=True)
    assert "otto@example.com" in page and "Authentication code" in page

    # One step ahead is inside the ±1 window (RFC 6238 §5.2).
    ahead = otp.at(time.time() + 30)
    response = post_code(client, ahead)
    assert response.status_code == 302 and response.headers["Location"] == "/account/"
    record = live_session(db)
    assert record is not None and record.mfa_verified and record.auth_methods == ["password", "totp"]
    assert {"mfa.totp.use", "signin.success"} <= set(actions(db))

    # The same code (and the current one, an earlier step) cannot be used again.
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})
    pending_signin(client, "otto@example.com")
    replay = post_code(client, ahead)
    assert replay.status_code == 401
    assert "not right, or was already used" in replay.get_data(as_text=True)
    assert post_code(client, otp.now()).status_code == 401


def test_totp_window_is_one_step(app: Flask, settings: Settings, make_user: UserFactory) -> None:
    user = make_user("win@example.com")
    secret = enrol_totp(app, settings, user)
    otp = pyotp.TOTP(secret)
    now = utcnow()
    with app.app_context():
        db = get_database(app).session()
        assert not totp.verify(db, settings, user, otp.at(now - timedelta(seconds=60)), now=now)
        assert not totp.verify(db, settings, user, otp.at(now + timedelta(seconds=60)), now=now)
        assert totp.verify(db, settings, user, otp.at(now - timedelta(seconds=30)), now=now)
        # After step-1 was used, step-1 again is a replay but the current step is still fine.
        assert not totp.verify(db, settings, user, otp.at(now - timedelta(seconds=30)), now=now)
        assert totp.verify(db, settings, user, otp.at(now), now=now)
        assert not totp.verify(db, settings, user, "12345", now=now)
        db.commit()


def test_wrong_codes_are_limited_and_audited(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("greg@example.com")
    secret = enrol_totp(app, settings, user)
    otp = pyotp.TOTP(secret)
    good = otp.now()
    wrong = wrong_code(secret)
    pending_signin(client, "greg@example.com")
    for _ in range(4):
        assert post_code(client, wrong).status_code == 401
    fifth = post_code(client, wrong)
    assert fifth.status_code == 429
    assert "Too many wrong attempts" in fifth.get_data(as_text=True)
    # The pending sign-in is gone: even the right code needs the password again.
    late = client.post("/signin/mfa/totp", data={"code": good, "csrf_token": csrf_token(client, "/signin")})
    assert late.status_code == 401
    assert "sign-in timed out" in late.get_data(as_text=True)
    # And a fresh password sign-in gets no further while the window lasts: the account throttle (when the
    # throttle branch is present, the five failures lock the account) or the MFA limit refuses it.
    again = sign_in(client, "greg@example.com")
    if again.status_code == 302:
        assert post_code(client, good).status_code == 429
    else:
        assert again.status_code == 429
    failures = [a for a in actions(db) if a == "mfa.failure"]
    assert len(failures) == 5
    assert live_session(db) is None


def test_pending_signin_expires(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("exp@example.com")
    secret = enrol_totp(app, settings, user)
    pending_signin(client, "exp@example.com")
    token = csrf_token(client, "/signin/mfa")
    with client.session_transaction() as flask_session:
        flask_session["mfa_pending"] = {**flask_session["mfa_pending"], "exp": time.time() - 1}  # 5 min later
    response = client.post("/signin/mfa/totp", data={"code": pyotp.TOTP(secret).now(), "csrf_token": token})
    assert response.status_code == 401
    assert "sign-in timed out" in response.get_data(as_text=True)
    page = client.get("/signin/mfa")
    assert page.status_code == 302 and page.headers["Location"] == "/signin"
    assert live_session(db) is None


def test_remove_totp_drops_recovery_codes_for_a_member(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("rem@example.com")
    secret = enrol_totp(app, settings, user)
    generate_codes(app, settings, user)
    pending_signin(client, "rem@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302
    token = csrf_token(client, "/account/mfa")
    response = client.post("/account/mfa/totp/remove", data={"csrf_token": token})
    assert response.status_code == 302
    db.expire_all()
    assert db.scalars(select(Credential).where(Credential.user_id == user.id)).all() == []
    assert db.execute(text("SELECT count(*) FROM secrets")).scalar() == 0
    assert "mfa.totp.remove" in actions(db)


# --- Recovery codes --------------------------------------------------------------------------------------


def test_recovery_codes_single_use_and_regenerate(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("rita@example.com")
    secret = enrol_totp(app, settings, user)
    pending_signin(client, "rita@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302

    token = csrf_token(client, "/account/mfa")
    shown = client.post("/account/mfa/recovery-codes", data={"csrf_token": token})
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    html = shown.get_data(as_text=True)
    codes = re.findall(r"<code>([a-z2-9]{5}-[a-z2-9]{5})</code>", html)
    assert len(codes) == 10 and len(set(codes)) == 10
    # The download is a data: link carrying the same codes as text.
    link = re.search(r'href="data:text/plain;charset=utf-8;base64,([^"]+)" download="([^"]+)"', html)
    assert link and link.group(2) == "ami-auth-recovery-codes.txt"
    assert all(code in base64.b64decode(link.group(1)).decode() for code in codes)
    # Stored hashed (argon2id), never in clear.
    hashes = db.scalars(select(Credential.code_hash).where(Credential.kind == "recovery_code")).all()
    assert len(hashes) == 10 and all(h and h.startswith("$argon2id$") for h in hashes)
    assert not any(code in (h or "") for h in hashes for code in codes)
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    def use(code: str) -> TestResponse:
        pending_signin(client, "rita@example.com")
        return client.post(
            "/signin/mfa/recovery", data={"recovery_code": code, "csrf_token": csrf_token(client, "/signin/mfa")}
        )

    first = use(codes[0].upper().replace("-", " "))  # case, spaces and dashes do not matter
    assert first.status_code == 302
    record = live_session(db)
    assert record is not None and record.auth_methods == ["password", "recovery_code"]
    assert "mfa.recovery_code.use" in actions(db)
    assert "9 of 10 codes left" in re.sub(r"<[^>]+>", "", client.get("/account/mfa").get_data(as_text=True))
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    again = use(codes[0])
    assert again.status_code == 401
    assert "That recovery code is not right or was used." in again.get_data(as_text=True)
    client.get("/signin")  # start over (a wrong code does not end the pending sign-in; a fresh password does)

    # Regenerating replaces every code: an unused old one stops working.
    new_codes = generate_codes(app, settings, user)
    assert not set(new_codes) & set(codes)
    assert use(codes[1]).status_code == 401
    assert use(new_codes[0]).status_code == 302
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    # Running low: the page after sign-in says so. (Rows are inserted in the order of the codes.)
    ids = db.scalars(select(Credential.id).where(Credential.kind == "recovery_code").order_by(Credential.id)).all()
    db.execute(update(Credential).where(Credential.id.in_(ids)).values(last_used_at=utcnow()))
    db.execute(update(Credential).where(Credential.id.in_(ids[1:4])).values(last_used_at=None))
    db.commit()
    attempt = use(new_codes[1])
    assert attempt.status_code == 302
    low = client.get(attempt.headers["Location"], follow_redirects=True)
    assert "You have 2 recovery codes left. Generate new ones soon." in low.get_data(as_text=True)


def test_recovery_codes_need_a_factor(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("nofactor@example.com")
    sign_in(client, "nofactor@example.com")
    token = csrf_token(client, "/account/mfa")
    response = client.post("/account/mfa/recovery-codes", data={"csrf_token": token})
    assert response.status_code == 409
    assert "Recovery codes need a second factor first." in response.get_data(as_text=True)


# --- Enforcement and last-factor protection --------------------------------------------------------------


def test_admin_without_factor_must_enrol_first(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("boss@example.com", role="admin")
    response = sign_in(client, "boss@example.com")
    assert response.status_code == 302
    for path in ("/admin/", "/admin/audit", "/account/", "/admin/security"):
        blocked = client.get(path)
        assert blocked.status_code == 302 and blocked.headers["Location"] == "/account/mfa", path
    api = client.get("/admin/", headers={"Accept": "application/json"})
    assert api.status_code == 403 and api.json is not None and api.json["error"]["code"] == "mfa_required"
    page = client.get("/account/mfa")
    assert page.status_code == 200
    assert "Your role requires a second factor." in page.get_data(as_text=True)
    with client.get("/static/css/app.css") as static:
        assert static.status_code == 200
    # Enrolment pages and sign-out stay reachable.
    token = csrf_token(client, "/account/mfa")
    assert client.post("/account/mfa/totp", data={"csrf_token": token}).status_code == 302
    assert client.get("/account/mfa/totp").status_code == 200
    assert client.post("/signout", data={"csrf_token": token}).status_code == 302


def test_member_is_free_until_the_admin_policy_says_otherwise(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    admin = make_user("chief@example.com", role="admin")
    secret = enrol_totp(app, settings, admin)
    make_user("mo@example.com")
    member = app.test_client()
    sign_in(member, "mo@example.com")
    assert member.get("/account/").status_code == 200

    pending_signin(client, "chief@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302
    page = client.get("/admin/security").get_data(as_text=True)
    assert "Default from AMI_AUTH_MFA_REQUIRED_ROLES: required." in page
    token = csrf_token(client, "/admin/security")
    saved = client.post("/admin/security", data={"admin": "y", "member": "y", "csrf_token": token})
    assert saved.status_code == 302
    db.expire_all()
    assert {p.role: p.required for p in db.scalars(select(MfaPolicy))} == {"admin": True, "member": True}
    assert "mfa.policy.update" in actions(db)

    blocked = member.get("/account/")
    assert blocked.status_code == 302 and blocked.headers["Location"] == "/account/mfa"


def test_last_factor_of_a_required_role_cannot_be_removed(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    admin = make_user("ada@example.com", role="admin")
    secret = enrol_totp(app, settings, admin)
    pending_signin(client, "ada@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302
    token = csrf_token(client, "/account/mfa")
    refused = client.post("/account/mfa/totp/remove", data={"csrf_token": token})
    assert refused.status_code == 409
    html = refused.get_data(as_text=True)
    assert 'data-error-code="conflict"' in html
    assert "This is your last second factor, and your role requires one." in html
    db.expire_all()
    assert db.scalar(select(Credential).where(Credential.kind == "totp")) is not None
    denied = db.scalar(select(AuditEvent).where(AuditEvent.action == "mfa.totp.remove"))
    assert denied is not None and denied.outcome == "denied"


def test_session_without_second_factor_is_not_signed_in(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    user = make_user("skip@example.com")
    sign_in(client, "skip@example.com")  # no factor yet: a password session
    assert client.get("/account/").status_code == 200
    enrol_totp(app, settings, user)  # a factor appears (say, from another device)
    response = client.get("/account/")
    assert response.status_code == 302 and response.headers["Location"] == "/signin"
    db.expire_all()
    assert db.scalar(select(UserSession)).revoked_at is not None  # type: ignore[union-attr]


def test_admin_reset_removes_factors_and_is_audited(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    admin = make_user("root@example.com", role="admin")
    secret = enrol_totp(app, settings, admin)
    user = make_user("lost@example.com")
    enrol_totp(app, settings, user)
    generate_codes(app, settings, user)
    pending_signin(client, "root@example.com")
    assert post_code(client, pyotp.TOTP(secret).now()).status_code == 302
    token = csrf_token(client, "/admin/security")
    response = client.post(f"/admin/users/{user.id}/mfa/reset", data={"csrf_token": token, "next": "//evil"})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/security"
    db.expire_all()
    assert db.scalars(select(Credential).where(Credential.user_id == user.id)).all() == []
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "mfa.reset"))
    assert event is not None and event.target == f"user:{user.id}" and event.actor == "root@example.com"
    assert event.details["removed"] == {"authenticator_apps": 1, "passkeys": 0, "codes": 10}
    # A member cannot reset anyone.
    member = app.test_client()
    make_user("nosy@example.com")
    sign_in(member, "nosy@example.com")
    token = csrf_token(member, "/account/")
    assert member.post(f"/admin/users/{admin.id}/mfa/reset", data={"csrf_token": token}).status_code == 403


# --- WebAuthn (software authenticator) ---------------------------------------------------------------------


def register_passkey(client: FlaskClient, auth: SoftAuthenticator, name: str = "Laptop") -> TestResponse:
    options = post_json(client, "/account/mfa/passkeys/options", {"name": name}, "/account/mfa")
    assert options.status_code == 200, options.get_data(as_text=True)
    assert options.json is not None
    credential = auth.register(options.json["publicKey"])
    return post_json(client, "/account/mfa/passkeys/verify", {"credential": credential, "name": name}, "/account/mfa")


def test_register_passkey_and_sign_in_passwordless(
    client: FlaskClient, make_user: UserFactory, db: Session, app: Flask
) -> None:
    user = make_user("pat@example.com")
    sign_in(client, "pat@example.com")
    auth = SoftAuthenticator(rp_id="localhost", origin=BASE_URL)
    options = post_json(client, "/account/mfa/passkeys/options", {"name": "Laptop"}, "/account/mfa")
    assert options.json is not None
    public_key = options.json["publicKey"]
    assert public_key["rp"] == {"id": "localhost", "name": "AMI Auth"}
    assert public_key["authenticatorSelection"]["userVerification"] == "preferred"
    registered = post_json(
        client,
        "/account/mfa/passkeys/verify",
        {"credential": auth.register(public_key), "name": "Laptop"},
        "/account/mfa",
    )
    assert registered.status_code == 200 and registered.json == {"redirect": "/account/mfa"}
    stored = db.scalar(select(Credential).where(Credential.kind == "webauthn"))
    assert stored is not None and stored.name == "Laptop" and stored.credential_id == auth.credential_id
    assert stored.user_handle == auth.user_handle and stored.user_handle != str(user.id).encode()
    assert "Laptop" in client.get("/account/mfa").get_data(as_text=True)
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    # Passwordless: empty allowCredentials, user verification required.
    options = post_json(client, "/signin/passkey/options", {}, "/signin")
    assert options.json is not None
    request_options = options.json["publicKey"]
    assert request_options["allowCredentials"] == [] and request_options["userVerification"] == "required"
    response = post_json(
        client, "/signin/passkey/verify?next=/account/mfa", {"credential": auth.assert_(request_options)}, "/signin"
    )
    assert response.status_code == 200 and response.json == {"redirect": "/account/mfa"}
    record = live_session(db)
    assert record is not None and record.mfa_verified and record.auth_methods == ["webauthn"]
    assert client.get("/account/mfa").status_code == 200
    db.expire_all()
    assert db.scalar(select(Credential.sign_count).where(Credential.kind == "webauthn")) == 1
    assert {"mfa.passkey.enrol", "mfa.passkey.use", "signin.success"} <= set(actions(db))


def test_passkey_challenge_is_single_use_and_origin_checked(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user("val@example.com")
    sign_in(client, "val@example.com")
    auth = SoftAuthenticator(rp_id="localhost", origin=BASE_URL)
    # Wrong origin: refused, and the challenge is spent.
    options = post_json(client, "/account/mfa/passkeys/options", {}, "/account/mfa")
    assert options.json is not None
    phished = auth.register(options.json["publicKey"], origin="https://evil.example")
    refused = post_json(client, "/account/mfa/passkeys/verify", {"credential": phished}, "/account/mfa")
    assert refused.status_code == 401 and refused.json is not None
    assert refused.json["error"]["code"] == "invalid_credentials"
    assert db.scalar(select(WebAuthnChallenge)) is None

    # A good response works once; replaying it finds no challenge.
    options = post_json(client, "/account/mfa/passkeys/options", {}, "/account/mfa")
    assert options.json is not None
    good = auth.register(options.json["publicKey"])
    first = post_json(client, "/account/mfa/passkeys/verify", {"credential": good}, "/account/mfa")
    assert first.status_code == 200
    replay = post_json(client, "/account/mfa/passkeys/verify", {"credential": good}, "/account/mfa")
    assert replay.status_code == 401 and replay.json is not None
    assert replay.json["error"]["code"] == "token_expired"
    assert len(db.scalars(select(Credential).where(Credential.kind == "webauthn")).all()) == 1
    assert db.scalar(select(Credential.name).where(Credential.kind == "webauthn")) == "Passkey 1"

    # A bad name is refused before the browser is asked.
    long_name = post_json(client, "/account/mfa/passkeys/options", {"name": "x" * 101}, "/account/mfa")
    assert long_name.status_code == 422 and long_name.json is not None
    assert long_name.json["error"]["fields"]["name"] == "Use at most 100 characters."


def test_passkey_second_factor_counter_and_user_verification(
    client: FlaskClient, make_user: UserFactory, db: Session
) -> None:
    make_user("sam@example.com")
    sign_in(client, "sam@example.com")
    auth = SoftAuthenticator(rp_id="localhost", origin=BASE_URL, sign_count=5)
    assert register_passkey(client, auth).status_code == 200
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    # Password, then the passkey as second factor (only this user's credentials are allowed).
    pending_signin(client, "sam@example.com")
    assert "Use a passkey or security key" in client.get("/signin/mfa").get_data(as_text=True)
    options = post_json(client, "/signin/mfa/passkey/options", {}, "/signin/mfa")
    assert options.json is not None
    allowed = options.json["publicKey"]["allowCredentials"]
    assert [c["id"] for c in allowed] == [base64.urlsafe_b64encode(auth.credential_id).rstrip(b"=").decode()]
    ok = post_json(
        client, "/signin/mfa/passkey/verify", {"credential": auth.assert_(options.json["publicKey"])}, "/signin/mfa"
    )
    assert ok.status_code == 200 and ok.json == {"redirect": "/account/"}
    record = live_session(db)
    assert record is not None and record.auth_methods == ["password", "webauthn"]
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    # A counter that does not move forward (a cloned key?) is refused.
    options = post_json(client, "/signin/passkey/options", {}, "/signin")
    assert options.json is not None
    cloned = auth.assert_(options.json["publicKey"], count_step=0)
    refused = post_json(client, "/signin/passkey/verify", {"credential": cloned}, "/signin")
    assert refused.status_code == 401 and refused.json is not None
    assert refused.json["error"]["code"] == "invalid_credentials"

    # Passwordless needs user verification (PIN or biometric), not just presence.
    auth.user_verified = False
    options = post_json(client, "/signin/passkey/options", {}, "/signin")
    assert options.json is not None
    no_uv = post_json(
        client, "/signin/passkey/verify", {"credential": auth.assert_(options.json["publicKey"])}, "/signin"
    )
    assert no_uv.status_code == 401
    assert live_session(db) is None
    assert "signin.failure" in actions(db)


def test_passkey_of_another_user_is_refused_as_second_factor(
    app: Flask, client: FlaskClient, settings: Settings, make_user: UserFactory
) -> None:
    make_user("one@example.com")
    two = make_user("two@example.com")
    enrol_totp(app, settings, two)
    sign_in(client, "one@example.com")
    theirs = SoftAuthenticator(rp_id="localhost", origin=BASE_URL)
    assert register_passkey(client, theirs).status_code == 200
    other = app.test_client()
    pending_signin(other, "two@example.com")
    options = post_json(other, "/signin/mfa/passkey/options", {}, "/signin/mfa")
    assert options.json is not None
    refused = post_json(
        other, "/signin/mfa/passkey/verify", {"credential": theirs.assert_(options.json["publicKey"])}, "/signin/mfa"
    )
    assert refused.status_code == 401


def test_rename_and_remove_passkeys(client: FlaskClient, make_user: UserFactory, db: Session) -> None:
    make_user("ren@example.com")
    sign_in(client, "ren@example.com")
    assert register_passkey(client, SoftAuthenticator(rp_id="localhost", origin=BASE_URL), "Old").status_code == 200
    credential = db.scalar(select(Credential).where(Credential.kind == "webauthn"))
    assert credential is not None
    token = csrf_token(client, "/account/mfa")
    prefix = f"p{credential.id}-name"
    empty = client.post(f"/account/mfa/passkeys/{credential.id}/rename", data={prefix: "", "csrf_token": token})
    assert empty.status_code == 422
    assert re.search(rf'id="{prefix}-error"[^>]*>Enter a name.', empty.get_data(as_text=True))
    renamed = client.post(
        f"/account/mfa/passkeys/{credential.id}/rename", data={prefix: "YubiKey 5", "csrf_token": token}
    )
    assert renamed.status_code == 302
    db.expire_all()
    assert db.scalar(select(Credential.name).where(Credential.id == credential.id)) == "YubiKey 5"
    assert client.post("/account/mfa/passkeys/9999/remove", data={"csrf_token": token}).status_code == 404
    removed = client.post(f"/account/mfa/passkeys/{credential.id}/remove", data={"csrf_token": token})
    assert removed.status_code == 302
    db.expire_all()
    assert db.scalar(select(Credential)) is None
    assert {"mfa.passkey.rename", "mfa.passkey.remove"} <= set(actions(db))


def test_webauthn_verify_rejects_garbage_without_500(client: FlaskClient, make_user: UserFactory) -> None:
    make_user("junk@example.com")
    for body in ({}, {"credential": "nope"}, {"credential": {"id": 1}}):
        post_json(client, "/signin/passkey/options", {}, "/signin")
        response = post_json(client, "/signin/passkey/verify", body, "/signin")
        assert response.status_code == 401 and response.json is not None
    not_json = client.post(
        "/signin/passkey/verify",
        data="x",
        headers={"X-CSRFToken": csrf_token(client, "/signin"), "Accept": "application/json"},
    )
    # A body that is not JSON is refused by the input guard as the wrong media type (RFC 9110 section 15.5.16).
    assert not_json.status_code == 415 and not_json.json is not None
    assert not_json.json["error"]["code"] == "validation_failed"


def test_admin_user_page_snippet_and_account_card(app: Flask, settings: Settings, make_user: UserFactory) -> None:
    """The partials other pages include: the admin user page's factor summary + reset, and the account card."""
    from flask import render_template

    user = make_user("snip@example.com")
    enrol_totp(app, settings, user)
    generate_codes(app, settings, user)
    with app.test_request_context(f"/admin/users/{user.id}"):
        html = render_template("mfa/_admin_user_factors.html", user=user)
        card = render_template("account/mfa_card.html", user=user)
    assert "Authenticator app</dt>" in html and "on since" in html and "10 of 10 left" in html
    assert f'action="/admin/users/{user.id}/mfa/reset"' in html
    assert f'name="next" value="/admin/users/{user.id}"' in html
    assert 'href="/account/mfa"' in card and "10 left" in card


@pytest.mark.redis
def test_wrong_code_limit_is_shared_by_workers_through_redis(tmp_path: Path, database_url: str) -> None:
    """Two app instances (two gunicorn workers) on one Redis: failures at one count at the other."""
    from app import create_app
    from app.auth import mfa, users
    from tests.conftest import redis_url
    from tests.support.limits_storage import close_storage, unique_prefix

    settings = make_settings(
        tmp_path,
        database_url,
        AMI_AUTH_BASE_URL=BASE_URL,
        AMI_AUTH_REDIS_URL=redis_url(),
        # Wrong codes also count toward the account throttle: a prefix of its own keeps runs apart.
        AMI_AUTH_REDIS_KEY_PREFIX=unique_prefix(),
        AMI_AUTH_MFA_REQUIRED_ROLES="",
    )
    first, second = create_app(settings), create_app(settings)
    with first.app_context():
        db = get_database(first).session()
        user = users.create_user(db, settings, email="red@example.com", password=PASSWORD, verified=True)
        db.commit()
    storage = first.extensions["ami_limits"]
    mfa.clear_failures(storage, user.id)  # user ids repeat across test databases; Redis outlives them
    try:
        secret = enrol_totp(first, settings, user)
        a, b = first.test_client(), second.test_client()
        pending_signin(a, "red@example.com")
        for _ in range(3):
            assert post_code(a, wrong_code(secret)).status_code == 401
        pending_signin(b, "red@example.com")
        assert post_code(b, wrong_code(secret)).status_code == 401
        assert post_code(b, wrong_code(secret)).status_code == 429
        assert mfa.failures_exhausted(second.extensions["ami_limits"], user.id) is not None
    finally:
        mfa.clear_failures(storage, user.id)
        for application in (first, second):
            close_storage(application.extensions["ami_limits"])
            get_database(application).remove()
            get_database(application).engine.dispose()


def test_cli_reset_lets_a_locked_out_admin_back_in(
    app: Flask, settings: Settings, make_user: UserFactory, db: Session
) -> None:
    admin = make_user("only@example.com", role="admin")
    enrol_totp(app, settings, admin)
    generate_codes(app, settings, admin)
    runner = app.test_cli_runner()
    unknown = runner.invoke(args=["mfa", "reset", "ghost@example.com", "--yes"])
    assert unknown.exit_code != 0 and "no user with email" in unknown.output
    result = runner.invoke(args=["mfa", "reset", "only@example.com", "--yes"])
    assert result.exit_code == 0, result.output
    assert "removed 1 authenticator apps, 0 passkeys, 10 codes" in result.output
    db.expire_all()
    assert db.scalars(select(Credential)).all() == []
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "mfa.reset"))
    assert event is not None and event.actor == "cli"


def test_a_user_with_an_app_and_a_passkey_can_trust_the_browser_from_the_passkey_too(
    app: Flask, client: FlaskClient, make_user: UserFactory, settings: Settings
) -> None:
    user = make_user("tia@example.com")
    sign_in(client, "tia@example.com")
    auth = SoftAuthenticator(rp_id="localhost", origin=BASE_URL)
    assert register_passkey(client, auth).status_code == 200
    enrol_totp(app, settings, user)
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    pending_signin(client, "tia@example.com")
    page = client.get("/signin/mfa").get_data(as_text=True)
    code_form, passkey_form = page.split("Use a passkey or security key", 1)
    # Each way to finish offers the box: the app's code form and the passkey's (it was the code form's only).
    assert 'name="trust_browser"' in code_form and 'id="trust_browser_passkey"' in passkey_form
    options = post_json(client, "/signin/mfa/passkey/options", {}, "/signin/mfa")
    assert options.json is not None
    body = {"credential": auth.assert_(options.json["publicKey"]), "trust_browser": True}
    assert post_json(client, "/signin/mfa/passkey/verify", body, "/signin/mfa").status_code == 200
    client.post("/signout", data={"csrf_token": csrf_token(client, "/account/")})

    again = sign_in(client, "tia@example.com")  # the password alone, in the browser trusted from the passkey
    assert again.status_code == 302 and again.headers["Location"] == "/account/"
