"""What the token endpoint keeps per process, and how soon a change reaches it: a client's row (disabled, new
secret — at once when changed in this process, within ``CLIENT_ROW_TTL`` seconds when changed by another) and the
signing keys (a rotation by another process within the key ring's ``ttl``); and what its one-statement refresh claim
does with a token whose user is disabled. SQLite and PostgreSQL; the clocks are the caches' own, moved by the test
(no waiting)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from app.audit import AuditContext
from app.extensions import get_cipher, get_database
from app.idp import clients, keys, tokens
from app.idp.claims import Subject
from app.idp.keys import KeyRing
from app.idp.server import CLIENT_ROW_TTL, Client
from app.models import OidcClient, OidcToken, User
from app.web.idp import provider
from tests.conftest import UserFactory

CTX = AuditContext(actor="test")
SCOPE = "openid profile offline_access"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class App:
    row: OidcClient
    secret: str
    refresh: str


def _registered(app: Flask, db: Session, user: User) -> App:
    saved = clients.create_client(
        db,
        CTX,
        {"name": "CMS", "redirect_uris": ["https://cms.example.com/cb"], "scopes": SCOPE.split()},
    )
    db.commit()
    assert saved.secret is not None
    with app.test_request_context():
        token = provider(app).generate_token(
            "authorization_code",
            Client(saved.client),
            user=Subject(user=user),
            scope=SCOPE,
            include_refresh_token=True,
        )
        tokens.save_token(db, saved.client, Subject(user=user), token, tokens.Issue(tokens.new_family()))
    db.commit()
    return App(saved.client, saved.secret, token["refresh_token"])


def _refresh(web: FlaskClient, rp: App, secret: str | None = None) -> TestResponse:
    answer = web.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": rp.refresh},
        auth=(rp.row.client_id, secret or rp.secret),
    )
    if answer.status_code == 200:
        rp.refresh = answer.get_json()["refresh_token"]
    return answer


def test_a_client_changed_by_another_process_is_refused_within_the_ttl_and_at_once_when_changed_here(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    rp = _registered(app, db, make_user("ann@example.com"))
    clock = Clock()
    provider(app).clients.clock = clock
    assert _refresh(client, rp).status_code == 200

    # Another worker (or the CLI) disables the app: a plain UPDATE, which this process does not see happen.
    db.execute(update(OidcClient).where(OidcClient.id == rp.row.id).values(enabled=False))
    db.commit()
    clock.now += CLIENT_ROW_TTL / 2
    assert _refresh(client, rp).status_code == 200  # the bound: this worker's copy is at most CLIENT_ROW_TTL old
    clock.now += CLIENT_ROW_TTL / 2
    refused = _refresh(client, rp)
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"

    # Changes made in this process apply to the very next request, whatever the clock says.
    row = db.get(OidcClient, rp.row.id)
    assert row is not None
    row.enabled = True
    db.commit()
    assert _refresh(client, rp).status_code == 200
    new_secret = clients.rotate_secret(db, CTX, row).secret
    db.commit()
    old = _refresh(client, rp)
    assert old.status_code == 401 and old.get_json()["error"] == "invalid_client"
    assert _refresh(client, rp, new_secret).status_code == 200
    clients.delete_client(db, CTX, row)
    db.commit()
    assert _refresh(client, rp, new_secret).status_code == 401


def test_a_disabled_users_refresh_token_gets_nothing_and_is_neither_spent_nor_revoked(
    app: Flask, client: FlaskClient, db: Session, make_user: UserFactory
) -> None:
    user = make_user("ann@example.com")
    rp = _registered(app, db, user)
    user = db.merge(user)
    user.is_active = False
    db.commit()
    refused = _refresh(client, rp)
    assert refused.status_code == 400 and "access_token" not in refused.get_json()
    row = db.scalars(select(OidcToken).where(OidcToken.refresh_hash == tokens.hash_token(rp.refresh))).one()
    db.refresh(row)
    assert row.refresh_used_at is None and row.revoked_at is None
    # Enabled again, the same refresh token works (it was not taken for a reuse).
    user.is_active = True
    db.commit()
    assert _refresh(client, rp).status_code == 200


def test_a_rotated_signing_key_signs_in_every_process_within_the_key_rings_ttl(app: Flask, db: Session) -> None:
    clock = Clock()
    ring = KeyRing(get_database(app).engine, get_cipher(app), clock=clock)
    before = ring.signing_key("ES256").kid
    # Another process rotates: it was published as "next" before, so relying parties already have it.
    rotation = keys.rotate(db, get_cipher(app), CTX, "ES256")
    db.commit()
    assert rotation.previous == before
    clock.now += ring.ttl / 2
    assert ring.signing_key("ES256").kid == before
    assert rotation.current in {k["kid"] for k in ring.public_jwks()["keys"]}
    clock.now += ring.ttl / 2
    key = ring.signing_key("ES256")
    assert key.kid == rotation.current
    signed = jwt.encode({"alg": "ES256", "kid": key.kid or ""}, {"n": 1}, key, algorithms=["ES256"])
    # Tokens the previous key signed still verify until they expire; the new ones verify too.
    assert {before, rotation.current} <= {k.kid for k in ring.verification_keys().keys}
    assert jwt.decode(signed, ring.verification_keys(), algorithms=["ES256"]).claims["n"] == 1
